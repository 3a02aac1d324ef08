"""Execution events: the immutable record of what a device said and what happened to its deliveries and
close commands (its hello, each send, each ack, the fill, the close result, expiry), one row each, written
in the transaction that made the change.
A leaf module (models and the database helpers only), so whatever writes events imports nothing above it;
``backoffice.executions`` reads them back for people."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from backoffice.models import EventKind, ExecutionEvent
from backoffice.platform import db


def event_row(
    device_id: uuid.UUID,
    kind: EventKind,
    now: datetime,
    *,
    frame_id: str | None = None,
    delivery_id: uuid.UUID | None = None,
    close_command_id: uuid.UUID | None = None,
    stage: str | None = None,
    body: dict[str, Any] | None = None,
    event_time: datetime | None = None,
) -> dict[str, Any]:
    """An execution_events row. ``body`` holds decimals as strings; ``event_time`` is the source's clock,
    ``received_at`` the server's."""
    return {
        "id": uuid.uuid4(),
        "device_id": device_id,
        "frame_id": frame_id,
        "kind": kind,
        "delivery_id": delivery_id,
        "close_command_id": close_command_id,
        "stage": stage,
        "body": body or {},
        "event_time": event_time,
        "received_at": now,
    }


async def insert_events(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    # Arrays through unnest, not the ORM's bulk insert: nothing is read back, and this is the hottest write.
    await db.insert_rows(session, ExecutionEvent, rows)
