"""Approvals: a user's decision on one signal, and the sized deliveries an approval creates.

An approval and its deliveries (one per chosen ACTIVE device, the instrument passed through that device's
symbol map) are written in one transaction; the caller publishes wake-up hints after the commit.
"""

from __future__ import annotations

import enum
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import asyncpg
from google.protobuf.message import Message
from sqlalchemy import bindparam, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backoffice import audit, deliveries, sizing
from backoffice.models import (
    Approval,
    ApprovalStatus,
    Device,
    DeviceStatus,
    Side,
    Signal,
    SignalStatus,
    SizingMode,
    Subscription,
    SubscriptionMode,
    SubscriptionStatus,
)
from backoffice.platform import db, idempotency, paging
from backoffice.platform.auth import Caller
from backoffice.platform.vault import Vault
from signalhub.protocol.errors import FailedPrecondition, NotFound

ResponseT = TypeVar("ResponseT", bound=Message)


@dataclass(frozen=True)
class Decision:
    """An approval as decided, and the devices whose new deliveries await a wake-up hint."""

    approval: Approval
    woken_devices: tuple[uuid.UUID, ...]


# Built once: it runs on every SubmitSignal, and building a statement costs more than running it.
_ACTIVE_SUBSCRIPTIONS = select(Subscription).where(
    Subscription.producer_id == bindparam("producer_id"), Subscription.status == SubscriptionStatus.ACTIVE
)


def is_open(signal: Signal, now: datetime) -> bool:
    return signal.status_at(now) is SignalStatus.OPEN


async def open_approvals(session: AsyncSession, signal: Signal, now: datetime) -> tuple[uuid.UUID, ...]:
    """On a signal's arrival: a PENDING approval per MANUAL subscriber, an approval with deliveries per
    AUTO subscriber (subscriptions whose instrument allow-list admits the signal); returns the devices
    to wake. However many subscribers, that is one query for their devices and two bulk INSERTs (the
    approvals, then their deliveries): a fan-out's cost must not grow a statement per device."""
    subscriptions = [
        s
        for s in (await session.scalars(_ACTIVE_SUBSCRIPTIONS, {"producer_id": signal.producer_id})).all()
        if not s.instruments or signal.instrument in s.instruments
    ]
    auto_users = {s.user_id for s in subscriptions if s.mode is SubscriptionMode.AUTO}
    devices = await deliveries.active_recipients(session, auto_users, signal.instrument)
    guards = await deliveries.load_guards(session, [d.id for chosen in devices.values() for d in chosen], now)
    planned = deliveries.Planned()
    rows = []
    for subscription in subscriptions:
        row = _pending_row(signal, subscription)
        if subscription.mode is SubscriptionMode.AUTO:
            chosen = devices.get(subscription.user_id, [])
            rule = _rule(subscription, None)
            skipped = deliveries.plan_for_approval(planned, row["id"], signal, chosen, rule, None, now, guards)
            row.update(
                status=ApprovalStatus.APPROVED,
                automatic=True,
                decided_at=now,
                device_ids=[d.id for d in chosen],
                reason=_approval_reason(chosen, skipped),
            )
        rows.append(row)
    if rows:
        await session.execute(insert(Approval), rows)
    await deliveries.insert_planned(session, planned)
    return tuple(planned.woken)


def _pending_row(signal: Signal, subscription: Subscription) -> dict[str, Any]:
    """A PENDING approval's columns (every one a decision sets too, so rows can be inserted together)."""
    return {
        "id": uuid.uuid4(),
        "signal_id": signal.id,
        "subscription_id": subscription.id,
        "user_id": subscription.user_id,
        "status": ApprovalStatus.PENDING,
        "automatic": False,
        "device_ids": [],
        "decided_at": None,
        "reason": None,
    }


async def _approval_for(
    session: AsyncSession, caller: Caller, signal_id: uuid.UUID
) -> tuple[Approval, Signal, Subscription]:
    """The caller's approval row for a signal (created now if the caller subscribed after it arrived)."""
    # FOR SHARE: a concurrent CancelSignal (FOR UPDATE) waits, or this sees the signal cancelled.
    signal = await session.get(Signal, signal_id, with_for_update={"read": True})
    if signal is None:
        raise NotFound("signal")
    approval = await session.scalar(
        select(Approval).where(Approval.signal_id == signal_id, Approval.user_id == caller.id).with_for_update()
    )
    if approval is not None:
        subscription = await session.get(Subscription, approval.subscription_id)
        assert subscription is not None
        return approval, signal, subscription
    subscription = await session.scalar(
        select(Subscription).where(
            Subscription.user_id == caller.id,
            Subscription.producer_id == signal.producer_id,
            Subscription.status == SubscriptionStatus.ACTIVE,
        )
    )
    if subscription is None or (subscription.instruments and signal.instrument not in subscription.instruments):
        raise NotFound("signal")  # not subscribed: the signal is not the caller's to see
    approval = Approval(**_pending_row(signal, subscription))
    try:
        async with session.begin_nested():
            session.add(approval)
            await session.flush()
    except IntegrityError:  # a concurrent decision created it first: use that one
        return await _approval_for(session, caller, signal_id)
    return approval, signal, subscription


