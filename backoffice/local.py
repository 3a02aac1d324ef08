"""The local state that `signalhub up` keeps under ./.signalhub/ so every `signalhub` command run from the
same directory finds it: the development master key and the URLs of the embedded servers."""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from backoffice.config import ENV_PREFIX, STATE_DIR, Settings

MASTER_KEY_FILE = "master.key"
RUNTIME_FILE = "runtime.json"  # URLs of the embedded servers while `signalhub up` runs
DEMO_FILE = "demo.json"
DEV_KEY_ID = "dev"


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (created 0600, never world-readable even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


def ensure_dev_master_key(state_dir: Path = STATE_DIR) -> str:
    path = state_dir / MASTER_KEY_FILE
    if not path.exists():
        write_private(path, base64.b64encode(secrets.token_bytes(32)).decode("ascii") + "\n")
    return path.read_text().strip()


def environment(state_dir: Path = STATE_DIR, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The process environment, completed from ./.signalhub/ where a variable is unset."""
    env = dict(os.environ if environ is None else environ)
    runtime = state_dir / RUNTIME_FILE
    if runtime.exists():
        urls = json.loads(runtime.read_text())
        env.setdefault(ENV_PREFIX + "DATABASE_URL", urls["database_url"])
        env.setdefault(ENV_PREFIX + "REDIS_URL", urls["redis_url"])
    key_file = state_dir / MASTER_KEY_FILE
    if ENV_PREFIX + "MASTER_KEY" not in env and key_file.exists():
        env[ENV_PREFIX + "MASTER_KEY"] = key_file.read_text().strip()
        env[ENV_PREFIX + "MASTER_KEY_ID"] = DEV_KEY_ID
    return env


def load_settings(state_dir: Path = STATE_DIR) -> Settings:
    return Settings.from_env(environment(state_dir))
