"""What devices report about their deliveries and close commands (acks, fills, close results, quotes,
heartbeats) and about their trading account (account states), applied in the caller's transaction (see
the package docstring for the rules). What the caller must announce after its commit (quotes and
positions for the monitor, alerts raised, account states stored) comes back with the outcomes."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backoffice import alerts, positions, quotes, risk
from backoffice import execution_events as events
from backoffice.affiliates import accrual
from backoffice.devices.account_states import AccountStateIn, StoredAccountState
from backoffice.devices.hello import Hello
from backoffice.models import (
    CloseCommandStatus,
    Delivery,
    DeliveryState,
    EventKind,
    ExecutionEvent,
    Side,
)
from backoffice.platform.db import any_id, driver_rows, update_by_id
from signalhub.protocol.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound
from signalhub.protocol.wire import decimal_text


class Verdict(enum.StrEnum):
    ACCEPTED = "ACCEPTED"
    DUPLICATE = "DUPLICATE"
    REJECTED = "REJECTED"


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    error: DomainError | None = None  # why, for REJECTED
    # The signal an accepted ack, fill or close result belongs to, for its log line (gateway.tracing).
    trace: uuid.UUID | None = field(default=None, compare=False)


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


@dataclass(frozen=True)
class AccountStateReport:
    """The trading account as the terminal read it at ``state_time`` (the device's clock)."""

    balance: Decimal
    equity: Decimal
    margin: Decimal | None
    free_margin: Decimal | None
    state_time: datetime


Report = AckReport | FillReport | CloseReport | QuoteReport | HeartbeatReport | AccountStateReport


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
    volume: Decimal  # what the device was asked to trade: its fills together never exceed it
    volume_step: Decimal | None  # the broker symbol's, from the device's Hello, when it said
    volume_max: Decimal | None
    filled: Decimal = Decimal(0)  # the volume of the fills accepted so far
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


# A fill as the device described it: the same fill sent again under a new frame_id is a DUPLICATE,
# another fill of the same delivery a partial fill that adds to its position.
_FillKey = tuple[uuid.UUID, str, str, str, str]


@dataclass
class _Batch:
    now: datetime
    deliveries: dict[uuid.UUID, _DeliveryState]
    closes: dict[uuid.UUID, positions.CloseTarget]
    accounts: dict[uuid.UUID, Hello]
    fills: set[_FillKey]
    events: list[dict[str, Any]] = field(default_factory=list)
    openings: list[positions.Opening] = field(default_factory=list)
    quotes: list[quotes.QuoteIn] = field(default_factory=list)
    account_states: list[AccountStateIn] = field(default_factory=list)


@dataclass(frozen=True)
class Recorded:
    """A batch's outcomes (one per frame) and what to announce once it is committed."""

    outcomes: list[Outcome]
    quotes: list[quotes.Seen]  # stored: the monitor reads them
    position_ids: list[uuid.UUID]  # opened, added to or closed: the monitor re-reads them
    alerts: list[alerts.Raised]
    # The newest state of each device that was stored (an older one changes nothing).
    account_states: list[StoredAccountState] = field(default_factory=list)
    # Devices with close commands the batch queued (a risk limit's CLOSE_ALL, the rest of a whole close): woken
    # once it commits.
    woken: list[uuid.UUID] = field(default_factory=list)
    fills_queued: int = 0  # fills queued for commission accrual: the worker is told once the batch commits


async def record_reports(session: AsyncSession, reports: Sequence[DeviceReport], now: datetime) -> Recorded:
    """Apply a batch of frames in order; one Outcome per frame. A frame_id the device used before (or
    earlier in the batch) is a DUPLICATE. Locks are taken in id order, so concurrent batches never wait
    on each other in a cycle; a unique violation on (device_id, frame_id) means another transaction
    recorded the same frame meanwhile, and the caller retries the batch (this check then sees it)."""
    recorded = await _recorded_frames(session, reports)
    deliveries = await _lock_deliveries(
        session, {(r.report.delivery_id, r.device_id) for r in reports if isinstance(r.report, AckReport | FillReport)}
    )
    batch = _Batch(
        now=now,
        deliveries=deliveries,
        closes=await positions.lock_close_targets(
            session, {(r.report.command_id, r.device_id) for r in reports if isinstance(r.report, CloseReport)}
        ),
        accounts={},
        fills=await _recorded_fills(session, [d.id for d in deliveries.values() if d.state is DeliveryState.FILLED]),
    )
    for delivery_id, *_, volume, _ in batch.fills:
        deliveries[delivery_id].filled += Decimal(volume)
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
    fills = await accrual.enqueue_fills(session, batch.events)  # the worker accrues them, off this transaction
    await events.insert_events(session, batch.events)
    await _write_deliveries(session, batch.deliveries.values(), now)
    opened = await positions.open_positions(session, batch.openings, now)
    raised = await positions.write_closes(session, batch.closes.values(), now)
    rest = await positions.close_the_rest(session, batch.closes.values(), now)
    stored = await quotes.store_latest(session, batch.quotes, batch.now)
    # Risk limits are measured on the states stored, in the statement that stores them; a batch without one
    # costs nothing more.
    states = await risk.record_states(session, batch.account_states, batch.now)
    _repeated(reports, outcomes, states.duplicates)
    stopped = await risk.act_on(session, states.reached, now)
    closed = [t.position.id for t in batch.closes.values() if t.changed]
    queued = rest + stopped.closes
    return Recorded(
        outcomes,
        stored,
        opened + closed + [q.position_id for q in queued],
        raised + stopped.alerts,
        states.stored,
        sorted({q.device_id for q in queued}),
        fills,
    )


async def record_account_states_alone(
    sessions: async_sessionmaker[AsyncSession], reports: Sequence[DeviceReport], now: datetime
) -> Recorded | None:
    """A batch of nothing but AccountState frames as one statement that commits on its own (the states
    stored, the limits measured: ``risk.record_states_alone``); None, with nothing changed, when it would
    reach a limit or lost a race: the caller then applies it with ``record_reports`` in a transaction."""
    outcomes: list[Outcome] = []
    states: list[AccountStateIn] = []
    seen: set[tuple[uuid.UUID, str]] = set()
    for item in reports:
        report = item.report
        assert isinstance(report, AccountStateReport), "account states alone"
        key = (item.device_id, item.frame_id)
        outcomes.append(DUPLICATE if key in seen else ACCEPTED)
        if key not in seen:
            seen.add(key)
            states.append(_account_state(item, report))
    recorded = await risk.record_states_alone(sessions, states, now)
    if recorded is None:
        return None
    _repeated(reports, outcomes, recorded.duplicates)
    return Recorded(outcomes, [], [], [], recorded.stored)


def only_account_states(reports: Sequence[DeviceReport]) -> bool:
    """Whether ``record_account_states_alone`` can take this batch."""
    return all(isinstance(r.report, AccountStateReport) for r in reports)


def _account_state(item: DeviceReport, report: AccountStateReport) -> AccountStateIn:
    return AccountStateIn(
        item.device_id,
        report.balance,
        report.equity,
        report.margin,
        report.free_margin,
        report.state_time,
        item.frame_id,
    )


def _repeated(reports: Sequence[DeviceReport], outcomes: list[Outcome], recorded: set[tuple[uuid.UUID, str]]) -> None:
    """Account states accepted in the batch whose frames had set a stored state before: DUPLICATE."""
    if not recorded:
        return
    for i, item in enumerate(reports):
        state = isinstance(item.report, AccountStateReport) and outcomes[i].verdict is Verdict.ACCEPTED
        if state and (item.device_id, item.frame_id) in recorded:
            outcomes[i] = DUPLICATE


def _apply(batch: _Batch, item: DeviceReport) -> Outcome:
    """Apply one frame to the batch's state in memory (the writes happen once, at the end of the batch)."""
    report = item.report
    if isinstance(report, AckReport | FillReport):
        return _apply_to_delivery(batch, item, report)
    if isinstance(report, CloseReport):
        return _apply_close(batch, item, report)
    if isinstance(report, QuoteReport):
        # Market data, not a record: only the newest quote per symbol is kept (no execution event).
        batch.quotes.append(report.quote)
        return ACCEPTED
    if isinstance(report, AccountStateReport):
        # Like a quote: only the newest state per device is kept (no execution event); an older one changes
        # nothing.
        batch.account_states.append(_account_state(item, report))
        return ACCEPTED
    # A heartbeat is presence, not a record: the gateway keeps devices.last_seen_at (no execution event).
    return ACCEPTED


def _apply_to_delivery(batch: _Batch, item: DeviceReport, report: AckReport | FillReport) -> Outcome:
    """An ack or fill against its delivery: NOT_FOUND unless it is this device's, the state machine of the
    package docstring, an execution event when accepted, and for a fill the position it opens."""
    delivery = batch.deliveries.get(report.delivery_id)
    if delivery is None or delivery.device_id != item.device_id:
        return Outcome(Verdict.REJECTED, NotFound("delivery"))
    stage = report.stage if isinstance(report, AckReport) else DeliveryState.FILLED
    verdict = _transition(delivery.state, stage, sent=delivery.sent)
    if isinstance(report, FillReport) and delivery.state is DeliveryState.FILLED:
        verdict = Verdict.DUPLICATE if _fill_key(delivery.id, report) in batch.fills else Verdict.ACCEPTED
    if isinstance(report, FillReport) and verdict is Verdict.ACCEPTED:
        refused = _fill_volume_refused(delivery, report.volume)
        if refused is not None:
            return Outcome(Verdict.REJECTED, refused)
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
        batch.fills.add(_fill_key(delivery.id, report))
        delivery.filled += report.volume
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
        events.event_row(
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
    return Outcome(Verdict.ACCEPTED, trace=delivery.signal_id)


def _fill_volume_refused(delivery: _DeliveryState, volume: Decimal) -> InvalidArgument | None:
    """Why a fill of ``volume`` cannot be true of this delivery, or None: its fills together never exceed
    the volume it asked for (a device cannot mint positions, or commissions, by reporting more), and each is
    a positive multiple of the symbol's volume step, at most its maximum (when the device's Hello said)."""
    remaining = delivery.volume - delivery.filled
    if volume <= 0:
        why = "must be greater than zero"
    elif volume > remaining:
        why = f"{decimal_text(volume)} is more than the {decimal_text(remaining)} lots left of this delivery"
    elif delivery.volume_step and volume % delivery.volume_step:
        why = f"must be a multiple of the symbol's volume step {decimal_text(delivery.volume_step)}"
    elif delivery.volume_max and volume > delivery.volume_max:
        why = f"must be at most the symbol's maximum {decimal_text(delivery.volume_max)}"
    else:
        return None
    return InvalidArgument([("fill.volume", why)], reason="FILL_VOLUME_REFUSED")


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
    """A CloseResult against its close command: one outcome per command (the same again is a DUPLICATE, the
    other refused); success closes the position or the part closed, with price and profit."""
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
        events.event_row(
            item.device_id,
            EventKind.CLOSE_RESULT,
            batch.now,
            frame_id=item.frame_id,
            close_command_id=target.command_id,
            stage=outcome.value,
            body=body,
        )
    )
    return Outcome(Verdict.ACCEPTED, trace=target.position.signal_id)


async def _recorded_frames(session: AsyncSession, reports: Sequence[DeviceReport]) -> set[tuple[uuid.UUID, str]]:
    """The frames of this batch recorded before: as an execution event, or as the frame that set a quote
    (each read only when the batch carries such frames). An account state's is found where it is stored
    (``_repeated``)."""
    pairs = {(r.device_id, r.frame_id) for r in reports if not isinstance(r.report, QuoteReport | AccountStateReport)}
    found = await quotes.recorded_frames(
        session, {(r.device_id, r.frame_id) for r in reports if isinstance(r.report, QuoteReport)}
    )
    if not pairs:
        return found
    rows = await driver_rows(
        session,
        _RECORDED_FRAMES,
        list({device_id for device_id, _ in pairs}),
        list({frame_id for _, frame_id in pairs}),
    )
    return found | {(row.device_id, row.frame_id) for row in rows if (row.device_id, row.frame_id) in pairs}


# The two reads every uplink batch makes, as the driver's own SQL (see ``driver_rows``).
_RECORDED_FRAMES = (
    "SELECT device_id, frame_id FROM execution_events WHERE device_id = ANY($1::uuid[]) AND frame_id = ANY($2::text[])"
)
_LOCK_DELIVERIES = """
SELECT d.id, d.device_id, d.signal_id, d.instrument, d.side, d.attempt, d.state, d.state_reason, d.sent_at, d.volume,
       NULLIF(v.last_hello -> 'symbols' -> d.instrument ->> 'volume_step', '') AS volume_step,
       NULLIF(v.last_hello -> 'symbols' -> d.instrument ->> 'volume_max', '') AS volume_max
FROM deliveries d JOIN devices v ON v.id = d.device_id
WHERE d.id = ANY($1::uuid[]) AND d.device_id = ANY($2::uuid[])
ORDER BY d.id
FOR UPDATE OF d
"""


def _fill_key(delivery_id: uuid.UUID, report: FillReport) -> _FillKey:
    when = report.fill_time.isoformat() if report.fill_time else ""
    return (delivery_id, report.broker_ticket, decimal_text(report.price), decimal_text(report.volume), when)


async def _recorded_fills(session: AsyncSession, delivery_ids: Sequence[uuid.UUID]) -> set[_FillKey]:
    """The fills recorded for these (FILLED) deliveries, as ``_fill_key`` describes them."""
    if not delivery_ids:
        return set()
    rows = await session.execute(
        select(ExecutionEvent.delivery_id, ExecutionEvent.body, ExecutionEvent.event_time).where(
            any_id(ExecutionEvent.delivery_id, delivery_ids), ExecutionEvent.kind == EventKind.FILL
        )
    )
    return {
        (
            row.delivery_id,
            str(row.body.get("broker_ticket", "")),
            str(row.body.get("price", "")),
            str(row.body.get("volume", "")),
            row.event_time.isoformat() if row.event_time else "",
        )
        for row in rows
    }


async def _lock_deliveries(
    session: AsyncSession, pairs: Iterable[tuple[uuid.UUID, uuid.UUID]]
) -> dict[uuid.UUID, _DeliveryState]:
    """The deliveries named by (delivery id, device id) pairs, locked in id order; another device's
    delivery is simply not found."""
    wanted = set(pairs)
    if not wanted:
        return {}
    rows = await driver_rows(session, _LOCK_DELIVERIES, list({d for d, _ in wanted}), list({d for _, d in wanted}))
    return {
        row.id: _DeliveryState(
            row.id,
            row.device_id,
            row.signal_id,
            row.instrument,
            Side(row.side),
            row.attempt,
            DeliveryState(row.state),
            row.state_reason,
            sent=row.sent_at is not None,
            volume=row.volume,
            volume_step=_stored_decimal(row.volume_step),
            volume_max=_stored_decimal(row.volume_max),
        )
        for row in rows
        if (row.id, row.device_id) in wanted
    }


def _stored_decimal(text: str | None) -> Decimal | None:
    """A spec stored by the device's Hello (already checked when it came), or None when absent or unusable."""
    try:
        number = Decimal(text) if text else None
    except ArithmeticError:
        return None
    return number if number is not None and number.is_finite() and number > 0 else None


async def _write_deliveries(session: AsyncSession, deliveries: Iterable[_DeliveryState], now: datetime) -> None:
    changed = [d for d in deliveries if d.changed]
    rows = [{"id": d.id, "state": d.state, "state_reason": d.reason, "updated_at": now} for d in changed]
    await update_by_id(session, Delivery, rows)