async def approve_signal(
    session: AsyncSession,
    caller: Caller,
    signal_id: uuid.UUID,
    *,
    volume: Decimal | None,
    device_ids: Sequence[uuid.UUID],
    request_id: str,
    now: datetime | None = None,
) -> Decision:
    """Approve the caller's pending approval of ``signal_id``: deliveries to the chosen ACTIVE devices (all
    of them when none are named), in the caller's transaction. Approving twice returns the approval;
    a rejected, expired or cancelled one is FAILED_PRECONDITION."""
    now = now or datetime.now(UTC)
    approval, signal, subscription = await _approval_for(session, caller, signal_id)
    if approval.status is ApprovalStatus.APPROVED:
        return Decision(approval, ())  # approving twice is idempotent
    if approval.status is ApprovalStatus.REJECTED:
        raise FailedPrecondition("the signal was already rejected", reason="ALREADY_REJECTED")
    if approval.status is ApprovalStatus.EXPIRED or not is_open(signal, now):
        raise FailedPrecondition(f"the signal is {signal.status_at(now).value.lower()}", reason="SIGNAL_NOT_OPEN")
    devices = await _chosen_devices(session, caller, device_ids)
    woken = await _approve(session, approval, signal, subscription, volume, devices, now, decided_by=caller.id)
    audit.record(
        session,
        caller,
        "ApproveSignal",
        "signal",
        signal.id,
        details={"approval_id": str(approval.id), "deliveries": len(approval.device_ids)},
        request_id=request_id,
    )
    return Decision(approval, woken)


async def reject_signal(
    session: AsyncSession,
    caller: Caller,
    signal_id: uuid.UUID,
    *,
    reason: str,
    request_id: str,
    now: datetime | None = None,
) -> Approval:
    """Reject the caller's pending approval of ``signal_id`` (rejecting twice returns it); an approved,
    expired or cancelled one is FAILED_PRECONDITION."""
    now = now or datetime.now(UTC)
    approval, signal, _ = await _approval_for(session, caller, signal_id)
    if approval.status is ApprovalStatus.REJECTED:
        return approval
    if approval.status is ApprovalStatus.APPROVED:
        raise FailedPrecondition("the signal was already approved", reason="ALREADY_APPROVED")
    if approval.status is ApprovalStatus.EXPIRED or not is_open(signal, now):
        raise FailedPrecondition(f"the signal is {signal.status_at(now).value.lower()}", reason="SIGNAL_NOT_OPEN")
    approval.status = ApprovalStatus.REJECTED
    approval.decided_by = caller.id
    approval.decided_at = now
    approval.reason = reason[:500] or None
    audit.record(
        session,
        caller,
        "RejectSignal",
        "signal",
        signal.id,
        details={"approval_id": str(approval.id)},
        request_id=request_id,
    )
    return approval


async def _chosen_devices(session: AsyncSession, caller: Caller, device_ids: Sequence[uuid.UUID]) -> list[Device]:
    if not device_ids:
        query = select(Device).where(Device.user_id == caller.id, Device.status == DeviceStatus.ACTIVE)
        return list((await session.scalars(query.order_by(Device.created_at, Device.id))).all())
    found = {
        d.id: d
        for d in (
            await session.scalars(select(Device).where(Device.id.in_(device_ids), Device.user_id == caller.id))
        ).all()
    }
    missing = [d for d in device_ids if d not in found]
    if missing:
        raise NotFound("device")
    inactive = [str(d.id) for d in found.values() if d.status is not DeviceStatus.ACTIVE]
    if inactive:
        raise FailedPrecondition(
            "only ACTIVE devices receive deliveries",
            reason="DEVICE_NOT_ACTIVE",
            metadata={"device_ids": ",".join(inactive)},
        )
    return [found[d] for d in dict.fromkeys(device_ids)]


