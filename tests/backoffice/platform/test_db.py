"""backoffice.platform.db's bulk statements on the real database: every column one array parameter."""

from __future__ import annotations

import uuid
from datetime import datetime

import pytest
from sqlalchemy import make_url, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from backoffice.bootstrap import Resources
from backoffice.models import ActorType, Approval, ApprovalStatus, AuditEvent
from backoffice.platform import db


async def test_rows_are_inserted_and_updated_with_enums_json_and_nulls_as_given(res: Resources) -> None:
    """Enum members, JSON bodies (nested, with text that needs escaping) and NULLs go in and come back as
    written; an update changes only the rows and columns it names, in one statement."""
    ids = [uuid.uuid4() for _ in range(3)]
    rows = [
        {
            "id": event_id,
            "actor_type": ActorType.SYSTEM,
            "actor_id": None,
            "action": f"test-{n}",
            "object_type": "thing",
            "object_id": None,
            "details": {"n": n, "quote": 'a "b" \\ c', "nested": {"list": [1, 2]}},
            "request_id": None if n else "r-1",
        }
        for n, event_id in enumerate(ids)
    ]
    async with res.sessions.begin() as session:
        await db.insert_rows(session, AuditEvent, rows)
        await db.update_by_id(session, AuditEvent, [{"id": ids[1], "action": "changed", "details": {}}])
    async with res.sessions() as session:
        stored = {e.id: e for e in (await session.scalars(select(AuditEvent).where(AuditEvent.id.in_(ids)))).all()}
    assert [stored[i].action for i in ids] == ["test-0", "changed", "test-2"]
    assert stored[ids[0]].details == rows[0]["details"] and stored[ids[1]].details == {}
    assert (stored[ids[0]].actor_type, stored[ids[0]].request_id, stored[ids[2]].request_id) == (
        ActorType.SYSTEM,
        "r-1",
        None,
    )
    assert all(isinstance(e.created_at, datetime) and e.created_at.tzinfo is not None for e in stored.values())


async def test_an_array_column_is_refused_before_anything_is_sent(res: Resources) -> None:
    """unnest would flatten an array column's values: such a write must take another statement."""
    row = {"id": uuid.uuid4(), "status": ApprovalStatus.APPROVED, "device_ids": [uuid.uuid4()]}
    async with res.sessions() as session:
        with pytest.raises(TypeError, match="device_ids"):
            await db.update_by_id(session, Approval, [row])


async def test_rows_that_name_different_columns_are_refused(res: Resources) -> None:
    """A row with a column the first does not name would lose it silently: refused, nothing sent."""
    rows = [{"id": uuid.uuid4(), "action": "a"}, {"id": uuid.uuid4(), "action": "b", "request_id": "r"}]
    async with res.sessions() as session:
        with pytest.raises(ValueError, match="same columns"):
            await db.update_by_id(session, AuditEvent, rows)


async def test_a_connection_the_server_refuses_is_raised_as_sqlalchemy_raises_it(res: Resources) -> None:
    """``db.driver`` takes its connection from the pool directly; when none can be made (here: a database
    that does not exist; in production, a server still recovering), the error is SQLAlchemy's wrapper with
    the server's SQLSTATE, as ``engine.connect()`` raises it, so the interceptor answers UNAVAILABLE."""
    url = make_url(res.settings.database_url).set(database=f"missing_{uuid.uuid4().hex[:8]}")
    engine = create_async_engine(url)
    try:
        with pytest.raises(DBAPIError) as refused:
            async with db.driver(db.session_factory(engine)):
                pass
    finally:
        await engine.dispose()
    assert getattr(refused.value.orig, "sqlstate", None) == "3D000"  # invalid_catalog_name
