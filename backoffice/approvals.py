"""Approvals: a user's decision on one signal, and the sized deliveries an approval creates.

An approval and its deliveries (one per chosen ACTIVE device, the instrument passed through that device's
symbol map) are written in one transaction; the caller publishes wake-up hints after the commit. Both ways
an approval is decided have one implementation each: ``approve_signal`` for a person's, ``plan_fan_out``
(written by ``backoffice.signals.submit``) for the rule's on a signal's arrival. Each reads what it decides
from in one statement, applies the rules in Python, and has one Postgres function (migration 0012) write
the decision whole after checking that what it read still holds.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Generic, TypeVar

import asyncpg
from google.protobuf.message import Message
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backoffice import audit, deliveries, sizing
from backoffice.models import (
    Approval,
    ApprovalStatus,
    DeviceStatus,
    Side,
    Signal,
    SignalStatus,
    SizingMode,
    Subscription,
    SubscriptionStatus,
)
from backoffice.platform import db, idempotency, paging
from backoffice.platform.auth import Caller
from backoffice.platform.vault import Vault
from signalhub.protocol.errors import FailedPrecondition, NotFound

ResponseT = TypeVar("ResponseT", bound=Message)


@dataclass(frozen=True)
class Decision(Generic[ResponseT]):
    """The answer to a decision (an approval; a signal's submission, with its fan-out), and the devices
    whose new deliveries await a wake-up hint; ``repeated`` when the answer is the first one to a
    request_id seen before."""

    response: ResponseT
    woken_devices: tuple[uuid.UUID, ...]
    repeated: bool = False


def is_open(signal: Signal, now: datetime) -> bool:
    return signal.status_at(now) is SignalStatus.OPEN


async def _approval_for(session: AsyncSession, caller: Caller, signal_id: uuid.UUID) -> tuple[Approval, Signal]:
    """The caller's approval row for a signal (created now if the caller subscribed after it arrived), for
    a rejection."""
    # FOR SHARE: a concurrent CancelSignal (FOR UPDATE) waits, or this sees the signal cancelled.
    signal = await session.get(Signal, signal_id, with_for_update={"read": True})
    if signal is None:
        raise NotFound("signal")
    approval = await session.scalar(
        select(Approval).where(Approval.signal_id == signal_id, Approval.user_id == caller.id).with_for_update()
    )
    if approval is not None:
        return approval, signal
    subscription = await session.scalar(
        select(Subscription).where(
            Subscription.user_id == caller.id,
            Subscription.producer_id == signal.producer_id,
            Subscription.status == SubscriptionStatus.ACTIVE,
        )
    )
    if subscription is None or (subscription.instruments and signal.instrument not in subscription.instruments):
        raise NotFound("signal")  # not subscribed: the signal is not the caller's to see
    approval = Approval(
        id=uuid.uuid4(),
        signal_id=signal.id,
        subscription_id=subscription.id,
        user_id=subscription.user_id,
        status=ApprovalStatus.PENDING,
        automatic=False,
        device_ids=[],
    )
    try:
        async with session.begin_nested():
            session.add(approval)
            await session.flush()
    except IntegrityError:  # a concurrent decision created it first: use that one
        return await _approval_for(session, caller, signal_id)
    return approval, signal


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
    approval, signal = await _approval_for(session, caller, signal_id)
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


def _approval_reason(devices: Sequence[deliveries.Recipient], skipped: list[str]) -> str | None:
    """Why an approval delivers to fewer devices than the account has: none ACTIVE, or some skipped."""
    if not devices:
        return "no ACTIVE device to deliver to"
    if skipped:
        return "; ".join(skipped)[:1000]
    return None


def _rule(terms: Mapping[str, Any], volume: Decimal | None) -> sizing.Rule:
    """The subscription's sizing rule (a read's ``sizing_mode``, ``sizing_value`` and ``max_volume``);
    without one, the approval must name a volume."""
    if terms["sizing_mode"] is None or terms["sizing_value"] is None:
        if volume is None:
            raise FailedPrecondition(
                "the subscription has no sizing rule: give volume when approving",
                reason="VOLUME_REQUIRED",
                metadata={"field": "volume"},
            )
        return sizing.Rule(SizingMode.FIXED_VOLUME, volume, terms["max_volume"])
    return sizing.Rule(SizingMode(terms["sizing_mode"]), terms["sizing_value"], terms["max_volume"])


@dataclass
class FanOut:
    """A signal's AUTO approvals as planned: one per AUTO subscription taking it, each with a delivery per
    ACTIVE device of its subscriber, and the guards they were planned within. Empty, it is the plan for a
    signal no AUTO subscriber takes."""

    subscriptions: list[uuid.UUID] = field(default_factory=list)
    approvals: list[uuid.UUID] = field(default_factory=list)
    reasons: list[str | None] = field(default_factory=list)
    planned: deliveries.Planned = field(default_factory=deliveries.Planned)
    guards: dict[uuid.UUID, deliveries.DeviceGuard] = field(default_factory=dict)

    def arguments(self) -> list[Any]:
        """The plan as ``submit_signal``'s last fifteen arguments."""
        return [
            self.subscriptions,
            self.approvals,
            self.reasons,
            *deliveries.guards_counted(self.guards),
            *deliveries.planned_columns(self.planned),
        ]


