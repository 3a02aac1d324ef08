"""Positions: opened by a device's fill, with the signal's stop-loss and take-profit copied in (hidden
levels the server enforces; they never reach the broker), and closed by the result of a close order.

The gateway applies both inside the one transaction that records the device's frames (see
``backoffice.deliveries.record_reports``); these functions work on rows that transaction has locked.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import any_, bindparam, insert, literal, select, update
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.ext.asyncio import AsyncSession

from backoffice.devices.hello import Hello
from backoffice.models import (
    CloseCommand,
    CloseCommandStatus,
    CloseReason,
    Device,
    Position,
    PositionStatus,
    Side,
    Signal,
    SignalStatus,
)


@dataclass(frozen=True)
class Opening:
    """A fill that opens a position."""

    delivery_id: uuid.UUID
    device_id: uuid.UUID
    signal_id: uuid.UUID
    instrument: str  # the broker symbol the delivery named
    side: Side
    volume: Decimal
    entry_price: Decimal
    broker_ticket: str
    opened_at: datetime


async def open_positions(session: AsyncSession, openings: Sequence[Opening]) -> list[uuid.UUID]:
    """One position per opening, with its signal's hidden levels; returns their ids. A fill for a
    cancelled signal (the device had its delivery before the cancel) is a real trade: its position is
    recorded CLOSING, with a SIGNAL_CANCELLED close command, as the cancel did for positions already
    open. The caller holds the deliveries' locks, which the cancel takes too, so the status read here
    is the one that counts."""
    if not openings:
        return []
    signals = {
        row.id: row
        for row in await session.execute(
            select(Signal.id, Signal.stop_loss, Signal.take_profit, Signal.status).where(
                Signal.id.in_({o.signal_id for o in openings})
            )
        )
    }
    rows: list[dict[str, Any]] = []
    closes = []
    for opening in openings:
        signal = signals.get(opening.signal_id)
        stop_loss, take_profit = (signal.stop_loss, signal.take_profit) if signal else (None, None)
        cancelled = signal is not None and signal.status is SignalStatus.CANCELLED
        position_id = uuid.uuid4()
        if cancelled:
            closes.append(Closing(position_id, opening.device_id, opening.volume))
        rows.append(
            {
                "id": position_id,
                "device_id": opening.device_id,
                "signal_id": opening.signal_id,
                "delivery_id": opening.delivery_id,
                "instrument": opening.instrument,
                "side": opening.side,
                "volume": opening.volume,
                "entry_price": opening.entry_price,
                "stop_loss": stop_loss,
                "take_profit": take_profit,
                "broker_ticket": opening.broker_ticket,
                "status": PositionStatus.CLOSING if cancelled else PositionStatus.OPEN,
                "opened_at": opening.opened_at,
            }
        )
    await session.execute(insert(Position), rows)
    await queue_closes(session, closes, CloseReason.SIGNAL_CANCELLED)
    return [row["id"] for row in rows]


@dataclass(frozen=True)
class Closing:
    """A position to close in full; the caller marks it CLOSING."""

    position_id: uuid.UUID
    device_id: uuid.UUID
    volume: Decimal


async def queue_closes(session: AsyncSession, closings: Sequence[Closing], reason: CloseReason) -> None:
    """A PENDING close command per position, for the gateway to push to its device."""
    if not closings:
        return
    await session.execute(
        insert(CloseCommand),
        [
            {
                "id": uuid.uuid4(),
                "position_id": c.position_id,
                "device_id": c.device_id,
                "volume": c.volume,
                "reason": reason,
                "status": CloseCommandStatus.PENDING,
            }
            for c in closings
        ],
    )


@dataclass
class PositionState:
    """A position as the current transaction locked it, changed in memory; shared by every close
    command of the batch that names it."""

    id: uuid.UUID
    status: PositionStatus
    volume: Decimal
    entry_price: Decimal
    side: Side
    instrument: str
    profit: Decimal | None
    close_price: Decimal | None
    closed_at: datetime | None
    changed: bool = False


@dataclass
class CloseTarget:
    """A close command locked by the current transaction, changed in memory."""

    command_id: uuid.UUID
    device_id: uuid.UUID
    status: CloseCommandStatus
    volume: Decimal
    position: PositionState
    close_price: Decimal | None = None
    closed_volume: Decimal | None = None
    error: str | None = None
    completed_at: datetime | None = None
    changed: bool = False


async def lock_close_targets(
    session: AsyncSession, pairs: Iterable[tuple[uuid.UUID, uuid.UUID]]
) -> dict[uuid.UUID, CloseTarget]:
    """The close commands named by (command id, device id) pairs, each with its position, locked in id
    order (so two transactions never wait on each other in a cycle). A command of another device is
    simply not found."""
    wanted = set(pairs)
    if not wanted:
        return {}
    uuids = ARRAY(UUID(as_uuid=True))  # array parameters: one prepared statement whatever the count
    rows = await session.execute(
        select(
            CloseCommand.id,
            CloseCommand.device_id,
            CloseCommand.status,
            CloseCommand.volume,
            Position.id.label("position_id"),
            Position.status.label("position_status"),
            Position.volume.label("position_volume"),
            Position.entry_price,
            Position.side,
            Position.instrument,
            Position.profit,
            Position.close_price.label("position_close_price"),
            Position.closed_at,
        )
        .join(Position, Position.id == CloseCommand.position_id)
        .where(
            CloseCommand.id == any_(literal([c for c, _ in wanted], uuids)),
            CloseCommand.device_id == any_(literal([d for _, d in wanted], uuids)),
        )
        .order_by(CloseCommand.id)
        .with_for_update()
    )
    positions: dict[uuid.UUID, PositionState] = {}
    targets = {}
    for row in rows:
        if (row.id, row.device_id) not in wanted:
            continue
        position = positions.setdefault(
            row.position_id,
            PositionState(
                id=row.position_id,
                status=row.position_status,
                volume=row.position_volume,
                entry_price=row.entry_price,
                side=row.side,
                instrument=row.instrument,
                profit=row.profit,
                close_price=row.position_close_price,
                closed_at=row.closed_at,
            ),
        )
        targets[row.id] = CloseTarget(row.id, row.device_id, row.status, row.volume, position)
    return targets


async def accounts_of(session: AsyncSession, device_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Hello]:
    """Each device's account as its last Hello described it (symbol specs give the value of a tick)."""
    ids = set(device_ids)
    if not ids:
        return {}
    rows = await session.execute(select(Device.id, Device.last_hello).where(Device.id.in_(ids)))
    return {row.id: Hello.from_json(row.last_hello) for row in rows}


