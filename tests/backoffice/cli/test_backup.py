"""A backup taken while the database is in use restores into a new database with everything intact:
the schema revision, the rows, and the sealed secrets (they still open under the same master key)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from sqlalchemy import func, select, text

from backoffice import accounts, bootstrap
from backoffice.models import Role, User
from backoffice.platform.auth import KeyKind, authenticate_token
from signalhub.protocol import signing
from tests.backoffice.cli.test_commands import _env, signalhub
from tests.conftest import create_database, drop_database, settings_for


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
        restored = signalhub("admin", "restore", "--from", str(dump), env=_env(target))
        assert restored.returncode == 0, restored.stderr
        async with bootstrap.resources(target) as res:
            async with res.sessions.begin() as session:
                assert (await authenticate_token(session, token)).id == user.id
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


def test_a_missing_backup_file_is_one_line(tmp_path: Path) -> None:
    anywhere = settings_for("postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
    done = signalhub("admin", "restore", "--from", str(tmp_path / "nope.dump"), env=_env(anywhere))
    assert done.returncode != 0
    assert done.stderr.strip().count("\n") == 0 and "no backup file" in done.stderr
