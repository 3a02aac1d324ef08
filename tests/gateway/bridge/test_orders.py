"""Executing instructions (gateway/bridge/orders.py) through a real BridgeClient and a paper executor:
each delivery at most once, across repeats, restarts and kills; refusals before anything reaches the
broker; close orders; orders whose outcome is unknown are looked up, never placed again."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from gateway.bridge import OrderFill, OrderRequest, PaperConfig, PaperExecutor
from gateway.bridge.executors.base import CloseFill, CloseRequest
from signalhub.protocol import errors, signing
from signalhub.v1 import common_pb2
from signalhub.v1 import gateway_pb2 as pb
from tests.gateway.bridge.scripted import REPO, Rig, delivery, ledger_rows, paper, spawn
from tests.gateway.support import eventually


async def _filled(rig: Rig, instruction: pb.Instruction) -> pb.Fill:
    """Push the delivery ``instruction`` and wait for the bridge's Fill of it (the first, if there are more)."""
    delivery_id = instruction.delivery.delivery_id
    rig.gateway.push(instruction)
    await eventually(lambda: bool(rig.gateway.fills(delivery_id)), what="a fill")
    return rig.gateway.fills(delivery_id)[0]


# ------------------------------------------------------------------------------------------------ the flow


async def test_hello_then_delivery_is_received_placed_filled(rig: Rig) -> None:
    executor = paper(slippage_ticks=0)
    await rig.connect(executor)
    hello = rig.gateway.frames[0]
    assert hello.WhichOneof("body") == "hello" and hello.frame_id
    assert hello.hello.account_currency == "USD" and Decimal(hello.hello.balance) == Decimal(10000)
    xau = next(s for s in hello.hello.symbols if s.name == "XAUUSD")
    assert (Decimal(xau.tick_size), Decimal(xau.volume_min)) == (Decimal("0.01"), Decimal("0.01"))

    instruction = delivery(entry_price="2000.00", max_deviation="1.00")
    delivery_id = instruction.delivery.delivery_id
    fill = await _filled(rig, instruction)
    stages = [a.stage for a in rig.gateway.acks(delivery_id)]
    assert stages == [pb.ACK_STAGE_RECEIVED, pb.ACK_STAGE_PLACED]
    assert fill.broker_ticket and Decimal(fill.volume) == Decimal("0.10")
    assert Decimal(fill.price) == Decimal("2000.01")  # the ask: a BUY pays the spread
    assert fill.HasField("fill_time")
    assert len(executor.fills) == 1
    frame_ids = [f.frame_id for f in rig.gateway.frames]
    assert len(frame_ids) == len(set(frame_ids)), "every frame has its own id"
    await eventually(lambda: ledger_rows(rig.ledger, "outbox") == [], what="receipts to empty the outbox")
    assert ledger_rows(rig.ledger) == [(delivery_id, "filled", None)]


async def test_repeated_delivery_is_reacked_never_reexecuted(rig: Rig) -> None:
    executor = paper()
    client = await rig.connect(executor)
    instruction = delivery()
    delivery_id = instruction.delivery.delivery_id
    await _filled(rig, instruction)
    for attempt in (2, 3):
        instruction.delivery.attempt = attempt
        rig.gateway.push(instruction)
    await eventually(lambda: len(rig.gateway.acks(delivery_id, pb.ACK_STAGE_RECEIVED)) == 3, what="re-acks")
    assert len(executor.fills) == 1
    assert client.stats.repeated == 2


async def test_at_most_once_across_a_restart_with_the_same_ledger(rig: Rig) -> None:
    first = paper()
    client = await rig.connect(first)
    instruction = delivery()
    delivery_id = instruction.delivery.delivery_id
    await _filled(rig, instruction)
    await rig.stop(client)

    second = paper()
    await rig.connect(second)
    rig.gateway.push(instruction)  # the gateway re-sends after a reconnect
    await eventually(lambda: len(rig.gateway.acks(delivery_id, pb.ACK_STAGE_RECEIVED)) == 2)
    await asyncio.sleep(0.2)
    assert second.fills == [] and len(first.fills) == 1


