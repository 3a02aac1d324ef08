"""Alembic is the schema's only author: upgrade, downgrade, upgrade on a real Postgres, and the migrated
schema must equal the models."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, Text, inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from backoffice.models import Base
from backoffice.platform import schema
from backoffice.platform.config import Settings
from tests.conftest import scratch_database, settings_for


@pytest.fixture(scope="module")
def scratch() -> Iterator[Settings]:
    with scratch_database("signalhub_schema") as url:
        yield settings_for(url)


def _diff(settings: Settings) -> list[object]:
    # Alembic compares synchronously; psycopg is not a dependency, so asyncpg runs it through run_sync.
    async def compare() -> list[object]:
        engine = create_async_engine(settings.database_url)

        def run(connection: Connection) -> list[object]:
            return list(
                compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata)
            )

        async with engine.connect() as conn:
            diff = await conn.run_sync(run)
        await engine.dispose()
        return diff

    return asyncio.run(compare())


def _tables(settings: Settings) -> set[str]:
    async def names() -> set[str]:
        engine = create_async_engine(settings.database_url)
        async with engine.connect() as conn:
            found = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        await engine.dispose()
        return found

    return asyncio.run(names())


def test_upgrade_downgrade_upgrade_and_models_match(scratch: Settings) -> None:
    schema.upgrade(scratch)
    assert _diff(scratch) == []
    assert {"users", "signals", "deliveries", "execution_events", "nonces"} <= _tables(scratch)
    schema.downgrade(scratch, "base")
    assert _tables(scratch) <= {"alembic_version"}
    schema.upgrade(scratch)
    assert _diff(scratch) == []


def test_models_differing_from_migrations_are_detected(scratch: Settings) -> None:
    """The comparison above can fail: a model change without a migration shows up as a difference."""
    schema.upgrade(scratch)
    column = Column("nickname", Text)
    Base.metadata.tables["users"].append_column(column)
    try:
        assert any("nickname" in repr(d) for d in _diff(scratch))
    finally:
        Base.metadata.tables["users"]._columns.remove(column)
    assert _diff(scratch) == []


def test_execution_events_are_immutable(scratch: Settings) -> None:
    schema.upgrade(scratch)
    asyncio.run(_try_to_change_an_event(scratch))


async def _try_to_change_an_event(settings: Settings) -> None:
    engine = create_async_engine(settings.database_url)
    try:
        async with engine.begin() as conn:
            user_id, device_id = uuid.uuid4(), uuid.uuid4()
            await conn.execute(
                text("INSERT INTO users (id, email, role) VALUES (:id, :email, 'USER')"),
                {"id": user_id, "email": f"{user_id}@x.test"},
            )
            await conn.execute(
                text(
                    "INSERT INTO devices (id, user_id, name, status, secret_sealed) "
                    "VALUES (:id, :user_id, 'd', 'ACTIVE', 'sv1:x:y')"
                ),
                {"id": device_id, "user_id": user_id},
            )
            await conn.execute(
                text(
                    "INSERT INTO execution_events (id, device_id, frame_id, kind) VALUES (:id, :d, 'f1', 'HEARTBEAT')"
                ),
                {"id": uuid.uuid4(), "d": device_id},
            )
        for statement in ("UPDATE execution_events SET stage = 'x'", "DELETE FROM execution_events"):
            with pytest.raises(DBAPIError, match="immutable"):
                async with engine.begin() as conn:
                    await conn.execute(text(statement + " WHERE device_id = :d"), {"d": device_id})
    finally:
        await engine.dispose()
