"""Alerts: incidents a person should look at. An open position whose device has not been heard from for
long (DEVICE_SILENT, one per position), a device holding open positions that has been disconnected for a
while (DEVICE_DISCONNECTED, one per device), a close that failed (CLOSE_FAILED, one per position).

Each incident raises exactly one alert: a unique index allows one open alert per kind and subject, so
raising it again (every worker round, two workers, a restart) changes nothing. It is written with an
audit event in the raiser's transaction; after the commit the raiser announces it (a metric and a log
line), so a transaction that rolls back never counts. An alert is resolved when its incident ends."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import exists, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from backoffice import audit
from backoffice.models import ActorType, Alert, AlertKind, Device, Position, PositionStatus
from backoffice.platform import paging
from backoffice.platform.auth import Caller
from backoffice.platform.db import any_id
from backoffice.platform.metrics import ALERTS_RAISED
from signalhub.protocol.errors import PermissionDenied

log = logging.getLogger("signalhub.alerts")

# A position is still at the broker while its close is out: its device going silent matters as much.
_HELD = (PositionStatus.OPEN, PositionStatus.CLOSING)


@dataclass(frozen=True)
class Incident:
    kind: AlertKind
    subject_id: uuid.UUID  # the position or device it is about: one open alert per kind and subject
    device_id: uuid.UUID
    message: str  # for people; ids and states only, never secrets
    position_id: uuid.UUID | None = None
    close_command_id: uuid.UUID | None = None


@dataclass(frozen=True)
class Raised:
    id: uuid.UUID
    kind: AlertKind
    subject_id: uuid.UUID
    device_id: uuid.UUID
    message: str


async def raise_alerts(session: AsyncSession, incidents: Sequence[Incident], now: datetime) -> list[Raised]:
    """An alert per incident that has none open yet, each with an audit event; the ones actually raised
    are returned for ``announce`` after the commit."""
    if not incidents:
        return []
    rows = await session.execute(
        select(Device.id, Device.user_id).where(any_id(Device.id, {i.device_id for i in incidents}))
    )
    owners = {row.id: row.user_id for row in rows}
    unique = {(i.kind, i.subject_id): i for i in incidents if i.device_id in owners}
    if not unique:
        return []
    statement = pg_insert(Alert).values(
        [
            {
                "id": uuid.uuid4(),
                "kind": i.kind,
                "subject_id": i.subject_id,
                "device_id": i.device_id,
                "user_id": owners[i.device_id],
                "position_id": i.position_id,
                "close_command_id": i.close_command_id,
                "message": i.message,
                "created_at": now,
            }
            for i in unique.values()
        ]
    )
    result = await session.execute(
        statement.on_conflict_do_nothing(
            index_elements=[Alert.kind, Alert.subject_id], index_where=Alert.resolved_at.is_(None)
        ).returning(Alert.id, Alert.kind, Alert.subject_id, Alert.device_id, Alert.message)
    )
    raised = [Raised(row.id, row.kind, row.subject_id, row.device_id, row.message) for row in result]
    for alert in raised:
        audit.record(
            session,
            (ActorType.SYSTEM, None),
            "alert.raise",
            "alert",
            alert.id,
            details={"kind": alert.kind.value, "subject_id": str(alert.subject_id), "device_id": str(alert.device_id)},
        )
    return raised


def announce(raised: Sequence[Raised]) -> None:
    """The metric and the log line of alerts whose transaction committed."""
    for alert in raised:
        ALERTS_RAISED.labels(alert.kind.value).inc()
        log.warning(
            "alert raised",
            extra={
                "alert_id": str(alert.id),
                "kind": alert.kind.value,
                "device_id": str(alert.device_id),
                "subject_id": str(alert.subject_id),
                "detail": alert.message,
            },
        )


async def resolve(session: AsyncSession, kind: AlertKind, subject_ids: Sequence[uuid.UUID], now: datetime) -> int:
    """The open alerts of this kind about these subjects are over."""
    if not subject_ids:
        return 0
    result = await session.execute(
        update(Alert)
        .where(Alert.kind == kind, any_id(Alert.subject_id, subject_ids), Alert.resolved_at.is_(None))
        .values(resolved_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def watch_devices(
    session: AsyncSession, now: datetime, *, silent_after: timedelta, disconnected_after: timedelta
) -> list[Raised]:
    """One worker round: raise DEVICE_SILENT for each held position whose device has not been heard from
    for ``silent_after``, DEVICE_DISCONNECTED for each device holding an open position that has not been
    heard from for ``disconnected_after``; resolve those whose device was heard from since or that hold
    nothing any more. Returns the alerts raised, to announce after the commit."""
    seen = func.coalesce(Device.last_seen_at, Device.created_at)
    silent = (
        await session.execute(
            select(Position.id, Position.device_id)
            .join(Device, Device.id == Position.device_id)
            .where(Position.status.in_(_HELD), seen < now - silent_after)
        )
    ).all()
    gone = (
        await session.execute(
            select(Device.id).where(
                seen < now - disconnected_after,
                exists().where(Position.device_id == Device.id, Position.status.in_(_HELD)),
            )
        )
    ).all()
    await _resolve_ended(session, AlertKind.DEVICE_SILENT, {row.id for row in silent}, now)
    await _resolve_ended(session, AlertKind.DEVICE_DISCONNECTED, {row.id for row in gone}, now)
    silent_hours = silent_after.total_seconds() / 3600
    return await raise_alerts(
        session,
        [
            Incident(
                AlertKind.DEVICE_SILENT,
                row.id,
                row.device_id,
                f"position {row.id} is held by device {row.device_id}, not heard from for {silent_hours:g} h",
                position_id=row.id,
            )
            for row in silent
        ]
        + [
            Incident(
                AlertKind.DEVICE_DISCONNECTED,
                row.id,
                row.id,
                f"device {row.id} holds open positions and has been disconnected for more than "
                f"{disconnected_after.total_seconds():g} s",
            )
            for row in gone
        ],
        now,
    )


async def _resolve_ended(session: AsyncSession, kind: AlertKind, ongoing: set[uuid.UUID], now: datetime) -> None:
    """Open alerts of ``kind`` whose subject is no longer in ``ongoing`` are resolved."""
    subjects = await session.scalars(select(Alert.subject_id).where(Alert.kind == kind, Alert.resolved_at.is_(None)))
    await resolve(session, kind, [s for s in subjects if s not in ongoing], now)


async def list_alerts(
    session: AsyncSession,
    caller: Caller,
    *,
    status_open: bool | None,
    kind: AlertKind | None,
    device_id: uuid.UUID | None,
    page: paging.PageRequest,
) -> tuple[list[Alert], str]:
    """Alerts, newest first, for admins only; ``status_open`` True lists the open ones, False the resolved."""
    if not caller.is_admin:
        raise PermissionDenied("only admins may list alerts", reason="ADMIN_ONLY")
    query = select(Alert)
    if status_open is not None:
        query = query.where(Alert.resolved_at.is_(None) if status_open else Alert.resolved_at.is_not(None))
    if kind is not None:
        query = query.where(Alert.kind == kind)
    if device_id is not None:
        query = query.where(Alert.device_id == device_id)
    return await paging.fetch(session, query, Alert, page, filters=[status_open, kind, device_id])
