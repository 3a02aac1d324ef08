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

from sqlalchemy import and_, func, or_, select
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
from gateway.bridge.orders import INTERRUPTED_CLOSING, INTERRUPTED_PLACING
from tests.conftest import KeyCredentials
from tests.reliability.bridges import BridgeHost
from tests.reliability.cluster import Cluster

# A producer that rides out every fault of the suite: retried for well over half a minute.
PATIENT = RetryPolicy(max_attempts=80, initial_backoff_seconds=0.1, max_backoff_seconds=0.5)
POLL = 0.1

SETTLE_WITHIN = 90.0  # a safety net for a hung test on a loaded machine, never a performance claim
DB_ERRORS = (SQLAlchemyError, OSError, TimeoutError)
UNANSWERED = (CloseCommandStatus.PENDING, CloseCommandStatus.SENT)
GRPC_CLIENT_INTERNAL = "Internal error from Core"  # what grpc's client reports for a status it lost
# A bridge killed after claiming an instruction and before its terminal made the trade honestly reports
# that it did not (gateway/bridge/orders.py: at most once, never executed again): a delivery is then
# REJECTED and a close command FAILED, and nothing was done at the broker (_check holds the book to it).
# Only a test that kills the bridges may see these.
DELIVERY_DONE = or_(
    Delivery.state == DeliveryState.FILLED,
    and_(Delivery.state == DeliveryState.REJECTED, Delivery.state_reason == INTERRUPTED_PLACING),
)


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
        """Cancel each signal once every one of its deliveries is done and their positions are open (that
        queues their close commands)."""
        while True:
            await asyncio.sleep(0.2)
            try:
                ready = await self._ready_to_cancel()
            except DB_ERRORS:
                continue  # the test's own view of the database is down too; look again later
            for signal_id in ready - self.cancelled:
                self.cancelled.add(signal_id)
                self._call(self._cancel(signal_id))

    async def _ready_to_cancel(self) -> set[str]:
        """This producer's OPEN signals whose every delivery is done, each filled one with its position."""
        async with self.res.sessions() as session:
            rows = await session.execute(
                select(Delivery.signal_id)
                .join(Signal, Signal.id == Delivery.signal_id)
                .outerjoin(Position, Position.delivery_id == Delivery.id)
                .where(Signal.producer_id == self.producer.id, Signal.status == SignalStatus.OPEN)
                .group_by(Delivery.signal_id)
                .having(
                    func.count() == self.devices,
                    func.bool_and(DELIVERY_DONE),
                    func.count(Position.id) == func.count().filter(Delivery.state == DeliveryState.FILLED),
                )
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


async def backlog(res: Resources, before: datetime) -> list[str]:
    """Deliveries and close commands created before ``before`` that are not yet done, one line each (what a
    timed-out wait shows)."""
    async with res.sessions() as session:
        deliveries = await session.execute(
            select(Delivery.id, Delivery.state, Delivery.state_reason, Delivery.attempt, Delivery.sent_at).where(
                Delivery.created_at < before, ~DELIVERY_DONE
            )
        )
        commands = await session.execute(
            select(CloseCommand.id, CloseCommand.status, CloseCommand.attempt, CloseCommand.sent_at).where(
                CloseCommand.created_at < before, CloseCommand.status.in_(UNANSWERED)
            )
        )
        return [
            *(
                f"delivery {r.id} {r.state.value} ({r.state_reason}) attempt {r.attempt} sent {r.sent_at}"
                for r in deliveries
            ),
            *(f"close command {r.id} {r.status.value} attempt {r.attempt} sent {r.sent_at}" for r in commands),
        ]


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

        left: list[str] = []

        async def caught_up() -> bool:
            left[:] = await backlog(self.res, fault_ended)
            return not left

        try:
            await wait_for(caught_up, f"the backlog from before the end of '{fault}'", within)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; left: {left[:10]}") from None
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
        self,
        restarted: frozenset[str] = frozenset(),
        *,
        corrupted: bool = False,
        bridges_killed: bool = False,
        within: float = SETTLE_WITHIN,
    ) -> None:
        """Stop the load, let everything finish, then check that nothing was lost or done twice.
        ``restarted``: the processes the test killed and started again; ``corrupted``: bytes were damaged
        in flight (a sealed instruction may then be refused, and an ack overtaken by a later stage);
        ``bridges_killed``: the bridges were killed mid-work (an instruction may then end interrupted)."""
        await self.load.stop_submitting()
        left: list[str] = []

        async def settled() -> bool:
            left[:] = await self._unsettled()
            return not left

        try:
            await wait_for(settled, "every delivery done, every position closed and every report receipted", within)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; left: {left}") from None
        await self._check(restarted, corrupted, bridges_killed)

    async def _unsettled(self) -> list[str]:
        """What is not finished yet, by kind (empty when everything is)."""
        async with self.res.sessions() as session:
            open_signals = await session.scalar(
                select(func.count()).where(
                    Signal.producer_id == self.load.producer.id, Signal.status != SignalStatus.CANCELLED
                )
            )
            unfinished = await session.scalar(select(func.count()).where(~DELIVERY_DONE))
            failed = select(CloseCommand.position_id).where(CloseCommand.status == CloseCommandStatus.FAILED)
            open_positions = (
                await session.execute(
                    select(Position.id, Position.status, CloseCommand.status, CloseCommand.attempt, CloseCommand.error)
                    .outerjoin(CloseCommand, CloseCommand.position_id == Position.id)
                    .where(Position.status != PositionStatus.CLOSED, Position.id.not_in(failed))
                )
            ).all()
            open_commands = await session.scalar(select(func.count()).where(CloseCommand.status.in_(UNANSWERED)))
            expiring = await session.scalar(
                select(func.count()).where(
                    Signal.producer_id == self.load.idle_producer.id, Signal.status != SignalStatus.EXPIRED
                )
            )
        counts = {
            "signals not cancelled": open_signals,
            "deliveries not done": unfinished,
            "positions open": len(open_positions),
            "close commands unanswered": open_commands,
            "signals not expired": expiring,
            "calls in flight": len(self.load._calls),
            "reports not receipted": self.bridges.unreceipted(),
        }
        return [f"{n} {what}" for what, n in counts.items() if n] + [
            f"position {r[0]} {r[1].value}, close {r[2:]}" for r in open_positions[:5]
        ]

    async def _check(self, restarted: set[str], corrupted: bool, bridges_killed: bool) -> None:
        """Every delivery of every signal executed exactly once and filled (or, where a killed bridge was
        interrupted, never executed and reported so), every ack, fill and close result recorded once, one
        close per position, every report receipted, every server healthy."""
        async with self.res.sessions() as session:
            signals = set(
                (await session.scalars(select(Signal.id).where(Signal.producer_id == self.load.producer.id))).all()
            )
            deliveries = (await session.execute(select(Delivery.id, Delivery.signal_id, Delivery.device_id))).all()
            interrupted = {
                str(i)
                for i in await session.scalars(
                    select(Delivery.id).where(
                        Delivery.state == DeliveryState.REJECTED, Delivery.state_reason == INTERRUPTED_PLACING
                    )
                )
            }
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
        assert bridges_killed or not interrupted, f"deliveries interrupted with no bridge killed: {interrupted}"
        delivery_ids = {str(r.id) for r in deliveries} - interrupted
        orders = self.bridges.orders()
        assert not interrupted & set(orders), "a delivery reported interrupted was executed at the broker"
        assert set(orders) == delivery_ids, "a delivery was never executed (or an unknown one was)"
        twice = {d: n for d, n in orders.items() if n != 1}
        assert not twice, f"deliveries executed more than once at the broker: {twice}"
        book = self.bridges.book()
        assert len(fills) == len(delivery_ids), "a fill was lost: a filled delivery has no position"
        for delivery_id, ticket, price, _ in fills:
            assert book[str(delivery_id)][0] == ticket, "the recorded fill is not the broker's"
            assert float(book[str(delivery_id)][1]) == float(price), "the recorded fill price is not the broker's"
        for delivery_id in interrupted:
            assert events[(delivery_id, EventKind.ACK, "REJECTED")] == 1, (
                f"{delivery_id}: interrupted, not recorded once"
            )
            assert not events[(delivery_id, EventKind.FILL, "FILLED")], f"{delivery_id}: interrupted, and filled"
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
        assert set(closes) == succeeded, (
            "a close result was lost (or an unknown close made): "
            f"closed at the broker only {set(closes) - succeeded}, succeeded only {succeeded - set(closes)}"
        )
        assert set(failed.values()) <= ({INTERRUPTED_CLOSING} if bridges_killed else set()), f"closes failed: {failed}"
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
            answered = [
                line
                for line in self.bridges.log_path.read_text().splitlines()
                # grpc's client says INTERNAL "Internal error from Core" itself when the server ends a stream
                # while the client is still writing (the server's own status is lost): not an answer.
                if '"code": "INTERNAL"' in line and GRPC_CLIENT_INTERNAL not in line
            ]
            assert not answered, f"a bridge was answered INTERNAL: {answered[0]}"
        self.report.add(
            "totals",
            signals=len(signals),
            deliveries=len(delivery_ids),
            closes=len(closes),
            deliveries_interrupted=len(interrupted),
            closes_interrupted=len(failed),
            bridge_sessions=self.bridges.total("sessions"),
            repeated_instructions=self.bridges.total("repeated"),
            frames_resent=self.bridges.total("frames_resent"),
            error_lines={name: len(lines) for name, lines in errors.items()},
        )