async def _approve(
    session: AsyncSession,
    approval: Approval,
    signal: Signal,
    subscription: Subscription,
    volume: Decimal | None,
    devices: list[Device],
    now: datetime,
    *,
    decided_by: uuid.UUID,
) -> tuple[uuid.UUID, ...]:
    """Mark the approval APPROVED and add one delivery per device; returns the devices to wake."""
    guards = await deliveries.load_guards(session, [d.id for d in devices], now)
    planned = _mark_approved(approval, signal, subscription, volume, devices, now, decided_by=decided_by, guards=guards)
    await session.flush()
    await deliveries.insert_planned(session, planned)
    return tuple(planned.woken)


def _mark_approved(
    approval: Approval,
    signal: Signal,
    subscription: Subscription,
    volume: Decimal | None,
    devices: Sequence[deliveries.Recipient],
    now: datetime,
    *,
    decided_by: uuid.UUID,
    guards: deliveries.Guards | None = None,
) -> deliveries.Planned:
    """The decision in memory, for both ways of writing it: the approval APPROVED by a person, and one
    delivery planned per device (sized by the subscription's rule, or ``volume``, within ``guards``)."""
    planned = deliveries.Planned()
    rule = _rule(subscription, volume)
    skipped = deliveries.plan_for_approval(planned, approval.id, signal, devices, rule, volume, now, guards)
    approval.status = ApprovalStatus.APPROVED
    approval.automatic = False
    approval.decided_by = decided_by
    approval.decided_at = now
    approval.volume = volume
    approval.device_ids = [d.id for d in devices]
    approval.reason = _approval_reason(devices, skipped)
    return planned


# What ApproveSignal needs to decide, read in one statement without locks: the signal, the caller's
# approval and its subscription, and the devices chosen (the named ones, or every ACTIVE one).
_READ_FOR_APPROVAL = """
SELECT s.instrument, s.side, s.entry_price, s.stop_loss, s.expire_time, s.status AS signal_status,
       a.id AS approval_id, a.status AS approval_status, a.subscription_id, a.created_at AS approval_created_at,
       sub.sizing_mode, sub.sizing_value, sub.max_volume,
       d.id AS device_id, d.name AS device_name, d.symbol_map, d.last_hello, d.status AS device_status,
       EXISTS (SELECT 1 FROM risk_policies p WHERE p.device_id = d.id)
           OR EXISTS (SELECT 1 FROM stopouts o WHERE o.device_id = d.id AND o.reset_time IS NULL) AS guarded
FROM signals s
JOIN approvals a ON a.signal_id = s.id AND a.user_id = $2
JOIN subscriptions sub ON sub.id = a.subscription_id
LEFT JOIN devices d ON d.user_id = $2
    AND (d.id = ANY($3::uuid[]) OR (cardinality($3::uuid[]) = 0 AND d.status = 'ACTIVE'))
WHERE s.id = $1
ORDER BY d.created_at, d.id
"""

# The decision, in one statement (its own transaction): the approval, still PENDING on a signal still OPEN,
# becomes APPROVED with its deliveries, its audit row and its idempotency record holding the answer. The
# signal is locked first (FOR SHARE), then the approval (FOR UPDATE), in the order ``approve_signal``,
# CancelSignal and expiry take them, so none of them can deadlock with this. Nothing is written when the
# approval was decided meanwhile, the signal closed, or the request_id was seen before: then no row comes
# back and ``approve_signal`` answers.
_DECIDE_IN_ONE = """
WITH open_signal AS MATERIALIZED (
    SELECT id FROM signals WHERE id = $15 AND status = 'OPEN' AND expire_time > $3 FOR SHARE
), pending AS (
    SELECT a.id, a.signal_id FROM approvals a JOIN open_signal s ON s.id = a.signal_id
    WHERE a.id = $1 AND a.status = 'PENDING'
    FOR UPDATE OF a
), record AS (
    INSERT INTO idempotency_records (id, caller_id, method, request_id, request_hash, response_sealed)
    SELECT $7, $2, $8, $9, $10, $11 FROM pending WHERE $9::uuid IS NOT NULL
    ON CONFLICT DO NOTHING
    RETURNING id
), approved AS (
    UPDATE approvals SET status = 'APPROVED', automatic = false, decided_by = $2, decided_at = $3, volume = $4,
                         device_ids = $5, reason = $6
    FROM pending WHERE approvals.id = pending.id AND ($9::uuid IS NULL OR EXISTS (SELECT 1 FROM record))
    RETURNING approvals.id
), delivered AS (
    INSERT INTO deliveries (id, approval_id, signal_id, device_id, instrument, side, volume, entry_price,
                            max_deviation, expire_time, state, state_reason, created_at, updated_at)
    SELECT d.* FROM approved, unnest($16::uuid[], $17::uuid[], $18::uuid[], $19::uuid[], $20::text[], $21::text[],
                                     $22::numeric[], $23::numeric[], $24::numeric[], $25::timestamptz[],
                                     $26::text[], $27::text[], $28::timestamptz[], $29::timestamptz[])
        AS d(id, approval_id, signal_id, device_id, instrument, side, volume, entry_price, max_deviation,
             expire_time, state, state_reason, created_at, updated_at)
), audited AS (
    INSERT INTO audit_events (id, actor_type, actor_id, action, object_type, object_id, details, request_id)
    SELECT $12, $13, $2, 'ApproveSignal', 'signal', $15, $14::jsonb, NULLIF($30, '') FROM approved
)
SELECT count(*) FROM approved
"""
# The columns of a planned delivery, in the order of the statement's arrays ($16 on).
_DELIVERY_COLUMNS = (
    "id",
    "approval_id",
    "signal_id",
    "device_id",
    "instrument",
    "side",
    "volume",
    "entry_price",
    "max_deviation",
    "expire_time",
    "state",
    "state_reason",
    "created_at",
    "updated_at",
)
# A lost race (deadlock, serialization failure): nothing was written, and the ORM path decides instead.
_LOST_RACE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError, asyncpg.UniqueViolationError)