# The AUTO subscriptions taking a signal ($1 producer, $2 instrument, $3 now), each with its subscriber's
# ACTIVE devices (oldest first) and their guards: everything the fan-out plans from, in one read.
_READ_FAN_OUT = f"""
SELECT s.id AS subscription_id, s.sizing_mode, s.sizing_value, s.max_volume,
       {deliveries.recipient_columns("$2")}, {deliveries.GUARD_COLUMNS}
FROM subscriptions s
LEFT JOIN devices d ON d.user_id = s.user_id AND d.status = 'ACTIVE'
{deliveries.guard_join("$2", "$3")}
WHERE s.producer_id = $1 AND s.status = 'ACTIVE' AND s.mode = 'AUTO'
  AND (cardinality(s.instruments) = 0 OR $2 = ANY(s.instruments))
ORDER BY s.id, d.created_at, d.id
"""  # noqa: S608 - our own fragments, no input


async def plan_fan_out(connection: Any, signal: Signal, now: datetime) -> FanOut:
    """On a signal's arrival: an approval per AUTO subscription taking it (its instrument allow-list admits
    the signal), approved with a delivery per ACTIVE device of the subscriber, sized by the subscription's
    rule within the device's guards. One read however many subscribers (``connection`` is the driver's)."""
    fan_out = FanOut()
    rows = await connection.fetch(_READ_FAN_OUT, signal.producer_id, signal.instrument, now)
    for subscription_id, group in itertools.groupby(rows, key=lambda row: row["subscription_id"]):
        found = list(group)
        chosen = [deliveries.recipient(r, signal.instrument, fan_out.guards) for r in found if r["device_id"]]
        approval_id = uuid.uuid4()
        rule = _rule(found[0], None)
        skipped = deliveries.plan_for_approval(
            fan_out.planned, approval_id, signal, chosen, rule, None, now, fan_out.guards
        )
        fan_out.subscriptions.append(subscription_id)
        fan_out.approvals.append(approval_id)
        fan_out.reasons.append(_approval_reason(chosen, skipped))
    return fan_out


