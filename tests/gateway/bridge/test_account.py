"""The account's state (gateway/bridge/account.py) through a real BridgeClient, a paper executor and the
scripted gateway: one right behind the Hello (the gateway takes it just after the Welcome), one after
each fill and close result, and while a position is open one whenever equity moved, no more often than
``account_state_interval``; a state the gateway would refuse is not sent."""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from datetime import UTC
from decimal import Decimal

import pytest

from gateway.bridge import PaperConfig, PaperExecutor
from signalhub.v1 import gateway_pb2 as pb
from tests.gateway.bridge.scripted import Rig, delivery, paper
from tests.gateway.support import eventually


def states(rig: Rig) -> list[pb.AccountState]:
    return [f.account_state for f in rig.gateway.of_kind("account_state")]


def kinds(rig: Rig) -> list[str]:
    return [str(f.WhichOneof("body")) for f in rig.gateway.frames if f.WhichOneof("body") != "heartbeat"]


async def test_a_state_follows_the_hello_and_none_more_while_nothing_is_held(rig: Rig) -> None:
    client = await rig.connect(paper(), account_state_interval=0.1)
    await eventually(lambda: len(states(rig)) == 1, what="the first account state")
    assert kinds(rig)[:2] == ["hello", "account_state"]
    [first] = states(rig)
    assert (Decimal(first.balance), Decimal(first.equity)) == (Decimal(10000), Decimal(10000))
    assert (first.margin, first.free_margin) == ("", "")  # the paper terminal does not say
    assert first.HasField("state_time")
    frame = rig.gateway.of_kind("account_state")[0]
    assert frame.frame_id and frame.frame_id != rig.gateway.frames[0].frame_id
    await asyncio.sleep(0.6)  # six intervals: no position, so nothing moves and nothing is sent
    assert len(states(rig)) == 1 and client.stats.account_states_sent == 1


async def test_a_state_follows_each_fill_and_close_result(rig: Rig) -> None:
    executor = paper()
    await rig.connect(executor, account_state_interval=60.0)  # no periodic state during the test
    await eventually(lambda: len(states(rig)) == 1, what="the first account state")
    instruction = delivery(volume="0.50")
    rig.gateway.push(instruction)
    await eventually(lambda: len(states(rig)) == 2, what="a state after the fill")
    assert kinds(rig)[-2:] == ["fill", "account_state"]
    ticket = rig.gateway.fills(instruction.delivery.delivery_id)[0].broker_ticket
    after_fill = states(rig)[-1]
    # Bought 0.50 at the ask (2000.01) and valued at the bid (1999.99): the spread, 0.02 x 100 x 0.50.
    assert Decimal(after_fill.balance) == Decimal(10000)
    assert Decimal(after_fill.equity) == Decimal(10000) - Decimal("1.00")

    executor.set_price("XAUUSD", Decimal("2010.00"))
    rig.gateway.push(pb.Instruction(close=pb.CloseOrder(command_id=str(uuid.uuid4()), broker_ticket=ticket)))
    await eventually(lambda: len(states(rig)) == 3, what="a state after the close result")
    assert kinds(rig)[-2:] == ["close_result", "account_state"]
    after_close = states(rig)[-1]
    realised = (Decimal("2009.99") - Decimal("2000.01")) * 100 * Decimal("0.50")
    assert Decimal(after_close.balance) == Decimal(after_close.equity) == Decimal(10000) + realised


async def test_equity_moves_are_sent_while_a_position_is_open_at_most_every_interval(rig: Rig) -> None:
    interval = 0.4
    executor = paper()
    await rig.connect(executor, account_state_interval=interval)
    rig.gateway.push(delivery())
    await eventually(lambda: len(states(rig)) == 2, what="a state after the fill")
    held = len(states(rig))
    await asyncio.sleep(interval * 2.5)
    assert len(states(rig)) == held, "equity did not move: nothing sent"

    mid = Decimal("2000.00")
    for _ in range(40):  # the price moves every 50 ms for two seconds
        mid += Decimal("0.50")
        executor.set_price("XAUUSD", mid)
        await asyncio.sleep(0.05)
    moved = states(rig)[held:]
    assert 2 <= len(moved) <= 2.0 / interval + 1
    times = [s.state_time.ToDatetime(tzinfo=UTC) for s in moved]
    gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(times)]
    assert min(gaps) >= interval * 0.9, gaps
    assert [Decimal(s.equity) for s in moved] == sorted(Decimal(s.equity) for s in moved)  # a rising price
    assert Decimal(moved[-1].equity) > Decimal(10000)


async def test_a_state_the_gateway_would_refuse_is_not_sent(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    """An account the terminal reports overdrawn (a negative balance) is logged, never sent."""
    caplog.set_level(logging.WARNING, logger="signalhub.bridge")
    executor = PaperExecutor(PaperConfig(prices={"XAUUSD": Decimal("2000.00")}, balance=Decimal(-5)))
    client = await rig.connect(executor, account_state_interval=0.1)
    rig.gateway.push(delivery())
    await eventually(lambda: client.stats.filled == 1, what="the fill")
    await eventually(
        lambda: sum("an account state the gateway would refuse" in r.getMessage() for r in caplog.records) >= 2,
        what="the refusals logged",
    )
    assert states(rig) == [] and client.stats.account_states_sent == 0