@dataclass
class _ChosenDevice:
    """A device as the decision's read gives it (what ``deliveries.Recipient`` asks for)."""

    id: uuid.UUID
    name: str
    symbol_map: dict[str, str]
    last_hello: dict[str, Any] | None


@dataclass(frozen=True)
class _Decided:
    """An approval decided in memory from the decision's read: the row to write, and its deliveries."""

    approval: Approval
    signal: Signal
    planned: deliveries.Planned


def _decide(
    rows: Sequence[Any],
    caller: Caller,
    signal_id: uuid.UUID,
    volume: Decimal | None,
    device_ids: Sequence[uuid.UUID],
    now: datetime,
) -> _Decided | None:
    """What ``approve_signal`` would decide, from the read's rows; None where it must decide itself (no
    PENDING approval, a closed signal, a named device that is not the caller's ACTIVE one, or one with risk
    guards: counting what it holds takes a lock this path does not hold)."""
    if not rows or rows[0]["approval_status"] != ApprovalStatus.PENDING.value or any(r["guarded"] for r in rows):
        return None
    first = rows[0]
    signal = Signal(
        id=signal_id,
        instrument=first["instrument"],
        side=Side(first["side"]),
        entry_price=first["entry_price"],
        stop_loss=first["stop_loss"],
        expire_time=first["expire_time"],
        status=SignalStatus(first["signal_status"]),
    )
    found = {
        r["device_id"]: r for r in rows if r["device_id"] is not None and r["device_status"] == DeviceStatus.ACTIVE
    }
    order = list(dict.fromkeys(device_ids)) if device_ids else list(found)
    if not is_open(signal, now) or any(d not in found for d in order):
        return None
    devices = [
        # JSONB comes back decoded: the engine's connections carry SQLAlchemy's JSON codecs.
        _ChosenDevice(d, found[d]["device_name"], found[d]["symbol_map"], found[d]["last_hello"])
        for d in order
    ]
    subscription = Subscription(
        sizing_mode=SizingMode(first["sizing_mode"]) if first["sizing_mode"] else None,
        sizing_value=first["sizing_value"],
        max_volume=first["max_volume"],
    )
    approval = Approval(
        id=first["approval_id"],
        signal_id=signal_id,
        subscription_id=first["subscription_id"],
        user_id=caller.id,
        created_at=first["approval_created_at"],
    )
    planned = _mark_approved(approval, signal, subscription, volume, devices, now, decided_by=caller.id)
    return _Decided(approval, signal, planned)


