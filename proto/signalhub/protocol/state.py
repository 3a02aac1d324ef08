"""Local state that signalhub's tools and SDK command lines share on one machine: the ``.signalhub``
folder (development master key, embedded servers' data, demo credentials), written owner-only."""

from __future__ import annotations

import os
from pathlib import Path

STATE_DIR = Path(".signalhub")
DEMO_FILE = "demo.json"  # what `signalhub up` hands the SDK command lines: addresses, ids, secrets


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (created 0600, never world-readable even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)
