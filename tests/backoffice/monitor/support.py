"""Running monitors in tests (real Postgres and Redis, a fast sweep), quotes through the signed
SubmitQuotes RPC, and what the monitor left behind."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import grpc
from sqlalchemy import select

from backoffice.bootstrap import Resources, open_redis
from backoffice.models import CloseCommand, PositionEvent, PositionEventKind
from backoffice.monitor import Monitor
from backoffice.platform.serving import cancel_and_wait
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import common_pb2
from tests.conftest import KeyCredentials, signed_call
from tests.gateway.support import eventually

SUBMIT_QUOTES = "/signalhub.v1.SignalService/SubmitQuotes"


@asynccontextmanager
async def monitoring(res: Resources, **overrides: Any) -> AsyncIterator[Monitor]:
    """A monitor of its own, loaded and following the stream (``redis_url`` may name a Redis that does not
    answer), stopped on the way out."""
    settings = dataclasses.replace(res.settings, **{"monitor_sweep_seconds": 0.2, **overrides})
    redis = open_redis(settings, block_seconds=settings.monitor_sweep_seconds)
    monitor = Monitor(res.sessions, redis, settings)
    stop = asyncio.Event()
    task = asyncio.create_task(monitor.run(stop))
    try:
        await eventually(monitor.ready.is_set, "the monitor to load")
        yield monitor
    finally:
        stop.set()
        await cancel_and_wait([task])
        await redis.aclose()


def held(monitor: Monitor, symbol: str) -> bool:
    """Whether a quote of ``symbol`` waits for confirmation. Only the test's own instrument counts: the
    monitor follows a Redis stream every server on that Redis writes to, other tests' jumps included."""
    return any(feed.instrument == symbol for feed in monitor.unconfirmed)


def instrument() -> str:
    """An instrument no other test quotes."""
    return "M" + uuid.uuid4().hex[:10].upper()


def quote(symbol: str, bid: str, ask: str | None = None, *, at: datetime | None = None) -> common_pb2.Quote:
    message = common_pb2.Quote(instrument=symbol, bid=bid, ask=ask or str(Decimal(bid) + Decimal("0.02")))
    message.quote_time.FromDatetime(at or datetime.now(UTC))
    return message


async def submit(channel: grpc.aio.Channel, producer: KeyCredentials, *quotes: common_pb2.Quote) -> None:
    await signed_call(channel, producer, SUBMIT_QUOTES, pb.SubmitQuotesRequest(quotes=quotes), pb.SubmitQuotesResponse)


async def commands(res: Resources, position_id: uuid.UUID) -> list[CloseCommand]:
    async with res.sessions() as session:
        query = select(CloseCommand).where(CloseCommand.position_id == position_id).order_by(CloseCommand.created_at)
        return list(await session.scalars(query))


async def position_events(res: Resources, position_id: uuid.UUID, kind: PositionEventKind) -> list[PositionEvent]:
    async with res.sessions() as session:
        query = select(PositionEvent).where(PositionEvent.position_id == position_id, PositionEvent.kind == kind)
        return list(await session.scalars(query.order_by(PositionEvent.seq)))
