"""Server-side position management end to end, on real Postgres and Redis: a producer's signal through
the producer SDK, the back office and gateway servers, the monitor, and the EA bridge SDK with its paper
executor, which quotes its broker's prices and closes what the server tells it to. Every frame the
gateway sends to the bridge goes through a tap that opens the sealed instructions and checks that none
carries a hidden level, a trailing or breakeven setting or the payload.

Prices: the paper market's mid is set by the test; its bid is the mid less a tick, its ask a tick above
it; a BUY closes at the bid and a SELL at the ask, up to the configured slippage worse."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest

from backoffice.bootstrap import Resources
from backoffice.producer import ProducerClient
from gateway.bridge import BridgeClient, BridgeConfig, PaperConfig, PaperExecutor
from gateway.bridge.executors.base import CloseRequest, SymbolInfo
from gateway.bridge.executors.paper import DEFAULT_SYMBOLS
from signalhub.protocol import signing
from signalhub.protocol.sealing import InstructionSealer
from signalhub.v1 import backoffice_pb2 as bpb
from signalhub.v1 import backoffice_pb2_grpc as brpc
from signalhub.v1 import common_pb2
from signalhub.v1 import gateway_pb2 as gpb
from tests.backoffice.api.test_approvals import subscribe, subscribe_request
from tests.backoffice.monitor.support import monitoring
from tests.conftest import KeyCredentials, Stack, UserCredentials, make_user, rpc_failure
from tests.gateway.support import eventually, running_bridge
from tests.gateway.tap import DeviceTap, assert_redacted, tapped

D = Decimal
# Hidden values no price or volume on the wire could spell by chance.
STOP = "2029.3719"
TARGET = "2051.6367"
TRAILING = "3.1416"
BREAKEVEN = "2.7183"
OFFSET = "0.5772"
PAYLOAD = {"strategy": "secret-sauce-e2e", "edge": "confidential-4711"}
SECRETS = [STOP, TARGET, TRAILING, BREAKEVEN, OFFSET, *PAYLOAD.values()]


@dataclass
class Trading:
    """One trader's device running the paper bridge behind a tap, one producer, the servers and a monitor."""

    symbol: str
    executor: PaperExecutor
    client: BridgeClient
    tap: DeviceTap
    signals: ProducerClient
    positions: Any  # PositionServiceStub (async)
    user: UserCredentials
    device: KeyCredentials

    async def signal(self, side: str, **levels: Any) -> bpb.Signal:
        return await self.signals.submit_signal(self.symbol, side, entry_price="2034.15", payload=PAYLOAD, **levels)

    async def position(self) -> bpb.Position:
        """The one position of this test, once the fill has opened it."""

        async def opened() -> bool:
            found = await self.positions.ListPositions(
                bpb.ListPositionsRequest(instrument=self.symbol), metadata=self.user.metadata
            )
            return len(found.positions) == 1

        await eventually(opened, "the fill to open a position")
        [found] = (
            await self.positions.ListPositions(
                bpb.ListPositionsRequest(instrument=self.symbol), metadata=self.user.metadata
            )
        ).positions
        return await self.get(found.id)

    async def get(self, position_id: str) -> bpb.Position:
        request = bpb.GetPositionRequest(id=position_id)
        position: bpb.Position = await self.positions.GetPosition(request, metadata=self.user.metadata)
        return position

    async def until(self, position_id: str, what: str, check: Any) -> bpb.Position:
        async def met() -> bool:
            return bool(check(await self.get(position_id)))

        await eventually(met, what)
        return await self.get(position_id)

    def mid(self, price: str) -> None:
        self.executor.set_price(self.symbol, D(price))

    async def commands(self, position_id: str) -> list[bpb.CloseCommand]:
        listed = await self.positions.ListCloseCommands(
            bpb.ListCloseCommandsRequest(position_id=position_id), metadata=self.user.metadata
        )
        return list(listed.close_commands)


