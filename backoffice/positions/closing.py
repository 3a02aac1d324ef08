"""Closing positions. A close command is created here whoever asks (the monitor on a crossed level, the
owner or an admin, a cancelled signal), at most one outstanding per position (a unique index decides, so
two monitors racing, or one restarted, never close a position twice). The gateway pushes it; the device's
CloseResult completes it (``lock_close_targets``, ``apply_close`` and ``write_closes`` run on the uplink's
transaction); a command that never gets one is sent a bounded number of times on one stream and, once the
device has gone on talking past the ack timeout without answering it, EXPIRED, the position CLOSED_ERROR
with an alert (``expire_closes``, from the gateway's sweep); a device that went quiet is sent it again on
its next stream. A result that arrives
after that is still applied: the device's word about the broker wins."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, and_, any_, literal, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from backoffice import alerts
from backoffice.devices.hello import Hello
from backoffice.models import (
    ActorType,
    AlertKind,
    CloseCommand,
    CloseCommandStatus,
    CloseReason,
    Device,
    Position,
    PositionEventKind,
    PositionStatus,
    Side,
)
from backoffice.platform.db import any_id, update_by_id
from backoffice.positions import events
from signalhub.protocol.wire import decimal_text

log = logging.getLogger("signalhub.positions")

# The line a close result writes, by the status it left its position in.
_RESULT_LINES = {
    PositionStatus.CLOSED: "position closed",
    PositionStatus.OPEN: "position partly closed",
    PositionStatus.CLOSED_ERROR: "position close failed",
}

_PRICE_PLACES = Decimal("1e-12")


@dataclass(frozen=True)
class Closing:
    """A position to close (its ``volume`` of it), and why."""

    position_id: uuid.UUID
    device_id: uuid.UUID
    volume: Decimal
    reason: CloseReason
    price: Decimal | None = None  # the quote's exit price that triggered it
    stop_loss: Decimal | None = None  # the levels when it was asked for, for the event
    take_profit: Decimal | None = None
    # All of the position (every close the server decides on; a person's unless it names less): volume a
    # further fill adds while the command is out is closed after it (``close_the_rest``).
    whole: bool = True


@dataclass(frozen=True)
class Queued:
    command_id: uuid.UUID
    position_id: uuid.UUID
    device_id: uuid.UUID


async def queue_closes(
    session: AsyncSession,
    closings: Sequence[Closing],
    now: datetime,
    *,
    actor_type: ActorType,
    actor_id: uuid.UUID | None = None,
    requested_by: uuid.UUID | None = None,
) -> list[Queued]:
    """A PENDING close command per position, the position CLOSING and a CLOSE_REQUESTED event. The caller
    holds the positions' locks and found them OPEN; a position that has a command out already gets no
    second one (the unique index on outstanding commands refuses it) and is left as it is."""
    if not closings:
        return []
    wanted = {c.position_id: c for c in closings}
    statement = pg_insert(CloseCommand).values(
        [
            {
                "id": uuid.uuid4(),
                "position_id": c.position_id,
                "device_id": c.device_id,
                "volume": c.volume,
                "whole": c.whole,
                "reason": c.reason,
                "status": CloseCommandStatus.PENDING,
                "requested_by": requested_by,
                "created_at": now,
            }
            for c in wanted.values()
        ]
    )
    result = await session.execute(
        # The index's own predicate, spelled as a literal: Postgres infers the arbiter index only from that.
        statement.on_conflict_do_nothing(
            index_elements=[CloseCommand.position_id], index_where=text("status IN ('PENDING', 'SENT')")
        ).returning(CloseCommand.id, CloseCommand.position_id, CloseCommand.device_id)
    )
    queued = [Queued(row.id, row.position_id, row.device_id) for row in result]
    if not queued:
        return []
    signals = await session.execute(
        update(Position)
        .where(any_id(Position.id, [q.position_id for q in queued]))
        .values(status=PositionStatus.CLOSING)
        .returning(Position.id, Position.signal_id)
        .execution_options(synchronize_session=False)
    )
    traces = {row.id: str(row.signal_id) for row in signals}
    rows = []
    for item in queued:
        closing = wanted[item.position_id]
        rows.append(
            events.event_row(
                item.position_id,
                PositionEventKind.CLOSE_REQUESTED,
                now,
                actor_type=actor_type,
                actor_id=actor_id,
                stop_loss=closing.stop_loss,
                take_profit=closing.take_profit,
                price=closing.price,
                volume=closing.volume,
                close_command_id=item.command_id,
                reason=closing.reason,
            )
        )
    await events.insert_events(session, rows)
    for item in queued:  # written inside the transaction: its commit is the caller's
        log.info(
            "close command queued",
            extra={
                "trace": traces.get(item.position_id),
                "device_id": str(item.device_id),
                "position_id": str(item.position_id),
                "command_id": str(item.command_id),
                "reason": wanted[item.position_id].reason.value,
            },
        )
    return queued


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
    closed_volume: Decimal = Decimal(0)
    price_profit: Decimal | None = None
    close_reason: CloseReason | None = None
    stop_loss: Decimal | None = None
    take_profit: Decimal | None = None
    changed: bool = False
    signal_id: uuid.UUID | None = None  # the trace of its log lines


@dataclass
class CloseTarget:
    """A close command locked by the current transaction, changed in memory; ``effect`` is what its result
    did to the position (the event to record), once applied."""

    command_id: uuid.UUID
    device_id: uuid.UUID
    status: CloseCommandStatus
    volume: Decimal
    position: PositionState
    reason: CloseReason = CloseReason.MANUAL
    whole: bool = False  # it closes the whole position (``Closing.whole``)
    close_price: Decimal | None = None
    closed_volume: Decimal | None = None
    error: str | None = None
    completed_at: datetime | None = None
    changed: bool = False
    effect: PositionEventKind | None = None


async def close_open(
    session: AsyncSession,
    which: ColumnElement[bool],
    reason: CloseReason,
    now: datetime,
    *,
    actor_type: ActorType,
    actor_id: uuid.UUID | None = None,
) -> list[Queued]:
    """A close command (``reason``) for each OPEN position ``which`` selects (a signal's, a device's),
    locked in id order, through ``queue_closes``."""
    found = (
        await session.scalars(
            select(Position)
            .where(which, Position.status == PositionStatus.OPEN)
            .order_by(Position.id)
            .with_for_update()
        )
    ).all()
    closings = [
        Closing(p.id, p.device_id, p.volume, reason, stop_loss=p.stop_loss, take_profit=p.take_profit) for p in found
    ]
    return await queue_closes(session, closings, now, actor_type=actor_type, actor_id=actor_id)


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
            CloseCommand.reason,
            CloseCommand.whole,
            Position.id.label("position_id"),
            Position.status.label("position_status"),
            Position.volume.label("position_volume"),
            Position.entry_price,
            Position.side,
            Position.instrument,
            Position.profit,
            Position.close_price.label("position_close_price"),
            Position.closed_at,
            Position.closed_volume.label("position_closed_volume"),
            Position.price_profit,
            Position.close_reason,
            Position.stop_loss,
            Position.take_profit,
            Position.signal_id,
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
                closed_volume=row.position_closed_volume,
                price_profit=row.price_profit,
                close_reason=row.close_reason,
                stop_loss=row.stop_loss,
                take_profit=row.take_profit,
                signal_id=row.signal_id,
            ),
        )
        targets[row.id] = CloseTarget(row.id, row.device_id, row.status, row.volume, position, row.reason, row.whole)
    return targets


async def accounts_of(session: AsyncSession, device_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Hello]:
    """Each device's account as its last Hello described it (symbol specs give the value of a tick)."""
    ids = set(device_ids)
    if not ids:
        return {}
    rows = await session.execute(select(Device.id, Device.last_hello).where(Device.id.in_(ids)))
    return {row.id: Hello.from_json(row.last_hello) for row in rows}