async def test_delivery_recorded_but_not_placed_is_resumed_after_restart(rig: Rig) -> None:
    """A crash between RECEIVED and executing: the next run places it (still at most once)."""
    instruction = delivery()
    delivery_id = instruction.delivery.delivery_id
    client = await rig.connect(paper(latency=30.0))
    rig.gateway.push(instruction)
    await eventually(lambda: bool(rig.gateway.acks(delivery_id, pb.ACK_STAGE_RECEIVED)))
    await eventually(lambda: ledger_rows(rig.ledger)[0][1] == "executing")
    # An abrupt end while the order is in the broker's hands: the ledger says "executing".
    for known, task in rig.clients:
        if known is client:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    rig.clients.clear()
    assert ledger_rows(rig.ledger)[0][1] == "executing"

    executor = paper()
    await rig.connect(executor)
    await eventually(lambda: bool(rig.gateway.acks(delivery_id, pb.ACK_STAGE_REJECTED)), what="REJECTED")
    reason = rig.gateway.acks(delivery_id, pb.ACK_STAGE_REJECTED)[0].reason
    assert reason.startswith("interrupted")
    rig.gateway.push(instruction)
    await eventually(lambda: len(rig.gateway.acks(delivery_id, pb.ACK_STAGE_RECEIVED)) == 2)
    assert executor.fills == []