@pytest.fixture
async def trade(
    stack: Stack,
    tmp_path: Path,
) -> AsyncIterator[Trading]:
    """The trader follows the producer (AUTO, 0.10 lots); the bridge trades a symbol of this test's own;
    on the way out, every frame the gateway sent in the whole test is opened and read."""
    symbol = "E2E" + uuid.uuid4().hex[:8].upper()
    spec = SymbolInfo(symbol, D(100), D("0.01"), D(1), D("0.01"), D("0.01"), D(100))
    executor = PaperExecutor(PaperConfig(seed=11, slippage_ticks=2, symbols=(*DEFAULT_SYMBOLS, spec)))
    executor.set_price(symbol, D("2034.15"))
    await subscribe(stack.backoffice_channel, stack.user, subscribe_request(stack.producer, sizing_value="0.10"))
    async with monitoring(stack.res), tapped(stack.gateway.bound_address) as tap:
        ledger = tmp_path / "ledger.db"
        config = BridgeConfig(str(stack.device.id), (tap.address,), ledger, quote_interval=0.05, quote_refresh=0.2)
        async with running_bridge(config, stack.device, executor) as client, stack.producer_client() as signals:
            positions = brpc.PositionServiceStub(stack.backoffice_channel)
            yield Trading(symbol, executor, client, tap, signals, positions, stack.user, stack.device)
    tap.assert_redacted(stack.device, SECRETS)


def _profit(side: str, entry: Decimal, close: Decimal, volume: Decimal) -> Decimal:
    """In the account currency: the move in ticks (0.01) times the tick value (1 USD) per lot."""
    move = close - entry if side == "buy" else entry - close
    return move / D("0.01") * D(1) * volume


async def test_a_quote_crossing_the_hidden_stop_closes_the_position_once(
    trade: Trading, res: Resources, backoffice_channel: grpc.aio.Channel
) -> None:
    """The bridge's own quote through the hidden stop closes the position once, at the bid less slippage,
    with the profit those prices give; another user cannot see it."""
    signal = await trade.signal("buy", stop_loss=STOP, take_profit=TARGET)
    position = await trade.position()
    assert (position.signal_id, position.stop_loss, position.take_profit) == (signal.id, STOP, TARGET)
    [(_, fill)] = trade.executor.fills
    assert D(position.entry_price) == fill.price and position.status == bpb.POSITION_STATUS_OPEN
    trade.mid("2029.00")  # bid 2028.99: through the hidden stop
    closed = await trade.until(position.id, "the stop to close it", lambda p: p.status == bpb.POSITION_STATUS_CLOSED)
    await asyncio.sleep(0.5)  # the bridge keeps quoting below the stop meanwhile
    [command] = await trade.commands(position.id)
    assert (command.reason, command.status) == (common_pb2.CLOSE_REASON_STOP_LOSS, bpb.CLOSE_COMMAND_STATUS_SUCCEEDED)
    [(_, done)] = trade.executor.closes  # the broker closed it once
    assert D("2028.97") <= done.close_price <= D("2028.99")  # the bid, up to two ticks of slippage
    assert D(closed.close_price) == done.close_price and D(closed.closed_volume) == D("0.10")
    assert D(closed.profit) == _profit("buy", fill.price, done.close_price, D("0.10")) < 0
    assert D(closed.price_profit) == done.close_price - fill.price
    assert closed.close_reason == common_pb2.CLOSE_REASON_STOP_LOSS
    kinds = [e.type for e in closed.events]
    assert kinds == [
        bpb.POSITION_EVENT_TYPE_OPENED,
        bpb.POSITION_EVENT_TYPE_CLOSE_REQUESTED,
        bpb.POSITION_EVENT_TYPE_CLOSED,
    ]
    [order] = [i.close for i in trade.tap.instructions(trade.device) if i.WhichOneof("body") == "close"]
    assert (order.command_id, order.reason) == (command.id, common_pb2.CLOSE_REASON_STOP_LOSS)
    stranger = await make_user(res)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await trade.positions.GetPosition(bpb.GetPositionRequest(id=position.id), metadata=stranger.metadata)
    assert rpc_failure(info.value).code == grpc.StatusCode.NOT_FOUND


