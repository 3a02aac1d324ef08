"""Instructions on their way to a device (deliveries and close commands), and what devices report back.

Used by the gateway; every function works inside the caller's transaction:

- ``claim``: what is due for some connected devices, oldest first, marked SENT (attempt + 1) with a SENT
  execution event. A delivery is due while it has no RECEIVED ack: when PENDING, when it was sent on an
  earlier stream (the device reconnected), or when the ack timeout passed. Nothing is sent after its
  ``expire_time``: it becomes EXPIRED, with an EXPIRED event. A close command is due while PENDING, or
  SENT on an earlier stream (it has no ack of its own; its CloseResult completes it).
- ``expire_due`` expires deliveries of devices that are not connected; ``due_devices`` names the devices
  with something due, for the gateway's periodic sweep (a lost wake-up hint costs latency, never data).
- ``record_reports``: a batch of device frames. Each one is kept as an immutable execution event and
  applied to its delivery, close command, position or quote, in the caller's one transaction; the caller
  commits before it answers any Receipt.

What a device may report about a delivery of its own (anything else answers REJECTED, and a delivery of
another device is NOT_FOUND, exactly like an unknown one):

- RECEIVED, PLACED and FILLED move a delivery forward from PENDING, SENT or EXPIRED (the device's word
  beats the server's presumption that it never arrived: the bridge itself refuses to place late). A stage
  the delivery has already reached or passed is a DUPLICATE (e.g. RECEIVED after FILLED, an ack that
  arrived late); nothing is recorded or changed.
- REJECTED ends a delivery that is not FILLED; after REJECTED, further acks are DUPLICATEs and a fill is
  refused. REJECTED after FILLED is refused too: both are conflicts a person must look at.
- Deliveries that were never sent (SKIPPED, CANCELLED before it was sent, FAILED) accept nothing. One
  cancelled after it was sent counts as SENT: the bridge may have placed it, and a real fill is recorded
  (its position is closed at once, see ``backoffice.positions.open_positions``).

A close command accepts one result: SUCCEEDED or FAILED; the same outcome again is a DUPLICATE, the other
one is refused. Frames that are refused are not recorded.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Text, and_, any_, bindparam, insert, literal, or_, select, update
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.ext.asyncio import AsyncSession

from backoffice import positions, quotes
from backoffice.models import (
    CloseCommand,
    CloseCommandStatus,
    CloseReason,
    Delivery,
    DeliveryState,
    EventKind,
    ExecutionEvent,
    Position,
    Side,
)
from backoffice.sizing import Account
from signalhub.protocol.errors import DomainError, FailedPrecondition, NotFound
from signalhub.protocol.wire import decimal_text

UUID_ARRAY = ARRAY(UUID(as_uuid=True))
# Deliveries without a RECEIVED ack: the only ones ever (re-)sent.
UNRECEIVED = (DeliveryState.PENDING, DeliveryState.SENT)
# What a device may still report a fill for.
_MAY_FILL = (*UNRECEIVED, DeliveryState.RECEIVED, DeliveryState.PLACED, DeliveryState.EXPIRED)
EXPIRED_REASON = "expire_time passed before the device received it"
# Deliveries expired per statement: the sweep comes back for the rest.
EXPIRE_BATCH = 1000


# --- what is sent -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimRequest:
    device_id: uuid.UUID
    room: int  # how many instructions the device's stream can take now
    connected_at: datetime  # instructions SENT before this went out on an earlier stream: send again


@dataclass(frozen=True)
class DeliveryOrder:
    id: uuid.UUID
    signal_id: uuid.UUID
    instrument: str
    side: Side
    volume: Decimal
    entry_price: Decimal | None
    max_deviation: Decimal | None
    expire_time: datetime
    attempt: int
    created_at: datetime


@dataclass(frozen=True)
class CloseOrder:
    id: uuid.UUID
    position_id: uuid.UUID
    broker_ticket: str
    volume: Decimal
    reason: CloseReason
    attempt: int
    created_at: datetime


Order = DeliveryOrder | CloseOrder


@dataclass(frozen=True)
class Claim:
    orders: dict[uuid.UUID, list[Order]]  # per device, oldest first
    more: frozenset[uuid.UUID]  # devices that may have more due than they had room for


async def claim(
    session: AsyncSession, requests: Sequence[ClaimRequest], now: datetime, ack_timeout: timedelta
) -> Claim:
    """Mark what is due for these devices SENT and return it. Rows another transaction holds (another
    replica sending to the same device during a takeover, or a frame being applied) are skipped, never
    waited for: they are due again at the next sweep."""
    wanted = {r.device_id: r for r in requests if r.room > 0}
    if not wanted:
        return Claim({}, frozenset())
    ids = list(wanted)
    resend_before = now - ack_timeout
    newest_connect = max(r.connected_at for r in wanted.values())
    # Enough rows for every device's room; the exact per-device choice is made below.
    fetch = sum(r.room for r in wanted.values()) + len(wanted)
    delivery_rows = (
        await session.execute(
            select(
                Delivery.id,
                Delivery.device_id,
                Delivery.state,
                Delivery.sent_at,
                Delivery.signal_id,
                Delivery.instrument,
                Delivery.side,
                Delivery.volume,
                Delivery.entry_price,
                Delivery.max_deviation,
                Delivery.expire_time,
                Delivery.attempt,
                Delivery.created_at,
            )
            .where(
                any_id(Delivery.device_id, ids),
                Delivery.state.in_(UNRECEIVED),
                Delivery.expire_time > now,
                or_(Delivery.state == DeliveryState.PENDING, Delivery.sent_at < max(resend_before, newest_connect)),
            )
            .order_by(Delivery.created_at, Delivery.id)
            .limit(fetch)
            .with_for_update(skip_locked=True)
        )
    ).all()
    command_rows = (
        await session.execute(
            select(
                CloseCommand.id,
                CloseCommand.device_id,
                CloseCommand.status,
                CloseCommand.sent_at,
                CloseCommand.position_id,
                CloseCommand.volume,
                CloseCommand.reason,
                CloseCommand.attempt,
                CloseCommand.created_at,
                Position.broker_ticket,
            )
            .join(Position, Position.id == CloseCommand.position_id)
            .where(
                any_id(CloseCommand.device_id, ids),
                or_(
                    CloseCommand.status == CloseCommandStatus.PENDING,
                    and_(CloseCommand.status == CloseCommandStatus.SENT, CloseCommand.sent_at < newest_connect),
                ),
            )
            .order_by(CloseCommand.created_at, CloseCommand.id)
            .limit(fetch)
            .with_for_update(of=CloseCommand, skip_locked=True)
        )
    ).all()

    def sent_before(sent_at: datetime | None, limit: datetime) -> bool:
        return sent_at is None or sent_at < limit

    # Per device, oldest first: (created_at, id, is a close command, row).
    candidates: dict[uuid.UUID, list[tuple[datetime, uuid.UUID, bool, Any]]] = {d: [] for d in ids}
    for row in delivery_rows:
        request = wanted[row.device_id]
        if row.state is DeliveryState.PENDING or sent_before(row.sent_at, max(resend_before, request.connected_at)):
            candidates[row.device_id].append((row.created_at, row.id, False, row))
    for command in command_rows:
        request = wanted[command.device_id]
        if command.status is CloseCommandStatus.PENDING or sent_before(command.sent_at, request.connected_at):
            candidates[command.device_id].append((command.created_at, command.id, True, command))
    truncated = len(delivery_rows) >= fetch or len(command_rows) >= fetch
    more = set(ids) if truncated else set()
    chosen_deliveries: dict[uuid.UUID, Any] = {}
    chosen_commands: dict[uuid.UUID, Any] = {}
    for device_id, items in candidates.items():
        items.sort(key=lambda item: (item[0], item[1]))
        if len(items) > wanted[device_id].room:
            more.add(device_id)
        del items[wanted[device_id].room :]
        for _, item_id, is_command, row in items:
            (chosen_commands if is_command else chosen_deliveries)[item_id] = row

    attempts = await _mark_sent(session, Delivery, chosen_deliveries, DeliveryState.SENT, now)
    attempts.update(await _mark_sent(session, CloseCommand, chosen_commands, CloseCommandStatus.SENT, now))
    events = [
        event_row(
            row.device_id,
            EventKind.SENT,
            now,
            delivery_id=item_id if item_id in chosen_deliveries else None,
            close_command_id=item_id if item_id in chosen_commands else None,
            stage=DeliveryState.SENT.value,
            body={"attempt": attempts[item_id]},
        )
        for item_id, row in (chosen_deliveries | chosen_commands).items()
    ]
    await insert_events(session, events)

    orders: dict[uuid.UUID, list[Order]] = {}
    for device_id, items in candidates.items():
        for _, item_id, is_command, row in items:
            order = _close_order(row, attempts[item_id]) if is_command else _delivery_order(row, attempts[item_id])
            orders.setdefault(device_id, []).append(order)
    return Claim(orders, frozenset(more))


async def _mark_sent(
    session: AsyncSession,
    model: type[Delivery] | type[CloseCommand],
    rows: dict[uuid.UUID, Any],
    status: DeliveryState | CloseCommandStatus,
    now: datetime,
) -> dict[uuid.UUID, int]:
    if not rows:
        return {}
    values: dict[str, Any] = {"sent_at": now, "attempt": model.attempt + 1}
    if model is Delivery:
        values.update(state=status, updated_at=now)
    else:
        values.update(status=status)
    result = await session.execute(
        update(model)
        .where(any_id(model.id, rows))
        .values(**values)
        .returning(model.id, model.attempt)
        .execution_options(synchronize_session=False)
    )
    return {row.id: row.attempt for row in result}


def _delivery_order(row: Any, attempt: int) -> DeliveryOrder:
    return DeliveryOrder(
        id=row.id,
        signal_id=row.signal_id,
        instrument=row.instrument,
        side=row.side,
        volume=row.volume,
        entry_price=row.entry_price,
        max_deviation=row.max_deviation,
        expire_time=row.expire_time,
        attempt=attempt,
        created_at=row.created_at,
    )


def _close_order(row: Any, attempt: int) -> CloseOrder:
    return CloseOrder(
        id=row.id,
        position_id=row.position_id,
        broker_ticket=row.broker_ticket,
        volume=row.volume,
        reason=row.reason,
        attempt=attempt,
        created_at=row.created_at,
    )


async def expire_due(
    session: AsyncSession, now: datetime, *, device_ids: Sequence[uuid.UUID] | None = None
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Deliveries without a RECEIVED ack whose expire_time has passed become EXPIRED, each with an EXPIRED
    event; returns (delivery id, device id) pairs. At most EXPIRE_BATCH per call."""
    due = (
        select(Delivery.id)
        .where(Delivery.state.in_(UNRECEIVED), Delivery.expire_time <= now)
        .order_by(Delivery.expire_time)
        .limit(EXPIRE_BATCH)
        .with_for_update(skip_locked=True)
    )
    if device_ids is not None:
        due = due.where(any_id(Delivery.device_id, device_ids))
    result = await session.execute(
        update(Delivery)
        .where(Delivery.id.in_(due.scalar_subquery()))
        .values(state=DeliveryState.EXPIRED, state_reason=EXPIRED_REASON, updated_at=now)
        .returning(Delivery.id, Delivery.device_id, Delivery.attempt)
        .execution_options(synchronize_session=False)
    )
    expired = result.all()
    await insert_events(
        session,
        [
            event_row(
                row.device_id,
                EventKind.EXPIRED,
                now,
                delivery_id=row.id,
                stage=DeliveryState.EXPIRED.value,
                body={"reason": EXPIRED_REASON, "attempt": row.attempt},
            )
            for row in expired
        ],
    )
    return [(row.id, row.device_id) for row in expired]


