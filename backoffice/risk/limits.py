"""Risk limits measured on each account state a device reports, in the uplink's transaction that stores it.

For each limit of the device's policy, its period's marks (``risk_marks``) are kept: the reference balance
(the last balance known when the period began, else the first reported in it) and the highest equity
reported in it. A LOSS limit measures the reference balance minus the current equity, a DRAWDOWN limit the
highest equity minus the current equity; ``max_percent`` is of that reference. Periods are calendar
periods in UTC (weeks from Monday); LIFETIME starts when the limit was set. After a ResetStopout the limit
measures afresh from the next account state: its period then starts at the reset, and its reference is
that state's equity (what was lost before the reset is forgiven).

Reaching a limit records one stopout, whatever races: the row is unique per device, limit and period start
(two replicas receiving the same device's frames, a repeated frame, a restart: ON CONFLICT DO NOTHING).
A new stopout raises one alert, is audited, and with CLOSE_ALL queues one close command per OPEN position
of the device (the unique index on outstanding commands keeps it one). Devices without limits cost one
query, and a batch with no account state none at all."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from backoffice import alerts, audit, positions
from backoffice.models import (
    ActorType,
    AlertKind,
    CloseReason,
    Position,
    RiskAction,
    RiskMark,
    RiskMetric,
    RiskPeriod,
    Stopout,
)
from backoffice.platform.db import any_id, execute_driver
from backoffice.platform.metrics import RISK_STOPOUTS
from backoffice.risk import policy
from backoffice.risk.policy import Limit
from signalhub.protocol.wire import decimal_text


@dataclass(frozen=True)
class State:
    """An account state as stored: the newest a device reported in the batch."""

    device_id: uuid.UUID
    balance: Decimal
    equity: Decimal


@dataclass(frozen=True)
class Stopped:
    """What reaching limits did, to announce after the commit."""

    stopouts: list[uuid.UUID]
    alerts: list[alerts.Raised]
    closes: list[positions.Queued]


def period_bounds(period: RiskPeriod, now: datetime, set_at: datetime) -> tuple[datetime, datetime | None]:
    """The calendar period containing ``now`` in UTC: its start and its end (None for LIFETIME, which starts
    when the limit was set)."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period is RiskPeriod.DAY:
        return day, day + timedelta(days=1)
    if period is RiskPeriod.WEEK:
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    if period is RiskPeriod.MONTH:
        start = day.replace(day=1)
        return start, (start + timedelta(days=32)).replace(day=1)
    return set_at, None


async def evaluate(session: AsyncSession, states: Sequence[State], now: datetime) -> Stopped:
    """Measure every limit of these devices' policies on their new states; record what was reached."""
    if not states:
        return Stopped([], [], [])
    latest = {s.device_id: s for s in states}
    policies = await policy.load_policies(session, latest)
    limits = {device_id: list(p.limits) for device_id, p in policies.items() if p.limits}
    if not limits:
        return Stopped([], [], [])
    resets = await _last_resets(session, list(limits))
    starts: dict[tuple[uuid.UUID, str], tuple[datetime, datetime | None, bool]] = {}
    for device_id, device_limits in limits.items():
        for limit in device_limits:
            start, end = period_bounds(limit.period, now, limit.set_at)
            reset = resets.get((device_id, limit.key))
            afresh = reset is not None and reset >= start  # measured afresh since the reset
            starts[(device_id, limit.key)] = (reset if afresh and reset else start, end, afresh)
    marks = await _update_marks(session, latest, limits, starts)
    reached = []
    for device_id, device_limits in limits.items():
        state = latest[device_id]
        for limit in device_limits:
            start, end, _ = starts[(device_id, limit.key)]
            mark = marks[(device_id, limit.period, start)]
            reference = mark.reference_balance if limit.metric is RiskMetric.LOSS else mark.equity_high
            value = reference - state.equity
            if _reached(limit, reference, value):
                reached.append(
                    {
                        "id": uuid.uuid4(),
                        "device_id": device_id,
                        "limit_key": limit.key,
                        "limit": limit.to_json(),
                        "period_start": start,
                        "reference": reference,
                        "value": value,
                        "equity": state.equity,
                        "trigger_time": now,
                        "end_time": end,
                    }
                )
    return await _record(session, reached, limits, now)


def _reached(limit: Limit, reference: Decimal, value: Decimal) -> bool:
    if limit.max_amount is not None and value >= limit.max_amount:
        return True
    return limit.max_percent is not None and reference > 0 and value >= reference * limit.max_percent / 100


async def _last_resets(session: AsyncSession, device_ids: list[uuid.UUID]) -> dict[tuple[uuid.UUID, str], datetime]:
    """The latest reset of each limit of these devices (Postgres keeps the newest, not every reset ever)."""
    rows = await session.execute(
        select(Stopout.device_id, Stopout.limit_key, func.max(Stopout.reset_time))
        .where(any_id(Stopout.device_id, device_ids), Stopout.reset_time.is_not(None))
        .group_by(Stopout.device_id, Stopout.limit_key)
    )
    return {(device_id, key): reset for device_id, key, reset in rows if reset is not None}


@dataclass
class _Mark:
    reference_balance: Decimal
    equity_high: Decimal
    last_balance: Decimal