async def test_a_killed_bridge_never_places_twice(rig: Rig) -> None:
    """SIGKILL the `signalhub bridge` process while its order is with the broker; the next run finds the
    delivery ``executing`` in the ledger and reports it, never placing it again."""
    credentials = rig.tmp / "device.json"
    shown = signing.format_secret(rig.secret)
    credentials.write_text(
        json.dumps({"device_id": rig.device_id, "device_secret": shown, "gateway": rig.gateway.address})
    )
    credentials.chmod(0o600)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'proto'}"}
    command = [sys.executable, "-m", "backoffice.cli", "bridge", "--executor", "paper", "--paper-latency-ms", "60000"]
    command += ["--credentials", str(credentials), "--ledger", str(rig.ledger)]
    process = spawn(command, env=env, cwd=rig.tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        await eventually(lambda: bool(rig.gateway.streams), what="the bridge process to connect")
        instruction = delivery()
        delivery_id = instruction.delivery.delivery_id
        await eventually(lambda: bool(rig.gateway.of_kind("hello")))
        rig.gateway.push(instruction)
        await eventually(lambda: bool(rig.gateway.acks(delivery_id, pb.ACK_STAGE_RECEIVED)))
        await eventually(lambda: ledger_rows(rig.ledger)[0][1] == "executing")
        process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(process.wait, 10)
    finally:
        if process.poll() is None:
            process.kill()
        _, stderr = process.communicate(timeout=10)
    assert shown.encode() not in stderr and shown[4:].encode() not in stderr

    executor = paper()
    await rig.connect(executor)
    await eventually(lambda: bool(rig.gateway.acks(delivery_id, pb.ACK_STAGE_REJECTED)))
    rig.gateway.push(instruction)
    await eventually(lambda: len(rig.gateway.acks(delivery_id, pb.ACK_STAGE_RECEIVED)) >= 2)
    assert executor.fills == []
    assert ledger_rows(rig.ledger)[0][1] == "rejected"


# ------------------------------------------------------------------------------------------------ refusals


async def test_refuses_after_expire_time(rig: Rig) -> None:
    executor = paper()
    await rig.connect(executor)
    instruction = delivery(expires_in=timedelta(seconds=-1))
    delivery_id = instruction.delivery.delivery_id
    rig.gateway.push(instruction)
    await eventually(lambda: bool(rig.gateway.acks(delivery_id, pb.ACK_STAGE_REJECTED)))
    stages = [a.stage for a in rig.gateway.acks(delivery_id)]
    assert stages == [pb.ACK_STAGE_RECEIVED, pb.ACK_STAGE_REJECTED]
    assert rig.gateway.acks(delivery_id, pb.ACK_STAGE_REJECTED)[0].reason.startswith("expired")
    assert executor.fills == [] and rig.gateway.fills(delivery_id) == []


async def test_refuses_beyond_max_deviation_and_places_within_it(rig: Rig) -> None:
    executor = paper()
    executor.set_price("XAUUSD", Decimal("2000.00"))  # ask 2000.01, bid 1999.99
    await rig.connect(executor)
    far = delivery(side=common_pb2.SIDE_SELL, entry_price="2010.00", max_deviation="5.00")
    near = delivery(side=common_pb2.SIDE_SELL, entry_price="2004.00", max_deviation="5.00")
    rig.gateway.push(far)
    rig.gateway.push(near)
    far_id, near_id = far.delivery.delivery_id, near.delivery.delivery_id
    await eventually(lambda: bool(rig.gateway.acks(far_id, pb.ACK_STAGE_REJECTED)) and bool(rig.gateway.fills(near_id)))
    reason = rig.gateway.acks(far_id, pb.ACK_STAGE_REJECTED)[0].reason
    assert reason == "PRICE_DEVIATION"
    assert [o.delivery_id for o, _ in executor.fills] == [near_id]


# -------------------------------------------------------------------------------------------------- closes


async def test_close_order_executes_once_and_reports(rig: Rig) -> None:
    """A partial close is executed once and reported (again, when the gateway sends it again); a close of
    an unknown ticket is reported as failed."""
    executor = paper()
    await rig.connect(executor)
    instruction = delivery(volume="0.30")
    ticket = (await _filled(rig, instruction)).broker_ticket
    await eventually(lambda: bool(rig.gateway.of_kind("quote")), what="a quote for the held instrument")
    assert {f.quote.instrument for f in rig.gateway.of_kind("quote")} == {"XAUUSD"}

    command_id = str(uuid.uuid4())
    close = pb.Instruction(
        close=pb.CloseOrder(
            command_id=command_id,
            position_id=str(uuid.uuid4()),
            broker_ticket=ticket,
            volume="0.10",
            reason=common_pb2.CLOSE_REASON_TAKE_PROFIT,
        )
    )
    rig.gateway.push(close)
    await eventually(lambda: bool(rig.gateway.of_kind("close_result")))
    rig.gateway.push(close)  # a re-send: reported again, never closed twice
    await eventually(lambda: len(rig.gateway.of_kind("close_result")) == 2)
    results = [f.close_result for f in rig.gateway.of_kind("close_result")]
    assert all(r.command_id == command_id and r.success for r in results)
    assert Decimal(results[0].closed_volume) == Decimal("0.10") and results[0].close_price
    assert len(executor.closes) == 1
    assert (await executor.positions())[0].volume == Decimal("0.20")

    unknown = pb.Instruction(close=pb.CloseOrder(command_id=str(uuid.uuid4()), broker_ticket="404"))
    rig.gateway.push(unknown)
    await eventually(lambda: len(rig.gateway.of_kind("close_result")) == 3)
    failed = rig.gateway.of_kind("close_result")[-1].close_result
    assert not failed.success and "404" in failed.error


class _TerminalThatHangsAfterClosing(PaperExecutor):
    """A terminal that outlives the bridge: a close is made, then its answer never comes (until ``answer``)."""

    def __init__(self) -> None:
        super().__init__(PaperConfig(prices={"XAUUSD": Decimal("2000.00")}))
        self.answer = asyncio.Event()
        self.close_first = True

    async def close_position(self, request: CloseRequest) -> CloseFill:
        if not self.close_first:
            await self.answer.wait()
        done = await super().close_position(request)
        await self.answer.wait()
        return done


@pytest.mark.parametrize("closed", [True, False])
async def test_a_close_interrupted_by_a_stop_is_reported_as_the_terminal_made_it(rig: Rig, closed: bool) -> None:
    """A bridge stopped abruptly while a close is in the terminal's hands (the ledger says ``executing``):
    the next run asks the terminal and reports the close it made (a closed position is never reported as a
    failure), or a failure when it made none; it never closes twice. Found by the fault suite's bridge
    SIGKILL."""
    terminal = _TerminalThatHangsAfterClosing()
    terminal.close_first = closed
    await rig.connect(terminal)
    instruction = delivery()
    ticket = (await _filled(rig, instruction)).broker_ticket
    command_id = str(uuid.uuid4())
    rig.gateway.push(pb.Instruction(close=pb.CloseOrder(command_id=command_id, broker_ticket=ticket)))
    await eventually(lambda: ledger_rows(rig.ledger, "close_commands")[:1] == [(command_id, "executing")])
    await eventually(lambda: len(terminal.closes) == int(closed))
    for _, task in rig.clients:  # an abrupt end: nothing recorded after "executing"
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
    rig.clients.clear()

    again = rig.start(terminal)  # the same terminal: it outlived the bridge
    await again.connected.wait()
    await eventually(lambda: bool(rig.gateway.of_kind("close_result")), what="the close result")
    [result] = [f.close_result for f in rig.gateway.of_kind("close_result")]
    assert result.command_id == command_id and result.success is closed
    if closed:
        assert Decimal(result.closed_volume) == Decimal("0.10") and result.close_price
    else:
        assert result.error.startswith("interrupted")
    assert len(terminal.closes) == int(closed), "never closed again"


# ---------------------------------------------------------------------------------------- unknown outcomes


class _FlakyTerminal(PaperExecutor):
    """A terminal that fills the order but loses the answer (place_order raises), then cannot look it up
    until ``answer_lookups`` is set: the outcome is unknown meanwhile."""

    def __init__(self, *, fill_orders: bool = True, **kw: Any) -> None:
        super().__init__(PaperConfig(prices={"XAUUSD": Decimal("2000.00")}, **kw))
        self.fill_orders = fill_orders
        self.answer_lookups = False
        self.lookups = 0

    async def place_order(self, order: OrderRequest) -> OrderFill:
        if self.fill_orders:
            await super().place_order(order)
        raise ConnectionError("terminal connection lost")

    async def find_order(self, delivery_id: str) -> OrderFill | None:
        self.lookups += 1
        if not self.answer_lookups:
            raise ConnectionError("terminal connection lost")
        return await super().find_order(delivery_id)


def _reports(rig: Rig, delivery_id: str) -> list[str]:
    """What the bridge said about a delivery after RECEIVED: acks PLACED/REJECTED, fills."""
    said = [pb.AckStage.Name(a.stage) for a in rig.gateway.acks(delivery_id) if a.stage != pb.ACK_STAGE_RECEIVED]
    return said + ["FILL"] * len(rig.gateway.fills(delivery_id))


async def test_unknown_outcome_stays_executing_and_is_looked_up_until_the_terminal_answers(rig: Rig) -> None:
    executor = _FlakyTerminal()
    client = await rig.connect(executor, lookup_backoff_base=0.05, lookup_backoff_cap=0.2)
    instruction = delivery()
    delivery_id = instruction.delivery.delivery_id
    rig.gateway.push(instruction)
    await eventually(lambda: executor.lookups >= 4, what="lookups again, with backoff")
    assert ledger_rows(rig.ledger) == [(delivery_id, "executing", None)]
    assert _reports(rig, delivery_id) == []  # never REJECTED: the order may well be with the broker
    executor.answer_lookups = True
    await eventually(lambda: bool(rig.gateway.fills(delivery_id)), what="the fill the lookup found")
    assert _reports(rig, delivery_id) == ["ACK_STAGE_PLACED", "FILL"]
    [(_, placed)] = executor.fills
    assert rig.gateway.fills(delivery_id)[0].broker_ticket == placed.broker_ticket
    assert ledger_rows(rig.ledger) == [(delivery_id, "filled", None)] and client.stats.lookups_failed >= 4


async def test_unknown_outcome_is_looked_up_again_after_a_reconnect(rig: Rig) -> None:
    executor = _FlakyTerminal()
    client = rig.start(executor, lookup_backoff_base=600.0, lookup_backoff_cap=600.0)  # only a reconnect helps
    await client.connected.wait()
    instruction = delivery()
    delivery_id = instruction.delivery.delivery_id
    rig.gateway.push(instruction)
    await eventually(lambda: executor.lookups == 1, what="the first lookup")
    executor.answer_lookups = True
    rig.gateway.end_stream(errors.Unavailable("replica going away"))
    await eventually(lambda: bool(rig.gateway.fills(delivery_id)), what="a lookup after the reconnect")
    assert _reports(rig, delivery_id) == ["ACK_STAGE_PLACED", "FILL"] and executor.lookups == 2


async def test_unknown_outcome_survives_a_stop_and_the_next_run_settles_it(rig: Rig) -> None:
    first = _FlakyTerminal(fill_orders=False)
    client = await rig.connect(first, lookup_backoff_base=0.05, lookup_backoff_cap=0.2)
    instruction = delivery()
    delivery_id = instruction.delivery.delivery_id
    rig.gateway.push(instruction)
    await eventually(lambda: first.lookups >= 2)
    await rig.stop(client)
    assert ledger_rows(rig.ledger) == [(delivery_id, "executing", None)]
    assert _reports(rig, delivery_id) == []

    second = _FlakyTerminal(fill_orders=False)  # after the restart, still unanswered at first
    await rig.connect(second, lookup_backoff_base=0.05, lookup_backoff_cap=0.2)
    await eventually(lambda: second.lookups >= 2, what="lookups after the restart")
    assert ledger_rows(rig.ledger)[0][1] == "executing"
    second.answer_lookups = True  # the terminal answers: it never got the order
    await eventually(lambda: bool(rig.gateway.acks(delivery_id, pb.ACK_STAGE_REJECTED)))
    assert _reports(rig, delivery_id) == ["ACK_STAGE_REJECTED"]
    assert rig.gateway.acks(delivery_id, pb.ACK_STAGE_REJECTED)[0].reason.startswith("interrupted")
    assert first.fills == [] and second.fills == []
