"""Quote to CloseOrder: how long from a producer's SubmitQuotes to the CloseOrder reaching the device
whose position the quote crossed, with 10 and with 10,000 positions open on the instrument. The monitor
keeps each instrument's levels ordered, so the second figure should be about the first.

Positions are written straight into the database (as the fills of many signals would have left them):
the background ones with levels far from the price, and rounds of ten targets on a connected simulated
bridge, each with its stop one step below the last. The worker is told of them (the monitor's Redis
stream) and given a moment to load them; then each quote, a little lower each time, crosses exactly one
target's stop, and the next quote waits until that target's CloseOrder has arrived. On this 2-core
machine most of the time is the pipeline around the monitor (the signed SubmitQuotes and its commit,
the wake-up hint, the gateway's claim and push), the same for both sizes."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from sqlalchemy import insert

from backoffice import models
from backoffice.platform import db, hints
from backoffice.producer import ProducerClient
from backoffice.producer.messages import make_quote

from .report import ms, percentile

if TYPE_CHECKING:
    from .scenarios import Run  # which imports this module

TARGETS_PER_ROUND = 10
STEP = Decimal("0.10")  # between one target's stop and the next
START = Decimal("2000.00")
LOAD_SECONDS = 3.0  # the monitor's sweep (2 s by default) has loaded them by then, hint or no hint
# After writing thousands of rows at once: the monitor's sweeps read recent changes again for a while
# (its overlap, 10 s); the figure is for a monitor at rest with that many positions, not one loading them.
SETTLE_SECONDS = 12.0
FAR = (Decimal(1000), Decimal(3000))  # background stop and target: no quote here comes near


class Positions:
    """Writes open positions for one device of the run, as fills of signals of one producer would."""

    def __init__(self, run: Run, user_id: str, device_id: str, producer_id: str) -> None:
        self.engine = db.create_engine(run.stack.settings, pool_size=2)
        self.sessions = db.session_factory(self.engine)
        self.redis = Redis.from_url(run.stack.settings.redis_url)
        self.user_id, self.device_id, self.producer_id = (
            uuid.UUID(user_id),
            uuid.UUID(device_id),
            uuid.UUID(producer_id),
        )
        self.subscription_id = uuid.uuid4()

    async def open(self) -> None:
        async with self.sessions.begin() as session:
            await session.execute(
                insert(models.Subscription).values(
                    id=self.subscription_id,
                    user_id=self.user_id,
                    producer_id=self.producer_id,
                    mode=models.SubscriptionMode.MANUAL,
                    sizing_mode=models.SizingMode.FIXED_VOLUME,
                    sizing_value=Decimal("0.01"),
                    status=models.SubscriptionStatus.ACTIVE,
                )
            )

    async def close(self) -> None:
        await self.redis.aclose()
        await self.engine.dispose()

    async def add(
        self, instrument: str, stops: Sequence[Decimal], target: Decimal | None = None, *, device_id: str | None = None
    ) -> list[str]:
        """One BUY position per stop (entry at the start price), each from a signal, approval and filled
        delivery of its own, on the book's device or on ``device_id`` (another of the same user's); the
        monitor is hinted. Returns their ids."""
        now = datetime.now(UTC)
        device = self.device_id if device_id is None else uuid.UUID(device_id)
        signals, approvals, deliveries, positions = [], [], [], []
        for stop in stops:
            signal_id, approval_id, delivery_id, position_id = (uuid.uuid4() for _ in range(4))
            signals.append(_signal(signal_id, self.producer_id, instrument, now))
            approvals.append(_approval(approval_id, signal_id, self.subscription_id, self.user_id, now))
            deliveries.append(_delivery(delivery_id, approval_id, signal_id, device, instrument, now))
            positions.append(_position(position_id, signal_id, delivery_id, device, instrument, stop, target))
        async with self.sessions.begin() as session:
            for model, rows in (
                (models.Signal, signals),
                (models.Approval, approvals),
                (models.Delivery, deliveries),
                (models.Position, positions),
            ):
                for start in range(0, len(rows), 2000):
                    await session.execute(insert(model), rows[start : start + 2000])
        ids = [str(p["id"]) for p in positions]
        if len(ids) <= 1000:  # a big batch is left to the sweep: one hint would be a very long entry
            await hints.publish_monitor(self.redis, [hints.positions_entry([uuid.UUID(i) for i in ids])])
        return ids


def _signal(signal_id: uuid.UUID, producer_id: uuid.UUID, instrument: str, now: datetime) -> dict[str, Any]:
    return {
        "id": signal_id,
        "producer_id": producer_id,
        "instrument": instrument,
        "side": models.Side.BUY,
        "signal_time": now,
        "expire_time": now + timedelta(seconds=60),
        "status": models.SignalStatus.OPEN,
    }


def _approval(
    approval_id: uuid.UUID, signal_id: uuid.UUID, subscription_id: uuid.UUID, user_id: uuid.UUID, now: datetime
) -> dict[str, Any]:
    return {
        "id": approval_id,
        "signal_id": signal_id,
        "subscription_id": subscription_id,
        "user_id": user_id,
        "status": models.ApprovalStatus.APPROVED,
        "decided_at": now,
    }


def _delivery(
    delivery_id: uuid.UUID,
    approval_id: uuid.UUID,
    signal_id: uuid.UUID,
    device_id: uuid.UUID,
    instrument: str,
    now: datetime,
) -> dict[str, Any]:
    return {
        "id": delivery_id,
        "approval_id": approval_id,
        "signal_id": signal_id,
        "device_id": device_id,
        "instrument": instrument,
        "side": models.Side.BUY,
        "volume": Decimal("0.01"),
        "expire_time": now + timedelta(seconds=60),
        "state": models.DeliveryState.FILLED,
    }


def _position(
    position_id: uuid.UUID,
    signal_id: uuid.UUID,
    delivery_id: uuid.UUID,
    device_id: uuid.UUID,
    instrument: str,
    stop: Decimal,
    target: Decimal | None,
) -> dict[str, Any]:
    return {
        "id": position_id,
        "device_id": device_id,
        "signal_id": signal_id,
        "delivery_id": delivery_id,
        "instrument": instrument,
        "signal_instrument": instrument,
        "side": models.Side.BUY,
        "volume": Decimal("0.01"),
        "entry_price": START,
        "stop_loss": stop,
        "take_profit": target,
        "broker_ticket": str(position_id.int % 10**9),
        "status": models.PositionStatus.OPEN,
    }


async def _latencies(run: Run, book: Positions, producer: ProducerClient, open_count: int, rounds: int) -> list[float]:
    """``open_count`` positions open on a fresh instrument (the rest far from the price), then ``rounds``
    of ten targets, each crossed by one quote; the seconds from each quote's call to its CloseOrder."""
    instrument = f"BQ{open_count}{uuid.uuid4().hex[:6].upper()}"
    background = max(0, open_count - TARGETS_PER_ROUND)
    if background:
        await book.add(instrument, [FAR[0]] * background, FAR[1])
        await asyncio.sleep(SETTLE_SECONDS if background > 1000 else LOAD_SECONDS)
    price, found = START, []
    for _ in range(rounds):
        stops = [price - STEP * k for k in range(1, TARGETS_PER_ROUND + 1)]
        targets = await book.add(instrument, stops)
        await asyncio.sleep(LOAD_SECONDS)
        for stop, position_id in zip(stops, targets, strict=True):
            bid = stop - Decimal("0.01")
            began = time.time()
            await producer.submit_quotes([make_quote(instrument, bid, bid + Decimal("0.02"))])
            deadline = time.monotonic() + run.options.wait_seconds
            arrived: dict[str, float] = {}
            while position_id not in arrived and time.monotonic() < deadline:
                await asyncio.sleep(0.002)
                arrived = await run.load.closes([position_id])
            if position_id in arrived:
                found.append(arrived[position_id] - began)
            else:
                run.report.note(
                    f"quote to close: no CloseOrder for a crossed position within {run.options.wait_seconds:g} s"
                )
            price = bid
    return found


