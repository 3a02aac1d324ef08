"""The `signalhub` user commands as a person runs them, for their tests: a real process calling this run's
back office (off the event loop, which serves the back office meanwhile), with the API token in the
environment or not at all."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from tests.conftest import ROOT_DIR, run_module


async def signalhub(*args: str, token: str | None, target: str | None, cwd: Path = ROOT_DIR) -> tuple[int, Any, str]:
    """Run ``signalhub ARGS`` (with ``--target`` when given); its exit status, its JSON output (None when
    there is none) and its stderr. No SIGNALHUB_ variable of this process reaches it but the token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNALHUB_")}
    env["PYTHONPATH"] = f"{ROOT_DIR}{os.pathsep}{ROOT_DIR / 'proto'}"
    if token is not None:
        env["SIGNALHUB_API_TOKEN"] = token
    where = ("--target", target) if target is not None else ()
    process = run_module("backoffice.cli", *args, *where, env=env, cwd=cwd)
    out, err = await asyncio.to_thread(process.communicate, timeout=60)
    return process.returncode, json.loads(out) if out.strip() else None, err


def one_line(err: str, code: str) -> bool:
    """A refusal as the command line prints it: one line naming ``code`` once."""
    return err.startswith(f"signalhub: {code}") and len(err.splitlines()) == 1 and err.count(code) == 1