async def test_a_trailing_stop_follows_a_rising_price_and_fires_on_the_way_down(trade: Trading) -> None:
    """The stop starts at the fill less the distance, follows each new high and stays when the price falls
    back, then fires below it, in profit."""
    await trade.signal("buy", trailing_distance=TRAILING)
    position = await trade.position()
    entry = D(position.entry_price)
    assert D(position.stop_loss) == entry - D(TRAILING)  # it starts at the fill
    for mid in ("2036.00", "2038.00"):
        trade.mid(mid)
        bid = D(mid) - D("0.01")
        await trade.until(position.id, f"the stop to follow {mid}", lambda p, b=bid: D(p.stop_loss) == b - D(TRAILING))
    trade.mid("2036.50")  # down, still above the stop: it stays where it is
    await asyncio.sleep(0.5)
    held = await trade.get(position.id)
    assert (held.status, D(held.stop_loss), D(held.best_price)) == (
        bpb.POSITION_STATUS_OPEN,
        D("2037.99") - D(TRAILING),
        D("2037.99"),
    )
    trade.mid("2034.50")  # bid 2034.49: below 2034.8484
    closed = await trade.until(
        position.id, "the trailing stop to fire", lambda p: p.status == bpb.POSITION_STATUS_CLOSED
    )
    moves = [e for e in closed.events if e.type == bpb.POSITION_EVENT_TYPE_TRAILING_STOP_MOVED]
    assert [D(m.stop_loss) for m in moves][-2:] == [D("2035.99") - D(TRAILING), D("2037.99") - D(TRAILING)]
    [(_, done)] = trade.executor.closes
    assert D(closed.profit) == _profit("buy", entry, done.close_price, D("0.10")) > 0
    assert closed.close_reason == common_pb2.CLOSE_REASON_STOP_LOSS


async def test_a_breakeven_move_fires(trade: Trading) -> None:
    await trade.signal("sell", stop_loss="2039.3719", breakeven_trigger=BREAKEVEN, breakeven_offset=OFFSET)
    position = await trade.position()
    entry = D(position.entry_price)
    trade.mid("2031.00")  # ask 2031.01: more than 2.7183 below the entry
    moved = await trade.until(position.id, "the breakeven move", lambda p: p.breakeven_done)
    assert D(moved.stop_loss) == entry - D(OFFSET)
    [event] = [e for e in moved.events if e.type == bpb.POSITION_EVENT_TYPE_BREAKEVEN_MOVED]
    assert (D(event.stop_loss), D(event.price)) == (entry - D(OFFSET), D("2031.01"))
    trade.mid("2033.70")  # ask 2033.71: back up through the moved stop
    closed = await trade.until(position.id, "the moved stop to fire", lambda p: p.status == bpb.POSITION_STATUS_CLOSED)
    [(_, done)] = trade.executor.closes
    assert D(closed.profit) == _profit("sell", entry, done.close_price, D("0.10")) > 0  # closed in profit


