"""The bridge SDK against the real gateway on real Postgres and Redis: a MANUAL signal approved and filled
(and the account state that follows), a gateway SIGKILLed in the middle of a burst (every delivery still
executed exactly once), two bridges for one device (the first taken over steps aside, the other keeps the
device), and an absurd entry price whose fill and quotes the gateway takes."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from pathlib import Path

import grpc
from sqlalchemy import func, select

from backoffice.bootstrap import Resources
from backoffice.models import AccountState, ActorType, Delivery, DeliveryState, EventKind, ExecutionEvent, Quote
from backoffice.platform.config import Settings
from backoffice.platform.serving import Server
from backoffice.producer import ProducerClient
from gateway.bridge import BridgeClient, BridgeConfig, DeviceTakenOver, PaperConfig, PaperExecutor
from signalhub.protocol import signing
from signalhub.v1 import backoffice_pb2 as bpb
from signalhub.v1 import backoffice_pb2_grpc as brpc
from tests.conftest import KeyCredentials, Stack, UserCredentials, free_port, server_env, subscribe, wait_serving
from tests.gateway.bridge.scripted import REPO, ledger_rows, spawn
from tests.gateway.support import eventually, running_bridge


@contextlib.asynccontextmanager
async def _gateway_processes(
    settings: Settings, count: int
) -> AsyncIterator[list[tuple[str, subprocess.Popen[bytes]]]]:
    started: list[tuple[str, subprocess.Popen[bytes]]] = []
    try:
        for _ in range(count):
            address = f"127.0.0.1:{free_port()}"
            command = [sys.executable, "-m", "backoffice.cli", "serve", "gateway"]
            env = server_env(
                settings.database_url,
                settings.redis_url,
                gateway_address=address,
                ack_timeout_seconds="1",
                sweep_interval_seconds="0.5",
            )
            process = spawn(command, env=env, cwd=REPO)
            started.append((address, process))
        for address, process in started:
            await wait_serving(address, process)
        yield started
    finally:
        for _, process in started:
            if process.poll() is None:
                process.terminate()
        for _, process in started:
            try:
                await asyncio.to_thread(process.wait, 15)
            except subprocess.TimeoutExpired:
                process.kill()


async def _until(check: Callable[[], Awaitable[bool]], what: str, within: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_end_to_end_approve_receive_ack_fill(
    stack: Stack,
    tmp_path: Path,
) -> None:
    """A MANUAL signal approved by the trader reaches the paper bridge, fills, and GetSignalExecution shows
    the fill with every stage the bridge reported."""
    await subscribe(stack.backoffice_channel, stack.user, stack.producer, bpb.SUBSCRIPTION_MODE_MANUAL)
    executor = PaperExecutor(PaperConfig(seed=4, slippage_ticks=2))
    config = BridgeConfig(str(stack.device.id), (stack.gateway.bound_address,), tmp_path / "ledger.db")
    async with running_bridge(config, stack.device, executor) as client:
        async with stack.producer_client() as signals:
            signal = await signals.submit_signal("XAUUSD", "buy", entry_price="2034.15", stop_loss="2020")
        approve = bpb.ApproveSignalRequest(signal_id=signal.id, request_id=str(uuid.uuid4()))
        await brpc.ApprovalServiceStub(stack.backoffice_channel).ApproveSignal(
            approve, metadata=stack.user.metadata, timeout=10
        )
        await eventually(lambda: len(executor.fills) == 1, what="the paper fill")
        order, fill = executor.fills[0]
        assert (order.instrument, order.side, order.volume) == ("XAUUSD", "BUY", Decimal("0.10"))
        assert order.entry_price == Decimal("2034.15")

        executions = brpc.ExecutionServiceStub(stack.backoffice_channel)
        request = bpb.GetSignalExecutionRequest(signal_id=signal.id)

        async def filled() -> bool:
            found = await executions.GetSignalExecution(request, metadata=stack.user.metadata, timeout=10)
            return len(found.devices) == 1 and found.devices[0].state == bpb.DELIVERY_STATE_FILLED

        await _until(filled, "GetSignalExecution to show the fill")
        [execution] = (await executions.GetSignalExecution(request, metadata=stack.user.metadata, timeout=10)).devices
        assert execution.device_id == str(stack.device.id) and execution.broker_ticket == fill.broker_ticket
        assert Decimal(execution.fill_price) == fill.price and Decimal(execution.filled_volume) == Decimal("0.10")
        reported = [(e.type, e.stage) for e in execution.events if e.type != bpb.EXECUTION_EVENT_TYPE_SENT]
        assert reported == [
            (bpb.EXECUTION_EVENT_TYPE_ACK, bpb.DELIVERY_STATE_RECEIVED),
            (bpb.EXECUTION_EVENT_TYPE_ACK, bpb.DELIVERY_STATE_PLACED),
            (bpb.EXECUTION_EVENT_TYPE_FILL, bpb.DELIVERY_STATE_FILLED),
        ]
        stages = [latency.stage for latency in execution.latencies]
        assert {bpb.DELIVERY_STATE_RECEIVED, bpb.DELIVERY_STATE_PLACED, bpb.DELIVERY_STATE_FILLED} <= set(stages)
        await eventually(lambda: ledger_rows(tmp_path / "ledger.db", "outbox") == [], what="every frame receipted")

        # The bridge's AccountState after the fill (the position valued at the bid) is the device's state.
        account = await executor.account()
        assert account.equity < account.balance

        async def state_stored() -> bool:
            async with stack.res.sessions() as session:
                state = await session.get(AccountState, stack.device.id, populate_existing=True)
            return state is not None and state.frame_id is not None and state.equity == account.equity

        await _until(state_stored, "the account state after the fill")
        assert client.stats.receipts_rejected == 0


async def test_two_bridges_for_one_device_stop_taking_turns(stack: Stack, tmp_path: Path) -> None:
    """Two bridges with their own ledgers for one device take its stream from each other; each takeover in
    a row doubles the wait, so the first one replaced reaches the limit first and stops, saying why, and the
    other keeps the device."""
    secret = signing.parse_secret(stack.device.secret)

    def bridge(name: str) -> BridgeClient:
        config = BridgeConfig(
            str(stack.device.id),
            (stack.gateway.bound_address,),
            tmp_path / f"{name}.db",
            backoff_base=0.05,
            backoff_cap=0.2,
            replaced_backoff=0.3,
            replaced_limit=3,
        )
        return BridgeClient(config, secret, PaperExecutor())

    first, second = bridge("first"), bridge("second")
    first_run = asyncio.create_task(first.run())
    await asyncio.wait_for(first.connected.wait(), 15)
    second_run = asyncio.create_task(second.run())
    try:
        done, _ = await asyncio.wait([first_run, second_run], timeout=30, return_when=asyncio.FIRST_COMPLETED)
        assert done == {first_run}, "the first bridge replaced is the one that steps aside"
        error = first_run.exception()
        assert isinstance(error, DeviceTakenOver) and "3 times in a row" in str(error)
        await asyncio.sleep(1.5)  # longer than any wait of the second: it is not taken over any more
        assert second.connected.is_set() and not second_run.done()
    finally:
        second.stop()
        await asyncio.wait_for(second_run, 15)
        if not first_run.done():
            first.stop()
            await asyncio.wait_for(first_run, 15)


async def test_sigkill_the_gateway_mid_burst_every_delivery_executes_exactly_once(
    settings: Settings,
    res: Resources,
    backoffice_server: Server,
    backoffice_channel: grpc.aio.Channel,
    user: UserCredentials,
    device: KeyCredentials,
    producer: KeyCredentials,
    tmp_path: Path,
) -> None:
    """Two gateway processes; the bridge is on the first. A burst of AUTO signals: in its middle the
    bridge's disk stalls (the test holds the ledger's write lock) until the first gateway has sent every
    unacknowledged delivery again, so the bridge sees repeats; then, in the middle of the next wave, that
    gateway is SIGKILLed. The bridge moves to the second one, which sends again whatever has no RECEIVED;
    every delivery is still executed exactly once."""
    per_wave = 10
    await subscribe(backoffice_channel, user, producer, bpb.SUBSCRIPTION_MODE_AUTO)
    executor = PaperExecutor(PaperConfig(seed=5, latency=0.02))
    ledger = tmp_path / "ledger.db"

    async def resent() -> int:
        async with res.sessions() as session:
            query = select(func.count()).where(Delivery.device_id == device.id, Delivery.attempt >= 2)
            return int(await session.scalar(query) or 0)

    async with _gateway_processes(settings, 2) as replicas:
        (first, first_process), (second, _) = replicas
        config = BridgeConfig(str(device.id), (first, second), ledger, backoff_base=0.1, backoff_cap=1.0)
        client = BridgeClient(config, signing.parse_secret(device.secret), executor)
        task = asyncio.create_task(client.run())
        try:
            await asyncio.wait_for(client.connected.wait(), 15)
            assert client.address == first
            async with ProducerClient(backoffice_server.bound_address, producer.id, producer.secret) as signals:

                async def wave(count: int = per_wave) -> None:
                    for n in range(count):
                        await signals.submit_signal("XAUUSD", "buy" if n % 2 else "sell")

                await wave()
                stall = sqlite3.connect(ledger, timeout=10)
                stall.execute("BEGIN IMMEDIATE")  # the bridge can record nothing: no acks go out
                try:
                    await wave()
                    # Past the gateways' ack timeout (1 s) every unacknowledged delivery is sent again.
                    await eventually(lambda: resent(), what="the first gateway to send again", within=30)
                finally:
                    stall.rollback()
                    stall.close()
                await eventually(lambda: client.stats.repeated > 0, what="the bridge to see a repeat", within=30)
                await wave(per_wave // 2)
                first_process.send_signal(signal.SIGKILL)
                filled_at_kill = len(executor.fills)
                await wave(per_wave - per_wave // 2)
            # A safety net, not a claim: a loaded machine may use one whole connect and Welcome wait (5 s + 10 s)
            # on an attempt before the next succeeds.
            await eventually(lambda: client.address == second and client.connected.is_set(), what="failover", within=45)
            await eventually(lambda: len(executor.fills) >= 3 * per_wave, what="every delivery to fill", within=60)
            await asyncio.sleep(1.5)  # time for a wrong re-send (ack timeout 1 s) to show up
        finally:
            client.stop()
            await asyncio.wait_for(task, 20)
    delivered = [order.delivery_id for order, _ in executor.fills]
    assert len(delivered) == 3 * per_wave and len(set(delivered)) == len(delivered), "each executed exactly once"
    async with res.sessions.begin() as session:
        rows = (await session.execute(select(Delivery.id, Delivery.state).where(Delivery.device_id == device.id))).all()
        fills = (
            await session.execute(
                select(ExecutionEvent.delivery_id, func.count())
                .where(ExecutionEvent.device_id == device.id, ExecutionEvent.kind == EventKind.FILL)
                .group_by(ExecutionEvent.delivery_id)
            )
        ).all()
    assert sorted(str(r.id) for r in rows) == sorted(delivered)
    assert all(r.state == DeliveryState.FILLED for r in rows)
    assert len(fills) == len(delivered) and all(count == 1 for _, count in fills)
    assert filled_at_kill < len(delivered) and client.stats.welcomes >= 2, "the kill came in the middle"
    assert client.stats.repeated > 0, "deliveries were sent again (so at-most-once was put to the test)"
    assert client.stats.refused == 0


async def test_an_absurd_entry_price_fills_and_quotes_what_the_gateway_takes(
    stack: Stack,
    tmp_path: Path,
) -> None:
    """A signal at 0.000000000001 (a valid price, far below gold's tick) through the paper bridge: its
    market stays on the tick grid above zero, so the SELL fill and every quote after it are accepted
    (they used to be refused: a bid of -0.00, sent again every quote_refresh)."""
    await subscribe(stack.backoffice_channel, stack.user, stack.producer, bpb.SUBSCRIPTION_MODE_AUTO)
    executor = PaperExecutor(PaperConfig(seed=6, slippage_ticks=3))
    config = BridgeConfig(
        str(stack.device.id),
        (stack.gateway.bound_address,),
        tmp_path / "ledger.db",
        quote_interval=0.05,
        quote_refresh=0.1,
    )
    async with running_bridge(config, stack.device, executor) as client:
        async with stack.producer_client() as signals:
            await signals.submit_signal("XAUUSD", "sell", entry_price="0.000000000001")

        async def filled() -> bool:
            async with stack.res.sessions() as session:
                states = (
                    await session.scalars(select(Delivery.state).where(Delivery.device_id == stack.device.id))
                ).all()
            return list(states) == [DeliveryState.FILLED]

        await _until(filled, "the gateway to record the fill")

        async def quoted() -> bool:
            async with stack.res.sessions() as session:
                quote = await session.get(Quote, ("XAUUSD", ActorType.DEVICE, stack.device.id), populate_existing=True)
            return quote is not None

        await _until(quoted, "the gateway to store the bridge's quote")
        await eventually(lambda: client.stats.quotes_sent >= 3, what="quotes sent again")
        await eventually(lambda: ledger_rows(tmp_path / "ledger.db", "outbox") == [], what="every frame receipted")
        [(_, fill)] = executor.fills
        assert fill.price == Decimal("0.01")  # the bid, one tick: a price never reaches zero
        assert client.stats.receipts_rejected == 0
