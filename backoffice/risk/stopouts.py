"""Stopouts: a limit of a device's policy reached. One is active (no new delivery for the device) until
its period ends or someone resets it; resetting one resolves its RISK_STOPOUT alert, whose subject is the
stopout. The limit evaluation records them; this module lists and resets them (a decision's read asks
Postgres which devices are stopped out: ``backoffice.deliveries.guards``)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Boolean, ColumnElement, exists, func, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from backoffice import alerts, audit
from backoffice.models import AlertKind, Device, Stopout
from backoffice.platform import paging
from backoffice.platform.auth import Caller
from backoffice.risk import policy
from signalhub.protocol.errors import FailedPrecondition, NotFound


def is_active(stopout: Stopout, now: datetime) -> bool:
    """Still in force: not reset, and its period (if it has an end) not over. The same rule as Postgres's
    ``stopout_active`` (migration 0012), which queries use (``active_at``), for a row already loaded."""
    return stopout.reset_time is None and (stopout.end_time is None or stopout.end_time > now)


def active_at(now: datetime) -> ColumnElement[bool]:
    """``is_active`` as a condition on the stopouts table: Postgres's ``stopout_active``, which the risk
    guards of a decision's read use too."""
    return func.stopout_active(Stopout.reset_time, Stopout.end_time, now, type_=Boolean)


def limit_of(stopout: Stopout) -> policy.Limit:
    """The limit a stopout reached, as it was when reached."""
    return policy.Limit.from_json({**stopout.limit, "key": stopout.limit_key})


def _visible(caller: Caller) -> ColumnElement[bool]:
    if caller.is_admin:
        return true()
    return exists().where(Device.id == Stopout.device_id, Device.user_id == caller.id)


async def list_stopouts(
    session: AsyncSession,
    caller: Caller,
    device_id: uuid.UUID,
    *,
    active_only: bool,
    now: datetime,
    page: paging.PageRequest,
) -> tuple[list[Stopout], str]:
    """The stopouts of a device the caller may see, newest first (trigger time, then id); with
    ``active_only``, those still in force at ``now``."""
    await policy.require_device(session, caller, device_id)
    query = select(Stopout).where(Stopout.device_id == device_id)
    if active_only:
        query = query.where(active_at(now))
    return await paging.fetch(
        session, query, Stopout, page, filters=[device_id, active_only], created_at=Stopout.trigger_time
    )


async def reset_stopout(
    session: AsyncSession,
    caller: Caller,
    stopout_id: uuid.UUID,
    *,
    now: datetime,
    request_id: str = "",
) -> Stopout:
    """Lift an active stopout now (reset by the caller), audited, and resolve its open RISK_STOPOUT alert.
    Another user's is NOT_FOUND; one no longer active is FAILED_PRECONDITION."""
    stopout = await session.scalar(
        select(Stopout)
        .where(Stopout.id == stopout_id, _visible(caller))
        .with_for_update(of=Stopout)
        .execution_options(populate_existing=True)
    )
    if stopout is None:
        raise NotFound("stopout")
    if not is_active(stopout, now):
        raise FailedPrecondition(
            "the stopout is no longer active",
            reason="STOPOUT_NOT_ACTIVE",
            metadata={"stopout_id": str(stopout.id)},
        )
    stopout.reset_time = now
    stopout.reset_by = caller.id
    await alerts.resolve(session, AlertKind.RISK_STOPOUT, [stopout.id], now)
    audit.record(
        session,
        caller,
        "ResetStopout",
        "stopout",
        stopout.id,
        details={"device_id": str(stopout.device_id), "limit_key": stopout.limit_key},
        request_id=request_id,
    )
    await session.flush()
    return stopout