async def due_devices(session: AsyncSession, now: datetime, ack_timeout: timedelta) -> set[uuid.UUID]:
    """Devices with a delivery or close command to send now (without the re-sends a reconnect causes:
    a new stream claims those itself)."""
    deliveries = select(Delivery.device_id).where(
        Delivery.state.in_(UNRECEIVED),
        Delivery.expire_time > now,
        or_(Delivery.state == DeliveryState.PENDING, Delivery.sent_at <= now - ack_timeout),
    )
    commands = select(CloseCommand.device_id).where(CloseCommand.status == CloseCommandStatus.PENDING)
    result = await session.execute(deliveries.union(commands))
    return set(result.scalars())


async def cancel_for_signal(session: AsyncSession, signal_id: uuid.UUID, now: datetime) -> None:
    """A cancelled signal's deliveries without a RECEIVED ack become CANCELLED, so they are never sent
    (again). Every delivery a fill may still come for is locked first, in id order like
    ``record_reports``: a fill being recorded for one commits before the caller reads the signal's
    positions, or waits and then finds the signal cancelled."""
    rows = (
        await session.execute(
            select(Delivery.id, Delivery.state)
            .where(Delivery.signal_id == signal_id, Delivery.state.in_(_MAY_FILL))
            .order_by(Delivery.id)
            .with_for_update()
        )
    ).all()
    unreceived = [row.id for row in rows if row.state in UNRECEIVED]
    if unreceived:
        await session.execute(
            update(Delivery)
            .where(any_id(Delivery.id, unreceived))
            .values(state=DeliveryState.CANCELLED, state_reason="signal cancelled", updated_at=now)
            .execution_options(synchronize_session=False)
        )