async def approve_in_two_statements(
    sessions: async_sessionmaker[AsyncSession],
    vault: Vault,
    caller: Caller,
    key: idempotency.Key | None,
    signal_id: uuid.UUID,
    *,
    volume: Decimal | None,
    device_ids: Sequence[uuid.UUID],
    request_id: str,
    respond: Callable[[Approval, datetime], ResponseT],
) -> tuple[ResponseT, tuple[uuid.UUID, ...]] | None:
    """The common approval on asyncpg: one read, then one statement writing the decision, its deliveries,
    its audit row and its idempotency record with the answer ``respond`` gives (the approval and the
    signal's expire_time). Returns that answer and the devices to wake, or None when ``approve_signal``
    must decide instead: no PENDING approval yet, one decided or a signal closed (it gives the answer or
    the error), a device named that is not the caller's ACTIVE one, a request_id seen before, or a race
    lost to a concurrent transaction. The ORM path costs a dozen round trips between the decision and
    its commit; this one costs one."""
    async with db.driver(sessions) as connection:
        rows = await connection.fetch(_READ_FOR_APPROVAL, signal_id, caller.id, list(device_ids))
        now = datetime.now(UTC)
        decided = _decide(rows, caller, signal_id, volume, device_ids, now)
        if decided is None:
            return None
        approval, planned = decided.approval, decided.planned
        assert all(tuple(row) == _DELIVERY_COLUMNS for row in planned.rows), "a planned delivery's columns changed"
        response = respond(approval, decided.signal.expire_time)
        record_id = uuid.uuid4()
        try:
            written = await connection.fetchval(
                _DECIDE_IN_ONE,
                approval.id,
                caller.id,
                now,
                volume,
                approval.device_ids,
                approval.reason,
                record_id,
                key.method if key else None,
                key.request_id if key else None,
                key.request_hash if key else None,
                idempotency.seal_response(vault, record_id, response) if key else None,
                uuid.uuid4(),
                caller.kind.value,
                json.dumps({"approval_id": str(approval.id), "deliveries": len(approval.device_ids)}),
                signal_id,
                *([_driver_value(row[column]) for row in planned.rows] for column in _DELIVERY_COLUMNS),
                request_id,
            )
        except _LOST_RACE:
            return None
    return (response, tuple(planned.woken)) if written else None


def _driver_value(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


def _rule(subscription: Subscription, volume: Decimal | None) -> sizing.Rule:
    """The subscription's sizing rule; without one, the approval must name a volume."""
    if subscription.sizing_mode is None or subscription.sizing_value is None:
        if volume is None:
            raise FailedPrecondition(
                "the subscription has no sizing rule: give volume when approving",
                reason="VOLUME_REQUIRED",
                metadata={"field": "volume"},
            )
        return sizing.Rule(SizingMode.FIXED_VOLUME, volume, subscription.max_volume)
    return sizing.Rule(subscription.sizing_mode, subscription.sizing_value, subscription.max_volume)


def _approval_reason(devices: Sequence[deliveries.Recipient], skipped: list[str]) -> str | None:
    """Why an approval delivers to fewer devices than the account has: none ACTIVE, or some skipped."""
    if not devices:
        return "no ACTIVE device to deliver to"
    if skipped:
        return "; ".join(skipped)[:1000]
    return None


async def list_pending(
    session: AsyncSession, caller: Caller, *, page: paging.PageRequest, now: datetime | None = None
) -> tuple[list[Approval], str]:
    now = now or datetime.now(UTC)
    query = (
        select(Approval)
        .join(Signal, Signal.id == Approval.signal_id)
        .where(
            Approval.user_id == caller.id,
            Approval.status == ApprovalStatus.PENDING,
            Signal.status == SignalStatus.OPEN,
            Signal.expire_time > now,
        )
    )
    return await paging.fetch(session, query, Approval, page, filters=["pending"], newest_first=False)


async def list_approvals(
    session: AsyncSession,
    caller: Caller,
    *,
    signal_id: uuid.UUID | None,
    status: ApprovalStatus | None,
    page: paging.PageRequest,
) -> tuple[list[Approval], str]:
    query = select(Approval)
    if not caller.is_admin:
        query = query.where(Approval.user_id == caller.id)
    if signal_id is not None:
        query = query.where(Approval.signal_id == signal_id)
    if status is not None:
        query = query.where(Approval.status == status)
    return await paging.fetch(session, query, Approval, page, filters=[signal_id, status])


async def expire_undecided(session: AsyncSession, signal_ids: Sequence[uuid.UUID], now: datetime, reason: str) -> None:
    """Pending approvals of signals that expired or were cancelled can no longer be decided."""
    for approval in (
        await session.scalars(
            select(Approval).where(Approval.signal_id.in_(signal_ids), Approval.status == ApprovalStatus.PENDING)
        )
    ).all():
        approval.status = ApprovalStatus.EXPIRED
        approval.decided_at = now
        approval.reason = reason


async def expire_times(session: AsyncSession, signal_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, datetime]:
    """When each signal stops being decidable (an approval shows it as its expire_time)."""
    if not signal_ids:
        return {}
    rows = await session.execute(select(Signal.id, Signal.expire_time).where(Signal.id.in_(set(signal_ids))))
    return {signal_id: expire_time for signal_id, expire_time in rows}