async def quote_to_close(run: Run) -> None:
    """Quote-to-CloseOrder latency with 10 and with 10,000 positions open on the instrument, p50 and p99,
    and the ratio of the two medians. Needs the worker this run started (the monitor lives there)."""
    if run.stack.worker_pid is None:
        run.report.note("quote to close: skipped (no worker started by this run, so no monitor to measure)")
        return
    account = run.world.accounts[0]
    book = Positions(run, account.user_id, account.devices[0], run.world.idle[0])
    rounds = 1 if run.options.quick else 5
    medians = {}
    try:
        await book.open()
        for open_count in (10, 10_000):
            where = (
                f"{open_count} positions open on the instrument, {rounds * TARGETS_PER_ROUND} quotes each crossing one"
            )
            latencies = await _latencies(run, book, run.api.idle, open_count, rounds)
            medians[open_count] = percentile(latencies, 50)
            run.report.add(f"quote_to_close_order_{open_count}_p50", ms(medians[open_count]), "ms", where)
            run.report.add(f"quote_to_close_order_{open_count}_p99", ms(percentile(latencies, 99)), "ms", where)
    finally:
        await book.close()
    small, large = medians.get(10), medians.get(10_000)
    if small and large:
        run.report.add(
            "quote_to_close_order_10000_over_10",
            large / small,
            "x",
            "p50 with 10,000 open over p50 with 10",
            at_most=1.5,
        )