# --- what devices report ------------------------------------------------------------------------------


class Verdict(enum.StrEnum):
    ACCEPTED = "ACCEPTED"
    DUPLICATE = "DUPLICATE"
    REJECTED = "REJECTED"


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    error: DomainError | None = None  # why, for REJECTED


ACCEPTED = Outcome(Verdict.ACCEPTED)
DUPLICATE = Outcome(Verdict.DUPLICATE)


@dataclass(frozen=True)
class AckReport:
    delivery_id: uuid.UUID
    stage: DeliveryState  # RECEIVED, PLACED or REJECTED
    reason: str


@dataclass(frozen=True)
class FillReport:
    delivery_id: uuid.UUID
    broker_ticket: str
    price: Decimal
    volume: Decimal
    fill_time: datetime | None


@dataclass(frozen=True)
class CloseReport:
    command_id: uuid.UUID
    success: bool
    close_price: Decimal | None  # required when success
    closed_volume: Decimal | None  # None: the command's volume
    error: str


@dataclass(frozen=True)
class QuoteReport:
    quote: quotes.QuoteIn  # its instrument is the broker's symbol


@dataclass(frozen=True)
class HeartbeatReport:
    send_time: datetime | None


Report = AckReport | FillReport | CloseReport | QuoteReport | HeartbeatReport


