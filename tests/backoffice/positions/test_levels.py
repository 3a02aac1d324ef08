"""backoffice.positions.levels: the one rule that reads a quote against a position's hidden levels."""

from __future__ import annotations

from decimal import Decimal

import pytest

from backoffice.models import CloseReason, Side
from backoffice.positions import levels
from backoffice.positions.levels import Levels, Move

D = Decimal


def _read(position: Levels, bid: str, ask: str | None = None) -> levels.Reading:
    return levels.read(position, D(bid), D(ask or bid))


@pytest.mark.parametrize(
    ("side", "bid", "ask", "expected"),
    [
        (Side.BUY, "99.00", "99.10", CloseReason.STOP_LOSS),  # bid at the stop
        (Side.BUY, "98.50", "98.60", CloseReason.STOP_LOSS),
        (Side.BUY, "99.01", "110.00", None),  # only the bid counts for a BUY
        (Side.BUY, "110.00", "110.10", CloseReason.TAKE_PROFIT),
        (Side.SELL, "109.90", "110.00", CloseReason.STOP_LOSS),  # ask at the stop (SELL: stop above)
        (Side.SELL, "95.00", "99.00", CloseReason.TAKE_PROFIT),
        (Side.SELL, "99.00", "99.01", None),
    ],
)
def test_a_buy_reads_the_bid_and_a_sell_the_ask(side: Side, bid: str, ask: str, expected: CloseReason | None) -> None:
    stop, target = (D(99), D(110)) if side is Side.BUY else (D(110), D(99))
    reading = _read(Levels(side, D(100), stop_loss=stop, take_profit=target), bid, ask)
    assert reading.trigger is expected and reading.moves == ()


def test_a_trailing_stop_follows_the_best_price_and_never_moves_back() -> None:
    position = levels.start_trailing(Levels(Side.BUY, D(100), stop_loss=D(95), trailing_distance=D(2)))
    assert (position.best_price, position.stop_loss) == (D(100), D(98))  # tighter than the fixed stop
    stops = []
    for bid in ("101", "103.5", "102", "103", "104"):
        reading = _read(position, bid)
        assert reading.trigger is None
        position = reading.levels
        stops.append(position.stop_loss)
    assert stops == [D(99), D("101.5"), D("101.5"), D("101.5"), D(102)]
    assert _read(position, "102.01").trigger is None
    fired = _read(position, "102")
    assert (fired.trigger, fired.levels.stop_loss) == (CloseReason.STOP_LOSS, D(102))


def test_a_sell_trails_the_lowest_ask() -> None:
    position = levels.start_trailing(Levels(Side.SELL, D(100), trailing_distance=D(1)))
    assert position.stop_loss == D(101)
    moved = _read(position, "97.9", "98")
    assert moved.moves == ((Move.TRAILING, D(99)),) and moved.levels.best_price == D(98)
    assert _read(moved.levels, "98.5", "98.6").levels == moved.levels  # worse: nothing moves
    assert _read(moved.levels, "98.9", "99").trigger is CloseReason.STOP_LOSS


def test_trailing_starts_from_a_better_quote_than_the_entry() -> None:
    position = levels.start_trailing(Levels(Side.BUY, D(100), trailing_distance=D(2)), price=D(105))
    assert (position.best_price, position.stop_loss) == (D(105), D(103))
    assert levels.start_trailing(Levels(Side.BUY, D(100), trailing_distance=D(2)), price=D(90)).stop_loss == D(98)


def test_breakeven_moves_the_stop_once_to_the_entry_plus_the_offset() -> None:
    position = Levels(Side.BUY, D(100), stop_loss=D(97), breakeven_trigger=D(2), breakeven_offset=D("0.5"))
    assert _read(position, "101.99").levels == position
    moved = _read(position, "102")
    assert moved.moves == ((Move.BREAKEVEN, D("100.5")),)
    assert moved.levels.breakeven_done and moved.trigger is None
    assert _read(moved.levels, "104").moves == ()  # once
    assert _read(moved.levels, "100.5").trigger is CloseReason.STOP_LOSS


def test_breakeven_never_loosens_a_tighter_stop() -> None:
    position = Levels(Side.SELL, D(100), stop_loss=D("99.5"), breakeven_trigger=D(1))
    reading = _read(position, "98.9", "99")
    assert reading.moves == () and reading.levels.stop_loss == D("99.5") and reading.levels.breakeven_done


def test_the_checks_name_the_field() -> None:
    assert levels.check_order(Side.BUY, D(101), D(100)) == [
        ("stop_loss", "must be below take_profit for a BUY position")
    ]
    assert levels.check_order(Side.SELL, D(99), D(100))[0][0] == "stop_loss"
    assert levels.check_order(Side.SELL, D(101), D(100)) == []
    assert levels.check_breakeven(D(1), D(1))[0][0] == "breakeven_offset"
    assert levels.check_breakeven(None, D("0.5"))[0] == ("breakeven_offset", "needs breakeven_trigger")
    assert levels.check_breakeven(D(1), D(-1))[0][0] == "breakeven_offset"
    assert levels.check_breakeven(D(1), D(0)) == []
