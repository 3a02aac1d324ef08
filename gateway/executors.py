"""Executors: what a bridge trades through. One interface, two implementations.

``PaperExecutor`` simulates a broker (latency, slippage and rejects, deterministic with a seed);
``Mt5Executor`` drives a MetaTrader 5 terminal through the ``MetaTrader5`` package, which exists only on
Windows and is imported lazily. Prices and volumes are ``Decimal`` everywhere; floats appear only at the
MetaTrader5 API boundary, converted through ``str``.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import random
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal
from typing import Any, TypeVar

_T = TypeVar("_T")


class OrderSide(enum.StrEnum):
    BUY = "BUY"
    SELL = "SELL"


@dataclass(frozen=True)
class AccountInfo:
    """The trading account, as sent in Hello."""

    currency: str
    balance: Decimal
    equity: Decimal


@dataclass(frozen=True)
class SymbolInfo:
    """One broker symbol's trading specification, as sent in Hello."""

    name: str
    contract_size: Decimal
    tick_size: Decimal
    tick_value: Decimal
    volume_min: Decimal
    volume_step: Decimal
    volume_max: Decimal


@dataclass(frozen=True)
class Price:
    instrument: str
    bid: Decimal
    ask: Decimal
    time: datetime


@dataclass(frozen=True)
class OrderRequest:
    """A market order for one delivery; ``entry_price`` is the signal's (None: at market)."""

    delivery_id: str
    instrument: str
    side: OrderSide
    volume: Decimal
    entry_price: Decimal | None = None


@dataclass(frozen=True)
class OrderFill:
    broker_ticket: str
    price: Decimal
    volume: Decimal
    fill_time: datetime


@dataclass(frozen=True)
class CloseRequest:
    """Close ``volume`` lots (None: all) of the position ``broker_ticket``."""

    command_id: str
    broker_ticket: str
    volume: Decimal | None = None


@dataclass(frozen=True)
class CloseFill:
    close_price: Decimal
    closed_volume: Decimal


@dataclass(frozen=True)
class HeldPosition:
    broker_ticket: str
    instrument: str
    side: OrderSide
    volume: Decimal


class ExecutorError(Exception):
    """The executor cannot work at all (missing package, terminal not running, login failed)."""


class OrderRejected(Exception):
    """The broker (or the simulation) refused an order; ``reason`` is reported in Ack REJECTED."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CloseFailed(Exception):
    """A close did not happen; ``reason`` is reported in CloseResult.error."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Executor(ABC):
    """What a BridgeClient needs from a trading terminal. Every method may be called from one event loop;
    implementations that block (MetaTrader5) run their calls on a thread of their own."""

    @abstractmethod
    async def start(self) -> None:
        """Connect to the terminal (idempotent); raises ExecutorError when that is impossible."""

    @abstractmethod
    async def account(self) -> AccountInfo: ...

    @abstractmethod
    async def symbols(self) -> list[SymbolInfo]: ...

    @abstractmethod
    async def quote(self, instrument: str) -> Price | None:
        """The current bid/ask, or None when the terminal has no price for the instrument."""

    @abstractmethod
    async def market_price(self, order: OrderRequest) -> Decimal | None:
        """The price ``order`` would be filled at now (BUY: ask, SELL: bid), or None when unknown."""

    @abstractmethod
    async def place_order(self, order: OrderRequest) -> OrderFill:
        """Place a market order; raises OrderRejected with the broker's reason."""

    @abstractmethod
    async def find_order(self, delivery_id: str) -> OrderFill | None:
        """The fill of an order placed earlier for ``delivery_id`` (after a crash in the middle of
        placing it), or None when no such order is known."""

    @abstractmethod
    async def close_position(self, request: CloseRequest) -> CloseFill:
        """Close (part of) a position; raises CloseFailed with the reason."""

    @abstractmethod
    async def positions(self) -> list[HeldPosition]: ...

    async def stop(self) -> None:
        """Release the terminal (nothing to release by default)."""
        return None


def order_comment(delivery_id: str) -> str:
    """What ties a broker order to its delivery: 31 characters at most (MetaTrader's comment limit)."""
    return "sh" + delivery_id.replace("-", "")[:29]


def _now() -> datetime:
    return datetime.now(UTC)


def _step_down(value: Decimal, step: Decimal) -> Decimal:
    if step <= 0:
        return value
    return (value / step).to_integral_value(rounding=ROUND_DOWN) * step