@dataclass(frozen=True)
class DeviceReport:
    """One frame of one device."""

    device_id: uuid.UUID
    frame_id: str
    report: Report


@dataclass
class _DeliveryState:
    """A delivery locked by the current transaction, changed in memory, written once at the end."""

    id: uuid.UUID
    device_id: uuid.UUID
    signal_id: uuid.UUID
    instrument: str
    side: Side
    attempt: int
    state: DeliveryState
    reason: str | None
    sent: bool
    changed: bool = False


# How far along the way to a fill each state is; EXPIRED counts as "not received" (see the module doc).
_PROGRESS = {
    DeliveryState.PENDING: 0,
    DeliveryState.SENT: 0,
    DeliveryState.EXPIRED: 0,
    DeliveryState.RECEIVED: 1,
    DeliveryState.PLACED: 2,
    DeliveryState.FILLED: 3,
}
_NEVER_SENT = (DeliveryState.SKIPPED, DeliveryState.CANCELLED, DeliveryState.FAILED)


@dataclass
class _Batch:
    now: datetime
    deliveries: dict[uuid.UUID, _DeliveryState]
    closes: dict[uuid.UUID, positions.CloseTarget]
    accounts: dict[uuid.UUID, Account]
    events: list[dict[str, Any]] = field(default_factory=list)
    openings: list[positions.Opening] = field(default_factory=list)
    quotes: list[quotes.QuoteIn] = field(default_factory=list)


