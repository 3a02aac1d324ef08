"""scripts/requirements.lock, the exact set every script and CI installs: it pins every dependency that
pyproject.toml names (a new dependency without a re-lock fails here, not on a newcomer's machine), and the
environment the suite runs in is that set, no more and no less."""

from __future__ import annotations

import os
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "scripts" / "requirements.lock"
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)(?:\s*;\s*(?P<marker>[^\\]+?))?\s*\\?$")
# The suite may be run against other versions on purpose (the newest releases of the day): say so.
UNLOCKED = os.environ.get("SIGNALHUB_UNLOCKED") == "1"


def locked() -> dict[str, tuple[str, Marker | None]]:
    """The lock's pins: name -> (version, the marker it applies under)."""
    pins: dict[str, tuple[str, Marker | None]] = {}
    for line in LOCK.read_text().splitlines():
        found = PIN.match(line)
        if found:
            marker = Marker(found["marker"]) if found["marker"] else None
            pins[str(canonicalize_name(found["name"]))] = (found["version"], marker)
    return pins


def named_in_pyproject() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    texts = [*project["build-system"]["requires"], *project["project"]["dependencies"]]
    for extra in project["project"]["optional-dependencies"].values():
        texts.extend(extra)
    return [Requirement(text) for text in texts]


def test_the_lock_pins_every_dependency_with_hashes() -> None:
    pins = locked()
    assert len(pins) > 20
    text = LOCK.read_text()
    assert len(re.findall(r"^\w", text, re.MULTILINE)) == len(pins), "a pin the pattern did not read"
    assert text.count("--hash=sha256:") >= len(pins), "a pin without its hashes"
    for requirement in named_in_pyproject():
        name = str(canonicalize_name(requirement.name))
        assert name in pins, f"{requirement} is in pyproject.toml but not in the lock: run scripts/lock"
        version, _ = pins[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"the lock has {name}=={version}, pyproject.toml asks {requirement}: run scripts/lock"
        )


@pytest.mark.skipif(UNLOCKED, reason="SIGNALHUB_UNLOCKED=1: the suite runs against other versions on purpose")
def test_the_environment_is_exactly_the_locked_set() -> None:
    wanted = {name: version for name, (version, marker) in locked().items() if marker is None or marker.evaluate()}
    installed = {
        str(canonicalize_name(d.metadata["Name"])): d.version
        for d in metadata.distributions()
        if d.metadata["Name"] and canonicalize_name(d.metadata["Name"]) not in {"pip", "signalhub"}
    }
    assert installed == wanted, (
        f"installed but not locked: {sorted(set(installed) - set(wanted))}; "
        f"locked but not installed: {sorted(set(wanted) - set(installed))}; "
        f"other versions: {sorted(k for k in set(wanted) & set(installed) if wanted[k] != installed[k])} "
        f"(Python {sys.version.split()[0]}; scripts/test installs the lock into .venv)"
    )
