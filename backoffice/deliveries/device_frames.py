"""What devices report about their deliveries and close commands (acks, fills, close results, quotes,
heartbeats) and about their trading account (account states), applied in the caller's transaction (see
the package docstring for the rules). What the caller must announce after its commit (quotes and
positions for the monitor, alerts raised, account states stored) comes back with the outcomes."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backoffice import alerts, positions, quotes, risk
from backoffice import execution_events as events
from backoffice.devices.account_states import AccountStateIn, StoredAccountState
from backoffice.devices.hello import Hello
from backoffice.models import (
    CloseCommandStatus,
    DeliveryState,
    EventKind,
    Side,
)
from backoffice.platform import db
from backoffice.platform.db import driver_rows
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
class _Batch:
    now: datetime
    closes: dict[uuid.UUID, positions.CloseTarget]
    accounts: dict[uuid.UUID, Hello]
    events: list[dict[str, Any]] = field(default_factory=list)
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
    """Apply a batch of frames; one Outcome per frame. A frame_id the device used before (or earlier in the
    batch) is a DUPLICATE. The acks and fills go first, in order, in one statement
    (``apply_delivery_reports``), then the rest in order: a frame id is the device's to use once, and one
    reused in a batch by an ack or fill and a frame of another kind counts for the ack or fill. Locks are
    taken in id order, so concurrent batches never wait on each other in a cycle; a unique violation on
    (device_id, frame_id) means another transaction recorded the same frame meanwhile, and the caller
    retries the batch (this check then sees it)."""
    applied = await _apply_to_deliveries(session, reports, now)
    recorded = await _recorded_frames(session, reports) | applied.accepted
    batch = _Batch(
        now=now,
        closes=await positions.lock_close_targets(
            session, {(r.report.command_id, r.device_id) for r in reports if isinstance(r.report, CloseReport)}
        ),
        accounts={},
    )
    if batch.closes:
        batch.accounts = await positions.accounts_of(session, {t.device_id for t in batch.closes.values()})
    outcomes = []
    for i, item in enumerate(reports):
        if i in applied.outcomes:
            outcomes.append(applied.outcomes[i])
            continue
        key = (item.device_id, item.frame_id)
        if key in recorded:
            outcomes.append(DUPLICATE)
            continue
        outcome = _apply(batch, item)
        if outcome.verdict is Verdict.ACCEPTED:
            recorded.add(key)
        outcomes.append(outcome)
    await events.insert_events(session, batch.events)
    opened = await positions.open_positions(session, applied.openings, now)
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
        len(applied.openings),
    )


async def record_alone(
    sessions: async_sessionmaker[AsyncSession], reports: Sequence[DeviceReport], now: datetime
) -> Recorded | None:
    """A batch that one statement applies whole, committing on its own (no transaction around it): acks
    alone, or account states alone that reach no risk limit. None, with nothing changed, for any other
    batch, or when that statement lost a race or would reach a limit: the caller then applies the batch
    with ``record_reports`` in a transaction."""
    if all(isinstance(r.report, AckReport) for r in reports):
        # A unique violation: another transaction recorded one of these frames meanwhile.
        rows = await db.fetch_alone(sessions, _APPLY, *_delivery_arrays(reports), now, give_way={"23505"})
        if rows is None:
            return None
        outcomes = [_delivery_outcome(item, row) for item, row in zip(reports, rows, strict=True)]
        return Recorded(outcomes, [], [], [])
    if all(isinstance(r.report, AccountStateReport) for r in reports):
        return await _account_states_alone(sessions, reports, now)
    return None


@dataclass
class _Applied:
    """What ``apply_delivery_reports`` did with a batch's acks and fills, by the frame's index in the batch."""

    outcomes: dict[int, Outcome] = field(default_factory=dict)
    accepted: set[tuple[uuid.UUID, str]] = field(default_factory=set)
    openings: list[positions.Opening] = field(default_factory=list)


async def _apply_to_deliveries(session: AsyncSession, reports: Sequence[DeviceReport], now: datetime) -> _Applied:
    """The batch's acks and fills through the delivery state machine, in the session's transaction: one
    statement, whatever their number (none without them)."""
    applied = _Applied()
    indexed = [(i, r) for i, r in enumerate(reports) if isinstance(r.report, AckReport | FillReport)]
    if not indexed:
        return applied
    rows = await db.driver_rows(session, _APPLY, *_delivery_arrays([r for _, r in indexed]), now)
    for (i, item), row in zip(indexed, rows, strict=True):
        outcome = applied.outcomes[i] = _delivery_outcome(item, row)
        if outcome.verdict is not Verdict.ACCEPTED:
            continue
        applied.accepted.add((item.device_id, item.frame_id))
        report = item.report
        if isinstance(report, FillReport):
            _, _, _, signal_id, instrument, side, *_ = row
            applied.openings.append(
                positions.Opening(
                    delivery_id=report.delivery_id,
                    device_id=item.device_id,
                    signal_id=signal_id,
                    instrument=instrument,
                    side=Side(side),
                    volume=report.volume,
                    entry_price=report.price,
                    broker_ticket=report.broker_ticket,
                    opened_at=report.fill_time or now,
                )
            )
    return applied


_APPLY = """
SELECT * FROM apply_delivery_reports($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[], $6::text[],
                                     $7::text[], $8::text[], $9::timestamptz[], $10::uuid[], $11::timestamptz)
