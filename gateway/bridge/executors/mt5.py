"""``Mt5Executor``: a MetaTrader 5 terminal through the ``MetaTrader5`` package, which exists only on
Windows and is imported lazily (so the rest of the bridge runs anywhere). Floats appear only at the
package's API boundary, converted through ``str``."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

from gateway.bridge.executors import base

_T = TypeVar("_T")


MT5_UNAVAILABLE = "MetaTrader5 is only available on Windows: use --executor paper"
_MT5_PLACED = 10008  # TRADE_RETCODE_PLACED: accepted, not (yet) known to be filled
_MT5_DONE = 10009  # TRADE_RETCODE_DONE
_MT5_DONE_PARTIAL = 10010  # TRADE_RETCODE_DONE_PARTIAL
_MT5_FILLED = (_MT5_DONE, _MT5_DONE_PARTIAL)
_FILLING_FOK, _FILLING_IOC = 1, 2  # SYMBOL_FILLING_* bits of symbol_info.filling_mode


# SymbolInfo's amounts, each by the name MetaTrader 5's symbol_info gives it.
_SYMBOL_AMOUNTS = {
    "contract_size": "trade_contract_size",
    "tick_size": "trade_tick_size",
    "tick_value": "trade_tick_value",
    "volume_min": "volume_min",
    "volume_step": "volume_step",
    "volume_max": "volume_max",
}


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


class Mt5Executor(base.Executor):
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
            raise base.ExecutorError(MT5_UNAVAILABLE)
        try:
            import MetaTrader5  # type: ignore[import-not-found, unused-ignore]
        except ImportError:
            raise base.ExecutorError(
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
            raise base.ExecutorError(f"cannot connect to the MetaTrader 5 terminal ({self._error()})")
        self._started = True

    async def stop(self) -> None:
        if self._started:
            await self._call(self._mt5.shutdown)
            self._started = False
        self._thread.shutdown(wait=False)

    async def account(self) -> base.AccountInfo:
        info = await self._call(self._mt5.account_info)
        if info is None:
            raise base.ExecutorError(f"no account information ({self._error()})")
        return base.AccountInfo(
            str(info.currency), _dec(info.balance), _dec(info.equity), _dec(info.margin), _dec(info.margin_free)
        )

    @staticmethod
    def _symbol(info: Any) -> base.SymbolInfo:
        amounts = {ours: _dec(getattr(info, theirs)) for ours, theirs in _SYMBOL_AMOUNTS.items()}
        return base.SymbolInfo(name=str(info.name), **amounts)

    async def symbols(self) -> list[base.SymbolInfo]:
        found: Iterable[Any] = await self._call(self._mt5.symbols_get) or ()
        # Market Watch symbols only: a broker lists thousands, the account trades the visible ones.
        return [self._symbol(s) for s in found if getattr(s, "visible", True)]

    async def quote(self, instrument: str) -> base.Price | None:
        tick = await self._call(self._mt5.symbol_info_tick, instrument)
        if tick is None or not tick.bid or not tick.ask:
            return None
        return base.Price(instrument, _dec(tick.bid), _dec(tick.ask), datetime.fromtimestamp(tick.time_msc / 1000, UTC))

    async def market_price(self, order: base.OrderRequest) -> Decimal | None:
        price = await self.quote(order.instrument)
        if price is None:
            return None
        return price.ask if order.side is base.OrderSide.BUY else price.bid

    def _filling(self, info: Any) -> int:
        mode = int(getattr(info, "filling_mode", 0))
        if mode & _FILLING_IOC:
            return int(self._mt5.ORDER_FILLING_IOC)
        if mode & _FILLING_FOK:
            return int(self._mt5.ORDER_FILLING_FOK)
        return int(self._mt5.ORDER_FILLING_RETURN)

    def _send_order(self, order: base.OrderRequest) -> base.OrderFill:
        """Place a market order on the executor's thread and return its fill. The comment ties the order to
        its delivery, so ``find_order`` finds it after a crash; the fill is the deal's price (what the broker
        filled, not what was asked), and an order only accepted (PLACED) is looked up. OrderRejected carries
        the broker's retcode and comment."""
        mt5 = self._mt5
        if not mt5.symbol_select(order.instrument, True):
            raise base.OrderRejected(f"unknown symbol {order.instrument}")
        info = mt5.symbol_info(order.instrument)
        tick = mt5.symbol_info_tick(order.instrument)
        if info is None or tick is None:
            raise base.OrderRejected(f"no price for {order.instrument}")
        buy = order.side is base.OrderSide.BUY
        request = {
            "action": mt5.TRADE_ACTION_DEAL,
            "symbol": order.instrument,
            "volume": float(order.volume),
            "type": mt5.ORDER_TYPE_BUY if buy else mt5.ORDER_TYPE_SELL,
            "price": tick.ask if buy else tick.bid,
            "deviation": self.config.deviation_points,
            "magic": self.config.magic,
            "comment": base.order_comment(order.delivery_id),
            "type_time": mt5.ORDER_TIME_GTC,
            "type_filling": self._filling(info),
        }
        result = mt5.order_send(request)
        if result is None:
            raise base.OrderRejected(self._error())
        if result.retcode == _MT5_PLACED:
            found = self._find(order.delivery_id)  # accepted: filled by now, or not at all yet
            if found is None:
                raise base.OrderRejected(f"broker retcode {result.retcode} (placed, no fill seen): {result.comment}")
            return found
        if result.retcode not in _MT5_FILLED:
            raise base.OrderRejected(f"broker retcode {result.retcode}: {result.comment}")
        deals = mt5.history_deals_get(ticket=result.deal) if result.deal else None
        if deals:
            deal = deals[0]
            return base.OrderFill(str(deal.position_id), _dec(deal.price), _dec(deal.volume), base.now())
        return base.OrderFill(str(result.order), _dec(result.price), _dec(result.volume), base.now())

    async def place_order(self, order: base.OrderRequest) -> base.OrderFill:
        return await self._call(self._send_order, order)

    def _find(self, delivery_id: str) -> base.OrderFill | None:
        mt5 = self._mt5
        comment = base.order_comment(delivery_id)
        for position in mt5.positions_get() or ():
            if position.comment == comment:
                return base.OrderFill(
                    str(position.ticket),
                    _dec(position.price_open),
                    _dec(position.volume),
                    datetime.fromtimestamp(position.time, UTC),
                )
        until = base.now()
        start = datetime.fromtimestamp(until.timestamp() - self.config.history_days * 86400, UTC)
        for deal in mt5.history_deals_get(start, until) or ():
            if deal.comment == comment and deal.entry == mt5.DEAL_ENTRY_IN:
                return base.OrderFill(
                    str(deal.position_id), _dec(deal.price), _dec(deal.volume), datetime.fromtimestamp(deal.time, UTC)
                )
        return None

    async def find_order(self, delivery_id: str) -> base.OrderFill | None:
        return await self._call(self._find, delivery_id)

    def _close(self, request: base.CloseRequest) -> base.CloseFill:
        """Close ``request.volume`` (default: all) of a position with an opposite market deal, on the
        executor's thread. CloseFailed says why not: no such position, more than it holds, no price, or the
        broker's retcode."""
        mt5 = self._mt5
        found = mt5.positions_get(ticket=int(request.broker_ticket)) if request.broker_ticket.isdigit() else None
        if not found:
            raise base.CloseFailed(f"no open position with ticket {request.broker_ticket}")
        position = found[0]
        held = _dec(position.volume)
        volume = held if request.volume is None else request.volume
        if volume <= 0 or volume > held:
            raise base.CloseFailed(f"cannot close {volume} of {held} lots")
        info = mt5.symbol_info(position.symbol)
        tick = mt5.symbol_info_tick(position.symbol)
        if info is None or tick is None:
            raise base.CloseFailed(f"no price for {position.symbol}")
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
                "comment": base.close_comment(request.command_id),
                "type_time": mt5.ORDER_TIME_GTC,
                "type_filling": self._filling(info),
            }
        )
        if result is None:
            raise base.CloseFailed(self._error())
        if result.retcode not in _MT5_FILLED:
            raise base.CloseFailed(f"broker retcode {result.retcode}: {result.comment}")
        return base.CloseFill(_dec(result.price), _dec(result.volume))

    async def close_position(self, request: base.CloseRequest) -> base.CloseFill:
        return await self._call(self._close, request)

    def _find_close(self, command_id: str) -> base.CloseFill | None:
        """The closing deals the terminal's history holds for ``command_id`` (by their comment, within
        history_days): their volume and volume-weighted price, or None when it made none."""
        mt5 = self._mt5
        comment = base.close_comment(command_id)
        until = base.now()
        start = datetime.fromtimestamp(until.timestamp() - self.config.history_days * 86400, UTC)
        deals = mt5.history_deals_get(start, until)
        if deals is None:  # the terminal could not answer: that is not "no close was made"
            raise base.ExecutorError(f"the terminal's deal history is unavailable: {self._error()}")
        closing = [d for d in deals if d.comment == comment and d.entry != mt5.DEAL_ENTRY_IN]
        if not closing:
            return None
        volume = sum((_dec(d.volume) for d in closing), Decimal(0))
        price = sum((_dec(d.price) * _dec(d.volume) for d in closing), Decimal(0)) / volume
        return base.CloseFill(price, volume)

    async def find_close(self, command_id: str) -> base.CloseFill | None:
        return await self._call(self._find_close, command_id)

    def _positions(self) -> list[base.HeldPosition]:
        mt5 = self._mt5
        return [
            base.HeldPosition(
                str(p.ticket),
                str(p.symbol),
                base.OrderSide.BUY if p.type == mt5.POSITION_TYPE_BUY else base.OrderSide.SELL,
                _dec(p.volume),
            )
            for p in mt5.positions_get() or ()
        ]

    async def positions(self) -> list[base.HeldPosition]:
        return await self._call(self._positions)
