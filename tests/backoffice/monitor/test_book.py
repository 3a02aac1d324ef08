"""backoffice.monitor.book: a quote finds the positions it may act on by bisection. The book must never
miss one the rule would act on, and names no other."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime
from decimal import Decimal

from backoffice.models import Side
from backoffice.monitor.book import Books, Ladder, Watched
from backoffice.positions import levels
from backoffice.positions.levels import Levels
from backoffice.quotes import Feed, Seen

NOW = datetime(2030, 1, 1, tzinfo=UTC)
FEED = Feed("XAUUSD")


def _quote(bid: Decimal, ask: Decimal | None = None) -> Seen:
    return Seen(FEED, bid, ask if ask is not None else bid + Decimal("0.2"), NOW, NOW)


def _watched(position: Levels) -> Watched:
    return Watched(uuid.uuid4(), uuid.uuid4(), "GOLD.m", "XAUUSD", uuid.uuid4(), Decimal(1), position, None)


def _random_levels(rng: random.Random) -> Levels:
    side = rng.choice([Side.BUY, Side.SELL])
    entry = Decimal(rng.randint(9000, 11000)) / 100
    sign = 1 if side is Side.BUY else -1

    def maybe(value: Decimal) -> Decimal | None:
        return value if rng.random() < 0.6 else None

    position = Levels(
        side,
        entry,
        stop_loss=maybe(entry - sign * Decimal(rng.randint(1, 500)) / 100),
        take_profit=maybe(entry + sign * Decimal(rng.randint(1, 500)) / 100),
        trailing_distance=maybe(Decimal(rng.randint(1, 300)) / 100),
        breakeven_trigger=maybe(Decimal(rng.randint(1, 300)) / 100),
    )
    return levels.start_trailing(position)


def test_a_ladder_answers_by_bisection() -> None:
    ladder = Ladder()
    ids = [uuid.uuid4() for _ in range(5)]
    for position_id, level in zip(ids, (1, 2, 2, 3, 5), strict=True):
        ladder.put(position_id, Decimal(level))
    assert set(ladder.at_most(Decimal(2))) == set(ids[:3])
    assert set(ladder.below(Decimal(2))) == {ids[0]}
    assert set(ladder.at_least(Decimal(3))) == set(ids[3:])
    assert set(ladder.above(Decimal(3))) == {ids[4]}
    ladder.put(ids[4], Decimal(0))  # moved: one entry per position
    ladder.discard(ids[0])
    assert ladder.at_most(Decimal(0)) == [ids[4]] and len(ladder) == 4


def test_the_book_never_misses_a_position_the_rule_acts_on() -> None:
    rng = random.Random(7)
    books = Books()
    everyone = [_watched(_random_levels(rng)) for _ in range(1000)]
    for position in everyone:
        books.put(position)
    for _ in range(100):
        quote = _quote(Decimal(rng.randint(9000, 11000)) / 100)
        reached = books.reached(FEED, [quote])
        acted = {
            p.id
            for p in everyone
            if (reading := levels.read(p.levels, quote.bid, quote.ask)).trigger or reading.levels != p.levels
        }
        assert reached == acted  # none missed, and none named in vain: the ladders are exact


def test_ten_thousand_positions_far_from_the_price_are_not_named() -> None:
    """The work a quote causes is the positions it reaches: with 10,000 positions whose levels are far
    away and one that is crossed, the book names exactly that one."""
    books = Books()
    for _ in range(10_000):
        books.put(_watched(Levels(Side.BUY, Decimal(100), stop_loss=Decimal(90), take_profit=Decimal(110))))
    crossed = _watched(Levels(Side.BUY, Decimal(100), stop_loss=Decimal("99.5")))
    books.put(crossed)
    assert books.reached(FEED, [_quote(Decimal("99.4"))]) == {crossed.id}
    assert books.reached(FEED, [_quote(Decimal(100))]) == set()


def test_a_position_with_nothing_to_watch_is_not_kept() -> None:
    books = Books()
    bare = _watched(Levels(Side.BUY, Decimal(100)))
    books.put(bare)
    assert len(books) == 0
    watched = _watched(Levels(Side.SELL, Decimal(100), take_profit=Decimal(90)))
    books.put(watched)
    assert books.reached(Feed("GOLD.m", watched.device_id), [_quote(Decimal("89.8"))]) == {watched.id}
    books.keep_only([])
    assert len(books) == 0 and books.reached(FEED, [_quote(Decimal(80))]) == set()
