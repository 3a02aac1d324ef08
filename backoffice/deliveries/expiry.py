"""Deliveries whose expire_time passed without a RECEIVED ack become EXPIRED; which devices have something
due, for the gateway's periodic sweep (a lost wake-up hint costs latency, never data)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from backoffice import execution_events as events
from backoffice.deliveries.claim import DEFAULT_CLOSE_ATTEMPTS
from backoffice.deliveries.states import EXPIRED_REASON, UNRECEIVED
from backoffice.models import (
    CloseCommand,
    CloseCommandStatus,
    Delivery,
    DeliveryState,
    EventKind,
)
from backoffice.platform.db import any_id

# Deliveries expired per statement: the sweep comes back for the rest.
EXPIRE_BATCH = 1000


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
    await events.insert_events(
        session,
        [
            events.event_row(
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


async def due_devices(
    session: AsyncSession, now: datetime, ack_timeout: timedelta, max_close_attempts: int = DEFAULT_CLOSE_ATTEMPTS
) -> set[uuid.UUID]:
    """Devices with a delivery or close command to send now (without the re-sends a reconnect causes:
    a new stream claims those itself)."""
    deliveries = select(Delivery.device_id).where(
        Delivery.state.in_(UNRECEIVED),
        Delivery.expire_time > now,
        or_(Delivery.state == DeliveryState.PENDING, Delivery.sent_at <= now - ack_timeout),
    )
    commands = select(CloseCommand.device_id).where(
        or_(
            CloseCommand.status == CloseCommandStatus.PENDING,
            and_(
                CloseCommand.status == CloseCommandStatus.SENT,
                CloseCommand.attempt < max_close_attempts,
                CloseCommand.sent_at <= now - ack_timeout,
            ),
        )
    )
    result = await session.execute(deliveries.union(commands))
    return set(result.scalars())