async def record_reports(session: AsyncSession, reports: Sequence[DeviceReport], now: datetime) -> list[Outcome]:
    """Apply a batch of frames in order; one Outcome per frame. A frame_id the device used before (or
    earlier in the batch) is a DUPLICATE. Locks are taken in id order, so concurrent batches never wait
    on each other in a cycle; a unique violation on (device_id, frame_id) means another transaction
    recorded the same frame meanwhile, and the caller retries the batch (this check then sees it)."""
    recorded = await _recorded_frames(session, reports)
    batch = _Batch(
        now=now,
        deliveries=await _lock_deliveries(
            session,
            {(r.report.delivery_id, r.device_id) for r in reports if isinstance(r.report, AckReport | FillReport)},
        ),
        closes=await positions.lock_close_targets(
            session, {(r.report.command_id, r.device_id) for r in reports if isinstance(r.report, CloseReport)}
        ),
        accounts={},
    )
    if batch.closes:
        batch.accounts = await positions.accounts_of(session, {t.device_id for t in batch.closes.values()})
    outcomes = []
    for item in reports:
        key = (item.device_id, item.frame_id)
        if key in recorded:
            outcomes.append(DUPLICATE)
            continue
        outcome = _apply(batch, item)
        if outcome.verdict is Verdict.ACCEPTED:
            recorded.add(key)
        outcomes.append(outcome)
    await insert_events(session, batch.events)
    await _write_deliveries(session, batch.deliveries.values(), now)
    await positions.open_positions(session, batch.openings)
    await positions.write_closes(session, batch.closes.values())
    await quotes.store_latest(session, batch.quotes, batch.now)
    return outcomes


def _apply(batch: _Batch, item: DeviceReport) -> Outcome:
    report = item.report
    if isinstance(report, AckReport | FillReport):
        return _apply_to_delivery(batch, item, report)
    if isinstance(report, CloseReport):
        return _apply_close(batch, item, report)
    if isinstance(report, QuoteReport):
        quote = report.quote
        body = {"instrument": quote.instrument, "bid": decimal_text(quote.bid), "ask": decimal_text(quote.ask)}
        batch.events.append(
            event_row(
                item.device_id,
                EventKind.QUOTE,
                batch.now,
                frame_id=item.frame_id,
                body=body,
                event_time=quote.quote_time,
            )
        )
        batch.quotes.append(quote)
        return ACCEPTED
    batch.events.append(
        event_row(item.device_id, EventKind.HEARTBEAT, batch.now, frame_id=item.frame_id, event_time=report.send_time)
    )
    return ACCEPTED


