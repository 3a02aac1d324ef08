"""The monitor's memory: every watched position's levels, ordered per feed, so that a quote finds the
positions it may act on by bisection. Its cost grows with the positions actually reached, not with all the
positions open on the instrument.

A position sits in the book of each feed it is read against (its signal's instrument, for price feeds'
quotes; that and its signal's producer, for that producer's quotes; its device and broker symbol, for the
device's own quotes) and, in each, on one ladder per rule:
its stop, its target, its armed breakeven price and (with a trailing stop) the best price so far.
"""

from __future__ import annotations

import uuid
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from backoffice.models import Side
from backoffice.positions.levels import Levels
from backoffice.quotes import Feed, Seen

_LOWEST = 0
_HIGHEST = 2**128 - 1


class Ladder:
    """(level, position) pairs in ascending order; the positions at or beyond a price are a slice. Keys
    carry the id's integer: comparing those is native, comparing UUIDs is a Python call."""

    __slots__ = ("_ids", "_keys", "_level")

    def __init__(self) -> None:
        self._keys: list[tuple[Decimal, int]] = []
        self._level: dict[uuid.UUID, Decimal] = {}
        self._ids: dict[int, uuid.UUID] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def put(self, position_id: uuid.UUID, level: Decimal) -> None:
        self.discard(position_id)
        insort(self._keys, (level, position_id.int))
        self._level[position_id] = level
        self._ids[position_id.int] = position_id

    def discard(self, position_id: uuid.UUID) -> None:
        level = self._level.pop(position_id, None)
        if level is not None:
            del self._keys[bisect_left(self._keys, (level, position_id.int))]
            del self._ids[position_id.int]

    def _named(self, keys: list[tuple[Decimal, int]]) -> list[uuid.UUID]:
        return [self._ids[number] for _, number in keys]

    def at_most(self, price: Decimal) -> list[uuid.UUID]:
        return self._named(self._keys[: bisect_right(self._keys, (price, _HIGHEST))])

    def below(self, price: Decimal) -> list[uuid.UUID]:
        return self._named(self._keys[: bisect_left(self._keys, (price, _LOWEST))])

    def at_least(self, price: Decimal) -> list[uuid.UUID]:
        return self._named(self._keys[bisect_left(self._keys, (price, _LOWEST)) :])

    def above(self, price: Decimal) -> list[uuid.UUID]:
        return self._named(self._keys[bisect_right(self._keys, (price, _HIGHEST)) :])


@dataclass(frozen=True)
class Watched:
    """An OPEN position as the monitor keeps it."""

    id: uuid.UUID
    device_id: uuid.UUID
    instrument: str  # the broker symbol
    signal_instrument: str
    producer_id: uuid.UUID  # its signal's: that producer's quotes act on it, another's never
    volume: Decimal
    levels: Levels
    levels_at: datetime | None

    @property
    def feeds(self) -> tuple[Feed, Feed, Feed]:
        """The price feeds' quotes of its signal's instrument, its producer's, and its device's own."""
        return (
            Feed(self.signal_instrument),
            Feed(self.signal_instrument, producer_id=self.producer_id),
            Feed(self.instrument, device_id=self.device_id),
        )


@dataclass(frozen=True)
class Span:
    """The bids and asks a run of quotes went through."""

    low_bid: Decimal
    high_bid: Decimal
    low_ask: Decimal
    high_ask: Decimal

    @classmethod
    def of(cls, run: Sequence[Seen]) -> Span:
        return cls(min(q.bid for q in run), max(q.bid for q in run), min(q.ask for q in run), max(q.ask for q in run))


class Book:
    """The ladders of one feed, made as needed (most device feeds hold a position or two). A BUY is read at
    the bid: its stop fires at or above a bid, its target at or below one, its breakeven at or below one,
    its trailing best moves below one; a SELL, at the ask, the other way round."""

    __slots__ = ("_ladders",)

    def __init__(self) -> None:
        self._ladders: dict[tuple[Side, str], Ladder] = {}

    def put(self, watched: Watched) -> None:
        self.discard(watched.id)
        levels = watched.levels
        for rule, level in (
            ("stop", levels.stop_loss),
            ("target", levels.take_profit),
            ("breakeven", levels.breakeven_price),
            ("best", levels.best_price if levels.trailing_distance else None),
        ):
            if level is not None:
                self._ladders.setdefault((levels.side, rule), Ladder()).put(watched.id, level)

    def discard(self, position_id: uuid.UUID) -> None:
        for ladder in self._ladders.values():
            ladder.discard(position_id)

    def reached(self, span: Span) -> set[uuid.UUID]:
        """Every position a quote within ``span`` may move or close (the rule itself then decides)."""
        found: set[uuid.UUID] = set()
        for (side, rule), ladder in self._ladders.items():
            found.update(_reached(ladder, side, rule, span))
        return found


def _reached(ladder: Ladder, side: Side, rule: str, span: Span) -> list[uuid.UUID]:
    """The slice of one ladder a span of quotes reaches: only that slice is ever built."""
    if side is Side.BUY:
        if rule == "stop":
            return ladder.at_least(span.low_bid)
        if rule == "best":
            return ladder.below(span.high_bid)
        return ladder.at_most(span.high_bid)  # target, breakeven
    if rule == "stop":
        return ladder.at_most(span.high_ask)
    if rule == "best":
        return ladder.above(span.low_ask)
    return ladder.at_least(span.low_ask)  # target, breakeven


class Books:
    """Every watched position and the book of each feed."""

    def __init__(self) -> None:
        self.watched: dict[uuid.UUID, Watched] = {}
        self._books: dict[Feed, Book] = {}

    def __len__(self) -> int:
        return len(self.watched)

    def put(self, watched: Watched) -> None:
        """Watch the position (again, with its current levels), or stop when nothing could act on it."""
        self.discard(watched.id)
        if not watched.levels.watched:
            return
        self.watched[watched.id] = watched
        for feed in watched.feeds:
            self._books.setdefault(feed, Book()).put(watched)

    def discard(self, position_id: uuid.UUID) -> None:
        old = self.watched.pop(position_id, None)
        if old is None:
            return
        for feed in old.feeds:
            book = self._books.get(feed)
            if book is not None:
                book.discard(position_id)

    def reached(self, feed: Feed, run: Sequence[Seen]) -> set[uuid.UUID]:
        book = self._books.get(feed)
        return book.reached(Span.of(run)) if book is not None and run else set()

    def keep_only(self, ids: Iterable[uuid.UUID]) -> None:
        """Forget every position not in ``ids`` (after a full reload)."""
        keep = set(ids)
        for position_id in [p for p in self.watched if p not in keep]:
            self.discard(position_id)
