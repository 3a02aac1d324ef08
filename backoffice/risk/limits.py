"""Risk limits measured on each account state a device reports, in the same statement that stores it.

The rules, carried out by the Postgres functions ``measure_risk_limits`` and ``record_account_states``
(migration 0010; one statement per uplink batch, where the same work in Python was eight round trips):
for each limit of the device's policy, its period's marks (``risk_marks``) are kept: the reference balance
(the last balance known when the period began, else the first reported in it) and the highest equity
reported in it. A LOSS limit measures the reference balance minus the current equity, a DRAWDOWN limit the
highest equity minus the current equity; ``max_percent`` is of that reference. Periods are calendar
periods in UTC (weeks from Monday); LIFETIME starts when the limit was set. After a ResetStopout the limit
measures afresh from the next account state: its period then starts at the reset, and its reference is
that state's equity (what was lost before the reset is forgiven).

Reaching a limit records one stopout, whatever races: the row is unique per device, limit and period start
(two replicas receiving the same device's frames, a repeated frame, a restart: ON CONFLICT DO NOTHING).
A new stopout raises one alert, is audited, and with CLOSE_ALL queues one close command per OPEN position
of the device (the unique index on outstanding commands keeps it one): ``act_on`` does that here, in the
same transaction. A batch of account states alone is one autocommit statement (``record_states_alone``)
unless it reaches a limit; then it is applied again in a transaction with what the stopout sets off."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backoffice import alerts, audit, positions
from backoffice.devices import account_states
from backoffice.models import ActorType, AlertKind, CloseReason, Position, RiskAction
from backoffice.platform import db
from backoffice.platform.metrics import RISK_STOPOUTS
from signalhub.protocol.wire import decimal_text


@dataclass(frozen=True)
class Reached:
    """A stopout recorded now: what ``act_on`` sets off."""

    id: uuid.UUID
    device_id: uuid.UUID
    limit: dict[str, Any]  # as the policy stores it (``policy.Limit.to_json``)
    value: Decimal


@dataclass(frozen=True)
class Stopped:
    """What reaching limits did, to announce after the commit."""

    stopouts: list[uuid.UUID]
    alerts: list[alerts.Raised]
    closes: list[positions.Queued]


@dataclass(frozen=True)
class StatesRecorded:
    """A batch's account states: the frames recorded before (DUPLICATE), the newest state of each device
    that was stored (an older one changes nothing), and the stopouts their limits recorded."""

    duplicates: set[tuple[uuid.UUID, str]]
    stored: list[account_states.StoredAccountState]
    reached: list[Reached]


# SQLSTATE of record_account_states called quiet when the batch would record a stopout.
_STOPOUT_TO_RECORD = "SHR01"
_RECORD = """
SELECT kind, device_id, frame_id, balance, equity, state_time, stopout_id, spec::text AS spec, value
FROM record_account_states($1::uuid[], $2::numeric[], $3::numeric[], $4::numeric[], $5::numeric[],
                           $6::timestamptz[], $7::text[], $8::timestamptz, $9::boolean)
"""


async def record_states(
    session: AsyncSession, states: Sequence[account_states.AccountStateIn], now: datetime
) -> StatesRecorded:
    """Store these account states and measure their devices' limits, in the session's transaction: one
    statement. The stopouts it recorded are for ``act_on``, in the same transaction."""
    if not states:
        return StatesRecorded(set(), [], [])
    return _recorded(await db.driver_rows(session, _RECORD, *account_states.columns(states), now, False), now)


async def record_states_alone(
    sessions: async_sessionmaker[AsyncSession], states: Sequence[account_states.AccountStateIn], now: datetime
) -> StatesRecorded | None:
    """The same as ``record_states`` as one statement that commits on its own, for a batch of nothing but
    account states; None, with nothing changed, when it would record a stopout or lost a race: the caller
    applies the batch in a transaction instead (``record_states`` and ``act_on``)."""
    if not states:
        return StatesRecorded(set(), [], [])
    columns = account_states.columns(states)
    rows = await db.fetch_alone(sessions, _RECORD, *columns, now, True, give_way={_STOPOUT_TO_RECORD})
    return None if rows is None else _recorded(rows, now)


def _recorded(rows: Sequence[Any], now: datetime) -> StatesRecorded:
    """The rows of ``record_account_states`` (asyncpg's records or SQLAlchemy's rows: unpacked, the same)."""
    recorded = StatesRecorded(set(), [], [])
    for kind, device_id, frame_id, balance, equity, state_time, stopout_id, spec, value in rows:
        if kind == "duplicate":
            recorded.duplicates.add((device_id, frame_id))
        elif kind == "stored":
            recorded.stored.append(account_states.StoredAccountState(device_id, balance, equity, state_time, now))
        else:
            recorded.reached.append(Reached(stopout_id, device_id, json.loads(spec), value))
    return recorded


async def act_on(session: AsyncSession, reached: Sequence[Reached], now: datetime) -> Stopped:
    """For each stopout recorded now: an alert and an audit event, and with CLOSE_ALL a close command per
    OPEN position of its device, in the transaction that recorded it."""
    if not reached:
        return Stopped([], [], [])
    incidents = []
    closing_devices = set()
    for stopout in reached:
        limit = stopout.limit
        RISK_STOPOUTS.labels(limit["period"], limit["metric"], limit["action"]).inc()
        audit.record(
            session,
            (ActorType.SYSTEM, None),
            "risk.stopout",
            "stopout",
            stopout.id,
            details={"device_id": str(stopout.device_id), "limit": limit, "value": decimal_text(stopout.value)},
        )
        incidents.append(
            alerts.Incident(
                AlertKind.RISK_STOPOUT,
                stopout.id,
                stopout.device_id,
                f"risk limit reached on device {stopout.device_id}: {limit['period']} {limit['metric']} "
                f"{decimal_text(stopout.value)} ({limit['action']})",
            )
        )
        if limit["action"] == RiskAction.CLOSE_ALL.value:
            closing_devices.add(stopout.device_id)
    raised = await alerts.raise_alerts(session, incidents, now)
    queued: list[positions.Queued] = []
    if closing_devices:
        which = db.any_id(Position.device_id, sorted(closing_devices))
        queued = await positions.close_open(session, which, CloseReason.RISK_LIMIT, now, actor_type=ActorType.SYSTEM)
    return Stopped([s.id for s in reached], raised, queued)