def _apply_to_delivery(batch: _Batch, item: DeviceReport, report: AckReport | FillReport) -> Outcome:
    delivery = batch.deliveries.get(report.delivery_id)
    if delivery is None or delivery.device_id != item.device_id:
        return Outcome(Verdict.REJECTED, NotFound("delivery"))
    stage = report.stage if isinstance(report, AckReport) else DeliveryState.FILLED
    verdict = _transition(delivery.state, stage, sent=delivery.sent)
    if verdict is not Verdict.ACCEPTED:
        if verdict is Verdict.DUPLICATE:
            return DUPLICATE
        return Outcome(
            Verdict.REJECTED,
            FailedPrecondition(
                f"a delivery that is {delivery.state.value} cannot become {stage.value}",
                reason="INVALID_TRANSITION",
                metadata={"delivery_id": str(delivery.id), "state": delivery.state.value, "stage": stage.value},
            ),
        )
    delivery.state = stage
    delivery.changed = True
    body: dict[str, Any] = {"attempt": delivery.attempt}
    if isinstance(report, AckReport):
        if report.reason:
            body["reason"] = report.reason
        if stage is DeliveryState.REJECTED:
            delivery.reason = report.reason or "rejected by the device"
        kind, event_time = EventKind.ACK, None
    else:
        body.update(
            price=decimal_text(report.price), volume=decimal_text(report.volume), broker_ticket=report.broker_ticket
        )
        kind, event_time = EventKind.FILL, report.fill_time
        batch.openings.append(
            positions.Opening(
                delivery_id=delivery.id,
                device_id=delivery.device_id,
                signal_id=delivery.signal_id,
                instrument=delivery.instrument,
                side=delivery.side,
                volume=report.volume,
                entry_price=report.price,
                broker_ticket=report.broker_ticket,
                opened_at=report.fill_time or batch.now,
            )
        )
    batch.events.append(
        event_row(
            item.device_id,
            kind,
            batch.now,
            frame_id=item.frame_id,
            delivery_id=delivery.id,
            stage=stage.value,
            body=body,
            event_time=event_time,
        )
    )
    return ACCEPTED


def _transition(state: DeliveryState, stage: DeliveryState, *, sent: bool) -> Verdict:
    """ACCEPTED (move to ``stage``), DUPLICATE (nothing to change) or REJECTED (a conflict)."""
    if state is DeliveryState.CANCELLED and sent:
        state = DeliveryState.SENT  # cancelled on its way: the device's word wins, as after EXPIRED
    if state in _NEVER_SENT:
        return Verdict.REJECTED
    if state is DeliveryState.REJECTED:
        return Verdict.REJECTED if stage is DeliveryState.FILLED else Verdict.DUPLICATE
    if stage is DeliveryState.REJECTED:
        return Verdict.REJECTED if state is DeliveryState.FILLED else Verdict.ACCEPTED
    return Verdict.ACCEPTED if _PROGRESS[stage] > _PROGRESS[state] else Verdict.DUPLICATE


def _apply_close(batch: _Batch, item: DeviceReport, report: CloseReport) -> Outcome:
    target = batch.closes.get(report.command_id)
    if target is None or target.device_id != item.device_id:
        return Outcome(Verdict.REJECTED, NotFound("close command"))
    outcome = CloseCommandStatus.SUCCEEDED if report.success else CloseCommandStatus.FAILED
    if target.status in (CloseCommandStatus.SUCCEEDED, CloseCommandStatus.FAILED):
        if target.status is outcome:
            return DUPLICATE
        return Outcome(
            Verdict.REJECTED,
            FailedPrecondition(
                f"the close command already {target.status.value}",
                reason="INVALID_TRANSITION",
                metadata={"command_id": str(target.command_id), "state": target.status.value, "stage": outcome.value},
            ),
        )
    positions.apply_close(
        target,
        success=report.success,
        close_price=report.close_price,
        closed_volume=report.closed_volume,
        error=report.error,
        account=batch.accounts.get(item.device_id),
        now=batch.now,
    )
    body: dict[str, Any] = {}
    if report.success:
        body.update(price=decimal_text(target.close_price), volume=decimal_text(target.closed_volume))
    else:
        body["error"] = target.error
    batch.events.append(
        event_row(
            item.device_id,
            EventKind.CLOSE_RESULT,
            batch.now,
            frame_id=item.frame_id,
            close_command_id=target.command_id,
            stage=outcome.value,
            body=body,
        )
    )
    return ACCEPTED