DEFAULT_SYMBOLS: tuple[SymbolInfo, ...] = (
    SymbolInfo("XAUUSD", Decimal(100), Decimal("0.01"), Decimal(1), Decimal("0.01"), Decimal("0.01"), Decimal(100)),
    SymbolInfo("GOLD.m", Decimal(100), Decimal("0.01"), Decimal(1), Decimal("0.01"), Decimal("0.01"), Decimal(100)),
    SymbolInfo(
        "EURUSD", Decimal(100000), Decimal("0.00001"), Decimal(1), Decimal("0.01"), Decimal("0.01"), Decimal(100)
    ),
    SymbolInfo(
        "GBPUSD", Decimal(100000), Decimal("0.00001"), Decimal(1), Decimal("0.01"), Decimal("0.01"), Decimal(100)
    ),
    SymbolInfo("USDJPY", Decimal(100000), Decimal("0.001"), Decimal(1), Decimal("0.01"), Decimal("0.01"), Decimal(100)),
    SymbolInfo("BTCUSD", Decimal(1), Decimal("0.01"), Decimal("0.01"), Decimal("0.01"), Decimal("0.01"), Decimal(10)),
)


@dataclass(frozen=True)
class PaperConfig:
    """A simulated broker. ``latency`` (seconds, plus up to ``latency_jitter``) before each fill or close;
    ``slippage_ticks``: a fill is up to this many ticks worse than the market; ``reject_rate``: the share
    of orders refused (0 to 1); ``seed`` makes jitter, slippage, rejects and price drift repeatable.

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
    symbols: tuple[SymbolInfo, ...] = DEFAULT_SYMBOLS
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

_GENERIC_SYMBOL = SymbolInfo(
    "", Decimal(1), Decimal("0.01"), Decimal(1), Decimal("0.01"), Decimal("0.01"), Decimal(100)
)


class PaperExecutor(Executor):
    """Simulated fills. Deterministic for a given seed and sequence of calls. Positions live in memory."""

    def __init__(self, config: PaperConfig | None = None) -> None:
        self.config = config or PaperConfig()
        self._rng = random.Random(self.config.seed)  # noqa: S311 - a simulation, not cryptography
        self._symbols = {s.name: s for s in self.config.symbols}
        self._mid: dict[str, Decimal] = dict(self.config.prices)
        self._fixed = set(self.config.prices)  # instruments whose price signals do not move
        self._positions: dict[str, HeldPosition] = {}
        self._orders: dict[str, OrderFill] = {}
        self._entry: dict[str, Decimal] = {}  # fill price per ticket
        self._realised = Decimal(0)
        self.fills: list[tuple[OrderRequest, OrderFill]] = []  # every fill, in order (tests count them)
        self.closes: list[tuple[CloseRequest, CloseFill]] = []

    async def start(self) -> None:
        return None

    def _spec(self, instrument: str) -> SymbolInfo:
        return self._symbols.get(instrument) or replace(_GENERIC_SYMBOL, name=instrument)

    def set_price(self, instrument: str, mid: Decimal) -> None:
        """Fix the simulated market's mid price (tests and demos)."""
        self._mid[instrument] = mid
        self._fixed.add(instrument)

    def _price(self, instrument: str, *, move: bool = True) -> Price | None:
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
        return Price(instrument, bid, bid + tick * self.config.spread_ticks, _now())

    async def account(self) -> AccountInfo:
        equity = self.config.balance + self._realised
        for position in self._positions.values():
            price = self._price(position.instrument, move=False)
            entry = self._entry.get(position.broker_ticket)
            if price is not None and entry is not None:
                equity += self._profit(position, entry, price)
        return AccountInfo(self.config.currency, self.config.balance + self._realised, equity)

    def _profit(self, position: HeldPosition, entry: Decimal, price: Price) -> Decimal:
        spec = self._spec(position.instrument)
        exit_price = price.bid if position.side is OrderSide.BUY else price.ask
        move = exit_price - entry if position.side is OrderSide.BUY else entry - exit_price
        return move * spec.contract_size * position.volume

    async def symbols(self) -> list[SymbolInfo]:
        return list(self.config.symbols)

    async def quote(self, instrument: str) -> Price | None:
        return self._price(instrument)

    async def market_price(self, order: OrderRequest) -> Decimal | None:
        if order.instrument not in self._fixed:
            if order.entry_price is not None and self.config.follow_signals:
                self._mid[order.instrument] = order.entry_price
            elif order.instrument not in self._mid and order.instrument in REFERENCE_PRICES:
                self._mid[order.instrument] = REFERENCE_PRICES[order.instrument]
        price = self._price(order.instrument)
        if price is None:
            return None
        return price.ask if order.side is OrderSide.BUY else price.bid

    async def _wait(self) -> None:
        delay = self.config.latency
        if self.config.latency_jitter:
            delay += self._rng.uniform(0, self.config.latency_jitter)
        if delay > 0:
            await asyncio.sleep(delay)

    async def place_order(self, order: OrderRequest) -> OrderFill:
        # Draw every random number before waiting, so concurrent orders stay deterministic.
        rejected = self._rng.random() < self.config.reject_rate
        slip = self._rng.randint(0, self.config.slippage_ticks) if self.config.slippage_ticks else 0
        spec = self._spec(order.instrument)
        if order.volume <= 0 or order.volume < spec.volume_min or order.volume > spec.volume_max:
            raise OrderRejected(f"invalid volume {order.volume} for {order.instrument}")
        market = await self.market_price(order)
        if market is None:
            raise OrderRejected(f"no price for {order.instrument}")
        await self._wait()
        if rejected:
            raise OrderRejected("paper broker: simulated reject")
        if order.side is OrderSide.BUY:
            price = market + spec.tick_size * slip
        else:
            price = max(market - spec.tick_size * slip, spec.tick_size)  # a price stays above zero
        ticket = str(int.from_bytes(hashlib.sha256(order.delivery_id.encode()).digest()[:6], "big"))
        fill = OrderFill(ticket, price, order.volume, _now())
        self._positions[ticket] = HeldPosition(ticket, order.instrument, order.side, order.volume)
        self._entry[ticket] = price
        self._orders[order.delivery_id] = fill
        self.fills.append((order, fill))
        return fill

    async def find_order(self, delivery_id: str) -> OrderFill | None:
        return self._orders.get(delivery_id)

    async def close_position(self, request: CloseRequest) -> CloseFill:
        position = self._positions.get(request.broker_ticket)
        if position is None:
            raise CloseFailed(f"no open position with ticket {request.broker_ticket}")
        volume = position.volume if request.volume is None else request.volume
        if volume <= 0 or volume > position.volume:
            raise CloseFailed(f"cannot close {volume} of {position.volume} lots")
        price = self._price(position.instrument)
        if price is None:
            raise CloseFailed(f"no price for {position.instrument}")
        await self._wait()
        close_price = price.bid if position.side is OrderSide.BUY else price.ask
        entry = self._entry[position.broker_ticket]
        self._realised += self._profit(replace(position, volume=volume), entry, price)
        if volume == position.volume:
            del self._positions[position.broker_ticket]
        else:
            self._positions[position.broker_ticket] = replace(position, volume=position.volume - volume)
        result = CloseFill(close_price, volume)
        self.closes.append((request, result))
        return result

    async def positions(self) -> list[HeldPosition]:
        return list(self._positions.values())


