"""``PaperExecutor``: a simulated broker (latency, slippage and rejects, deterministic with a seed), for
demos, tests and trying a bridge without a terminal. Its book (positions, entry prices, orders and closes by
id, realised profit) and its prices live in memory and, in a bridge, in the bridge's ledger: saved after
every fill and close and on stop, loaded on start, so a restarted paper bridge can still close what it
opened, at the prices it left."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import ROUND_DOWN, Decimal
from typing import Any

from gateway.bridge.executors import base


def _step_down(value: Decimal, step: Decimal) -> Decimal:
    if step <= 0:
        return value
    return (value / step).to_integral_value(rounding=ROUND_DOWN) * step


DEFAULT_SYMBOLS: tuple[base.SymbolInfo, ...] = (
    base.SymbolInfo(
        "XAUUSD", Decimal(100), Decimal("0.01"), Decimal(1), Decimal("0.01"), Decimal("0.01"), Decimal(100)
    ),
    base.SymbolInfo(
        "GOLD.m", Decimal(100), Decimal("0.01"), Decimal(1), Decimal("0.01"), Decimal("0.01"), Decimal(100)
    ),
    base.SymbolInfo(
        "EURUSD", Decimal(100000), Decimal("0.00001"), Decimal(1), Decimal("0.01"), Decimal("0.01"), Decimal(100)
    ),
    base.SymbolInfo(
        "GBPUSD", Decimal(100000), Decimal("0.00001"), Decimal(1), Decimal("0.01"), Decimal("0.01"), Decimal(100)
    ),
    base.SymbolInfo(
        "USDJPY", Decimal(100000), Decimal("0.001"), Decimal(1), Decimal("0.01"), Decimal("0.01"), Decimal(100)
    ),
    base.SymbolInfo(
        "BTCUSD", Decimal(1), Decimal("0.01"), Decimal("0.01"), Decimal("0.01"), Decimal("0.01"), Decimal(10)
    ),
)


@dataclass(frozen=True)
class PaperConfig:
    """A simulated broker. ``latency`` (seconds, plus up to ``latency_jitter``) before each fill or close;
    ``slippage_ticks``: a fill or a close (full or partial, at the current quote) is up to this many ticks
    worse than the market; ``reject_rate``: the share of orders refused (0 to 1); ``seed`` makes jitter,
    slippage, rejects and price drift repeatable.

    A paper market has no prices of its own. ``prices`` fixes mid prices (and ``set_price`` moves them);
    otherwise, with ``follow_signals``, an order that names an entry price first moves the market there
    (the fill then differs from the entry only by spread and slippage), and an order at market on an
    instrument never priced starts from ``REFERENCE_PRICES``. ``drift_ticks`` moves a price by up to this
    many ticks on every quote."""

    seed: int = 0
    latency: float = 0.0
    latency_jitter: float = 0.0
    slippage_ticks: int = 0
    reject_rate: float = 0.0
    spread_ticks: int = 2
    drift_ticks: int = 0
    currency: str = "USD"
    balance: Decimal = Decimal(10000)
    symbols: tuple[base.SymbolInfo, ...] = DEFAULT_SYMBOLS
    prices: Mapping[str, Decimal] = field(default_factory=dict)
    follow_signals: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.reject_rate <= 1:
            raise ValueError("reject_rate must be between 0 and 1")
        if self.latency < 0 or self.latency_jitter < 0 or self.slippage_ticks < 0 or self.spread_ticks < 0:
            raise ValueError("latency, jitter, slippage and spread must not be negative")


REFERENCE_PRICES: Mapping[str, Decimal] = {
    "XAUUSD": Decimal("2000.00"),
    "GOLD.m": Decimal("2000.00"),
    "EURUSD": Decimal("1.08000"),
    "GBPUSD": Decimal("1.27000"),
    "USDJPY": Decimal("150.000"),
    "BTCUSD": Decimal("60000.00"),
}

_GENERIC_SYMBOL = base.SymbolInfo(
    "", Decimal(1), Decimal("0.01"), Decimal(1), Decimal("0.01"), Decimal("0.01"), Decimal(100)
)


class PaperExecutor(base.Executor):
    """Simulated fills. Deterministic for a given seed and sequence of calls. Positions live in memory."""

    def __init__(self, config: PaperConfig | None = None) -> None:
        self.config = config or PaperConfig()
        self._rng = random.Random(self.config.seed)  # noqa: S311 - a simulation, not cryptography
        self._symbols = {s.name: s for s in self.config.symbols}
        self._mid: dict[str, Decimal] = dict(self.config.prices)
        self._fixed = set(self.config.prices)  # instruments whose price signals do not move
        self._positions: dict[str, base.HeldPosition] = {}
        self._orders: dict[str, base.OrderFill] = {}
        self._entry: dict[str, Decimal] = {}  # fill price per ticket
        self._realised = Decimal(0)
        self.fills: list[tuple[base.OrderRequest, base.OrderFill]] = []  # every fill, in order (tests count them)
        self.closes: list[tuple[base.CloseRequest, base.CloseFill]] = []
        self._closed: dict[str, base.CloseFill] = {}  # by command id
        self._store: base.StateStore | None = None

    def keep_state_in(self, store: base.StateStore) -> None:
        self._store = store

    async def start(self) -> None:
        """Load the book a previous run saved (when in a bridge with a ledger)."""
        if self._store is None:
            return
        data = await self._store.load()
        if data is not None:
            self._restore(json.loads(data))

    async def stop(self) -> None:
        await self._save()  # the prices moved since the last fill or close

    async def _save(self) -> None:
        if self._store is not None:
            await self._store.save(json.dumps(self._snapshot(), sort_keys=True).encode())

    def _snapshot(self) -> dict[str, Any]:
        return {
            "positions": [
                [p.broker_ticket, p.instrument, p.side.value, str(p.volume), str(self._entry[p.broker_ticket])]
                for p in self._positions.values()
            ],
            "orders": {
                d: [f.broker_ticket, str(f.price), str(f.volume), f.fill_time.isoformat()]
                for d, f in self._orders.items()
            },
            "closes": {c: [str(f.close_price), str(f.closed_volume)] for c, f in self._closed.items()},
            "realised": str(self._realised),
            "prices": {instrument: str(mid) for instrument, mid in self._mid.items()},
            "fixed": sorted(self._fixed),
        }

    def _restore(self, saved: dict[str, Any]) -> None:
        for ticket, instrument, side, volume, entry in saved["positions"]:
            self._positions[ticket] = base.HeldPosition(ticket, instrument, base.OrderSide(side), Decimal(volume))
            self._entry[ticket] = Decimal(entry)
        for delivery_id, (ticket, price, volume, when) in saved["orders"].items():
            self._orders[delivery_id] = base.OrderFill(
                ticket, Decimal(price), Decimal(volume), datetime.fromisoformat(when)
            )
        for command_id, (price, volume) in saved["closes"].items():
            self._closed[command_id] = base.CloseFill(Decimal(price), Decimal(volume))
        self._realised = Decimal(saved["realised"])
        # Prices fixed by this run's configuration win over the saved ones.
        self._mid = {**{i: Decimal(m) for i, m in saved["prices"].items()}, **self.config.prices}
        self._fixed = set(saved["fixed"]) | set(self.config.prices)

    def _spec(self, instrument: str) -> base.SymbolInfo:
        return self._symbols.get(instrument) or replace(_GENERIC_SYMBOL, name=instrument)

    def set_price(self, instrument: str, mid: Decimal) -> None:
        """Fix the simulated market's mid price (tests and demos)."""
        self._mid[instrument] = mid
        self._fixed.add(instrument)

    def _price(self, instrument: str, *, move: bool = True) -> base.Price | None:
        mid = self._mid.get(instrument)
        if mid is None:
            return None
        tick = self._spec(instrument).tick_size
        if move and self.config.drift_ticks:
            mid = max(mid + tick * self._rng.randint(-self.config.drift_ticks, self.config.drift_ticks), tick)
            self._mid[instrument] = mid
        # On the symbol's tick grid and at least one tick: a signal's entry price may be finer than the
        # tick or next to zero, and a bid of zero (or one with more decimals than a price may carry) is no
        # price at all; the gateway would refuse every quote and fill made from it.
        bid = max(_step_down(mid - tick * self.config.spread_ticks / 2, tick), tick)
        return base.Price(instrument, bid, bid + tick * self.config.spread_ticks, base.now())

    async def account(self) -> base.AccountInfo:
        """From the paper book: the balance is the starting balance plus the profit of every close, the
        equity the balance plus the open positions' floating profit at the current quote (a BUY's at the
        bid, a SELL's at the ask), without moving the market."""
        balance = self.config.balance + self._realised
        equity = balance
        for position in self._positions.values():
            price = self._price(position.instrument, move=False)
            entry = self._entry.get(position.broker_ticket)
            if price is not None and entry is not None:
                equity += self._profit(position, entry, price)
        return base.AccountInfo(self.config.currency, balance, equity)

    def _profit(self, position: base.HeldPosition, entry: Decimal, price: base.Price) -> Decimal:
        return self._profit_at(position, entry, price.bid if position.side is base.OrderSide.BUY else price.ask)

    def _profit_at(self, position: base.HeldPosition, entry: Decimal, exit_price: Decimal) -> Decimal:
        move = exit_price - entry if position.side is base.OrderSide.BUY else entry - exit_price
        return move * self._spec(position.instrument).contract_size * position.volume

    def _slip(self) -> int:
        return self._rng.randint(0, self.config.slippage_ticks) if self.config.slippage_ticks else 0

    async def symbols(self) -> list[base.SymbolInfo]:
        return list(self.config.symbols)

    async def quote(self, instrument: str) -> base.Price | None:
        return self._price(instrument)

    async def market_price(self, order: base.OrderRequest) -> Decimal | None:
        if order.instrument not in self._fixed:
            if order.entry_price is not None and self.config.follow_signals:
                self._mid[order.instrument] = order.entry_price
            elif order.instrument not in self._mid and order.instrument in REFERENCE_PRICES:
                self._mid[order.instrument] = REFERENCE_PRICES[order.instrument]
        price = self._price(order.instrument)
        if price is None:
            return None
        return price.ask if order.side is base.OrderSide.BUY else price.bid

    async def _wait(self) -> None:
        delay = self.config.latency
        if self.config.latency_jitter:
            delay += self._rng.uniform(0, self.config.latency_jitter)
        if delay > 0:
            await asyncio.sleep(delay)

    async def place_order(self, order: base.OrderRequest) -> base.OrderFill:
        # Draw every random number before waiting, so concurrent orders stay deterministic.
        rejected = self._rng.random() < self.config.reject_rate
        slip = self._slip()
        spec = self._spec(order.instrument)
        if order.volume <= 0 or order.volume < spec.volume_min or order.volume > spec.volume_max:
            raise base.OrderRejected(f"invalid volume {order.volume} for {order.instrument}")
        market = await self.market_price(order)
        if market is None:
            raise base.OrderRejected(f"no price for {order.instrument}")
        await self._wait()
        if rejected:
            raise base.OrderRejected("paper broker: simulated reject")
        if order.side is base.OrderSide.BUY:
            price = market + spec.tick_size * slip
        else:
            price = max(market - spec.tick_size * slip, spec.tick_size)  # a price stays above zero
        ticket = str(int.from_bytes(hashlib.sha256(order.delivery_id.encode()).digest()[:6], "big"))
        fill = base.OrderFill(ticket, price, order.volume, base.now())
        self._positions[ticket] = base.HeldPosition(ticket, order.instrument, order.side, order.volume)
        self._entry[ticket] = price
        self._orders[order.delivery_id] = fill
        self.fills.append((order, fill))
        await self._save()
        return fill

    async def find_order(self, delivery_id: str) -> base.OrderFill | None:
        return self._orders.get(delivery_id)

    async def close_position(self, request: base.CloseRequest) -> base.CloseFill:
        """Close all of a position or part of it at the current quote (a BUY at the bid, a SELL at the ask),
        up to ``slippage_ticks`` worse, after the configured latency."""
        slip = self._slip()  # drawn before waiting, as for fills
        position = self._positions.get(request.broker_ticket)
        if position is None:
            raise base.CloseFailed(f"no open position with ticket {request.broker_ticket}")
        volume = position.volume if request.volume is None else request.volume
        if volume <= 0 or volume > position.volume:
            raise base.CloseFailed(f"cannot close {volume} of {position.volume} lots")
        price = self._price(position.instrument)
        if price is None:
            raise base.CloseFailed(f"no price for {position.instrument}")
        await self._wait()
        tick = self._spec(position.instrument).tick_size
        # Worse for the trader by the slip; a price stays above zero.
        buy = position.side is base.OrderSide.BUY
        close_price = max(price.bid - tick * slip, tick) if buy else price.ask + tick * slip
        entry = self._entry[position.broker_ticket]
        self._realised += self._profit_at(replace(position, volume=volume), entry, close_price)
        if volume == position.volume:
            del self._positions[position.broker_ticket]
        else:
            self._positions[position.broker_ticket] = replace(position, volume=position.volume - volume)
        result = base.CloseFill(close_price, volume)
        self.closes.append((request, result))
        self._closed[request.command_id] = result
        await self._save()
        return result

    async def find_close(self, command_id: str) -> base.CloseFill | None:
        return self._closed.get(command_id)

    async def positions(self) -> list[base.HeldPosition]:
        return list(self._positions.values())
