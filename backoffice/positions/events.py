"""Position events: what happened to a position (opened, a fill added, levels moved, a close requested,
closed or failed), each with the hidden levels after it. Written once in the transaction that made the
change, never changed; GetPosition shows them oldest first."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from backoffice.models import ActorType, CloseReason, PositionEvent, PositionEventKind
from backoffice.platform import db


def event_row(
    position_id: uuid.UUID,
    kind: PositionEventKind,
    now: datetime,
    *,
    actor_type: ActorType,
    actor_id: uuid.UUID | None = None,
    stop_loss: Decimal | None = None,
    take_profit: Decimal | None = None,
    price: Decimal | None = None,
    volume: Decimal | None = None,
    close_command_id: uuid.UUID | None = None,
    reason: CloseReason | None = None,
    detail: str | None = None,
) -> dict[str, Any]:
    """One event as the row ``insert_events`` writes."""
    return {
        "id": uuid.uuid4(),
        "position_id": position_id,
        "kind": kind,
        "stop_loss": stop_loss,
        "take_profit": take_profit,
        "price": price,
        "volume": volume,
        "close_command_id": close_command_id,
        "reason": reason,
        "detail": detail,
        "actor_type": actor_type,
        "actor_id": actor_id,
        "created_at": now,
    }


async def insert_events(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    await db.insert_rows(session, PositionEvent, rows)


async def events_of(session: AsyncSession, position_id: uuid.UUID) -> list[PositionEvent]:
    """A position's events, oldest first."""
    return list(
        await session.scalars(
            select(PositionEvent).where(PositionEvent.position_id == position_id).order_by(PositionEvent.seq)
        )
    )