# The marks in one statement of fixed shape, in the keys' order (two batches lock the same rows in the same
# order): SQLAlchemy's multi-row INSERT compiled anew for every batch size, on the uplink's hot path.
_UPSERT_MARKS = """
INSERT INTO risk_marks (device_id, period, period_start, reference_balance, equity_high, last_balance)
SELECT device_id, period, period_start, reference_balance, equity_high, last_balance
FROM unnest($1::uuid[], $2::varchar[], $3::timestamptz[], $4::numeric[], $5::numeric[], $6::numeric[])
     WITH ORDINALITY AS v(device_id, period, period_start, reference_balance, equity_high, last_balance, n)
ORDER BY n
ON CONFLICT (device_id, period, period_start) DO UPDATE
SET equity_high = excluded.equity_high, last_balance = excluded.last_balance, updated_at = excluded.updated_at
"""


async def _update_marks(
    session: AsyncSession,
    latest: dict[uuid.UUID, State],
    limits: dict[uuid.UUID, list[Limit]],
    starts: dict[tuple[uuid.UUID, str], tuple[datetime, datetime | None, bool]],
) -> dict[tuple[uuid.UUID, RiskPeriod, datetime], _Mark]:
    """The marks of every (device, period, start) the limits measure, with this state taken in, written in
    one statement. A new period's reference is the previous period's last balance when there is one, else
    this state's balance; after a reset, this state's equity (measuring afresh from it)."""
    rows = (
        await session.execute(
            select(RiskMark).where(any_id(RiskMark.device_id, list(limits))).order_by(RiskMark.period_start.desc())
        )
    ).scalars()
    stored: dict[tuple[uuid.UUID, RiskPeriod, datetime], RiskMark] = {}
    previous: dict[tuple[uuid.UUID, RiskPeriod], RiskMark] = {}
    for mark in rows:
        stored[(mark.device_id, mark.period, mark.period_start)] = mark
        previous.setdefault((mark.device_id, mark.period), mark)  # the newest first
    marks: dict[tuple[uuid.UUID, RiskPeriod, datetime], _Mark] = {}
    for device_id, device_limits in limits.items():
        state = latest[device_id]
        for limit in device_limits:
            start, _, afresh = starts[(device_id, limit.key)]
            key = (device_id, limit.period, start)
            if key in marks:
                continue
            found = stored.get(key)
            if found is not None:
                marks[key] = _Mark(found.reference_balance, max(found.equity_high, state.equity), state.balance)
                continue
            before = previous.get((device_id, limit.period))
            if afresh:  # measured from this state: a reset forgives what was lost before it
                reference = state.equity
            elif before is not None and before.period_start < start:
                reference = before.last_balance
            else:
                reference = state.balance
            marks[key] = _Mark(reference, state.equity, state.balance)
    ordered = sorted(marks.items(), key=lambda item: (str(item[0][0]), item[0][1], item[0][2]))
    await execute_driver(
        session,
        _UPSERT_MARKS,
        [device_id for (device_id, _, _), _ in ordered],
        [period.value for (_, period, _), _ in ordered],
        [start for (_, _, start), _ in ordered],
        [m.reference_balance for _, m in ordered],
        [m.equity_high for _, m in ordered],
        [m.last_balance for _, m in ordered],
    )
    return marks


async def _record(
    session: AsyncSession, reached: list[dict[str, Any]], limits: dict[uuid.UUID, list[Limit]], now: datetime
) -> Stopped:
    """Insert the stopouts reached (a conflict: recorded already, nothing more to do); for each new one an
    alert and an audit event, and with CLOSE_ALL a close command per OPEN position of its device."""
    if not reached:
        return Stopped([], [], [])
    result = await session.execute(
        insert(Stopout)
        .values(reached)
        .on_conflict_do_nothing(index_elements=[Stopout.device_id, Stopout.limit_key, Stopout.period_start])
        .returning(Stopout.id, Stopout.device_id, Stopout.limit, Stopout.value)
    )
    new = result.all()
    if not new:
        return Stopped([], [], [])
    incidents = []
    closing_devices = set()
    for row in new:
        limit = row.limit
        RISK_STOPOUTS.labels(limit["period"], limit["metric"], limit["action"]).inc()
        audit.record(
            session,
            (ActorType.SYSTEM, None),
            "risk.stopout",
            "stopout",
            row.id,
            details={"device_id": str(row.device_id), "limit": limit, "value": decimal_text(row.value)},
        )
        incidents.append(
            alerts.Incident(
                AlertKind.RISK_STOPOUT,
                row.id,
                row.device_id,
                f"risk limit reached on device {row.device_id}: {limit['period']} {limit['metric']} "
                f"{decimal_text(row.value)} ({limit['action']})",
            )
        )
        if limit["action"] == RiskAction.CLOSE_ALL.value:
            closing_devices.add(row.device_id)
    raised = await alerts.raise_alerts(session, incidents, now)
    queued: list[positions.Queued] = []
    if closing_devices:
        which = any_id(Position.device_id, sorted(closing_devices))
        queued = await positions.close_open(session, which, CloseReason.RISK_LIMIT, now, actor_type=ActorType.SYSTEM)
    return Stopped([row.id for row in new], raised, queued)
