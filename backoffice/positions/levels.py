"""A position's hidden levels and the one rule that reads a quote against them: stop-loss and take-profit
crossings, the trailing stop and the breakeven move. Pure functions over decimals, shared by the monitor
(which acts on quotes), UpdateProtection (which refuses a level that would fire at once) and the opening
of a position (whose trailing stop starts at the fill).

A BUY position is closed at the bid, a SELL at the ask; that price is what every rule reads. "Tighter"
means closer to the price on the losing side: higher for a BUY's stop, lower for a SELL's. A stop never
moves back: trailing and breakeven only ever tighten it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from backoffice.models import CloseReason, Side


@dataclass(frozen=True)
class Levels:
    side: Side
    entry: Decimal
    stop_loss: Decimal | None = None
    take_profit: Decimal | None = None
    trailing_distance: Decimal | None = None
    best_price: Decimal | None = None  # what the trailing stop follows
    breakeven_trigger: Decimal | None = None
    breakeven_offset: Decimal | None = None
    breakeven_done: bool = False

    @property
    def watched(self) -> bool:
        """Whether any quote could ever act on these levels."""
        return (
            self.stop_loss is not None
            or self.take_profit is not None
            or self.trailing_distance is not None
            or self.breakeven_armed
        )

    @property
    def breakeven_armed(self) -> bool:
        return self.breakeven_trigger is not None and not self.breakeven_done

    @property
    def breakeven_price(self) -> Decimal | None:
        """The price at which the breakeven move happens, while it is armed."""
        if not self.breakeven_armed:
            return None
        assert self.breakeven_trigger is not None
        return self.entry + self.breakeven_trigger if self.side is Side.BUY else self.entry - self.breakeven_trigger


def of(position: Any) -> Levels:
    """The levels of a position row (an ORM ``Position`` or a row of its columns)."""
    return Levels(
        side=position.side,
        entry=position.entry_price,
        stop_loss=position.stop_loss,
        take_profit=position.take_profit,
        trailing_distance=position.trailing_distance,
        best_price=position.best_price,
        breakeven_trigger=position.breakeven_trigger,
        breakeven_offset=position.breakeven_offset,
        breakeven_done=position.breakeven_done,
    )


class Move(enum.StrEnum):
    TRAILING = "TRAILING"
    BREAKEVEN = "BREAKEVEN"


@dataclass(frozen=True)
class Reading:
    """What one quote does to a position: its levels after the quote, the stop moves it caused (each with
    the stop it set) and the close it triggers, if any."""

    levels: Levels
    moves: tuple[tuple[Move, Decimal], ...]
    trigger: CloseReason | None


def exit_price(side: Side, bid: Decimal, ask: Decimal) -> Decimal:
    """The price the position would be closed at: the bid for a BUY, the ask for a SELL."""
    return bid if side is Side.BUY else ask


def better(side: Side, price: Decimal, than: Decimal) -> bool:
    """Whether ``price`` is more favourable to the position than ``than``."""
    return price > than if side is Side.BUY else price < than


def tighter(side: Side, stop: Decimal | None, candidate: Decimal | None) -> Decimal | None:
    """The tighter of two stops (None is no stop at all)."""
    if stop is None or candidate is None:
        return candidate if stop is None else stop
    return max(stop, candidate) if side is Side.BUY else min(stop, candidate)


def crossed(levels: Levels, price: Decimal) -> CloseReason | None:
    """The close ``price`` triggers: BUY: price <= stop or price >= target; SELL: the reverse. The stop
    is read first (a quote can only cross both when they are inverted, and then losing is the safe read)."""
    stop, target = levels.stop_loss, levels.take_profit
    if levels.side is Side.BUY:
        if stop is not None and price <= stop:
            return CloseReason.STOP_LOSS
        if target is not None and price >= target:
            return CloseReason.TAKE_PROFIT
        return None
    if stop is not None and price >= stop:
        return CloseReason.STOP_LOSS
    if target is not None and price <= target:
        return CloseReason.TAKE_PROFIT
    return None


def trailing_stop(side: Side, best: Decimal, distance: Decimal) -> Decimal:
    return best - distance if side is Side.BUY else best + distance


def start_trailing(levels: Levels, price: Decimal | None = None) -> Levels:
    """Levels whose trailing stop starts now: the best price is the better of the entry and ``price``
    (the latest fresh quote's exit price, when there is one), and the stop tightens to follow it."""
    if levels.trailing_distance is None:
        return replace(levels, best_price=None)
    best = levels.entry if price is None or not better(levels.side, price, levels.entry) else price
    stop = tighter(levels.side, levels.stop_loss, trailing_stop(levels.side, best, levels.trailing_distance))
    return replace(levels, best_price=best, stop_loss=stop)


def read(levels: Levels, bid: Decimal, ask: Decimal) -> Reading:
    """Apply one quote: the breakeven move (once the price has gone ``breakeven_trigger`` in the position's
    favour, the stop tightens to the entry plus ``breakeven_offset``), the trailing stop (a better price
    becomes the best price, and the stop tightens to follow it at ``trailing_distance``), then the
    crossing of the resulting stop or target."""
    price = exit_price(levels.side, bid, ask)
    moves: list[tuple[Move, Decimal]] = []
    trigger_price = levels.breakeven_price
    if trigger_price is not None and not better(levels.side, trigger_price, price):
        offset = levels.breakeven_offset or Decimal(0)
        target = levels.entry + offset if levels.side is Side.BUY else levels.entry - offset
        stop = tighter(levels.side, levels.stop_loss, target)
        if stop != levels.stop_loss:
            assert stop is not None
            moves.append((Move.BREAKEVEN, stop))
        levels = replace(levels, stop_loss=stop, breakeven_done=True)
    if levels.trailing_distance is not None and (
        levels.best_price is None or better(levels.side, price, levels.best_price)
    ):
        stop = tighter(levels.side, levels.stop_loss, trailing_stop(levels.side, price, levels.trailing_distance))
        if stop != levels.stop_loss:
            assert stop is not None
            moves.append((Move.TRAILING, stop))
        levels = replace(levels, stop_loss=stop, best_price=price)
    return Reading(levels, tuple(moves), crossed(levels, price))


def check_breakeven(trigger: Decimal | None, offset: Decimal | None, prefix: str = "") -> list[tuple[str, str]]:
    """A breakeven offset needs a trigger, is not negative and stays below the trigger (at the trigger the
    new stop would be the price itself and fire at once)."""
    if offset is None:
        return []
    if trigger is None:
        return [(f"{prefix}breakeven_offset", "needs breakeven_trigger")]
    if offset < 0:
        return [(f"{prefix}breakeven_offset", "must not be negative")]
    if offset >= trigger:
        return [(f"{prefix}breakeven_offset", "must be below breakeven_trigger")]
    return []


def check_order(side: Side, stop: Decimal | None, target: Decimal | None) -> list[tuple[str, str]]:
    """A BUY's stop lies below its target, a SELL's above."""
    if stop is None or target is None:
        return []
    if side is Side.BUY and not stop < target:
        return [("stop_loss", "must be below take_profit for a BUY position")]
    if side is Side.SELL and not stop > target:
        return [("stop_loss", "must be above take_profit for a SELL position")]
    return []
