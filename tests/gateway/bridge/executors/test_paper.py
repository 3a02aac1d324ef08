"""The paper executor (gateway/bridge/executors/paper.py): a simulated broker, deterministic for a seed,
whose prices and fills the gateway takes."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from gateway import uplink
from gateway.bridge.executors import (
    CloseFailed,
    CloseRequest,
    OrderFill,
    OrderRejected,
    OrderRequest,
    OrderSide,
    PaperConfig,
    PaperExecutor,
)
from signalhub.protocol.wire import decimal_text
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
        delivery_id=request.delivery_id, broker_ticket=fill.broker_ticket, price=decimal_text(fill.price), volume="0.10"
    )
    uplink.decode(device_id, pb.DeviceFrame(frame_id="fill", fill=fill_frame))
    for n in range(20):  # drift moves the price on every quote
        price = await executor.quote(instrument)
        assert price is not None
        quote = common_pb2.Quote(instrument=instrument, bid=decimal_text(price.bid), ask=decimal_text(price.ask))
        quote.quote_time.GetCurrentTime()
        uplink.decode(device_id, pb.DeviceFrame(frame_id=f"q{n}", quote=quote))
    assert (await executor.account()).equity.is_finite()


@pytest.mark.parametrize("side", [OrderSide.BUY, OrderSide.SELL])
async def test_paper_closes_at_the_quote_with_its_slippage(side: OrderSide) -> None:
    """A close (partial or full) is at the current quote, at most ``slippage_ticks`` worse for the trader,
    and the realised balance is what those prices give."""
    executor = PaperExecutor(PaperConfig(prices={"XAUUSD": Decimal("2000.00")}, slippage_ticks=3, seed=5))
    fill = await executor.place_order(order(1, side, volume="1.00"))
    executor.set_price("XAUUSD", Decimal("2010.00"))
    quote = await executor.quote("XAUUSD")
    assert quote is not None
    realised = Decimal(0)
    for volume in ("0.40", None):
        done = await executor.close_position(
            CloseRequest(f"c-{volume}", fill.broker_ticket, Decimal(volume) if volume else None)
        )
        if side is OrderSide.BUY:
            assert quote.bid - Decimal("0.03") <= done.close_price <= quote.bid
            realised += (done.close_price - fill.price) * 100 * done.closed_volume
        else:
            assert quote.ask <= done.close_price <= quote.ask + Decimal("0.03")
            realised += (fill.price - done.close_price) * 100 * done.closed_volume
    assert [c.closed_volume for _, c in executor.closes] == [Decimal("0.40"), Decimal("0.60")]
    assert any(c.close_price not in (quote.bid, quote.ask) for _, c in executor.closes)  # it does slip
    assert (await executor.account()).balance == Decimal(10000) + realised


@pytest.mark.parametrize(
    ("side", "floating"),
    # 0.50 lots of 100 ounces filled at 2000.01 (a BUY, at the ask) or 1999.99 (a SELL, at the bid), valued
    # after the move at the price that would close them: the bid 2009.99 or the ask 2010.01.
    [(OrderSide.BUY, Decimal("499.00")), (OrderSide.SELL, Decimal("-501.00"))],
)
async def test_paper_account_is_its_book_at_the_current_quote(side: OrderSide, floating: Decimal) -> None:
    """Balance: the starting balance plus what closes realised; equity: the balance plus the open
    positions' floating profit at the current bid (a BUY) or ask (a SELL)."""
    executor = PaperExecutor(PaperConfig(prices={"XAUUSD": Decimal("2000.00")}))
    start = await executor.account()
    assert (start.balance, start.equity, start.currency) == (Decimal(10000), Decimal(10000), "USD")
    fill = await executor.place_order(order(1, side, volume="0.50"))
    filled = await executor.account()
    assert (filled.balance, filled.equity) == (Decimal(10000), Decimal(10000) - Decimal("1.00"))  # the spread
    executor.set_price("XAUUSD", Decimal("2010.00"))
    moved = await executor.account()
    assert (moved.balance, moved.equity) == (Decimal(10000), Decimal(10000) + floating)
    await executor.close_position(CloseRequest("half", fill.broker_ticket, Decimal("0.25")))
    half = await executor.account()
    assert (half.balance, half.equity) == (Decimal(10000) + floating / 2, Decimal(10000) + floating)
    await executor.close_position(CloseRequest("rest", fill.broker_ticket))
    closed = await executor.account()
    assert closed.balance == closed.equity == Decimal(10000) + floating


class _Store:
    """The StateStore a bridge gives its executor, in memory: what a restart finds in the ledger."""

    def __init__(self) -> None:
        self.data: bytes | None = None

    async def load(self) -> bytes | None:
        return self.data

    async def save(self, data: bytes) -> None:
        self.data = data


async def test_paper_book_and_prices_outlive_a_restart() -> None:
    """A restarted paper broker still holds the positions, orders, closes, profit and prices of the last
    run: what it opened can be closed, and its account is where it was."""
    store = _Store()
    first = PaperExecutor(PaperConfig(seed=3))
    first.keep_state_in(store)
    await first.start()
    kept = await first.place_order(order(1, entry="2010.00"))
    closed = await first.place_order(order(2, OrderSide.SELL, entry="2012.00"))
    await first.close_position(CloseRequest("close-2", closed.broker_ticket))
    account = await first.account()
    await first.stop()

    second = PaperExecutor(PaperConfig(seed=4))
    second.keep_state_in(store)
    await second.start()
    assert [p.broker_ticket for p in await second.positions()] == [kept.broker_ticket]
    assert await second.find_order(order(1).delivery_id) == kept
    assert await second.find_close("close-2") is not None
    assert await second.account() == account
    quote = await second.quote("XAUUSD")
    assert quote is not None and abs(quote.bid - Decimal("2012.00")) < 1  # not back at the reference price
    result = await second.close_position(CloseRequest("close-1", kept.broker_ticket))
    assert result.closed_volume == kept.volume and await second.positions() == []


async def test_paper_without_a_store_keeps_nothing() -> None:
    executor = PaperExecutor()
    await executor.start()
    await executor.place_order(order(1, entry="2000.00"))
    await executor.stop()
    assert await PaperExecutor().positions() == []
