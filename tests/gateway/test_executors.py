"""Executors: the paper broker's simulation, and the MetaTrader 5 executor's boundary."""

from __future__ import annotations

import sys
import uuid
from dataclasses import dataclass
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest

from gateway import uplink
from gateway.bridge import wire_decimal
from gateway.executors import (
    MT5_UNAVAILABLE,
    CloseFailed,
    CloseRequest,
    ExecutorError,
    Mt5Executor,
    OrderFill,
    OrderRejected,
    OrderRequest,
    OrderSide,
    PaperConfig,
    PaperExecutor,
    order_comment,
)
from signalhub.v1 import common_pb2
from signalhub.v1 import gateway_pb2 as pb


def order(n: int, side: OrderSide = OrderSide.BUY, volume: str = "0.10", entry: str | None = None) -> OrderRequest:
    return OrderRequest(
        f"00000000-0000-0000-0000-{n:012d}", "XAUUSD", side, Decimal(volume), Decimal(entry) if entry else None
    )


async def _run(config: PaperConfig, count: int = 40) -> list[tuple[str, OrderFill | str]]:
    executor = PaperExecutor(config)
    outcomes: list[tuple[str, OrderFill | str]] = []
    for n in range(count):
        try:
            fill = await executor.place_order(order(n, OrderSide.BUY if n % 2 else OrderSide.SELL))
        except OrderRejected as exc:
            outcomes.append((str(n), exc.reason))
        else:
            outcomes.append((str(n), OrderFill(fill.broker_ticket, fill.price, fill.volume, fill.fill_time.min)))
    return outcomes


async def test_paper_is_deterministic_for_a_seed() -> None:
    config = PaperConfig(seed=7, slippage_ticks=5, reject_rate=0.3, drift_ticks=3, prices={"XAUUSD": Decimal(2000)})
    first, second = await _run(config), await _run(config)
    assert first == second
    other = await _run(PaperConfig(seed=8, slippage_ticks=5, reject_rate=0.3, drift_ticks=3, prices=config.prices))
    assert other != first
    rejected = sum(isinstance(outcome, str) for _, outcome in first)
    assert 0 < rejected < len(first)


async def test_paper_fill_prices_decimals_and_slippage_bounds() -> None:
    executor = PaperExecutor(PaperConfig(seed=3, slippage_ticks=4, prices={"XAUUSD": Decimal("2000.00")}))
    quote = await executor.quote("XAUUSD")
    assert quote is not None and (quote.bid, quote.ask) == (Decimal("1999.99"), Decimal("2000.01"))
    for n in range(30):
        side = OrderSide.BUY if n % 2 else OrderSide.SELL
        fill = await executor.place_order(order(n, side))
        assert isinstance(fill.price, Decimal) and isinstance(fill.volume, Decimal)
        if side is OrderSide.BUY:
            assert quote.ask <= fill.price <= quote.ask + Decimal("0.04")
        else:
            assert quote.bid - Decimal("0.04") <= fill.price <= quote.bid
    assert len({f.broker_ticket for _, f in executor.fills}) == 30


async def test_paper_rejects() -> None:
    always = PaperExecutor(PaperConfig(reject_rate=1.0))
    with pytest.raises(OrderRejected, match="simulated reject"):
        await always.place_order(order(1))
    assert always.fills == [] and await always.positions() == []
    executor = PaperExecutor()
    with pytest.raises(OrderRejected, match="invalid volume"):
        await executor.place_order(order(2, volume="0.001"))
    with pytest.raises(OrderRejected, match="no price"):
        await executor.place_order(OrderRequest("d", "NOPE", OrderSide.BUY, Decimal("0.1")))
    with pytest.raises(ValueError, match="reject_rate"):
        PaperConfig(reject_rate=1.5)


async def test_paper_market_follows_signals_unless_fixed() -> None:
    executor = PaperExecutor()
    fill = await executor.place_order(order(1, OrderSide.BUY, entry="2034.15"))
    assert fill.price == Decimal("2034.16")  # the entry plus half the spread
    at_market = await executor.place_order(OrderRequest("m", "EURUSD", OrderSide.SELL, Decimal("0.10")))
    assert at_market.price == Decimal("1.07999")
    fixed = PaperExecutor(PaperConfig(prices={"XAUUSD": Decimal(2000)}))
    assert await fixed.market_price(order(2, OrderSide.SELL, entry="2034.15")) == Decimal("1999.99")


async def test_paper_close_partial_then_full_and_find_order() -> None:
    executor = PaperExecutor(PaperConfig(prices={"XAUUSD": Decimal("2000.00")}))
    fill = await executor.place_order(order(1, volume="0.50"))
    assert await executor.find_order(order(1).delivery_id) == fill
    assert await executor.find_order("unknown") is None
    executor.set_price("XAUUSD", Decimal("2010.00"))
    part = await executor.close_position(CloseRequest("c1", fill.broker_ticket, Decimal("0.20")))
    assert (part.close_price, part.closed_volume) == (Decimal("2009.99"), Decimal("0.20"))
    assert [p.volume for p in await executor.positions()] == [Decimal("0.30")]
    with pytest.raises(CloseFailed, match="cannot close"):
        await executor.close_position(CloseRequest("c2", fill.broker_ticket, Decimal("1")))
    rest = await executor.close_position(CloseRequest("c3", fill.broker_ticket))
    assert rest.closed_volume == Decimal("0.30") and await executor.positions() == []
    with pytest.raises(CloseFailed, match="no open position"):
        await executor.close_position(CloseRequest("c4", fill.broker_ticket))
    account = await executor.account()
    # (2009.99 - 2000.01) * 100 per lot * 0.5 lots
    assert account.balance == Decimal(10000) + Decimal("499.00")


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
        return SimpleNamespace(currency="EUR", balance=1234.56, equity=1200.1)

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


@pytest.mark.parametrize("instrument", ["XAUUSD", "EURUSD", "UNLISTED"])
@pytest.mark.parametrize("side", [OrderSide.BUY, OrderSide.SELL])
async def test_paper_prices_for_an_absurd_entry_are_ones_the_gateway_takes(instrument: str, side: OrderSide) -> None:
    """An entry far finer than the tick (and next to zero) moves the paper market, but its quotes and fills
    stay on the tick grid, at one tick or more; the gateway's own decoding accepts them."""
    executor = PaperExecutor(PaperConfig(seed=9, slippage_ticks=3, drift_ticks=2))
    request = OrderRequest(str(uuid.uuid4()), instrument, side, Decimal("0.10"), Decimal("0.000000000001"))
    fill = await executor.place_order(request)
    device_id = uuid.uuid4()
    fill_frame = pb.Fill(
        delivery_id=request.delivery_id, broker_ticket=fill.broker_ticket, price=wire_decimal(fill.price), volume="0.10"
    )
    uplink.decode(device_id, pb.DeviceFrame(frame_id="fill", fill=fill_frame))
    for n in range(20):  # drift moves the price on every quote
        price = await executor.quote(instrument)
        assert price is not None
        quote = common_pb2.Quote(instrument=instrument, bid=wire_decimal(price.bid), ask=wire_decimal(price.ask))
        quote.quote_time.GetCurrentTime()
        uplink.decode(device_id, pb.DeviceFrame(frame_id=f"q{n}", quote=quote))
    assert (await executor.account()).equity.is_finite()