async def _recorded_frames(session: AsyncSession, reports: Sequence[DeviceReport]) -> set[tuple[uuid.UUID, str]]:
    pairs = {(r.device_id, r.frame_id) for r in reports}
    if not pairs:
        return set()
    rows = await session.execute(
        select(ExecutionEvent.device_id, ExecutionEvent.frame_id).where(
            any_id(ExecutionEvent.device_id, {device_id for device_id, _ in pairs}),
            ExecutionEvent.frame_id == any_(literal([frame_id for _, frame_id in pairs], ARRAY(Text))),
        )
    )
    return {(row.device_id, row.frame_id) for row in rows if (row.device_id, row.frame_id) in pairs}


async def _lock_deliveries(
    session: AsyncSession, pairs: Iterable[tuple[uuid.UUID, uuid.UUID]]
) -> dict[uuid.UUID, _DeliveryState]:
    """The deliveries named by (delivery id, device id) pairs, locked in id order; another device's
    delivery is simply not found."""
    wanted = set(pairs)
    if not wanted:
        return {}
    rows = await session.execute(
        select(
            Delivery.id,
            Delivery.device_id,
            Delivery.signal_id,
            Delivery.instrument,
            Delivery.side,
            Delivery.attempt,
            Delivery.state,
            Delivery.state_reason,
            Delivery.sent_at,
        )
        .where(any_id(Delivery.id, {d for d, _ in wanted}), any_id(Delivery.device_id, {d for _, d in wanted}))
        .order_by(Delivery.id)
        .with_for_update()
    )
    return {
        row.id: _DeliveryState(
            row.id,
            row.device_id,
            row.signal_id,
            row.instrument,
            row.side,
            row.attempt,
            row.state,
            row.state_reason,
            sent=row.sent_at is not None,
        )
        for row in rows
        if (row.id, row.device_id) in wanted
    }


async def _write_deliveries(session: AsyncSession, deliveries: Iterable[_DeliveryState], now: datetime) -> None:
    changed = [d for d in deliveries if d.changed]
    if not changed:
        return
    connection = await session.connection()  # Core executemany: one statement, many parameter sets
    await connection.execute(
        update(Delivery)
        .where(Delivery.id == bindparam("b_id"))
        .values(state=bindparam("b_state"), state_reason=bindparam("b_reason"), updated_at=bindparam("b_at")),
        [{"b_id": d.id, "b_state": d.state, "b_reason": d.reason, "b_at": now} for d in changed],
    )


def any_id(column: Any, ids: Iterable[uuid.UUID]) -> ColumnElement[bool]:
    """``column = ANY($1)``: one array parameter, so the statement is the same (and prepared once)
    however many ids there are; an IN list is a new statement per length and is capped in size."""
    return column == any_(literal(list(ids), UUID_ARRAY))  # type: ignore[no-any-return]


# --- execution events ---------------------------------------------------------------------------------


def event_row(
    device_id: uuid.UUID,
    kind: EventKind,
    now: datetime,
    *,
    frame_id: str | None = None,
    delivery_id: uuid.UUID | None = None,
    close_command_id: uuid.UUID | None = None,
    stage: str | None = None,
    body: dict[str, Any] | None = None,
    event_time: datetime | None = None,
) -> dict[str, Any]:
    """An execution_events row. ``body`` holds decimals as strings; ``event_time`` is the source's clock,
    ``received_at`` the server's."""
    return {
        "id": uuid.uuid4(),
        "device_id": device_id,
        "frame_id": frame_id,
        "kind": kind,
        "delivery_id": delivery_id,
        "close_command_id": close_command_id,
        "stage": stage,
        "body": body or {},
        "event_time": event_time,
        "received_at": now,
    }


async def insert_events(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        # Core, not the ORM's bulk insert: nothing is read back, and this is the hottest write there is.
        connection = await session.connection()
        await connection.execute(insert(ExecutionEvent), list(rows))