async def test_a_partial_close_then_the_stop_closes_the_rest(trade: Trading) -> None:
    await trade.signal("buy", stop_loss=STOP)
    position = await trade.position()
    entry = D(position.entry_price)
    request = bpb.ClosePositionRequest(id=position.id, volume="0.04", request_id=str(uuid.uuid4()))
    await trade.positions.ClosePosition(request, metadata=trade.user.metadata)
    part = await trade.until(position.id, "the partial close", lambda p: p.closed_volume == "0.04")
    assert (part.status, D(part.volume)) == (bpb.POSITION_STATUS_OPEN, D("0.06"))
    trade.mid("2029.00")
    closed = await trade.until(
        position.id, "the stop to close the rest", lambda p: p.status == bpb.POSITION_STATUS_CLOSED
    )
    (_, first), (_, rest) = trade.executor.closes
    assert (first.closed_volume, rest.closed_volume) == (D("0.04"), D("0.06"))
    assert D(closed.closed_volume) == D("0.10")
    expected = _profit("buy", entry, first.close_price, D("0.04")) + _profit("buy", entry, rest.close_price, D("0.06"))
    assert D(closed.profit) == expected
    kinds = [
        e.type
        for e in closed.events
        if e.type in (bpb.POSITION_EVENT_TYPE_PARTIALLY_CLOSED, bpb.POSITION_EVENT_TYPE_CLOSED)
    ]
    assert kinds == [bpb.POSITION_EVENT_TYPE_PARTIALLY_CLOSED, bpb.POSITION_EVENT_TYPE_CLOSED]
    reasons = [c.reason for c in await trade.commands(position.id)]
    assert reasons == [common_pb2.CLOSE_REASON_STOP_LOSS, common_pb2.CLOSE_REASON_MANUAL]  # newest first


async def test_a_failed_close_is_closed_error_with_an_alert(
    trade: Trading, admin: UserCredentials, backoffice_channel: grpc.aio.Channel
) -> None:
    """The trader closed the trade by hand in the terminal; the server's close then fails on the device."""
    await trade.signal("buy", stop_loss=STOP)
    position = await trade.position()
    await trade.executor.close_position(CloseRequest("by-hand", position.broker_ticket, None))
    await trade.positions.ClosePosition(bpb.ClosePositionRequest(id=position.id), metadata=trade.user.metadata)
    failed = await trade.until(
        position.id, "the device's failure", lambda p: p.status == bpb.POSITION_STATUS_CLOSED_ERROR
    )
    [command] = await trade.commands(position.id)
    assert command.status == bpb.CLOSE_COMMAND_STATUS_FAILED and "no open position" in command.error
    assert failed.events[-1].type == bpb.POSITION_EVENT_TYPE_CLOSE_FAILED
    alerts = await brpc.AuditServiceStub(backoffice_channel).ListAlerts(
        bpb.ListAlertsRequest(device_id=str(trade.device.id), status=bpb.ALERT_STATUS_OPEN), metadata=admin.metadata
    )
    assert [(a.kind, a.position_id) for a in alerts.alerts] == [(bpb.ALERT_KIND_CLOSE_FAILED, position.id)]


async def test_cancelling_the_signal_with_close_positions_closes_them(trade: Trading) -> None:
    signal = await trade.signal("sell", take_profit="2020.3719")
    position = await trade.position()
    await trade.signals.cancel_signal(signal.id, "the thesis is broken", close_positions=True)
    closed = await trade.until(position.id, "the cancel's close", lambda p: p.status == bpb.POSITION_STATUS_CLOSED)
    assert closed.close_reason == common_pb2.CLOSE_REASON_SIGNAL_CANCELLED


def test_the_tap_catches_a_leak(device: KeyCredentials) -> None:
    """The redaction check can fail: a Delivery that carried the stop as its entry, or a frame that carried
    the payload, is caught."""
    sealer = InstructionSealer(signing.parse_secret(device.secret), str(device.id))
    leaky = gpb.Instruction(delivery=gpb.Delivery(delivery_id="d", entry_price=STOP))
    nonce, ciphertext = sealer.seal(leaky.SerializeToString())
    sealed = gpb.GatewayFrame(instruction=gpb.SealedInstruction(nonce=nonce, ciphertext=ciphertext))
    with pytest.raises(AssertionError, match=STOP):
        assert_redacted([sealed.SerializeToString()], device, SECRETS)
    receipt = gpb.GatewayFrame(receipt=gpb.Receipt(frame_id=PAYLOAD["edge"]))
    with pytest.raises(AssertionError, match="leaked"):
        assert_redacted([receipt.SerializeToString()], device, SECRETS)
