"""A cancelled signal's deliveries that were not received yet are never (re-)sent."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from backoffice.deliveries.states import MAY_FILL, UNRECEIVED
from backoffice.models import (
    Delivery,
    DeliveryState,
)
from backoffice.platform.db import any_id


async def cancel_for_signal(session: AsyncSession, signal_id: uuid.UUID, now: datetime) -> None:
    """A cancelled signal's deliveries without a RECEIVED ack become CANCELLED, so they are never sent
    (again). Every delivery a fill may still come for is locked first, in id order like
    ``record_reports``: a fill being recorded for one commits before the caller reads the signal's
    positions, or waits and then finds the signal cancelled."""
    rows = (
        await session.execute(
            select(Delivery.id, Delivery.state)
            .where(Delivery.signal_id == signal_id, Delivery.state.in_(MAY_FILL))
            .order_by(Delivery.id)
            .with_for_update()
        )
    ).all()
    unreceived = [row.id for row in rows if row.state in UNRECEIVED]
    if unreceived:
        await session.execute(
            update(Delivery)
            .where(any_id(Delivery.id, unreceived))
            .values(state=DeliveryState.CANCELLED, state_reason="signal cancelled", updated_at=now)
            .execution_options(synchronize_session=False)
        )
