"""What devices send: frames decoded into domain reports, applied by one writer shared by every stream of
the process, and answered with Receipts.

The writer groups the frames that are waiting (from any number of streams) into one transaction, so a
burst of acks costs a few commits rather than one each; a Receipt is only made after its frame is
committed. Each stream has at most one group in flight, so a device's frames apply in the order sent.
After each commit it tells the monitor (the worker) of the quotes stored and the positions changed, on
the Redis stream of ``backoffice.platform.hints``, and announces the alerts the batch raised.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from prometheus_client import Counter
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backoffice import alerts, deliveries, quotes
from backoffice.deliveries import DeviceReport, Outcome, Recorded, Verdict
from backoffice.models import ActorType, DeliveryState
from backoffice.platform import db, hints
from backoffice.platform.metrics import ACCOUNT_STATES, FRAMES, UPLINK_BATCH, UPLINK_COMMIT
from backoffice.platform.rpc_errors import build_status
from backoffice.platform.serving import cancel_and_wait
from signalhub.protocol.account_state import parse_account_state
from signalhub.protocol.errors import InvalidArgument, Unavailable
from signalhub.protocol.logs import request_id_var
from signalhub.protocol.wire import SYMBOL_RE, parse_decimal, parse_id, parse_timestamp
from signalhub.v1 import gateway_pb2 as pb

log = logging.getLogger("signalhub.gateway.uplink")


MAX_FRAME_ID = 128
MAX_TEXT = 1000  # reasons and errors are kept, cut to this length
MAX_TICKET = 64

# Deadlock, serialization failure, unique violation (another stream recorded the same frame meanwhile):
# the batch is retried, and the retry sees what the other transaction committed.
_RETRY_SQLSTATES = db.RACE_SQLSTATES | {"23505"}

_ACK_STAGES = {
    pb.ACK_STAGE_RECEIVED: DeliveryState.RECEIVED,
    pb.ACK_STAGE_PLACED: DeliveryState.PLACED,
    pb.ACK_STAGE_REJECTED: DeliveryState.REJECTED,
}
_RECEIPT_STATUS = {
    Verdict.ACCEPTED: pb.RECEIPT_STATUS_ACCEPTED,
    Verdict.DUPLICATE: pb.RECEIPT_STATUS_DUPLICATE,
    Verdict.REJECTED: pb.RECEIPT_STATUS_REJECTED,
}

_FRAME_COUNTERS: dict[tuple[str, Verdict], Counter] = {}
_ACCOUNT_STATE_COUNTERS: dict[Verdict, Counter] = {}

T = TypeVar("T")


class _Violations:
    """Collects every bad field of a frame, so one REJECTED receipt names them all."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def check(self, parse: Callable[[], T]) -> T | None:
        try:
            return parse()
        except InvalidArgument as exc:
            self.items.extend(exc.violations)
            return None

    def add(self, field_path: str, problem: str) -> None:
        self.items.append((field_path, problem))

    def raise_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)


def check_frame_id(frame: pb.DeviceFrame) -> None:
    if not 0 < len(frame.frame_id) <= MAX_FRAME_ID:
        raise InvalidArgument([("frame_id", f"1 to {MAX_FRAME_ID} characters, unique per device")])


def decode(device_id: uuid.UUID, frame: pb.DeviceFrame, not_after: datetime | None = None) -> DeviceReport:
    """A frame (other than Hello) as a domain report; InvalidArgument names every bad field. A quote or an
    account state dated after ``not_after`` (the server's clock plus the signature tolerance) is one."""
    check_frame_id(frame)
    bad = _Violations()
    report: deliveries.Report | None = None
    body = frame.WhichOneof("body")
    if body == "ack":
        ack = frame.ack
        delivery_id = bad.check(lambda: parse_id(ack.delivery_id, "ack.delivery_id"))
        stage = _ACK_STAGES.get(ack.stage)
        if stage is None:
            bad.add("ack.stage", "one of ACK_STAGE_RECEIVED, ACK_STAGE_PLACED, ACK_STAGE_REJECTED")
        bad.raise_any()
        assert delivery_id is not None and stage is not None
        report = deliveries.AckReport(delivery_id, stage, ack.reason[:MAX_TEXT])
    elif body == "fill":
        fill = frame.fill
        delivery_id = bad.check(lambda: parse_id(fill.delivery_id, "fill.delivery_id"))
        price = bad.check(lambda: parse_decimal(fill.price, "fill.price"))
        volume = bad.check(lambda: parse_decimal(fill.volume, "fill.volume"))
        if not 0 < len(fill.broker_ticket) <= MAX_TICKET:
            bad.add("fill.broker_ticket", f"1 to {MAX_TICKET} characters")
        fill_time = bad.check(lambda: parse_timestamp(fill.fill_time, fill.HasField("fill_time"), "fill.fill_time"))
        bad.raise_any()
        assert delivery_id is not None and price is not None and volume is not None
        report = deliveries.FillReport(delivery_id, fill.broker_ticket, price, volume, fill_time)
    elif body == "close_result":
        result = frame.close_result
        command_id = bad.check(lambda: parse_id(result.command_id, "close_result.command_id"))
        close_price = closed_volume = None
        if result.success:
            close_price = bad.check(lambda: parse_decimal(result.close_price, "close_result.close_price"))
            if result.closed_volume.strip():
                closed_volume = bad.check(lambda: parse_decimal(result.closed_volume, "close_result.closed_volume"))
        bad.raise_any()
        assert command_id is not None
        report = deliveries.CloseReport(command_id, result.success, close_price, closed_volume, result.error[:MAX_TEXT])
    elif body == "quote":
        report = deliveries.QuoteReport(
            quotes.parse_quote(
                frame.quote,
                "quote",
                instrument=SYMBOL_RE,
                source_type=ActorType.DEVICE,
                source_id=device_id,
                frame_id=frame.frame_id,
                not_after=not_after,
            )
        )
    elif body == "account_state":
        figures = parse_account_state(frame.account_state, "account_state", not_after)
        report = deliveries.AccountStateReport(
            figures.balance, figures.equity, figures.margin, figures.free_margin, figures.state_time
        )
    elif body == "heartbeat":
        beat = frame.heartbeat
        send_time = bad.check(
            lambda: parse_timestamp(beat.send_time, beat.HasField("send_time"), "heartbeat.send_time")
        )
        bad.raise_any()
        report = deliveries.HeartbeatReport(send_time)
    else:
        raise InvalidArgument(
            [("body", "one of hello, ack, fill, close_result, quote, heartbeat, account_state is required")]
        )
    return DeviceReport(device_id, frame.frame_id, report)


