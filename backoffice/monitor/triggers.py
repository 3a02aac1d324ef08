"""What the monitor writes when quotes reach positions, in one transaction: the positions are locked (in id
order) and read again, so the rule (``backoffice.positions.levels.read``) acts on the levels as they are
now, whatever the monitor's memory says; trailing and breakeven moves are written with an event each; a
crossed level becomes a close command through ``backoffice.positions.queue_closes``, whose unique index
lets each position have one command out at most, so two monitors (or one restarted in the middle) never
close a position twice.

A quote received before a position's levels were last set (``levels_at``) never acts on them: a monitor
that is late with an old quote cannot fire a level a newer quote, or a person, has just moved.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from backoffice import positions
from backoffice.models import ActorType, Position, PositionEventKind, PositionStatus, Signal
from backoffice.monitor.book import Watched
from backoffice.platform.db import any_id, update_by_id
from backoffice.positions import events, levels
from backoffice.quotes import Feed, Seen

_MOVES = {
    levels.Move.TRAILING: PositionEventKind.TRAILING_STOP_MOVED,
    levels.Move.BREAKEVEN: PositionEventKind.BREAKEVEN_MOVED,
}

WATCHED_COLUMNS = (
    Position.id,
    Position.device_id,
    Position.instrument,
    Position.signal_instrument,
    Position.volume,
    Position.side,
    Position.entry_price,
    Position.stop_loss,
    Position.take_profit,
    Position.trailing_distance,
    Position.best_price,
    Position.breakeven_trigger,
    Position.breakeven_offset,
    Position.breakeven_done,
    Position.levels_at,
    Position.status,
    # Whose quotes act on it: its signal's producer's (and the price feeds').
    select(Signal.producer_id).where(Signal.id == Position.signal_id).scalar_subquery().label("producer_id"),
)


def watched(row: Any) -> Watched:
    """A position row (of ``WATCHED_COLUMNS``) as the monitor keeps it."""
    return Watched(
        id=row.id,
        device_id=row.device_id,
        instrument=row.instrument,
        signal_instrument=row.signal_instrument,
        producer_id=row.producer_id,
        volume=row.volume,
        levels=levels.of(row),
        levels_at=row.levels_at,
    )


@dataclass(frozen=True)
class Run:
    """Quotes of one feed in the order received, and the positions of that feed they may reach."""

    feed: Feed
    quotes: Sequence[Seen]
    candidates: frozenset[uuid.UUID]


@dataclass
class _State:
    watched: Watched
    moved: bool = False
    closing: bool = False


@dataclass
class Applied:
    """What the transaction left: each position read (OPEN ones with their levels now), the ones now
    closing, and the close commands created (their devices are to be woken)."""

    still_open: dict[uuid.UUID, Watched] = field(default_factory=dict)
    gone: set[uuid.UUID] = field(default_factory=set)
    queued: list[positions.Queued] = field(default_factory=list)
    moves: int = 0  # stop moves written (trailing, breakeven)


async def apply(session: AsyncSession, runs: Sequence[Run], now: datetime) -> Applied:
    """Read each run's quotes, in order, against its candidates as they are in the database now; write the
    moves, their events and the close commands. Positions no longer OPEN are reported ``gone``."""
    wanted = sorted({p for run in runs for p in run.candidates})
    rows = (
        await session.execute(
            select(*WATCHED_COLUMNS)
            .where(any_id(Position.id, wanted), Position.status == PositionStatus.OPEN)
            .order_by(Position.id)
            .with_for_update()
        )
    ).all()
    states = {row.id: _State(watched(row)) for row in rows}
    event_rows: list[dict[str, Any]] = []
    closings: list[positions.Closing] = []
    for run in runs:
        for quote in run.quotes:
            for position_id in sorted(run.candidates):
                state = states.get(position_id)
                if state is None or state.closing:
                    continue
                closing = _read(state, quote, now, event_rows)
                if closing is not None:
                    closings.append(closing)
    await _write_moves(session, [s.watched for s in states.values() if s.moved])
    await events.insert_events(session, event_rows)
    queued = await positions.queue_closes(session, closings, now, actor_type=ActorType.SYSTEM)
    closed = {q.position_id for q in queued}
    applied = Applied(queued=queued, moves=len(event_rows))
    applied.gone = (set(wanted) - set(states)) | closed
    applied.still_open = {p: s.watched for p, s in states.items() if p not in closed}
    return applied


def _read(state: _State, quote: Seen, now: datetime, event_rows: list[dict[str, Any]]) -> positions.Closing | None:
    """One quote against one position: its moves (recorded as events) and the close it triggers."""
    position = state.watched
    if position.levels_at is not None and quote.received_at < position.levels_at:
        return None
    reading = levels.read(position.levels, quote.bid, quote.ask)
    price = levels.exit_price(position.levels.side, quote.bid, quote.ask)
    if reading.levels != position.levels:
        state.watched = position = replace(position, levels=reading.levels, levels_at=quote.received_at)
        state.moved = True
    for move, stop in reading.moves:
        event_rows.append(
            events.event_row(
                position.id,
                _MOVES[move],
                now,
                actor_type=ActorType.SYSTEM,
                stop_loss=stop,
                take_profit=position.levels.take_profit,
                price=price,
            )
        )
    if reading.trigger is None:
        return None
    state.closing = True
    return positions.Closing(
        position.id,
        position.device_id,
        position.volume,
        reading.trigger,
        price=price,
        stop_loss=position.levels.stop_loss,
        take_profit=position.levels.take_profit,
    )


async def _write_moves(session: AsyncSession, moved: Sequence[Watched]) -> None:
    await update_by_id(
        session,
        Position,
        [
            {
                "id": w.id,
                "stop_loss": w.levels.stop_loss,
                "best_price": w.levels.best_price,
                "breakeven_done": w.levels.breakeven_done,
                "levels_at": w.levels_at,
            }
            for w in moved
        ],
    )
