"""What is due for connected devices, marked SENT: deliveries without a RECEIVED ack and close commands
without a CloseResult, oldest first (see the package docstring for when each is due)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from backoffice import executions
from backoffice.deliveries.states import UNRECEIVED
from backoffice.models import (
    CloseCommand,
    CloseCommandStatus,
    CloseReason,
    Delivery,
    DeliveryState,
    EventKind,
    Position,
    Side,
)
from backoffice.platform.db import any_id


@dataclass(frozen=True)
class ClaimRequest:
    device_id: uuid.UUID
    room: int  # how many instructions the device's stream can take now
    connected_at: datetime  # instructions SENT before this went out on an earlier stream: send again


@dataclass(frozen=True)
class DeliveryOrder:
    id: uuid.UUID
    signal_id: uuid.UUID
    instrument: str
    side: Side
    volume: Decimal
    entry_price: Decimal | None
    max_deviation: Decimal | None
    expire_time: datetime
    attempt: int
    created_at: datetime


@dataclass(frozen=True)
class CloseOrder:
    id: uuid.UUID
    position_id: uuid.UUID
    broker_ticket: str
    volume: Decimal
    reason: CloseReason
    attempt: int
    created_at: datetime


Order = DeliveryOrder | CloseOrder


@dataclass(frozen=True)
class Claim:
    orders: dict[uuid.UUID, list[Order]]  # per device, oldest first
    more: frozenset[uuid.UUID]  # devices that may have more due than they had room for


# Sends of a close command without a CloseResult; after that it waits for expire_closes.
DEFAULT_CLOSE_ATTEMPTS = 5


async def claim(
    session: AsyncSession,
    requests: Sequence[ClaimRequest],
    now: datetime,
    ack_timeout: timedelta,
    max_close_attempts: int = DEFAULT_CLOSE_ATTEMPTS,
) -> Claim:
    """Mark what is due for these devices SENT and return it. Rows another transaction holds (another
    replica sending to the same device during a takeover, or a frame being applied) are skipped, never
    waited for: they are due again at the next sweep."""
    wanted = {r.device_id: r for r in requests if r.room > 0}
    if not wanted:
        return Claim({}, frozenset())
    ids = list(wanted)
    resend_before = now - ack_timeout
    newest_connect = max(r.connected_at for r in wanted.values())
    # Enough rows for every device's room; the exact per-device choice is made below.
    fetch = sum(r.room for r in wanted.values()) + len(wanted)
    delivery_rows = (
        await session.execute(
            select(
                Delivery.id,
                Delivery.device_id,
                Delivery.state,
                Delivery.sent_at,
                Delivery.signal_id,
                Delivery.instrument,
                Delivery.side,
                Delivery.volume,
                Delivery.entry_price,
                Delivery.max_deviation,
                Delivery.expire_time,
                Delivery.attempt,
                Delivery.created_at,
            )
            .where(
                any_id(Delivery.device_id, ids),
                Delivery.state.in_(UNRECEIVED),
                Delivery.expire_time > now,
                or_(Delivery.state == DeliveryState.PENDING, Delivery.sent_at < max(resend_before, newest_connect)),
            )
            .order_by(Delivery.created_at, Delivery.id)
            .limit(fetch)
            .with_for_update(skip_locked=True)
        )
    ).all()
    command_rows = (
        await session.execute(
            select(
                CloseCommand.id,
                CloseCommand.device_id,
                CloseCommand.status,
                CloseCommand.sent_at,
                CloseCommand.position_id,
                CloseCommand.volume,
                CloseCommand.reason,
                CloseCommand.attempt,
                CloseCommand.created_at,
                Position.broker_ticket,
            )
            .join(Position, Position.id == CloseCommand.position_id)
            .where(
                any_id(CloseCommand.device_id, ids),
                or_(
                    CloseCommand.status == CloseCommandStatus.PENDING,
                    and_(
                        CloseCommand.status == CloseCommandStatus.SENT,
                        CloseCommand.attempt < max_close_attempts,
                        CloseCommand.sent_at < max(resend_before, newest_connect),
                    ),
                ),
            )
            .order_by(CloseCommand.created_at, CloseCommand.id)
            .limit(fetch)
            .with_for_update(of=CloseCommand, skip_locked=True)
        )
    ).all()

    def sent_before(sent_at: datetime | None, limit: datetime) -> bool:
        return sent_at is None or sent_at < limit

    # Per device, oldest first: (created_at, id, is a close command, row).
    candidates: dict[uuid.UUID, list[tuple[datetime, uuid.UUID, bool, Any]]] = {d: [] for d in ids}
    for row in delivery_rows:
        request = wanted[row.device_id]
        if row.state is DeliveryState.PENDING or sent_before(row.sent_at, max(resend_before, request.connected_at)):
            candidates[row.device_id].append((row.created_at, row.id, False, row))
    for command in command_rows:
        request = wanted[command.device_id]
        if command.status is CloseCommandStatus.PENDING or sent_before(
            command.sent_at, max(resend_before, request.connected_at)
        ):
            candidates[command.device_id].append((command.created_at, command.id, True, command))
    truncated = len(delivery_rows) >= fetch or len(command_rows) >= fetch
    more = set(ids) if truncated else set()
    chosen_deliveries: dict[uuid.UUID, Any] = {}
    chosen_commands: dict[uuid.UUID, Any] = {}
    for device_id, items in candidates.items():
        items.sort(key=lambda item: (item[0], item[1]))
        if len(items) > wanted[device_id].room:
            more.add(device_id)
        del items[wanted[device_id].room :]
        for _, item_id, is_command, row in items:
            (chosen_commands if is_command else chosen_deliveries)[item_id] = row

    attempts = await _mark_sent(session, Delivery, chosen_deliveries, DeliveryState.SENT, now)
    attempts.update(await _mark_sent(session, CloseCommand, chosen_commands, CloseCommandStatus.SENT, now))
    events = [
        executions.event_row(
            row.device_id,
            EventKind.SENT,
            now,
            delivery_id=item_id if item_id in chosen_deliveries else None,
            close_command_id=item_id if item_id in chosen_commands else None,
            stage=DeliveryState.SENT.value,
            body={"attempt": attempts[item_id]},
        )
        for item_id, row in (chosen_deliveries | chosen_commands).items()
    ]
    await executions.insert_events(session, events)

    orders: dict[uuid.UUID, list[Order]] = {}
    for device_id, items in candidates.items():
        for _, item_id, is_command, row in items:
            order = _close_order(row, attempts[item_id]) if is_command else _delivery_order(row, attempts[item_id])
            orders.setdefault(device_id, []).append(order)
    return Claim(orders, frozenset(more))


async def _mark_sent(
    session: AsyncSession,
    model: type[Delivery] | type[CloseCommand],
    rows: dict[uuid.UUID, Any],
    status: DeliveryState | CloseCommandStatus,
    now: datetime,
) -> dict[uuid.UUID, int]:
    if not rows:
        return {}
    values: dict[str, Any] = {"sent_at": now, "attempt": model.attempt + 1}
    if model is Delivery:
        values.update(state=status, updated_at=now)
    else:
        values.update(status=status)
    result = await session.execute(
        update(model)
        .where(any_id(model.id, rows))
        .values(**values)
        .returning(model.id, model.attempt)
        .execution_options(synchronize_session=False)
    )
    return {row.id: row.attempt for row in result}


def _delivery_order(row: Any, attempt: int) -> DeliveryOrder:
    return DeliveryOrder(
        id=row.id,
        signal_id=row.signal_id,
        instrument=row.instrument,
        side=row.side,
        volume=row.volume,
        entry_price=row.entry_price,
        max_deviation=row.max_deviation,
        expire_time=row.expire_time,
        attempt=attempt,
        created_at=row.created_at,
    )


def _close_order(row: Any, attempt: int) -> CloseOrder:
    return CloseOrder(
        id=row.id,
        position_id=row.position_id,
        broker_ticket=row.broker_ticket,
        volume=row.volume,
        reason=row.reason,
        attempt=attempt,
        created_at=row.created_at,
    )