MT5_UNAVAILABLE = "MetaTrader5 is only available on Windows: use --executor paper"
_MT5_PLACED = 10008  # TRADE_RETCODE_PLACED: accepted, not (yet) known to be filled
_MT5_DONE = 10009  # TRADE_RETCODE_DONE
_MT5_DONE_PARTIAL = 10010  # TRADE_RETCODE_DONE_PARTIAL
_MT5_FILLED = (_MT5_DONE, _MT5_DONE_PARTIAL)
_FILLING_FOK, _FILLING_IOC = 1, 2  # SYMBOL_FILLING_* bits of symbol_info.filling_mode


def _dec(value: float | int | str) -> Decimal:
    """A MetaTrader float as the decimal it was printed as (never the binary expansion)."""
    return Decimal(str(value))


@dataclass(frozen=True)
class Mt5Config:
    """How to reach the terminal. ``password`` comes from the environment, never the command line."""

    path: str | None = None
    login: int | None = None
    password: str | None = field(default=None, repr=False)
    server: str | None = None
    timeout_ms: int = 10_000
    deviation_points: int = 20
    magic: int = 20_250_101
    history_days: int = 7


class Mt5Executor(Executor):
    """A MetaTrader 5 terminal through the ``MetaTrader5`` package (Windows only). The package is
    blocking and not thread-safe, so every call runs on one thread of this executor's own."""

    def __init__(self, config: Mt5Config | None = None, *, module: Any = None) -> None:
        self.config = config or Mt5Config()
        if module is None:
            module = self._import()
        self._mt5 = module
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mt5")
        self._started = False

    @staticmethod
    def _import() -> Any:
        if sys.platform != "win32":
            raise ExecutorError(MT5_UNAVAILABLE)
        try:
            import MetaTrader5  # type: ignore[import-not-found, unused-ignore]
        except ImportError:
            raise ExecutorError(
                "the MetaTrader5 package is not installed: pip install MetaTrader5 (or use --executor paper)"
            ) from None
        return MetaTrader5

    async def _call(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, lambda: fn(*args, **kwargs))

    def _error(self) -> str:
        code, message = self._mt5.last_error()
        return f"MetaTrader5 error {code}: {message}"

    async def start(self) -> None:
        if self._started:
            return
        kwargs: dict[str, Any] = {"timeout": self.config.timeout_ms}
        if self.config.login is not None:
            kwargs.update(login=self.config.login, password=self.config.password or "", server=self.config.server or "")
        args = (self.config.path,) if self.config.path else ()
        if not await self._call(self._mt5.initialize, *args, **kwargs):
            raise ExecutorError(f"cannot connect to the MetaTrader 5 terminal ({self._error()})")
        self._started = True

    async def stop(self) -> None:
        if self._started:
            await self._call(self._mt5.shutdown)
            self._started = False
        self._thread.shutdown(wait=False)

    async def account(self) -> AccountInfo:
        info = await self._call(self._mt5.account_info)
        if info is None:
            raise ExecutorError(f"no account information ({self._error()})")
        return AccountInfo(str(info.currency), _dec(info.balance), _dec(info.equity))

    @staticmethod
    def _symbol(info: Any) -> SymbolInfo:
        return SymbolInfo(
            name=str(info.name),
            contract_size=_dec(info.trade_contract_size),
            tick_size=_dec(info.trade_tick_size),
            tick_value=_dec(info.trade_tick_value),
            volume_min=_dec(info.volume_min),
            volume_step=_dec(info.volume_step),
            volume_max=_dec(info.volume_max),
        )

    async def symbols(self) -> list[SymbolInfo]:
        found: Iterable[Any] = await self._call(self._mt5.symbols_get) or ()
        # Market Watch symbols only: a broker lists thousands, the account trades the visible ones.
        return [self._symbol(s) for s in found if getattr(s, "visible", True)]

    async def quote(self, instrument: str) -> Price | None:
        tick = await self._call(self._mt5.symbol_info_tick, instrument)
        if tick is None or not tick.bid or not tick.ask:
            return None
        return Price(instrument, _dec(tick.bid), _dec(tick.ask), datetime.fromtimestamp(tick.time_msc / 1000, UTC))

    async def market_price(self, order: OrderRequest) -> Decimal | None:
        price = await self.quote(order.instrument)
        if price is None:
            return None
        return price.ask if order.side is OrderSide.BUY else price.bid

    def _filling(self, info: Any) -> int:
        mode = int(getattr(info, "filling_mode", 0))
        if mode & _FILLING_IOC:
            return int(self._mt5.ORDER_FILLING_IOC)
        if mode & _FILLING_FOK:
            return int(self._mt5.ORDER_FILLING_FOK)
        return int(self._mt5.ORDER_FILLING_RETURN)

    def _send_order(self, order: OrderRequest) -> OrderFill:
        mt5 = self._mt5
        if not mt5.symbol_select(order.instrument, True):
            raise OrderRejected(f"unknown symbol {order.instrument}")
        info = mt5.symbol_info(order.instrument)
        tick = mt5.symbol_info_tick(order.instrument)
        if info is None or tick is None:
            raise OrderRejected(f"no price for {order.instrument}")
        buy = order.side is OrderSide.BUY
        request = {
            "action": mt5.TRADE_ACTION_DEAL,
            "symbol": order.instrument,
            "volume": float(order.volume),
            "type": mt5.ORDER_TYPE_BUY if buy else mt5.ORDER_TYPE_SELL,
            "price": tick.ask if buy else tick.bid,
            "deviation": self.config.deviation_points,
            "magic": self.config.magic,
            "comment": order_comment(order.delivery_id),
            "type_time": mt5.ORDER_TIME_GTC,
            "type_filling": self._filling(info),
        }
        result = mt5.order_send(request)
        if result is None:
            raise OrderRejected(self._error())
        if result.retcode == _MT5_PLACED:
            found = self._find(order.delivery_id)  # accepted: filled by now, or not at all yet
            if found is None:
                raise OrderRejected(f"broker retcode {result.retcode} (placed, no fill seen): {result.comment}")
            return found
        if result.retcode not in _MT5_FILLED:
            raise OrderRejected(f"broker retcode {result.retcode}: {result.comment}")
        deals = mt5.history_deals_get(ticket=result.deal) if result.deal else None
        if deals:
            deal = deals[0]
            return OrderFill(str(deal.position_id), _dec(deal.price), _dec(deal.volume), _now())
        return OrderFill(str(result.order), _dec(result.price), _dec(result.volume), _now())

    async def place_order(self, order: OrderRequest) -> OrderFill:
        return await self._call(self._send_order, order)

    def _find(self, delivery_id: str) -> OrderFill | None:
        mt5 = self._mt5
        comment = order_comment(delivery_id)
        for position in mt5.positions_get() or ():
            if position.comment == comment:
                return OrderFill(
                    str(position.ticket),
                    _dec(position.price_open),
                    _dec(position.volume),
                    datetime.fromtimestamp(position.time, UTC),
                )
        now = datetime.now(UTC)
        start = datetime.fromtimestamp(now.timestamp() - self.config.history_days * 86400, UTC)
        for deal in mt5.history_deals_get(start, now) or ():
            if deal.comment == comment and deal.entry == mt5.DEAL_ENTRY_IN:
                return OrderFill(
                    str(deal.position_id), _dec(deal.price), _dec(deal.volume), datetime.fromtimestamp(deal.time, UTC)
                )
        return None

    async def find_order(self, delivery_id: str) -> OrderFill | None:
        return await self._call(self._find, delivery_id)

    def _close(self, request: CloseRequest) -> CloseFill:
        mt5 = self._mt5
        found = mt5.positions_get(ticket=int(request.broker_ticket)) if request.broker_ticket.isdigit() else None
        if not found:
            raise CloseFailed(f"no open position with ticket {request.broker_ticket}")
        position = found[0]
        held = _dec(position.volume)
        volume = held if request.volume is None else request.volume
        if volume <= 0 or volume > held:
            raise CloseFailed(f"cannot close {volume} of {held} lots")
        info = mt5.symbol_info(position.symbol)
        tick = mt5.symbol_info_tick(position.symbol)
        if info is None or tick is None:
            raise CloseFailed(f"no price for {position.symbol}")
        was_buy = position.type == mt5.POSITION_TYPE_BUY
        result = mt5.order_send(
            {
                "action": mt5.TRADE_ACTION_DEAL,
                "symbol": position.symbol,
                "volume": float(volume),
                "type": mt5.ORDER_TYPE_SELL if was_buy else mt5.ORDER_TYPE_BUY,
                "position": position.ticket,
                "price": tick.bid if was_buy else tick.ask,
                "deviation": self.config.deviation_points,
                "magic": self.config.magic,
                "comment": ("sh-close-" + request.command_id.replace("-", ""))[:31],
                "type_time": mt5.ORDER_TIME_GTC,
                "type_filling": self._filling(info),
            }
        )
        if result is None:
            raise CloseFailed(self._error())
        if result.retcode not in _MT5_FILLED:
            raise CloseFailed(f"broker retcode {result.retcode}: {result.comment}")
        return CloseFill(_dec(result.price), _dec(result.volume))

    async def close_position(self, request: CloseRequest) -> CloseFill:
        return await self._call(self._close, request)

    def _positions(self) -> list[HeldPosition]:
        mt5 = self._mt5
        return [
            HeldPosition(
                str(p.ticket),
                str(p.symbol),
                OrderSide.BUY if p.type == mt5.POSITION_TYPE_BUY else OrderSide.SELL,
                _dec(p.volume),
            )
            for p in mt5.positions_get() or ()
        ]

    async def positions(self) -> list[HeldPosition]:
        return await self._call(self._positions)