def price_move(side: Side, entry_price: Decimal, close_price: Decimal) -> Decimal:
    """The move from entry to close in the position's favour, in price units."""
    return close_price - entry_price if side is Side.BUY else entry_price - close_price


def realised_profit(
    side: Side, entry_price: Decimal, close_price: Decimal, volume: Decimal, account: Hello | None, instrument: str
) -> Decimal | None:
    """Profit in the account currency from the symbol's tick value; None when the Hello lacks it."""
    spec = account.spec(instrument) if account else None
    if spec is None or not spec.tick_size or spec.tick_value is None:
        return None
    return price_move(side, entry_price, close_price) * volume / spec.tick_size * spec.tick_value


def weighted_average(previous: Decimal | None, weight: Decimal, value: Decimal, value_weight: Decimal) -> Decimal:
    """The average of ``previous`` (over ``weight``) and ``value`` (over ``value_weight``), kept to the
    contract's 12 decimals when it does not end sooner (entry prices over partial fills, profit in price
    units over partial closes)."""
    average = ((previous or Decimal(0)) * weight + value * value_weight) / (weight + value_weight)
    exponent = average.as_tuple().exponent
    return average.quantize(_PRICE_PLACES) if isinstance(exponent, int) and exponent < -12 else average


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
    its volume was closed (the rest is OPEN again), adding to its realised profit in price units and in
    the account currency; a failure marks it CLOSED_ERROR for a person to look at."""
    position = target.position
    target.changed = position.changed = True
    target.completed_at = now
    if not success:
        target.status = CloseCommandStatus.FAILED
        target.error = error or "the device could not close the position"
        if position.status is not PositionStatus.CLOSED:
            position.status = PositionStatus.CLOSED_ERROR
            position.closed_at = now
            target.effect = PositionEventKind.CLOSE_FAILED
        return
    assert close_price is not None
    volume = closed_volume if closed_volume is not None else target.volume
    target.status = CloseCommandStatus.SUCCEEDED
    target.close_price = close_price
    target.closed_volume = volume
    if position.status is PositionStatus.CLOSED:
        return  # an earlier command closed it already: nothing left to change
    move = price_move(position.side, position.entry_price, close_price)
    position.price_profit = weighted_average(position.price_profit, position.closed_volume, move, volume)
    position.closed_volume += volume
    part = realised_profit(position.side, position.entry_price, close_price, volume, account, position.instrument)
    position.profit = None if part is None else (position.profit or Decimal(0)) + part
    if volume >= position.volume:
        position.status = PositionStatus.CLOSED
        position.close_price = close_price
        position.close_reason = target.reason
        position.closed_at = now
        target.effect = PositionEventKind.CLOSED
    else:
        position.volume -= volume
        position.status = PositionStatus.OPEN
        position.closed_at = None
        target.effect = PositionEventKind.PARTIALLY_CLOSED


async def close_the_rest(session: AsyncSession, targets: Iterable[CloseTarget], now: datetime) -> list[Queued]:
    """A close for the whole position (a level crossed, a cancelled signal, a risk limit, a person closing
    all of it) that left volume OPEN (a further fill of its delivery added to it while the command was out)
    gets a close command of its own for the rest, with the same reason. Runs after ``write_closes``, with
    the positions locked."""
    rest = [
        Closing(t.position.id, t.device_id, t.position.volume, t.reason)
        for t in targets
        if t.effect is PositionEventKind.PARTIALLY_CLOSED and t.whole
    ]
    return await queue_closes(session, rest, now, actor_type=ActorType.SYSTEM)


async def write_closes(session: AsyncSession, targets: Iterable[CloseTarget], now: datetime) -> list[alerts.Raised]:
    """Write the close commands a batch of CloseResults changed, the positions they close (price, profit,
    status), each as one executemany statement (this runs on the uplink's hot transaction), and an event
    per effect; a failure raises a CLOSE_FAILED alert, a close that ends CLOSED_ERROR resolves it. Returns
    the alerts raised, to announce after the commit."""
    changed = [t for t in targets if t.changed]
    if not changed:
        return []
    await update_by_id(
        session,
        CloseCommand,
        [
            {
                "id": t.command_id,
                "status": t.status,
                "close_price": t.close_price,
                "closed_volume": t.closed_volume,
                "error": t.error,
                "completed_at": t.completed_at,
            }
            for t in changed
        ],
    )
    positions = {t.position.id: t.position for t in changed}
    await update_by_id(
        session,
        Position,
        [
            {
                "id": p.id,
                "status": p.status,
                "volume": p.volume,
                "profit": p.profit,
                "close_price": p.close_price,
                "closed_at": p.closed_at,
                "closed_volume": p.closed_volume,
                "price_profit": p.price_profit,
                "close_reason": p.close_reason,
            }
            for p in positions.values()
        ],
    )
    effected = [t for t in changed if t.effect is not None]
    await events.insert_events(session, [_result_event(t, now) for t in effected])
    for t in effected:
        log.info(
            _RESULT_LINES.get(t.position.status, "close result applied"),
            extra={
                "trace": str(t.position.signal_id) if t.position.signal_id else None,
                "device_id": str(t.device_id),
                "position_id": str(t.position.id),
                "command_id": str(t.command_id),
                "profit": decimal_text(t.position.profit),
            },
        )
    failed = [t for t in effected if t.effect is PositionEventKind.CLOSE_FAILED]
    await alerts.resolve(
        session,
        AlertKind.CLOSE_FAILED,
        [t.position.id for t in effected if t.effect is not PositionEventKind.CLOSE_FAILED],
        now,
    )
    return await alerts.raise_alerts(
        session,
        [_close_failed(t.position.id, t.device_id, t.command_id, f"the device: {t.error}") for t in failed],
        now,
    )


def _close_failed(position_id: uuid.UUID, device_id: uuid.UUID, command_id: uuid.UUID, why: str) -> alerts.Incident:
    """The alert of a close that failed: one per position (it is CLOSED_ERROR until a person acts)."""
    message = f"closing position {position_id} failed: {why}"
    return alerts.Incident(
        AlertKind.CLOSE_FAILED, position_id, device_id, message, position_id=position_id, close_command_id=command_id
    )


def _result_event(target: CloseTarget, now: datetime) -> dict[str, Any]:
    assert target.effect is not None
    return events.event_row(
        target.position.id,
        target.effect,
        now,
        actor_type=ActorType.DEVICE,
        actor_id=target.device_id,
        stop_loss=target.position.stop_loss,
        take_profit=target.position.take_profit,
        price=target.close_price,
        volume=target.closed_volume if target.effect is not PositionEventKind.CLOSE_FAILED else target.volume,
        close_command_id=target.command_id,
        reason=target.reason,
        detail=target.error,
    )


async def expire_closes(
    session: AsyncSession,
    now: datetime,
    ack_timeout: timedelta,
    max_attempts: int,
    streams: Mapping[uuid.UUID, tuple[datetime, datetime]],
    proof: timedelta,
) -> list[alerts.Raised]:
    """Close commands sent ``max_attempts`` times on one stream that demonstrably carried them, without a
    CloseResult, become EXPIRED; their positions CLOSED_ERROR, with a CLOSE_FAILED event and alert.
    ``streams``: for each device whose stream this caller holds, when that stream connected and when the
    device last sent a frame on it. A stream carried a send when it began before it and the device was
    still on it ``proof`` later (the time within which a bridge ends a session whose gateway went silent:
    one stream is in order, so it received the send). A connection dying unnoticed proves nothing: its
    commands wait, and the next stream sends them again with a fresh count. Rows another transaction holds
    are skipped (the next sweep sees them). Returns the alerts raised, to announce after commit."""
    if not streams:
        return []
    candidates = (
        await session.execute(
            select(
                CloseCommand.id,
                CloseCommand.device_id,
                CloseCommand.volume,
                CloseCommand.reason,
                CloseCommand.sent_at,
                Position.id.label("position_id"),
                Position.status,
                Position.stop_loss,
                Position.take_profit,
            )
            .join(Position, Position.id == CloseCommand.position_id)
            .where(
                CloseCommand.status == CloseCommandStatus.SENT,
                CloseCommand.attempt >= max_attempts,
                CloseCommand.sent_at <= now - ack_timeout,
                any_id(CloseCommand.device_id, list(streams)),
            )
            .order_by(CloseCommand.id)
            .limit(1000)
            .with_for_update(skip_locked=True)
        )
    ).all()
    rows = [
        r
        for r in candidates
        if streams[r.device_id][0] <= r.sent_at and streams[r.device_id][1] >= r.sent_at + max(ack_timeout, proof)
    ]
    if not rows:
        return []
    error = f"no CloseResult after {max_attempts} sends"
    await session.execute(
        update(CloseCommand)
        .where(any_id(CloseCommand.id, [r.id for r in rows]))
        .values(status=CloseCommandStatus.EXPIRED, error=error, completed_at=now)
        .execution_options(synchronize_session=False)
    )
    closing = [r for r in rows if r.status is PositionStatus.CLOSING]
    await session.execute(
        update(Position)
        .where(and_(any_id(Position.id, [r.position_id for r in closing]), Position.status == PositionStatus.CLOSING))
        .values(status=PositionStatus.CLOSED_ERROR, closed_at=now)
        .execution_options(synchronize_session=False)
    )
    await events.insert_events(
        session,
        [
            events.event_row(
                r.position_id,
                PositionEventKind.CLOSE_FAILED,
                now,
                actor_type=ActorType.SYSTEM,
                stop_loss=r.stop_loss,
                take_profit=r.take_profit,
                volume=r.volume,
                close_command_id=r.id,
                reason=r.reason,
                detail=error,
            )
            for r in closing
        ],
    )
    return await alerts.raise_alerts(
        session, [_close_failed(r.position_id, r.device_id, r.id, error) for r in closing], now
    )
