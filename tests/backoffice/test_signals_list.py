"""ListSignals's page on the real Postgres: one statement per page whatever its size, in the order of the
index on (created_at, id) with no sort, and per signal what this caller may see of it (hidden levels only
with a position of its own, the payload only for admins)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from backoffice import signals
from backoffice.bootstrap import Resources
from backoffice.models import ApprovalStatus, Delivery, DeliveryState, Position, PositionStatus, Role, Side
from backoffice.platform.auth import Caller
from tests.conftest import (
    KeyCredentials,
    UserCredentials,
    approval_row,
    make_device,
    make_producer,
    make_user,
    signal_row,
    subscription_row,
)


@dataclass(frozen=True)
class Feed:
    """A producer's signals, newest first, followed by a user holding positions on some of them."""

    producer: KeyCredentials
    follower: UserCredentials
    signal_ids: list[uuid.UUID]  # newest first
    with_positions: set[uuid.UUID]


async def make_feed(res: Resources, count: int, positions_on: tuple[int, ...], *, same_time: bool = False) -> Feed:
    """``count`` signals a minute apart (or all at one instant); the follower holds a position on those at
    ``positions_on`` (indexes, newest first), and a stranger holds one on every signal."""
    producer, follower, stranger = await make_producer(res), await make_user(res), await make_user(res)
    device, strangers_device = await make_device(res, follower), await make_device(res, stranger)
    start = datetime.now(UTC) - timedelta(hours=1)
    async with res.sessions.begin() as session:
        followed = subscription_row(follower.id, producer.id)
        strangers = subscription_row(stranger.id, producer.id)
        session.add_all([followed, strangers])
        rows = [
            signal_row(
                producer.id,
                start,
                start + timedelta(days=1),
                created_at=start if same_time else start + timedelta(minutes=i),
                stop_loss=Decimal("2020"),
            )
            for i in range(count)
        ]
        session.add_all(rows)
        await session.flush()
        newest_first = sorted(rows, key=lambda s: (s.created_at, s.id), reverse=True)
        for i, signal in enumerate(newest_first):
            await _position(session, signal.id, strangers.id, stranger.id, strangers_device.id)
            if i in positions_on:
                await _position(session, signal.id, followed.id, follower.id, device.id)
    return Feed(
        producer,
        follower,
        [s.id for s in newest_first],
        {newest_first[i].id for i in positions_on},
    )


async def _position(
    session: AsyncSession, signal_id: uuid.UUID, subscription_id: uuid.UUID, user_id: uuid.UUID, device_id: uuid.UUID
) -> None:
    approval = approval_row(signal_id, subscription_id, user_id, ApprovalStatus.APPROVED)
    session.add(approval)
    await session.flush()
    delivery = Delivery(
        id=uuid.uuid4(),
        approval_id=approval.id,
        signal_id=signal_id,
        device_id=device_id,
        instrument="XAUUSD",
        side=Side.BUY,
        volume=Decimal("0.10"),
        expire_time=datetime.now(UTC),
        state=DeliveryState.FILLED,
    )
    session.add(delivery)
    await session.flush()
    session.add(
        Position(
            device_id=device_id,
            signal_id=signal_id,
            delivery_id=delivery.id,
            instrument="XAUUSD",
            signal_instrument="XAUUSD",
            side=Side.BUY,
            volume=Decimal("0.10"),
            entry_price=Decimal("2030"),
            broker_ticket="1",
            status=PositionStatus.OPEN,
        )
    )


@asynccontextmanager
async def statements_of(session: AsyncSession) -> AsyncIterator[list[tuple[str, tuple[Any, ...]]]]:
    """Every statement ``session``'s connection sends while inside, with its parameters."""
    seen: list[tuple[str, tuple[Any, ...]]] = []
    connection = (await session.connection()).sync_connection
    assert connection is not None

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        seen.append((statement, tuple(parameters or ())))

    event.listen(connection, "before_cursor_execute", capture)
    try:
        yield seen
    finally:
        event.remove(connection, "before_cursor_execute", capture)


async def every_page(
    session: AsyncSession, caller: Caller, producer_id: uuid.UUID, size: int
) -> tuple[list[signals.SignalView], list[int]]:
    """All the caller's signals of the producer, page by page, and the statements each page took."""
    views: list[signals.SignalView] = []
    statements: list[int] = []
    token = ""
    while True:
        async with statements_of(session) as seen:
            page, token = await signals.list_signals(
                session, caller, producer_id=producer_id, status=None, page_size=size, page_token=token
            )
        views.extend(page)
        statements.append(len(seen))
        if not token:
            return views, statements


async def test_a_page_is_one_statement_that_shows_each_signal_as_its_caller_may_see_it(res: Resources) -> None:
    feed = await make_feed(res, 7, positions_on=(1, 4))
    admin = await make_user(res, Role.ADMIN)
    async with res.sessions() as session:
        views, statements = await every_page(session, feed.follower.caller, feed.producer.id, 3)
        assert statements == [1, 1, 1]  # a page of 3, of 3, then of 1: never a statement per signal
        assert [v.signal.id for v in views] == feed.signal_ids
        assert {v.signal.id for v in views if v.show_levels} == feed.with_positions
        assert not any(v.show_payload for v in views)
        everything, statements = await every_page(session, admin.caller, feed.producer.id, 5)
        assert statements == [1, 1]
        assert [v.signal.id for v in everything] == feed.signal_ids
        assert all(v.show_levels and v.show_payload for v in everything)


async def test_signals_created_at_one_instant_are_each_listed_once(res: Resources) -> None:
    feed = await make_feed(res, 5, positions_on=(0,), same_time=True)
    async with res.sessions() as session:
        views, _ = await every_page(session, feed.follower.caller, feed.producer.id, 2)
    assert [v.signal.id for v in views] == feed.signal_ids


async def test_the_page_is_read_in_the_order_of_the_index_without_a_sort(res: Resources) -> None:
    """The plan of each page's statement, first and later pages, for a user and for an admin. A scan of the
    whole table is ruled out for the planner: on a test database it would pick one for a table this small,
    where production has millions of rows; what is asked is whether the index can give the order at all."""
    feed = await make_feed(res, 4, positions_on=(0,))
    admin = await make_user(res, Role.ADMIN)
    plans: list[str] = []
    async with res.sessions() as session:
        for caller in (feed.follower.caller, admin.caller):
            token = ""
            for _ in range(2):
                async with statements_of(session) as seen:
                    _, token = await signals.list_signals(
                        session, caller, producer_id=None, status=None, page_size=1, page_token=token
                    )
                [(statement, parameters)] = seen
                plans.append(await _plan(res, statement, parameters))
    for plan in plans:
        assert "Index Scan Backward using ix_signals_created_at_id on signals" in plan, plan
        assert "Sort" not in plan, plan
    assert "Index Cond: (ROW(created_at, id) < ROW(" in plans[1], plans[1]  # a later page seeks to its place


async def _plan(res: Resources, statement: str, parameters: tuple[Any, ...]) -> str:
    dsn = make_url(res.settings.database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("SET enable_seqscan = off")
        rows = await connection.fetch("EXPLAIN (COSTS OFF) " + statement, *parameters)
    finally:
        await connection.close()
    return "\n".join(row[0] for row in rows)