def receipt(frame: pb.DeviceFrame, outcome: Outcome) -> pb.GatewayFrame:
    """The Receipt of a frame, written in place in its GatewayFrame (no sub-message built and copied in),
    counted by a cached counter child (a labels() lookup per frame is a lock and a dict)."""
    kind = frame.WhichOneof("body") or "none"
    counter = _FRAME_COUNTERS.get((kind, outcome.verdict))
    if counter is None:
        counter = _FRAME_COUNTERS[(kind, outcome.verdict)] = FRAMES.labels(kind, outcome.verdict.value)
    counter.inc()
    if kind == "account_state":
        _account_state_counter(outcome.verdict).inc()
    answer = pb.GatewayFrame()
    answer.receipt.frame_id = frame.frame_id
    answer.receipt.status = _RECEIPT_STATUS[outcome.verdict]
    if outcome.error is not None:
        answer.receipt.error.CopyFrom(build_status(outcome.error, request_id_var.get())[1])
    return answer


def _account_state_counter(verdict: Verdict) -> Counter:
    counter = _ACCOUNT_STATE_COUNTERS.get(verdict)
    if counter is None:
        counter = _ACCOUNT_STATE_COUNTERS[verdict] = ACCOUNT_STATES.labels(verdict.value)
    return counter


@dataclass
class _Group:
    reports: list[DeviceReport]
    future: asyncio.Future[list[Outcome]] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class UplinkWriter:
    """Applies the frames of every stream of this process, grouped into shared transactions."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        redis: Redis | None = None,
        *,
        workers: int = 2,
        max_batch: int = 256,
    ) -> None:
        self._sessions = sessions
        self._redis = redis  # None: nobody to tell (the monitor's sweep still finds everything)
        self._workers = workers
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Group] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work(), name=f"uplink-writer-{i}") for i in range(self._workers)]

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        while not self._queue.empty():
            group = self._queue.get_nowait()
            if not group.future.done():
                group.future.set_exception(Unavailable("the gateway is stopping", reason="SERVER_SHUTTING_DOWN"))

    async def submit(self, reports: Sequence[DeviceReport]) -> list[Outcome]:
        """The outcome of each report, once all of them are committed."""
        if not reports:
            return []
        group = _Group(list(reports))
        self._queue.put_nowait(group)
        return await group.future

    async def _work(self) -> None:
        while True:
            groups = [await self._queue.get()]
            size = len(groups[0].reports)
            while size < self._max_batch and not self._queue.empty():
                group = self._queue.get_nowait()
                groups.append(group)
                size += len(group.reports)
            await self._apply(groups)

    async def _apply(self, groups: list[_Group]) -> None:
        live = [g for g in groups if not g.future.done()]  # a stream that ended stops waiting
        if not live:
            return
        try:
            recorded = await self._transaction([r for g in live for r in g.reports])
        except Exception as exc:
            if len(live) > 1:
                # Whatever broke, it must not take the other streams' frames with it: apply them apart.
                for group in live:
                    await self._apply([group])
                return
            if not live[0].future.done():
                live[0].future.set_exception(exc)
            return
        start = 0
        for group in live:
            end = start + len(group.reports)
            if not group.future.done():
                group.future.set_result(recorded.outcomes[start:end])
            start = end
        await self._announce(recorded)

    async def _announce(self, recorded: Recorded) -> None:
        """What the committed batch changed, for the monitor; the alerts it raised, for people."""
        alerts.announce(recorded.alerts)
        entries = [quotes.hint(q) for q in recorded.quotes]
        if recorded.position_ids:
            entries.append(hints.positions_entry(recorded.position_ids))
        if self._redis is not None:
            await hints.publish_monitor(self._redis, entries)
            if recorded.woken:  # close commands a risk limit queued: pushed now, not at the next sweep
                await hints.publish(self._redis, recorded.woken)
            if recorded.fills_queued:  # their commissions accrue now, not at the worker's next round
                await hints.ring_commissions(self._redis)

    async def _transaction(self, reports: list[DeviceReport]) -> Recorded:
        started = time.perf_counter()
        # Acks alone, or account states alone, in one statement; anything else in a transaction.
        recorded = await deliveries.record_alone(self._sessions, reports, datetime.now(UTC))
        if recorded is None:
            recorded = await db.retrying(
                self._sessions,
                lambda session: deliveries.record_reports(session, reports, datetime.now(UTC)),
                log=log,
                what="uplink batch",
                sqlstates=_RETRY_SQLSTATES,
            )
        UPLINK_COMMIT.observe(time.perf_counter() - started)
        UPLINK_BATCH.observe(len(reports))
        return recorded