# What ApproveSignal decides from, in one read without locks ($1 signal, $2 caller, $3 devices named, $4 now,
# $5 request_id, $6 method): the idempotency record of a request seen before (whether or not the signal
# exists); the signal; the caller's approval and its subscription (or, with no approval yet, the caller's
# ACTIVE subscription to the producer); the devices chosen (the named ones, or every ACTIVE one) with their
# guards. At least one row: its signal_id is NULL when there is no such signal.
_READ_FOR_APPROVAL = f"""
SELECT s.id AS signal_id, s.producer_id, s.instrument, s.side, s.entry_price, s.stop_loss, s.signal_time,
       s.expire_time, s.status AS signal_status,
       a.id AS approval_id, a.status AS approval_status, a.automatic, a.volume, a.device_ids, a.decided_by,
       a.reason, a.created_at AS approval_created_at, a.decided_at,
       sub.id AS subscription_id, sub.instruments, sub.sizing_mode, sub.sizing_value, sub.max_volume,
       d.status AS device_status, {deliveries.recipient_columns("s.instrument")}, {deliveries.GUARD_COLUMNS},
       r.id AS record_id, r.request_hash, r.response_sealed
FROM (SELECT $1::uuid AS id) wanted
LEFT JOIN signals s ON s.id = wanted.id
LEFT JOIN approvals a ON a.signal_id = s.id AND a.user_id = $2
LEFT JOIN subscriptions sub ON sub.id = a.subscription_id
    OR (a.id IS NULL AND sub.user_id = $2 AND sub.producer_id = s.producer_id AND sub.status = 'ACTIVE')
LEFT JOIN devices d ON s.id IS NOT NULL AND d.user_id = $2
    AND (d.id = ANY($3::uuid[]) OR (cardinality($3::uuid[]) = 0 AND d.status = 'ACTIVE'))
{deliveries.guard_join("s.instrument", "$4")}
LEFT JOIN idempotency_records r ON r.caller_id = $2 AND r.method = $6 AND r.request_id = $5
ORDER BY d.created_at, d.id
"""  # noqa: S608 - our own fragments, no input
_APPROVE = db.function_call("approve_signal", 30)
_CLAIM = "SELECT count(*) = 0 FROM claim_request($1, $2, $3, $4, $5, $6)"  # true: claimed now


@dataclass(frozen=True)
class _Decided:
    """An approval decided in memory from the read: the row to write (``create``: it is new) and its
    deliveries; ``planned`` None when it was approved before (approving twice answers it as it is)."""

    approval: Approval
    signal: Signal
    create: bool
    planned: deliveries.Planned | None
    guards: deliveries.Guards


def _decide(
    rows: Sequence[Any],
    caller: Caller,
    signal_id: uuid.UUID,
    volume: Decimal | None,
    device_ids: Sequence[uuid.UUID],
    now: datetime,
) -> _Decided:
    """ApproveSignal's rules, applied to the read's rows: the signal must be the caller's to see (subscribed,
    its instrument allowed), the approval PENDING on an OPEN signal (approving twice returns it; rejected,
    expired or cancelled is FAILED_PRECONDITION), the named devices the caller's ACTIVE ones, and a volume
    given when the subscription has no sizing rule. Then one delivery per chosen device, sized within its
    guards. Nothing is written here: ``approve_signal`` writes what this returns."""
    first = rows[0]
    if first["signal_id"] is None:
        raise NotFound("signal")
    signal = Signal(
        id=signal_id,
        producer_id=first["producer_id"],
        instrument=first["instrument"],
        side=Side(first["side"]),
        entry_price=first["entry_price"],
        stop_loss=first["stop_loss"],
        signal_time=first["signal_time"],
        expire_time=first["expire_time"],
        status=SignalStatus(first["signal_status"]),
    )
    create = first["approval_id"] is None
    belongs = {"signal_id": signal_id, "subscription_id": first["subscription_id"], "user_id": caller.id}
    if create:
        if first["subscription_id"] is None or (first["instruments"] and signal.instrument not in first["instruments"]):
            raise NotFound("signal")  # not subscribed: the signal is not the caller's to see
        approval = Approval(id=uuid.uuid4(), status=ApprovalStatus.PENDING, device_ids=[], created_at=now, **belongs)
    else:
        approval = Approval(
            id=first["approval_id"],
            status=ApprovalStatus(first["approval_status"]),
            automatic=first["automatic"],
            volume=first["volume"],
            device_ids=list(first["device_ids"]),
            decided_by=first["decided_by"],
            reason=first["reason"],
            created_at=first["approval_created_at"],
            decided_at=first["decided_at"],
            **belongs,
        )
    if approval.status is ApprovalStatus.APPROVED:
        return _Decided(approval, signal, False, None, {})  # approving twice is idempotent
    if approval.status is ApprovalStatus.REJECTED:
        raise FailedPrecondition("the signal was already rejected", reason="ALREADY_REJECTED")
    if approval.status is ApprovalStatus.EXPIRED or not is_open(signal, now):
        raise FailedPrecondition(f"the signal is {signal.status_at(now).value.lower()}", reason="SIGNAL_NOT_OPEN")
    found = {row["device_id"]: row for row in rows if row["device_id"] is not None}
    if device_ids:
        if any(d not in found for d in device_ids):
            raise NotFound("device")
        inactive = [str(d) for d, row in found.items() if row["device_status"] != DeviceStatus.ACTIVE.value]
        if inactive:
            raise FailedPrecondition(
                "only ACTIVE devices receive deliveries",
                reason="DEVICE_NOT_ACTIVE",
                metadata={"device_ids": ",".join(inactive)},
            )
    guards: dict[uuid.UUID, deliveries.DeviceGuard] = {}
    order = list(dict.fromkeys(device_ids)) if device_ids else list(found)
    chosen = [deliveries.recipient(found[d], signal.instrument, guards) for d in order]
    planned = deliveries.Planned()
    rule = _rule(first, volume)
    skipped = deliveries.plan_for_approval(planned, approval.id, signal, chosen, rule, volume, now, guards)
    approval.status = ApprovalStatus.APPROVED
    approval.automatic = False
    approval.decided_by = caller.id
    approval.decided_at = now
    approval.volume = volume
    approval.device_ids = [d.id for d in chosen]
    approval.reason = _approval_reason(chosen, skipped)
    return _Decided(approval, signal, create, planned, guards)