def realised_profit(
    side: Side, entry_price: Decimal, close_price: Decimal, volume: Decimal, account: Hello | None, instrument: str
) -> Decimal | None:
    """Profit in the account currency from the symbol's tick value; None when the Hello lacks it."""
    spec = account.spec(instrument) if account else None
    if spec is None or not spec.tick_size or spec.tick_value is None:
        return None
    direction = 1 if side is Side.BUY else -1
    return (close_price - entry_price) * direction * volume / spec.tick_size * spec.tick_value


def apply_close(
    target: CloseTarget,
    *,
    success: bool,
    close_price: Decimal | None,
    closed_volume: Decimal | None,
    error: str,
    account: Hello | None,
    now: datetime,
) -> None:
    """The command SUCCEEDED or FAILED. A success closes the position, or reduces it when only part of
    its volume was closed; a failure marks it CLOSED_ERROR for a person to look at."""
    position = target.position
    target.changed = position.changed = True
    target.completed_at = now
    if not success:
        target.status = CloseCommandStatus.FAILED
        target.error = error or "the device could not close the position"
        if position.status is not PositionStatus.CLOSED:
            position.status = PositionStatus.CLOSED_ERROR
            position.closed_at = now
        return
    assert close_price is not None
    volume = closed_volume if closed_volume is not None else target.volume
    target.status = CloseCommandStatus.SUCCEEDED
    target.close_price = close_price
    target.closed_volume = volume
    if position.status is PositionStatus.CLOSED:
        return  # an earlier command closed it already: nothing left to change
    part = realised_profit(position.side, position.entry_price, close_price, volume, account, position.instrument)
    position.profit = None if part is None else (position.profit or Decimal(0)) + part
    if volume >= position.volume:
        position.status = PositionStatus.CLOSED
        position.close_price = close_price
        position.closed_at = now
    else:
        position.volume -= volume
        position.status = PositionStatus.OPEN
        position.closed_at = None


async def write_closes(session: AsyncSession, targets: Iterable[CloseTarget]) -> None:
    """Write the close commands a batch of CloseResults changed, and the positions they close (price, profit,
    status), each as one executemany statement: this runs on the uplink's hot transaction."""
    changed = [t for t in targets if t.changed]
    if not changed:
        return
    # Core executemany: one UPDATE statement, many parameter sets.
    connection = await session.connection()
    await connection.execute(
        update(CloseCommand)
        .where(CloseCommand.id == bindparam("b_id"))
        .values(
            status=bindparam("b_status"),
            close_price=bindparam("b_price"),
            closed_volume=bindparam("b_volume"),
            error=bindparam("b_error"),
            completed_at=bindparam("b_at"),
        ),
        [
            {
                "b_id": t.command_id,
                "b_status": t.status,
                "b_price": t.close_price,
                "b_volume": t.closed_volume,
                "b_error": t.error,
                "b_at": t.completed_at,
            }
            for t in changed
        ],
    )
    positions = {t.position.id: t.position for t in changed}
    await connection.execute(
        update(Position)
        .where(Position.id == bindparam("b_id"))
        .values(
            status=bindparam("b_status"),
            volume=bindparam("b_volume"),
            profit=bindparam("b_profit"),
            close_price=bindparam("b_price"),
            closed_at=bindparam("b_at"),
        ),
        [
            {
                "b_id": p.id,
                "b_status": p.status,
                "b_volume": p.volume,
                "b_profit": p.profit,
                "b_price": p.close_price,
                "b_at": p.closed_at,
            }
            for p in positions.values()
        ],
    )
