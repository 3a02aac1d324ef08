"""The MetaTrader 5 executor (gateway/bridge/executors/mt5.py) at its boundary: a clear error off Windows,
comments that fit the terminal, decimals (never floats) on the bridge's side, and an interrupted close
found again in the terminal's deal history."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.bridge.executors import (
    MT5_UNAVAILABLE,
    CloseFailed,
    CloseRequest,
    ExecutorError,
    Mt5Executor,
    OrderRejected,
    OrderRequest,
    OrderSide,
    close_comment,
    order_comment,
)


@pytest.mark.skipif(sys.platform == "win32", reason="the MetaTrader5 package exists on Windows")
def test_mt5_is_a_clear_error_off_windows() -> None:
    with pytest.raises(ExecutorError) as info:
        Mt5Executor()
    assert str(info.value) == MT5_UNAVAILABLE == "MetaTrader5 is only available on Windows: use --executor paper"


def test_order_comment_fits_metatrader() -> None:
    comment = order_comment("0b6f4a8e-3c55-4d7e-9a43-2f1e8c1d7b90")
    assert len(comment) <= 31 and comment == "sh0b6f4a8e3c554d7e9a432f1e8c1d7"


@dataclass
class _Terminal:
    """A stand-in for the third-party MetaTrader5 module: the few calls Mt5Executor makes, floats and all."""

    sent: list[dict[str, Any]]
    TRADE_ACTION_DEAL = 1
    ORDER_TYPE_BUY = 0
    ORDER_TYPE_SELL = 1
    ORDER_TIME_GTC = 0
    ORDER_FILLING_FOK = 0
    ORDER_FILLING_IOC = 1
    ORDER_FILLING_RETURN = 2
    POSITION_TYPE_BUY = 0
    DEAL_ENTRY_IN = 0

    def initialize(self, *args: Any, **kwargs: Any) -> bool:
        return True

    def shutdown(self) -> None:
        return None

    def last_error(self) -> tuple[int, str]:
        return (1, "ok")

    def account_info(self) -> Any:
        return SimpleNamespace(currency="EUR", balance=1234.56, equity=1200.1, margin=203.4, margin_free=996.7)

    def symbols_get(self) -> Any:
        gold = SimpleNamespace(
            name="GOLD.m",
            trade_contract_size=100.0,
            trade_tick_size=0.01,
            trade_tick_value=1.0,
            volume_min=0.01,
            volume_step=0.01,
            volume_max=50.0,
            visible=True,
        )
        return (gold, SimpleNamespace(name="HIDDEN", visible=False))

    def symbol_select(self, name: str, enable: bool) -> bool:
        return name == "GOLD.m"

    def symbol_info(self, name: str) -> Any:
        return SimpleNamespace(filling_mode=2)

    def symbol_info_tick(self, name: str) -> Any:
        return SimpleNamespace(bid=2034.1, ask=2034.3, time=0, time_msc=1_767_225_600_000)

    def order_send(self, request: dict[str, Any]) -> Any:
        self.sent.append(request)
        return SimpleNamespace(retcode=10009, order=555, deal=777, price=2034.3, volume=0.1, comment="done")

    def history_deals_get(self, *args: Any, **kwargs: Any) -> Any:
        return (SimpleNamespace(position_id=555001, price=2034.32, volume=0.1),)

    def positions_get(self, **kwargs: Any) -> Any:
        return ()


async def test_mt5_executor_speaks_decimals_at_its_boundary() -> None:
    terminal = _Terminal(sent=[])
    executor = Mt5Executor(module=terminal)
    await executor.start()
    try:
        account = await executor.account()
        assert (account.currency, account.balance, account.equity) == ("EUR", Decimal("1234.56"), Decimal("1200.1"))
        assert (account.margin, account.free_margin) == (Decimal("203.4"), Decimal("996.7"))
        [gold] = await executor.symbols()
        assert (gold.name, gold.tick_size, gold.volume_max) == ("GOLD.m", Decimal("0.01"), Decimal("50.0"))
        delivery_id = "0b6f4a8e-3c55-4d7e-9a43-2f1e8c1d7b90"
        fill = await executor.place_order(OrderRequest(delivery_id, "GOLD.m", OrderSide.BUY, Decimal("0.10")))
        # The deal's price, not the request's: what the broker actually filled.
        assert (fill.broker_ticket, fill.price, fill.volume) == ("555001", Decimal("2034.32"), Decimal("0.1"))
        [sent] = terminal.sent
        assert sent["comment"] == order_comment(delivery_id) and sent["type"] == terminal.ORDER_TYPE_BUY
        assert sent["type_filling"] == terminal.ORDER_FILLING_IOC and sent["volume"] == 0.1
        with pytest.raises(OrderRejected, match="unknown symbol"):
            await executor.place_order(OrderRequest(delivery_id, "NOPE", OrderSide.SELL, Decimal("0.10")))
        with pytest.raises(CloseFailed, match="no open position"):
            await executor.close_position(CloseRequest("c", "555001"))
    finally:
        await executor.stop()


@dataclass
class _History(_Terminal):
    """A terminal whose deal history holds ``deals`` (None: it cannot answer)."""

    deals: tuple[Any, ...] | None = ()
    DEAL_ENTRY_OUT = 1

    def history_deals_get(self, *args: Any, **kwargs: Any) -> Any:
        return self.deals


async def test_mt5_finds_an_interrupted_close_in_the_deal_history() -> None:
    """A close whose answer was lost (the bridge died mid-close) is looked up by its comment: the closing
    deals' volume and volume-weighted price; none means the terminal made none; no history means it
    cannot tell."""
    command_id = "7c1e0a52-9d0b-4b6f-8f3e-1a2b3c4d5e6f"
    mine, other = close_comment(command_id), close_comment("00000000-0000-0000-0000-000000000000")
    assert len(mine) <= 31 and mine.startswith("sh-close-7c1e0a52")

    def deal(comment: str, entry: int, price: float, volume: float) -> Any:
        return SimpleNamespace(comment=comment, entry=entry, price=price, volume=volume, position_id=1)

    terminal = _History(
        sent=[],
        deals=(
            deal(order_comment(command_id), _Terminal.DEAL_ENTRY_IN, 2030.0, 0.3),
            deal(mine, _History.DEAL_ENTRY_OUT, 2034.0, 0.1),
            deal(mine, _History.DEAL_ENTRY_OUT, 2035.0, 0.3),
            deal(other, _History.DEAL_ENTRY_OUT, 1.0, 1.0),
        ),
    )
    executor = Mt5Executor(module=terminal)
    await executor.start()
    try:
        found = await executor.find_close(command_id)
        assert found is not None and (found.closed_volume, found.close_price) == (Decimal("0.4"), Decimal("2034.75"))
        terminal.deals = ()
        assert await executor.find_close(command_id) is None
        terminal.deals = None
        with pytest.raises(ExecutorError, match="deal history is unavailable"):
            await executor.find_close(command_id)
    finally:
        await executor.stop()