async def approve_signal(
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
    response_type: type[ResponseT],
) -> Decision[ResponseT]:
    """Approve the caller's approval of ``signal_id`` (created if the caller subscribed after the signal
    came): deliveries to the chosen ACTIVE devices (all of them when none are named), with its audit row
    and, under a request_id, its idempotency record holding the answer ``respond`` gives (the approval and
    the signal's expire_time). One read, the rules applied in Python (``_decide``), one function call
    writing it all in one transaction (``approve_signal`` in Postgres), which writes nothing when the
    read no longer holds (a concurrent decision or cancel, guards that moved): then it reads and decides
    again. A request seen before gets its first answer."""
    locked: list[uuid.UUID] = []
    for _ in range(db.DECISION_ATTEMPTS):
        async with db.driver(sessions) as connection:
            try:
                async with deliveries.serialized(connection, locked):
                    now = datetime.now(UTC)
                    rows = await connection.fetch(
                        _READ_FOR_APPROVAL,
                        signal_id,
                        caller.id,
                        list(device_ids),
                        now,
                        key.request_id if key else None,
                        key.method if key else None,
                    )
                    first = rows[0]
                    if key is not None and first["record_id"] is not None:
                        stored = idempotency.answer(
                            vault,
                            key,
                            first["record_id"],
                            first["request_hash"],
                            first["response_sealed"],
                            response_type,
                        )
                        return Decision(stored, (), repeated=True)
                    decided = _decide(rows, caller, signal_id, volume, device_ids, now)
                    approval, planned = decided.approval, decided.planned
                    response = respond(approval, decided.signal.expire_time)
                    record_id = uuid.uuid4()
                    sealed = idempotency.seal_response(vault, record_id, response) if key else None
                    if planned is None:  # approved before: the answer is the approval, recorded under the key
                        if key is None or await connection.fetchval(
                            _CLAIM, record_id, caller.id, key.method, key.request_id, key.request_hash, sealed
                        ):
                            return Decision(response, ())
                        continue  # a concurrent request under the key recorded its answer first: read it
                    written = await connection.fetchrow(
                        _APPROVE,
                        signal_id,
                        approval.id,
                        approval.subscription_id,
                        caller.id,
                        decided.create,
                        now,
                        volume,
                        approval.device_ids,
                        approval.reason,
                        record_id,
                        key.method if key else None,
                        key.request_id if key else None,
                        key.request_hash if key else None,
                        sealed,
                        uuid.uuid4(),
                        caller.kind.value,
                        json.dumps({"approval_id": str(approval.id), "deliveries": len(approval.device_ids)}),
                        request_id,
                        *deliveries.guards_counted(decided.guards),
                        *deliveries.planned_columns(planned),
                    )
            except asyncpg.PostgresError as exc:
                if not db.is_race(exc):
                    raise
                continue
        if written is not None and written["o_outcome"] == "stored":
            return Decision(response, tuple(planned.woken))
        # Changed meanwhile (decided, cancelled, a device's room taken): read and decide again, with the
        # capped devices locked first; a replay (or its record purged meanwhile): the read answers it.
        locked = deliveries.guards_capped(decided.guards)
    raise db.lost_race()


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
