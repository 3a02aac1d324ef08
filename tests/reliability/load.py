"""Steady traffic through the public APIs, and what must hold once a fault is over.

A producer submits AUTO signals at a steady rate; each becomes one delivery per device, which the bridge
acks, executes on its broker and fills, opening a position. Once every position of a signal is open the
signal is cancelled with close_positions, which queues one close command per position; the bridge closes
it and reports the result, which closes the position. A second producer, followed by nobody, submits signals that expire
within a second, for the worker to mark EXPIRED.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from backoffice.bootstrap import Resources
from backoffice.models import (
    CloseCommand,
    CloseCommandStatus,
    Delivery,
    DeliveryState,
    EventKind,
    ExecutionEvent,
    Position,
    PositionStatus,
    Signal,
    SignalStatus,
)
from backoffice.producer import ProducerClient, RetryPolicy
from backoffice.producer.client import ProducerCallError
from tests.conftest import KeyCredentials
from tests.reliability.bridges import BridgeHost
from tests.reliability.cluster import Cluster

# A producer that rides out every fault of the suite: retried for well over half a minute.
PATIENT = RetryPolicy(max_attempts=80, initial_backoff_seconds=0.1, max_backoff_seconds=0.5)
POLL = 0.1

# A close command pushed into a session that is already dying, after the device's new session connected
# elsewhere, keeps sent_at later than that connect; deliveries.claim re-sends a SENT close command only
# to a session that connected after it was sent, so it waits for the next reconnect. The positions branch
# re-sends close commands after the ack timeout, which should close this; until then it is xfail.
STRANDED_CLOSE = pytest.mark.xfail(
    strict=False, reason="a close command sent to a dying session can stay SENT until the next reconnect"
)
SETTLE_WITHIN = 90.0  # a safety net for a hung test on a loaded machine, never a performance claim
DB_ERRORS = (SQLAlchemyError, OSError, TimeoutError)
UNANSWERED = (CloseCommandStatus.PENDING, CloseCommandStatus.SENT)
# A bridge killed after claiming a close and before its terminal made it honestly reports a failure
# (gateway/bridge/orders.py); the position then stays open, and nothing was closed at the broker.
INTERRUPTED = "interrupted: the bridge stopped before the terminal closed"


@dataclass
class Load:
    """Submits, cancels and expires signals until ``stop``; every call is retried until it gets an answer."""

    backoffice: str
    producer: KeyCredentials
    idle_producer: KeyCredentials
    res: Resources
    devices: int
    rate: float = 4.0  # signals per second, each one delivery per device
    submitted: dict[str, float] = field(default_factory=dict)  # signal id -> when its submit returned
    expiring: list[str] = field(default_factory=list)  # the idle producer's signals
    cancelled: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)  # calls that failed for good
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _calls: set[asyncio.Task[None]] = field(default_factory=set)
    _submitting: bool = True

    async def __aenter__(self) -> Load:
        self._client = ProducerClient(self.backoffice, self.producer.id, self.producer.secret, retry=PATIENT)
        self._idle = ProducerClient(self.backoffice, self.idle_producer.id, self.idle_producer.secret, retry=PATIENT)
        self._tasks = [asyncio.create_task(self._submit_loop()), asyncio.create_task(self._cancel_loop())]
        return self

    async def __aexit__(self, *_: object) -> None:
        for task in [*self._tasks, *self._calls]:
            task.cancel()
        for task in [*self._tasks, *self._calls]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._client.close()
        await self._idle.close()

    def _call(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _submit_loop(self) -> None:
        n = 0
        while self._submitting:
            n += 1
            if len(self._calls) < 50:  # bounded: a long outage holds at most this many calls in flight
                self._call(self._submit(n))
                if n % 4 == 0:
                    self._call(self._submit_expiring())
            await asyncio.sleep(1 / self.rate)

    async def _submit(self, n: int) -> None:
        try:
            signal = await self._client.submit_signal(
                "XAUUSD", "buy" if n % 2 else "sell", expire_time=timedelta(minutes=10)
            )
        except ProducerCallError as exc:
            self.failures.append(f"SubmitSignal: {exc}")
            return
        self.submitted[signal.id] = time.monotonic()

    async def _submit_expiring(self) -> None:
        try:
            signal = await self._idle.submit_signal("EURUSD", "buy", expire_time=timedelta(seconds=1))
        except ProducerCallError as exc:
            self.failures.append(f"SubmitSignal (expiring): {exc}")
            return
        self.expiring.append(signal.id)

    async def _cancel_loop(self) -> None:
        """Cancel each signal once every one of its positions is open (that queues their close commands)."""
        while True:
            await asyncio.sleep(0.2)
            try:
                ready = await self._fully_open()
            except DB_ERRORS:
                continue  # the test's own view of the database is down too; look again later
            for signal_id in ready - self.cancelled:
                self.cancelled.add(signal_id)
                self._call(self._cancel(signal_id))

    async def _fully_open(self) -> set[str]:
        async with self.res.sessions() as session:
            rows = await session.execute(
                select(Position.signal_id)
                .join(Signal, Signal.id == Position.signal_id)
                .where(Signal.producer_id == self.producer.id, Signal.status == SignalStatus.OPEN)
                .group_by(Position.signal_id)
                .having(func.count() == self.devices)
            )
            return {str(r[0]) for r in rows}

    async def _cancel(self, signal_id: str) -> None:
        request_id = uuid.uuid5(uuid.NAMESPACE_URL, f"cancel:{signal_id}")  # the same on every try
        try:
            await self._client.cancel_signal(
                signal_id, "reliability suite", request_id=request_id, close_positions=True
            )
        except ProducerCallError as exc:
            self.failures.append(f"CancelSignal: {exc}")

    async def stop_submitting(self) -> None:
        """No new signals; the calls in flight finish (each retries until it has an answer)."""
        self._submitting = False
        submits = [t for t in self._calls if not t.done()]
        if submits:
            await asyncio.wait(submits, timeout=SETTLE_WITHIN)


async def wait_for(check: Any, what: str, within: float = SETTLE_WITHIN) -> float:
    """Poll ``check`` (an async predicate; a database error counts as not yet) and return how long it
    took. ``within`` is a safety net for a hung test, never a performance claim."""
    started = time.monotonic()
    while True:
        with contextlib.suppress(*DB_ERRORS):
            if await check():
                return time.monotonic() - started
        if time.monotonic() - started > within:
            raise AssertionError(f"timed out after {within:.0f} s waiting for {what}")
        await asyncio.sleep(POLL)


async def backlog(res: Resources, before: datetime) -> int:
    """Deliveries and close commands created before ``before`` that are not yet done."""
    async with res.sessions() as session:
        deliveries = await session.scalar(
            select(func.count()).where(Delivery.created_at < before, Delivery.state != DeliveryState.FILLED)
        )
        commands = await session.scalar(
            select(func.count()).where(CloseCommand.created_at < before, CloseCommand.status.in_(UNANSWERED))
        )
    return int(deliveries or 0) + int(commands or 0)


@dataclass
class Report:
    """How long recovery took, per fault: printed, and written as JSON into the test's directory."""

    path: Path
    entries: list[dict[str, Any]] = field(default_factory=list)

    def add(self, fault: str, **figures: Any) -> None:
        entry = {"fault": fault, **{k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}}
        self.entries.append(entry)
        print(f"recovery: {json.dumps(entry)}")
        self.path.write_text(json.dumps(self.entries, indent=2))


