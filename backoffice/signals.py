"""Signals: producers' trading ideas, validated, stored once per request_id, fanned out to subscribers,
expired on time, and cancelled by their producer or an admin."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import asyncpg
from google.protobuf.message import Message
from sqlalchemy import ColumnElement, exists, or_, select, true, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backoffice import approvals, audit, deliveries, positions
from backoffice.models import (
    ActorType,
    Approval,
    CloseReason,
    Device,
    Position,
    Side,
    Signal,
    SignalStatus,
    Subscription,
    SubscriptionStatus,
)
from backoffice.platform import db, idempotency, paging
from backoffice.platform.auth import Caller
from backoffice.platform.db import any_id
from backoffice.platform.vault import Vault
from backoffice.positions import levels
from signalhub.protocol.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from signalhub.protocol.wire import parse_optional_decimal

INSTRUMENT_RE = re.compile(r"^[A-Z0-9._-]{2,20}$")
PAYLOAD_MAX_BYTES = 32 * 1024
DEFAULT_LIFETIME = timedelta(seconds=60)
MAX_LIFETIME = timedelta(days=7)
MAX_QUOTES = 1000


ResponseT = TypeVar("ResponseT", bound=Message)


@dataclass(frozen=True)
class SignalDraft:
    instrument: str
    side: Side
    entry_price: Decimal | None
    stop_loss: Decimal | None
    take_profit: Decimal | None
    signal_time: datetime
    expire_time: datetime
    payload: dict[str, Any] = field(default_factory=dict)
    trailing_distance: Decimal | None = None
    breakeven_trigger: Decimal | None = None
    breakeven_offset: Decimal | None = None


def draft(
    *,
    instrument: str,
    side: Side | None,
    entry_price: str,
    stop_loss: str,
    take_profit: str,
    signal_time: datetime | None,
    expire_time: datetime | None,
    payload: dict[str, Any],
    payload_bytes: int,
    now: datetime,
    tolerance_seconds: int,
    trailing_distance: str = "",
    breakeven_trigger: str = "",
    breakeven_offset: str = "",
) -> SignalDraft:
    """Every rule of docs/contract.md's "Signal rules" (and of the hidden trailing stop and breakeven);
    all broken ones are reported together."""
    violations: list[tuple[str, str]] = []

    def decimal(value: str, name: str, *, positive: bool = True) -> Decimal | None:
        try:
            return parse_optional_decimal(value, name, positive=positive)
        except InvalidArgument as exc:
            violations.extend(exc.violations)
            return None

    if not INSTRUMENT_RE.match(instrument):
        violations.append(("instrument", "must match ^[A-Z0-9._-]{2,20}$"))
    if side is None:
        violations.append(("side", "SIDE_BUY or SIDE_SELL is required"))
    entry, stop, target = (
        decimal(entry_price, "entry_price"),
        decimal(stop_loss, "stop_loss"),
        decimal(take_profit, "take_profit"),
    )
    if side is not None and entry is not None:
        below, above = ("stop_loss", "take_profit") if side is Side.BUY else ("take_profit", "stop_loss")
        given = {"stop_loss": stop, "take_profit": target}
        if given[below] is not None and not given[below] < entry:  # type: ignore[operator]
            violations.append((below, f"must be below entry_price for a {side.value} signal"))
        if given[above] is not None and not given[above] > entry:  # type: ignore[operator]
            violations.append((above, f"must be above entry_price for a {side.value} signal"))
    elif (
        side is not None
        and stop is not None
        and target is not None
        and ((side is Side.BUY and not stop < target) or (side is Side.SELL and not stop > target))
    ):
        violations.append(("stop_loss", f"is on the wrong side of take_profit for a {side.value} signal"))
    trailing = decimal(trailing_distance, "trailing_distance")
    trigger = decimal(breakeven_trigger, "breakeven_trigger")
    offset = decimal(breakeven_offset, "breakeven_offset", positive=False)
    violations += levels.check_breakeven(trigger, offset)
    if signal_time is None:
        violations.append(("signal_time", "is required"))
    elif abs((signal_time - now).total_seconds()) > tolerance_seconds:
        violations.append(("signal_time", f"must be within {tolerance_seconds} s of the server clock"))
    if payload_bytes > PAYLOAD_MAX_BYTES:
        violations.append(("payload", f"must be at most {PAYLOAD_MAX_BYTES} bytes serialised"))
    expires = None
    if signal_time is not None:
        expires = expire_time or signal_time + DEFAULT_LIFETIME
        if expires <= signal_time:
            violations.append(("expire_time", "must be after signal_time"))
        elif expires - signal_time > MAX_LIFETIME:
            violations.append(("expire_time", "must be at most 7 days after signal_time"))
    if violations:
        raise InvalidArgument(violations)
    assert side is not None and signal_time is not None and expires is not None
    return SignalDraft(instrument, side, entry, stop, target, signal_time, expires, payload, trailing, trigger, offset)


_SUBMIT = db.function_call("submit_signal", 36)


async def submit(
    sessions: async_sessionmaker[AsyncSession],
    vault: Vault,
    producer_id: uuid.UUID,
    key: idempotency.Key | None,
    signal: SignalDraft,
    now: datetime,
    respond: Callable[[Signal], ResponseT],
) -> approvals.Decision[ResponseT]:
    """Store the signal once per request_id with its audit row, a PENDING approval per MANUAL subscriber
    and, per AUTO subscriber, an approval with a delivery per ACTIVE device sized within its guards
    (``approvals.plan_fan_out``); under a request_id, its idempotency record holds the answer ``respond``
    gives. One Postgres function (``submit_signal``) writes it all in one transaction; it first checks
    that the plan still holds (the AUTO subscriptions it was made for, the room its capped devices had)
    and answers 'plan' when not, so a signal no AUTO subscriber takes costs one statement, and a fan-out
    one read and a second call; a plan overtaken again is made with its capped devices locked. A request
    seen before gets its first answer; a late retry whose record was purged is REQUEST_ID_REUSED."""
    row = _signal_row(producer_id, key.request_id if key else None, signal)
    row.cancel_closes_positions = False
    row.created_at = now
    response = respond(row)
    record_id = uuid.uuid4()
    sealed = idempotency.seal_response(vault, record_id, response) if key else None
    details = json.dumps({"instrument": signal.instrument, "side": signal.side.value})
    fan_out = approvals.FanOut()  # nothing planned: the plan while no AUTO subscriber takes the signal
    stale = False
    locked: list[uuid.UUID] = []
    for _ in range(db.DECISION_ATTEMPTS):
        async with db.driver(sessions) as connection:
            try:
                async with deliveries.serialized(connection, locked):
                    if stale:
                        fan_out = await approvals.plan_fan_out(connection, row, now)
                    written = await connection.fetchrow(
                        _SUBMIT,
                        row.id,
                        producer_id,
                        row.request_id,
                        signal.instrument,
                        signal.side.value,
                        signal.entry_price,
                        signal.stop_loss,
                        signal.take_profit,
                        signal.signal_time,
                        signal.expire_time,
                        json.dumps(signal.payload),
                        signal.trailing_distance,
                        signal.breakeven_trigger,
                        signal.breakeven_offset,
                        now,
                        record_id,
                        key.method if key else None,
                        key.request_hash if key else None,
                        sealed,
                        uuid.uuid4(),
                        details,
                        *fan_out.arguments(),
                    )
            except asyncpg.UniqueViolationError:
                raise idempotency.request_id_reused() from None
            except asyncpg.PostgresError as exc:
                if not db.is_race(exc):
                    raise
                continue
        if written is None:
            continue  # the record a replay points to was purged meanwhile: the request is new again
        if written["o_outcome"] == "plan":
            # Planned again; after a plan of its own was overtaken, with its capped devices locked first.
            stale, locked = True, deliveries.guards_capped(fan_out.guards)
            continue
        if written["o_outcome"] == "replay":
            assert key is not None
            stored = idempotency.answer(
                vault, key, written["o_record_id"], written["o_request_hash"], written["o_response"], type(response)
            )
            return approvals.Decision(stored, (), repeated=True)
        return approvals.Decision(response, tuple(fan_out.planned.woken))
    raise db.lost_race()


def _signal_row(producer_id: uuid.UUID, request_id: uuid.UUID | None, signal: SignalDraft) -> Signal:
    return Signal(
        id=uuid.uuid4(),
        producer_id=producer_id,
        request_id=request_id,
        instrument=signal.instrument,
        side=signal.side,
        entry_price=signal.entry_price,
        stop_loss=signal.stop_loss,
        take_profit=signal.take_profit,
        signal_time=signal.signal_time,
        expire_time=signal.expire_time,
        payload=signal.payload,
        trailing_distance=signal.trailing_distance,
        breakeven_trigger=signal.breakeven_trigger,
        breakeven_offset=signal.breakeven_offset,
        status=SignalStatus.OPEN,
    )


@dataclass(frozen=True)
class Cancellation:
    signal: Signal
    woken_devices: tuple[uuid.UUID, ...]
    closing_positions: tuple[uuid.UUID, ...] = ()


async def cancel(
    session: AsyncSession,
    caller: Caller,
    signal_id: uuid.UUID,
    *,
    reason: str,
    request_id: str,
    close_positions: bool = False,
    now: datetime | None = None,
) -> Cancellation:
    """Cancel an open signal: undecided approvals expire and deliveries without a RECEIVED ack are
    cancelled (never re-sent). With ``close_positions``, every open position from it also gets a
    SIGNAL_CANCELLED close command (so does one a late fill opens: ``backoffice.positions.opening``); asked
    again of a signal already cancelled without it, only that happens."""
    now = now or datetime.now(UTC)
    if caller.kind is ActorType.USER and not caller.is_admin:
        raise PermissionDenied("only the signal's producer or an admin may cancel it")
    # FOR NO KEY UPDATE: it still waits for approvals (FOR SHARE), but not for a fill's position insert,
    # whose foreign key only takes KEY SHARE while that transaction holds the delivery the cancel locks next.
    signal = await session.get(Signal, signal_id, with_for_update={"key_share": True})
    if signal is None or (caller.kind is ActorType.PRODUCER and signal.producer_id != caller.id):
        raise NotFound("signal")
    status = signal.status_at(now)
    if status is SignalStatus.CANCELLED and (signal.cancel_closes_positions or not close_positions):
        return Cancellation(signal, ())
    if status is SignalStatus.EXPIRED:
        raise FailedPrecondition("the signal has expired", reason="SIGNAL_NOT_OPEN")
    if status is SignalStatus.OPEN:
        signal.status = SignalStatus.CANCELLED
        signal.cancelled_at = now
        signal.cancel_reason = reason[:500] or None
        await approvals.expire_undecided(session, [signal.id], now, "signal cancelled")
    # Also when only the positions are closed now: it locks the deliveries a late fill would need.
    await deliveries.cancel_for_signal(session, signal.id, now)
    queued: list[positions.Queued] = []
    if close_positions:
        signal.cancel_closes_positions = True
        queued = await positions.close_open(
            session,
            Position.signal_id == signal.id,
            CloseReason.SIGNAL_CANCELLED,
            now,
            actor_type=caller.kind,
            actor_id=caller.id,
        )
    audit.record(
        session,
        caller,
        "CancelSignal",
        "signal",
        signal.id,
        details={"reason": signal.cancel_reason or "", "positions_closed": len(queued)},
        request_id=request_id,
    )
    await session.flush()
    return Cancellation(signal, tuple(q.device_id for q in queued), tuple(q.position_id for q in queued))


def _visible_to(caller: Caller) -> Any:
    """Users see the signals of producers they subscribe to, and those they were asked to decide on."""
    return or_(
        exists().where(
            Subscription.user_id == caller.id,
            Subscription.producer_id == Signal.producer_id,
            Subscription.status == SubscriptionStatus.ACTIVE,
        ),
        exists().where(Approval.user_id == caller.id, Approval.signal_id == Signal.id),
    )


@dataclass(frozen=True)
class SignalView:
    """A signal and what this caller may see of it."""

    signal: Signal
    status: SignalStatus
    show_payload: bool
    show_levels: bool


async def get(session: AsyncSession, caller: Caller, signal_id: uuid.UUID, now: datetime | None = None) -> SignalView:
    """The signal, as the caller may see it; NOT_FOUND when it may not see it at all."""
    found = await get_many(session, caller, [signal_id], now)
    if not found:
        raise NotFound("signal")
    return found[0]


async def get_many(
    session: AsyncSession, caller: Caller, signal_ids: Sequence[uuid.UUID], now: datetime | None = None
) -> list[SignalView]:
    """Those of ``signal_ids`` the caller may see, each as the caller may see it (``_levels_shown``), in one
    statement; the others are simply left out."""
    if not signal_ids:
        return []
    now = now or datetime.now(UTC)
    query = select(Signal, _levels_shown(caller)).where(any_id(Signal.id, signal_ids))
    if caller.kind is ActorType.PRODUCER:
        query = query.where(Signal.producer_id == caller.id)
    elif not caller.is_admin:
        query = query.where(_visible_to(caller))
    return _views(caller, (await session.execute(query)).all(), now)


def _views(caller: Caller, rows: Sequence[Any], now: datetime) -> list[SignalView]:
    """(signal, levels shown) rows as views: the payload only for the producer that owns it and admins."""
    return [
        SignalView(
            signal,
            signal.status_at(now),
            show_payload=caller.is_admin or (caller.kind is ActorType.PRODUCER and caller.id == signal.producer_id),
            show_levels=bool(levels_shown),
        )
        for signal, levels_shown in rows
    ]


def view_for_producer(signal: Signal, now: datetime | None = None) -> SignalView:
    return SignalView(signal, signal.status_at(now or datetime.now(UTC)), show_payload=True, show_levels=True)


def _levels_shown(caller: Caller) -> ColumnElement[bool]:
    """What ``_view`` decides signal by signal, as a column of the list's one query: the producer that owns
    a signal and admins see its hidden levels; a user, those of a signal that opened a position on one of
    its devices."""
    if caller.is_admin:
        return true()
    # IN: Postgres hashes the signal ids of the caller's positions once for the whole page. A correlated
    # EXISTS here gets hashed too, yet ran twenty times slower (EXPLAIN ANALYZE on 10,000 signals).
    holds_position = Signal.id.in_(
        select(Position.signal_id).join(Device, Device.id == Position.device_id).where(Device.user_id == caller.id)
    )
    if caller.kind is ActorType.PRODUCER:
        return or_(Signal.producer_id == caller.id, holds_position)
    return holds_position


async def list_signals(
    session: AsyncSession,
    caller: Caller,
    *,
    producer_id: uuid.UUID | None,
    status: SignalStatus | None,
    page_size: int,
    page_token: str,
    now: datetime | None = None,
) -> tuple[list[SignalView], str]:
    """The signals the caller may see (admins: all; producers: their own; users: those of producers they
    subscribe to), newest first, with their status as of ``now``. One statement for the whole page, which
    walks the index on (created_at, id) from the page token's place and stops once the page is full."""
    now = now or datetime.now(UTC)
    size = paging.page_size(page_size)
    filters = [producer_id, status]
    cursor = paging.decode_token(page_token, filters)
    query = select(Signal, _levels_shown(caller))
    if not caller.is_admin:
        query = query.where(_visible_to(caller))
    if producer_id is not None:
        query = query.where(Signal.producer_id == producer_id)
    if status is SignalStatus.OPEN:
        query = query.where(Signal.status == SignalStatus.OPEN, Signal.expire_time > now)
    elif status is SignalStatus.EXPIRED:
        query = query.where(
            or_(
                Signal.status == SignalStatus.EXPIRED,
                (Signal.status == SignalStatus.OPEN) & (Signal.expire_time <= now),
            )
        )
    elif status is not None:
        query = query.where(Signal.status == status)
    if cursor is not None:
        # One row comparison, which the index seeks to (an OR of two comparisons it could only filter by).
        query = query.where(tuple_(Signal.created_at, Signal.id) < tuple_(cursor.created_at, cursor.id))
    query = query.order_by(Signal.created_at.desc(), Signal.id.desc()).limit(size + 1)
    rows = (await session.execute(query)).all()
    token = ""
    if len(rows) > size:
        last = rows[size - 1][0]
        token = paging.encode_token(paging.Cursor(last.created_at, last.id), filters)
        rows = rows[:size]
    return _views(caller, rows, now), token


async def expire_due(session: AsyncSession, now: datetime) -> int:
    """Write down what Signal.status_at already reports: OPEN signals past expire_time become EXPIRED."""
    ids: Sequence[uuid.UUID] = (
        await session.scalars(
            update(Signal)
            .where(Signal.status == SignalStatus.OPEN, Signal.expire_time <= now)
            .values(status=SignalStatus.EXPIRED)
            .returning(Signal.id)
        )
    ).all()
    if ids:
        await approvals.expire_undecided(session, ids, now, "signal expired")
    return len(ids)