"""


def _delivery_arrays(items: Sequence[DeviceReport]) -> list[list[Any]]:
    """``apply_delivery_reports``'s arrays, one element per ack or fill: decimals as the text the events keep
    (a repeated fill is found by it), a new event id each."""
    columns: list[list[Any]] = [[] for _ in range(10)]
    for item in items:
        report = item.report
        values: list[Any]
        if isinstance(report, AckReport):
            values = [report.delivery_id, report.stage.value, report.reason, None, None, None, None]
        else:
            assert isinstance(report, FillReport)
            price, volume = decimal_text(report.price), decimal_text(report.volume)
            values = [report.delivery_id, DeliveryState.FILLED.value, "", report.broker_ticket, price, volume]
            values.append(report.fill_time)
        for column, value in zip(columns, [item.device_id, item.frame_id, *values, uuid.uuid4()], strict=True):
            column.append(value)
    return columns


def _delivery_outcome(item: DeviceReport, row: Any) -> Outcome:
    """A frame's Outcome from its row of ``apply_delivery_reports``."""
    verdict, problem, state, signal_id, _, _, remaining, step, most = row
    if verdict == Verdict.DUPLICATE:
        return DUPLICATE
    if verdict == Verdict.ACCEPTED:
        return Outcome(Verdict.ACCEPTED, trace=signal_id)
    report = item.report
    assert isinstance(report, AckReport | FillReport)
    if problem == "NOT_FOUND":
        return Outcome(Verdict.REJECTED, NotFound("delivery"))
    if problem == "INVALID_TRANSITION":
        stage = report.stage if isinstance(report, AckReport) else DeliveryState.FILLED
        return Outcome(
            Verdict.REJECTED,
            FailedPrecondition(
                f"a delivery that is {state} cannot become {stage.value}",
                reason="INVALID_TRANSITION",
                metadata={"delivery_id": str(report.delivery_id), "state": state, "stage": stage.value},
            ),
        )
    assert isinstance(report, FillReport)
    why = {
        "VOLUME_NOT_POSITIVE": "must be greater than zero",
        "VOLUME_OVER_REMAINING": (
            f"{decimal_text(report.volume)} is more than the {decimal_text(remaining)} lots left of this delivery"
        ),
        "VOLUME_OFF_STEP": f"must be a multiple of the symbol's volume step {decimal_text(step)}",
        "VOLUME_OVER_MAX": f"must be at most the symbol's maximum {decimal_text(most)}",
    }[problem]
    return Outcome(Verdict.REJECTED, InvalidArgument([("fill.volume", why)], reason="FILL_VOLUME_REFUSED"))


async def _account_states_alone(
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
    """The frames of this batch recorded before: as a close result's execution event, or as the frame that set
    a quote (each read only when the batch carries such frames). Acks and fills are found by
    ``apply_delivery_reports``, account states where they are stored (``_repeated``)."""
    applied_elsewhere = QuoteReport | AccountStateReport | AckReport | FillReport
    pairs = {(r.device_id, r.frame_id) for r in reports if not isinstance(r.report, applied_elsewhere)}
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


# The driver's own SQL (see ``driver_rows``).
_RECORDED_FRAMES = (
    "SELECT device_id, frame_id FROM execution_events WHERE device_id = ANY($1::uuid[]) AND frame_id = ANY($2::text[])"
)