@dataclass(frozen=True)
class World:
    """Everything one fault test owns."""

    res: Resources
    cluster: Cluster
    bridges: BridgeHost
    load: Load
    report: Report
    devices: list[uuid.UUID]

    async def recovered_after(
        self, fault: str, fault_ended: datetime, *, within: float = SETTLE_WITHIN, **figures: Any
    ) -> float:
        """Wait until everything created before the fault ended is done (every delivery filled, every close
        command succeeded) and report how long that took from then."""
        start = time.monotonic() - (datetime.now(UTC) - fault_ended).total_seconds()

        async def caught_up() -> bool:
            return await backlog(self.res, fault_ended) == 0

        await wait_for(caught_up, f"the backlog from before the end of '{fault}'", within)
        took = time.monotonic() - start
        self.report.add(fault, recovered_s=took, **figures)
        return took

    async def overdue_signals(self, at: datetime) -> list[uuid.UUID]:
        """The idle producer's signals past their expiry at ``at`` that no worker has marked EXPIRED yet."""
        async with self.res.sessions() as session:
            query = select(Signal.id).where(
                Signal.producer_id == self.load.idle_producer.id,
                Signal.status == SignalStatus.OPEN,
                Signal.expire_time <= at,
            )
            return list((await session.scalars(query)).all())

    async def settle_and_check(
        self, restarted: frozenset[str] = frozenset(), *, corrupted: bool = False, within: float = SETTLE_WITHIN
    ) -> None:
        """Stop the load, let everything finish, then check that nothing was lost or done twice.
        ``restarted``: the processes the test killed and started again; ``corrupted``: bytes were damaged
        in flight (a sealed instruction may then be refused, and an ack overtaken by a later stage)."""
        await self.load.stop_submitting()
        await wait_for(self._settled, "every delivery filled, every position closed and every report receipted", within)
        await self._check(restarted, corrupted)

    async def _settled(self) -> bool:
        async with self.res.sessions() as session:
            open_signals = await session.scalar(
                select(func.count()).where(
                    Signal.producer_id == self.load.producer.id, Signal.status != SignalStatus.CANCELLED
                )
            )
            unfinished = await session.scalar(
                select(func.count()).where(
                    Delivery.state != DeliveryState.FILLED,
                )
            )
            failed = select(CloseCommand.position_id).where(CloseCommand.status == CloseCommandStatus.FAILED)
            open_positions = await session.scalar(
                select(func.count()).where(Position.status != PositionStatus.CLOSED, Position.id.not_in(failed))
            )
            open_commands = await session.scalar(select(func.count()).where(CloseCommand.status.in_(UNANSWERED)))
            expiring = await session.scalar(
                select(func.count()).where(
                    Signal.producer_id == self.load.idle_producer.id, Signal.status != SignalStatus.EXPIRED
                )
            )
        counts = (open_signals, unfinished, open_positions, open_commands, expiring)
        return not any(counts) and not self.load._calls and self.bridges.unreceipted() == 0

    async def _check(self, restarted: set[str], corrupted: bool) -> None:
        """Every delivery of every signal executed exactly once and filled, every ack, fill and close result
        recorded once, one close per position, every report receipted, every server healthy."""
        async with self.res.sessions() as session:
            signals = set(
                (await session.scalars(select(Signal.id).where(Signal.producer_id == self.load.producer.id))).all()
            )
            deliveries = (await session.execute(select(Delivery.id, Delivery.signal_id, Delivery.device_id))).all()
            fills = (
                await session.execute(
                    select(Delivery.id, Position.broker_ticket, Position.entry_price, Position.id).join(
                        Position, Position.delivery_id == Delivery.id
                    )
                )
            ).all()
            events = Counter(
                (str(r.delivery_id or r.close_command_id), r.kind, r.stage)
                for r in (
                    await session.execute(
                        select(
                            ExecutionEvent.delivery_id,
                            ExecutionEvent.close_command_id,
                            ExecutionEvent.kind,
                            ExecutionEvent.stage,
                        ).where(ExecutionEvent.kind.in_([EventKind.ACK, EventKind.FILL, EventKind.CLOSE_RESULT]))
                    )
                ).all()
            )
            commands = (
                await session.execute(select(CloseCommand.id, CloseCommand.position_id, CloseCommand.status))
            ).all()
            failed = {
                str(r.id): r.error
                for r in await session.execute(
                    select(CloseCommand.id, CloseCommand.error).where(CloseCommand.status == CloseCommandStatus.FAILED)
                )
            }
        assert not self.load.failures, f"calls failed for good: {self.load.failures[:5]}"
        assert {uuid.UUID(s) for s in self.load.submitted} <= signals, "a signal the producer was told of is gone"
        assert len(signals) >= 10, f"too little load to prove anything ({len(signals)} signals)"
        pairs = Counter((r.signal_id, r.device_id) for r in deliveries)
        assert set(pairs) == {(s, d) for s in signals for d in self.devices}, "a signal missed a device"
        assert set(pairs.values()) == {1}, "a signal was delivered twice to one device"
        delivery_ids = {str(r.id) for r in deliveries}
        orders = self.bridges.orders()
        assert set(orders) == delivery_ids, "a delivery was never executed (or an unknown one was)"
        twice = {d: n for d, n in orders.items() if n != 1}
        assert not twice, f"deliveries executed more than once at the broker: {twice}"
        book = self.bridges.book()
        assert len(fills) == len(delivery_ids), "a fill was lost: a filled delivery has no position"
        for delivery_id, ticket, price, _ in fills:
            assert book[str(delivery_id)][0] == ticket, "the recorded fill is not the broker's"
            assert float(book[str(delivery_id)][1]) == float(price), "the recorded fill price is not the broker's"
        for delivery_id in delivery_ids:
            assert events[(delivery_id, EventKind.FILL, "FILLED")] == 1, f"the fill of {delivery_id}: not recorded once"
            for stage in ("RECEIVED", "PLACED"):
                # An ack that arrives after a later stage (frames swapped in flight) is answered DUPLICATE and
                # leaves no event: it was not lost (its receipt came), only overtaken.
                recorded = events[(delivery_id, EventKind.ACK, stage)]
                assert recorded == 1 or (corrupted and recorded == 0), f"ACK {stage} of {delivery_id}: {recorded}"
        per_position = Counter(r.position_id for r in commands)
        assert set(per_position) == {r[3] for r in fills}, "a position was never closed"
        assert set(per_position.values()) == {1}, "a close command was doubled"
        closes = self.bridges.closes()
        succeeded = {str(r.id) for r in commands if r.status is CloseCommandStatus.SUCCEEDED}
        assert set(closes) == succeeded, "a close result was lost (or an unknown close made)"
        assert set(failed.values()) <= {INTERRUPTED}, f"closes failed: {set(failed.values())}"
        assert succeeded | set(failed) == {str(r.id) for r in commands}, "a close command was never answered"
        assert set(closes.values()) == {1}, "a position was closed more than once at the broker"
        for command_id in closes:
            assert events[(command_id, EventKind.CLOSE_RESULT, "SUCCEEDED")] == 1, "a close result not recorded once"
        assert self.bridges.total("receipts_rejected") == 0, "the gateway refused a bridge's report"
        if not corrupted:  # a sealed instruction damaged in flight does not open: refused, and sent again
            assert self.bridges.total("refused") == 0, "a bridge refused an instruction"
        healthy = await self.cluster.health()
        assert set(healthy.values()) <= {"SERVING", "RUNNING"}, healthy
        for name, process in self.cluster.processes.items():
            assert process.starts == (2 if name in restarted else 1), f"{name} was started {process.starts} times"
        errors = {name: p.errors() for name, p in self.cluster.processes.items()}
        internal = [line for lines in errors.values() for line in lines if '"unexpected failure"' in line]
        assert not internal, f"a client was answered INTERNAL: {internal[0][:2000]}"
        if not corrupted:  # damaged HTTP/2 framing is INTERNAL from grpc's own transport, not from a server
            assert '"code": "INTERNAL"' not in self.bridges.log_path.read_text(), "a bridge was answered INTERNAL"
        self.report.add(
            "totals",
            signals=len(signals),
            deliveries=len(delivery_ids),
            closes=len(closes),
            closes_interrupted=len(failed),
            bridge_sessions=self.bridges.total("sessions"),
            repeated_instructions=self.bridges.total("repeated"),
            frames_resent=self.bridges.total("frames_resent"),
            error_lines={name: len(lines) for name, lines in errors.items()},
        )
