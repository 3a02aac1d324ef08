"""Opening positions from fills: the first fill of a delivery opens a position with its signal's hidden
levels (stop-loss, take-profit, trailing stop, breakeven); a further (partial) fill of the same delivery
adds to it, at the volume-weighted entry price. The gateway applies fills inside the one transaction that
records the device's frames (``backoffice.deliveries.record_reports``), which holds the deliveries' locks.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from backoffice.models import (
    ActorType,
    CloseReason,
    Position,
    PositionEventKind,
    PositionStatus,
    Side,
    SignalStatus,
)
from backoffice.platform import db
from backoffice.platform.db import driver_rows, update_by_id
from backoffice.positions import closing, events, levels

log = logging.getLogger("signalhub.positions")


@dataclass(frozen=True)
class Opening:
    """A fill of a delivery."""

    delivery_id: uuid.UUID
    device_id: uuid.UUID
    signal_id: uuid.UUID
    instrument: str  # the broker symbol the delivery named
    side: Side
    volume: Decimal
    entry_price: Decimal
    broker_ticket: str
    opened_at: datetime


@dataclass
class _Held:
    """A delivery's position as this batch sees it: ``row`` is the insert of a new one."""

    id: uuid.UUID
    status: PositionStatus
    volume: Decimal
    entry_price: Decimal
    row: dict[str, Any] | None = None
    changed: bool = False


# The two reads of a batch of fills, as the driver's own SQL (``db.driver_rows``): the signals' levels, and
# the positions the deliveries already have, locked in id order.
_SIGNALS = """
SELECT id, instrument, stop_loss, take_profit, trailing_distance, breakeven_trigger, breakeven_offset, status,
       cancel_closes_positions
FROM signals WHERE id = ANY($1::uuid[])
"""
_HELD = """
SELECT id, delivery_id, status, volume, entry_price FROM positions WHERE delivery_id = ANY($1::uuid[])
ORDER BY id
FOR UPDATE
"""


async def open_positions(session: AsyncSession, openings: Sequence[Opening], now: datetime) -> list[uuid.UUID]:
    """Open or add to one position per delivery; returns the ids of the positions opened or changed. A
    fill for a signal cancelled with ``close_positions`` (the device had its delivery before the cancel)
    is a real trade: its position is opened and closed at once with SIGNAL_CANCELLED, as the cancel did
    for positions already open. The caller holds the deliveries' locks, which the cancel takes too, so
    the status read here is the one that counts."""
    if not openings:
        return []
    signals = {row.id: row for row in await driver_rows(session, _SIGNALS, list({o.signal_id for o in openings}))}
    held = {
        row.delivery_id: _Held(row.id, PositionStatus(row.status), row.volume, row.entry_price)
        for row in await driver_rows(session, _HELD, list({o.delivery_id for o in openings}))
    }
    event_rows: list[dict[str, Any]] = []
    lines: list[tuple[str, Opening, uuid.UUID]] = []
    for opening in openings:
        position = held.get(opening.delivery_id)
        if position is None:
            position = held[opening.delivery_id] = _new(opening, signals.get(opening.signal_id))
            event_rows.append(_opened_event(position, opening, now))
            lines.append(("position opened", opening, position.id))
            continue
        _add(position, opening)
        lines.append(("fill added to position", opening, position.id))
        event_rows.append(
            events.event_row(
                position.id,
                PositionEventKind.FILL_ADDED,
                now,
                actor_type=ActorType.DEVICE,
                actor_id=opening.device_id,
                price=opening.entry_price,
                volume=opening.volume,
            )
        )
    created = [p for p in held.values() if p.row is not None]
    await db.insert_rows(session, Position, [p.row for p in created if p.row is not None])
    added = [p for p in held.values() if p.changed]
    await update_by_id(
        session,
        Position,
        [{"id": p.id, "volume": p.volume, "entry_price": p.entry_price, "status": p.status} for p in added],
    )
    await events.insert_events(session, event_rows)
    for message, opening, position_id in lines:  # written inside the transaction: its commit is the caller's
        log.info(
            message,
            extra={
                "trace": str(opening.signal_id),
                "device_id": str(opening.device_id),
                "position_id": str(position_id),
                "delivery_id": str(opening.delivery_id),
            },
        )
    cancelled = [
        closing.Closing(p.id, p.row["device_id"], p.volume, CloseReason.SIGNAL_CANCELLED)
        for p in created
        if p.row is not None and _closes_at_once(signals.get(p.row["signal_id"]))
    ]
    await closing.queue_closes(session, cancelled, now, actor_type=ActorType.SYSTEM)
    return [p.id for p in created] + [p.id for p in added]


def _closes_at_once(signal: Any) -> bool:
    return signal is not None and signal.status == SignalStatus.CANCELLED and bool(signal.cancel_closes_positions)


def _new(opening: Opening, signal: Any) -> _Held:
    """A position for a delivery's first fill, with its signal's hidden levels (the trailing stop starts
    at the fill price)."""
    start = levels.start_trailing(
        levels.Levels(
            side=opening.side,
            entry=opening.entry_price,
            stop_loss=signal.stop_loss if signal else None,
            take_profit=signal.take_profit if signal else None,
            trailing_distance=signal.trailing_distance if signal else None,
            breakeven_trigger=signal.breakeven_trigger if signal else None,
            breakeven_offset=signal.breakeven_offset if signal else None,
        )
    )
    position_id = uuid.uuid4()
    row = {
        "id": position_id,
        "device_id": opening.device_id,
        "signal_id": opening.signal_id,
        "delivery_id": opening.delivery_id,
        "instrument": opening.instrument,
        "signal_instrument": signal.instrument if signal else opening.instrument,
        "side": opening.side,
        "volume": opening.volume,
        "entry_price": opening.entry_price,
        "stop_loss": start.stop_loss,
        "take_profit": start.take_profit,
        "trailing_distance": start.trailing_distance,
        "best_price": start.best_price,
        "breakeven_trigger": start.breakeven_trigger,
        "breakeven_offset": start.breakeven_offset,
        "broker_ticket": opening.broker_ticket,
        "status": PositionStatus.OPEN,
        "opened_at": opening.opened_at,
    }
    return _Held(position_id, PositionStatus.OPEN, opening.volume, opening.entry_price, row)


def _add(position: _Held, opening: Opening) -> None:
    """A further fill: the volume grows and the entry becomes the volume-weighted average. A position closed
    meanwhile holds only the new volume, at its price, and is OPEN again; any other state is kept (a
    CLOSED_ERROR position waits for a person; a CLOSING one for its CloseResult)."""
    if position.status is PositionStatus.CLOSED:
        position.status, position.volume, position.entry_price = (
            PositionStatus.OPEN,
            opening.volume,
            opening.entry_price,
        )
    else:
        position.entry_price = closing.weighted_average(
            position.entry_price, position.volume, opening.entry_price, opening.volume
        )
        position.volume += opening.volume
    if position.row is not None:
        position.row.update(volume=position.volume, entry_price=position.entry_price, status=position.status)
    else:
        position.changed = True


def _opened_event(position: _Held, opening: Opening, now: datetime) -> dict[str, Any]:
    return events.event_row(
        position.id,
        PositionEventKind.OPENED,
        now,
        actor_type=ActorType.DEVICE,
        actor_id=opening.device_id,
        stop_loss=(position.row or {}).get("stop_loss"),
        take_profit=(position.row or {}).get("take_profit"),
        price=opening.entry_price,
        volume=opening.volume,
    )
