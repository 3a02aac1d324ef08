"""The bridge SDK (gateway/bridge.py): ledger, outbox, refusals, reconnects.

Most tests run the real BridgeClient against ``ScriptedGateway``: a DeviceGateway peer that checks the
signed open with the real signing code, seals with the real sealing code and maps errors with the real
error mapping, while the test decides what it pushes, when it receipts and when it ends a stream. The
end-to-end tests at the bottom run against the real gateway on real Postgres and Redis.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import func, select

from backoffice.bootstrap import Resources
from backoffice.models import ActorType, Delivery, DeliveryState, EventKind, ExecutionEvent, Quote
from backoffice.platform.config import Settings
from backoffice.platform.rpc_errors import build_status, trailing_metadata
from backoffice.platform.serving import Server
from backoffice.producer_client import ProducerClient
from gateway.bridge import (
    CONNECT_METHOD,
    BridgeClient,
    BridgeConfig,
    DeviceRevoked,
    Ledger,
    LedgerError,
    OutFrame,
    delivery_subject,
)
from gateway.executors import OrderFill, OrderRequest, PaperConfig, PaperExecutor, Price
from signalhub.protocol import errors, signing
from signalhub.protocol.sealing import InstructionSealer
from signalhub.v1 import backoffice_pb2 as bpb
from signalhub.v1 import backoffice_pb2_grpc as brpc
from signalhub.v1 import common_pb2
from signalhub.v1 import gateway_pb2 as pb
from signalhub.v1 import gateway_pb2_grpc as rpc
from tests.conftest import KeyCredentials, UserCredentials
from tests.gateway.support import eventually

REPO = Path(__file__).resolve().parents[2]


def spawn(command: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """A child process (started from a plain function: starting it is quick and never awaited)."""
    return subprocess.Popen(command, **kwargs)


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


# ------------------------------------------------------------------------------------ scripted gateway


@dataclass
class _Stream:
    number: int
    out: asyncio.Queue[pb.GatewayFrame | None] = field(default_factory=asyncio.Queue)
    frames: list[pb.DeviceFrame] = field(default_factory=list)


class ScriptedGateway:
    """A DeviceGateway for one device that a test drives."""

    def __init__(self, device_id: str, secret: bytes) -> None:
        self.device_id = device_id
        self.secret = secret
        self.sealer = InstructionSealer(secret, device_id)
        self.streams: list[_Stream] = []
        self.hold_receipts = False
        self.reject_frames: set[str] = set()  # frame ids to answer REJECTED
        self.fail_next: list[errors.DomainError] = []  # end the next opens with these
        self.heartbeat_seconds = 15
        self.server: grpc.aio.Server | None = None
        self.address = ""

    async def start(self) -> str:
        self.server = grpc.aio.server()
        rpc.add_DeviceGatewayServicer_to_server(self, self.server)  # type: ignore[arg-type]
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.address = f"127.0.0.1:{port}"
        return self.address

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)

    # what the device sent

    @property
    def frames(self) -> list[pb.DeviceFrame]:
        return [f for s in self.streams for f in s.frames]

    def of_kind(self, kind: str) -> list[pb.DeviceFrame]:
        return [f for f in self.frames if f.WhichOneof("body") == kind]

    def acks(self, delivery_id: str, stage: pb.AckStage.ValueType | None = None) -> list[pb.Ack]:
        return [
            f.ack
            for f in self.of_kind("ack")
            if f.ack.delivery_id == delivery_id and (stage is None or f.ack.stage == stage)
        ]

    def fills(self, delivery_id: str) -> list[pb.Fill]:
        return [f.fill for f in self.of_kind("fill") if f.fill.delivery_id == delivery_id]

    # what the test pushes

    def push(self, instruction: pb.Instruction | None = None, *, sealed: pb.SealedInstruction | None = None) -> None:
        if sealed is None:
            assert instruction is not None
            nonce, ciphertext = self.sealer.seal(instruction.SerializeToString())
            sealed = pb.SealedInstruction(nonce=nonce, ciphertext=ciphertext)
        self.streams[-1].out.put_nowait(pb.GatewayFrame(instruction=sealed))

    def end_stream(self, error: errors.DomainError) -> None:
        """End the current stream with ``error`` (after what was already pushed)."""
        self.fail_next.insert(0, error)
        self.streams[-1].out.put_nowait(None)

    # the servicer

    async def _abort(self, context: Any, error: errors.DomainError) -> None:
        code, status = build_status(error)
        await context.abort(code, error.message, trailing_metadata=trailing_metadata(status))

    async def Connect(self, requests: AsyncIterator[pb.DeviceFrame], context: Any) -> AsyncIterator[pb.GatewayFrame]:
        metadata = tuple((m[0], m[1]) for m in context.invocation_metadata() or ())
        try:
            headers = signing.parse_headers(metadata)
            ok = signing.match_secret(headers, CONNECT_METHOD, b"", [self.secret]) == 0
        except signing.SignatureError:
            ok = False
        if not ok or headers.key_id != self.device_id:
            await self._abort(context, errors.Unauthenticated("bad signature", reason="SIGNATURE_INVALID"))
        if self.fail_next:
            await self._abort(context, self.fail_next.pop(0))
        stream = _Stream(len(self.streams) + 1)
        self.streams.append(stream)

        async def read() -> None:
            async for frame in requests:
                stream.frames.append(frame)
                if frame.WhichOneof("body") == "hello":
                    welcome = pb.Welcome(
                        device_id=self.device_id,
                        session_id=f"s{stream.number}",
                        server_time=timestamp(datetime.now(UTC)),
                        heartbeat_seconds=self.heartbeat_seconds,
                    )
                    stream.out.put_nowait(pb.GatewayFrame(welcome=welcome))
                if self.hold_receipts and frame.WhichOneof("body") != "hello":
                    continue
                status = pb.RECEIPT_STATUS_ACCEPTED
                if frame.frame_id in self.reject_frames:
                    status = pb.RECEIPT_STATUS_REJECTED
                elif sum(f.frame_id == frame.frame_id for f in self.frames) > 1:
                    status = pb.RECEIPT_STATUS_DUPLICATE
                stream.out.put_nowait(pb.GatewayFrame(receipt=pb.Receipt(frame_id=frame.frame_id, status=status)))

        reader = asyncio.create_task(read())
        try:
            while (item := await stream.out.get()) is not None:
                yield item
        finally:
            reader.cancel()
        if self.fail_next:
            await self._abort(context, self.fail_next.pop(0))


# ------------------------------------------------------------------------------------------- fixtures


@dataclass
class Rig:
    gateway: ScriptedGateway
    device_id: str
    secret: bytes
    ledger: Path
    tmp: Path
    clients: list[tuple[BridgeClient, asyncio.Task[None]]] = field(default_factory=list)

    def config(self, **overrides: Any) -> BridgeConfig:
        values: dict[str, Any] = {
            "device_id": self.device_id,
            "gateways": (self.gateway.address,),
            "ledger_path": self.ledger,
            "backoff_base": 0.05,
            "backoff_cap": 0.5,
            "quote_interval": 0.1,
            "drain_timeout": 3.0,
            **overrides,
        }
        return BridgeConfig(**values)

    def start(self, executor: PaperExecutor | None = None, **overrides: Any) -> BridgeClient:
        client = BridgeClient(self.config(**overrides), self.secret, executor or PaperExecutor(), seed=1)
        self.clients.append((client, asyncio.create_task(client.run())))
        return client

    async def stop(self, client: BridgeClient) -> None:
        for known, task in self.clients:
            if known is client:
                client.stop()
                await asyncio.wait_for(task, 15)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    secret = bytes(range(32, 64))
    device_id = str(uuid.uuid4())
    gateway = ScriptedGateway(device_id, secret)
    await gateway.start()
    rig = Rig(gateway, device_id, secret, tmp_path / "ledger.db", tmp_path)
    yield rig
    for client, task in rig.clients:
        client.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 15)
    await gateway.stop()


def delivery(
    *,
    delivery_id: str | None = None,
    instrument: str = "XAUUSD",
    side: common_pb2.Side.ValueType = common_pb2.SIDE_BUY,
    volume: str = "0.10",
    entry_price: str = "",
    max_deviation: str = "",
    expires_in: timedelta = timedelta(seconds=60),
    attempt: int = 1,
) -> pb.Instruction:
    return pb.Instruction(
        delivery=pb.Delivery(
            delivery_id=delivery_id or str(uuid.uuid4()),
            signal_id=str(uuid.uuid4()),
            instrument=instrument,
            side=side,
            volume=volume,
            entry_price=entry_price,
            max_deviation=max_deviation,
            expire_time=timestamp(datetime.now(UTC) + expires_in),
            attempt=attempt,
        )
    )


def paper(**kw: Any) -> PaperExecutor:
    return PaperExecutor(PaperConfig(prices={"XAUUSD": Decimal("2000.00")}, **kw))


def ledger_rows(path: Path, table: str = "deliveries") -> list[tuple[Any, ...]]:
    db = sqlite3.connect(path)
    try:
        if table == "deliveries":
            return db.execute("SELECT delivery_id, state, reason FROM deliveries").fetchall()
        return db.execute("SELECT frame_id, subject FROM outbox ORDER BY seq").fetchall()
    finally:
        db.close()


# -------------------------------------------------------------------------------------------- the flow


async def test_hello_then_delivery_is_received_placed_filled(rig: Rig) -> None:
    executor = paper(slippage_ticks=0)
    client = rig.start(executor)
    await client.connected.wait()
    hello = rig.gateway.frames[0]
    assert hello.WhichOneof("body") == "hello" and hello.frame_id
    assert hello.hello.account_currency == "USD" and Decimal(hello.hello.balance) == Decimal(10000)
    xau = next(s for s in hello.hello.symbols if s.name == "XAUUSD")
    assert (Decimal(xau.tick_size), Decimal(xau.volume_min)) == (Decimal("0.01"), Decimal("0.01"))

    instruction = delivery(entry_price="2000.00", max_deviation="1.00")
    delivery_id = instruction.delivery.delivery_id
    rig.gateway.push(instruction)
    await eventually(lambda: bool(rig.gateway.fills(delivery_id)), what="a fill")
    stages = [a.stage for a in rig.gateway.acks(delivery_id)]
    assert stages == [pb.ACK_STAGE_RECEIVED, pb.ACK_STAGE_PLACED]
    fill = rig.gateway.fills(delivery_id)[0]
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
    client = rig.start(executor)
    await client.connected.wait()
    instruction = delivery()
    delivery_id = instruction.delivery.delivery_id
    rig.gateway.push(instruction)
    await eventually(lambda: bool(rig.gateway.fills(delivery_id)))
    for attempt in (2, 3):
        instruction.delivery.attempt = attempt
        rig.gateway.push(instruction)
    await eventually(lambda: len(rig.gateway.acks(delivery_id, pb.ACK_STAGE_RECEIVED)) == 3, what="re-acks")
    assert len(executor.fills) == 1
    assert client.stats.repeated == 2


async def test_at_most_once_across_a_restart_with_the_same_ledger(rig: Rig) -> None:
    first = paper()
    client = rig.start(first)
    await client.connected.wait()
    instruction = delivery()
    delivery_id = instruction.delivery.delivery_id
    rig.gateway.push(instruction)
    await eventually(lambda: bool(rig.gateway.fills(delivery_id)))
    await rig.stop(client)

    second = paper()
    again = rig.start(second)
    await again.connected.wait()
    rig.gateway.push(instruction)  # the gateway re-sends after a reconnect
    await eventually(lambda: len(rig.gateway.acks(delivery_id, pb.ACK_STAGE_RECEIVED)) == 2)
    await asyncio.sleep(0.2)
    assert second.fills == [] and len(first.fills) == 1


async def test_delivery_recorded_but_not_placed_is_resumed_after_restart(rig: Rig) -> None:
    """A crash between RECEIVED and executing: the next run places it (still at most once)."""
    instruction = delivery()
    delivery_id = instruction.delivery.delivery_id
    client = rig.start(paper(latency=30.0))
    await client.connected.wait()
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
    again = rig.start(executor)
    await again.connected.wait()
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
    again = rig.start(executor)
    await again.connected.wait()
    await eventually(lambda: bool(rig.gateway.acks(delivery_id, pb.ACK_STAGE_REJECTED)))
    rig.gateway.push(instruction)
    await eventually(lambda: len(rig.gateway.acks(delivery_id, pb.ACK_STAGE_RECEIVED)) >= 2)
    assert executor.fills == []
    assert ledger_rows(rig.ledger)[0][1] == "rejected"


# -------------------------------------------------------------------------------------------- outbox


async def test_unreceipted_frames_are_resent_after_reconnect(rig: Rig) -> None:
    client = rig.start(paper())
    await client.connected.wait()
    rig.gateway.hold_receipts = True
    instruction = delivery()
    delivery_id = instruction.delivery.delivery_id
    rig.gateway.push(instruction)
    await eventually(lambda: bool(rig.gateway.fills(delivery_id)))
    first = [f.frame_id for f in rig.gateway.streams[0].frames if f.WhichOneof("body") in ("ack", "fill")]
    assert len(first) == 3
    assert [r[0] for r in ledger_rows(rig.ledger, "outbox")] == first

    rig.gateway.hold_receipts = False
    rig.gateway.end_stream(errors.Unavailable("replica going away"))
    await eventually(lambda: len(rig.gateway.streams) == 2, what="a reconnect")
    await eventually(lambda: ledger_rows(rig.ledger, "outbox") == [], what="the outbox to drain")
    second = [f.frame_id for f in rig.gateway.streams[1].frames if f.WhichOneof("body") in ("ack", "fill")]
    assert second == first  # the same frames, same ids, same order
    assert client.stats.frames_resent == 3


async def test_outbox_survives_a_restart(rig: Rig) -> None:
    rig.gateway.hold_receipts = True
    client = rig.start(paper())
    await client.connected.wait()
    instruction = delivery()
    rig.gateway.push(instruction)
    await eventually(lambda: bool(rig.gateway.fills(instruction.delivery.delivery_id)))
    client_stop = rig.stop(client)
    await asyncio.wait_for(client_stop, 15)  # drain gives up: the receipts never come
    pending = [r[0] for r in ledger_rows(rig.ledger, "outbox")]
    assert len(pending) == 3

    rig.gateway.hold_receipts = False
    again = rig.start(paper())
    await again.connected.wait()
    await eventually(lambda: ledger_rows(rig.ledger, "outbox") == [])
    resent = [f.frame_id for f in rig.gateway.streams[-1].frames if f.WhichOneof("body") in ("ack", "fill")]
    assert resent == pending


async def test_rejected_receipts_are_dropped(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    client = rig.start(paper())
    await client.connected.wait()
    rig.gateway.hold_receipts = True
    instruction = delivery()
    rig.gateway.push(instruction)
    await eventually(lambda: bool(rig.gateway.fills(instruction.delivery.delivery_id)))
    rig.gateway.reject_frames = {r[0] for r in ledger_rows(rig.ledger, "outbox")}
    rig.gateway.hold_receipts = False
    with caplog.at_level(logging.WARNING, "signalhub.bridge"):
        rig.gateway.end_stream(errors.Unavailable("again"))
        await eventually(lambda: ledger_rows(rig.ledger, "outbox") == [])
    assert client.stats.receipts_rejected == 3
    assert any("rejected a frame" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------------------ refusals


async def test_refuses_after_expire_time(rig: Rig) -> None:
    executor = paper()
    client = rig.start(executor)
    await client.connected.wait()
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
    client = rig.start(executor)
    await client.connected.wait()
    far = delivery(side=common_pb2.SIDE_SELL, entry_price="2010.00", max_deviation="5.00")
    near = delivery(side=common_pb2.SIDE_SELL, entry_price="2004.00", max_deviation="5.00")
    rig.gateway.push(far)
    rig.gateway.push(near)
    far_id, near_id = far.delivery.delivery_id, near.delivery.delivery_id
    await eventually(lambda: bool(rig.gateway.acks(far_id, pb.ACK_STAGE_REJECTED)) and bool(rig.gateway.fills(near_id)))
    reason = rig.gateway.acks(far_id, pb.ACK_STAGE_REJECTED)[0].reason
    assert reason.startswith("max_deviation") and "1999.99" in reason and "2010.00" in reason
    assert [o.delivery_id for o, _ in executor.fills] == [near_id]


async def test_instructions_that_do_not_open_are_refused_and_never_executed(rig: Rig) -> None:
    executor = paper()
    client = rig.start(executor)
    await client.connected.wait()
    bad = delivery()
    bad_id = bad.delivery.delivery_id
    plaintext = bad.SerializeToString()
    other_key = InstructionSealer(bytes(32), rig.device_id)
    other_device = InstructionSealer(rig.secret, str(uuid.uuid4()))
    good_nonce, good_ciphertext = rig.gateway.sealer.seal(plaintext)
    tampered = bytes([good_ciphertext[0] ^ 1]) + good_ciphertext[1:]
    for nonce, ciphertext in (
        other_key.seal(plaintext),
        other_device.seal(plaintext),
        (good_nonce, tampered),
        (good_nonce[:8], good_ciphertext),
        (b"", plaintext),  # not sealed at all
    ):
        rig.gateway.push(sealed=pb.SealedInstruction(nonce=nonce, ciphertext=ciphertext))
    rig.gateway.push(delivery())  # then a good one, to know the bad ones were handled
    await eventually(lambda: client.stats.filled == 1)
    assert client.stats.refused == 5
    assert rig.gateway.acks(bad_id) == [] and len(executor.fills) == 1
    assert all(o.delivery_id != bad_id for o, _ in executor.fills)


# ------------------------------------------------------------------------------------------ closes


async def test_close_order_executes_once_and_reports(rig: Rig) -> None:
    executor = paper()
    client = rig.start(executor)
    await client.connected.wait()
    instruction = delivery(volume="0.30")
    delivery_id = instruction.delivery.delivery_id
    rig.gateway.push(instruction)
    await eventually(lambda: bool(rig.gateway.fills(delivery_id)))
    ticket = rig.gateway.fills(delivery_id)[0].broker_ticket
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


# ------------------------------------------------------------------------------------ connection life


async def test_heartbeats_are_sent(rig: Rig) -> None:
    rig.gateway.heartbeat_seconds = 1
    client = rig.start(paper())
    await client.connected.wait()
    await eventually(lambda: len(rig.gateway.of_kind("heartbeat")) >= 2, what="heartbeats")
    assert all(f.frame_id for f in rig.gateway.of_kind("heartbeat"))


async def test_revoked_key_stops_for_good(rig: Rig) -> None:
    rig.gateway.fail_next = [errors.Unauthenticated("revoked", reason="KEY_REVOKED")]
    client = BridgeClient(rig.config(), rig.secret, paper())
    with pytest.raises(DeviceRevoked, match="revoked"):
        await asyncio.wait_for(client.run(), 15)
    assert rig.gateway.streams == []  # it never came back


async def test_revocation_mid_stream_stops_for_good(rig: Rig) -> None:
    client = BridgeClient(rig.config(), rig.secret, paper())
    task = asyncio.create_task(client.run())
    await client.connected.wait()
    rig.gateway.end_stream(errors.Unauthenticated("revoked", reason="KEY_REVOKED"))
    with pytest.raises(DeviceRevoked):
        await asyncio.wait_for(task, 15)
    assert len(rig.gateway.streams) == 1


async def test_session_replaced_backs_off_longer(rig: Rig) -> None:
    client = rig.start(paper(), replaced_backoff=120.0)
    await client.connected.wait()
    rig.gateway.end_stream(errors.Aborted("another session", reason="SESSION_REPLACED"))
    await eventually(lambda: not client.connected.is_set())
    await asyncio.sleep(1.0)  # with backoff_cap 0.5 s it would have reconnected by now
    assert len(rig.gateway.streams) == 1
    await rig.stop(client)  # and stop() cuts the wait short


async def test_transient_failures_reconnect(rig: Rig) -> None:
    rig.gateway.fail_next = [errors.Unavailable("busy"), errors.ResourceExhausted("too many streams")]
    client = rig.start(paper())
    await client.connected.wait()
    assert client.stats.sessions == 3 and len(rig.gateway.streams) == 1


async def test_moves_to_the_next_gateway_when_one_dies(rig: Rig) -> None:
    second = ScriptedGateway(rig.device_id, rig.secret)
    await second.start()
    try:
        executor = paper()
        client = rig.start(executor, gateways=(rig.gateway.address, second.address))
        await client.connected.wait()
        assert client.address == rig.gateway.address
        await rig.gateway.stop()
        await eventually(lambda: client.address == second.address and client.connected.is_set(), what="failover")
        instruction = delivery()
        second.push(instruction)
        await eventually(lambda: bool(second.fills(instruction.delivery.delivery_id)))
        assert len(executor.fills) == 1
    finally:
        await second.stop()


async def test_ledger_of_another_device_is_refused(rig: Rig) -> None:
    client = rig.start(paper())
    await client.connected.wait()
    await rig.stop(client)
    stranger = BridgeClient(rig.config(device_id=str(uuid.uuid4())), rig.secret, paper())
    with pytest.raises(LedgerError, match="belongs to device"):
        await stranger.run()


async def test_the_secret_is_never_logged(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    shown = signing.format_secret(rig.secret)
    with caplog.at_level(logging.DEBUG):
        client = rig.start(paper())
        await client.connected.wait()
        instruction = delivery()
        rig.gateway.push(instruction)
        rig.gateway.push(sealed=pb.SealedInstruction(nonce=bytes(12), ciphertext=b"junk"))
        await eventually(lambda: bool(rig.gateway.fills(instruction.delivery.delivery_id)))
        await rig.stop(client)
    text = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert "delivery filled" in text
    assert shown not in text and shown[4:] not in text and rig.secret.hex() not in text
    assert shown not in repr(client) and shown not in repr(client.config)


# ------------------------------------------------------------------------------- against the real gateway


def _gateway_env(settings: Settings, address: str) -> dict[str, str]:
    """A gateway replica as its own process, on the test database and Redis."""
    master = settings.require_master_key()
    return {
        **os.environ,
        "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'proto'}",
        "SIGNALHUB_DATABASE_URL": settings.database_url,
        "SIGNALHUB_REDIS_URL": settings.redis_url,
        "SIGNALHUB_MASTER_KEY": base64.b64encode(master.key.reveal()).decode(),
        "SIGNALHUB_MASTER_KEY_ID": master.key_id,
        "SIGNALHUB_GATEWAY_ADDRESS": address,
        "SIGNALHUB_METRICS_ADDRESS": f"127.0.0.1:{_free_port()}",
        "SIGNALHUB_ACK_TIMEOUT_SECONDS": "1",
        "SIGNALHUB_SWEEP_INTERVAL_SECONDS": "0.5",
        "SIGNALHUB_SHUTDOWN_GRACE_SECONDS": "1",
        "SIGNALHUB_LOG_LEVEL": "WARNING",
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _serving(address: str, process: subprocess.Popen[bytes]) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)
        for _ in range(300):
            if process.poll() is not None:
                raise AssertionError(f"gateway {address} exited with {process.returncode}")
            with contextlib.suppress(grpc.aio.AioRpcError):
                answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            await asyncio.sleep(0.1)
    raise AssertionError(f"gateway {address} is not serving")


@contextlib.asynccontextmanager
async def _gateway_processes(
    settings: Settings, count: int
) -> AsyncIterator[list[tuple[str, subprocess.Popen[bytes]]]]:
    started: list[tuple[str, subprocess.Popen[bytes]]] = []
    try:
        for _ in range(count):
            address = f"127.0.0.1:{_free_port()}"
            command = [sys.executable, "-m", "backoffice.cli", "serve", "gateway"]
            process = spawn(command, env=_gateway_env(settings, address), cwd=REPO)
            started.append((address, process))
        for address, process in started:
            await _serving(address, process)
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


async def _subscribe(
    channel: grpc.aio.Channel, user: UserCredentials, producer: KeyCredentials, mode: bpb.SubscriptionMode.ValueType
) -> None:
    request = bpb.SubscribeRequest(
        request_id=str(uuid.uuid4()),
        producer_id=str(producer.id),
        mode=mode,
        sizing=bpb.SIZING_MODE_FIXED_VOLUME,
        sizing_value="0.10",
    )
    await brpc.ApprovalServiceStub(channel).Subscribe(request, metadata=user.metadata, timeout=10)


async def _until(check: Callable[[], Awaitable[bool]], what: str, within: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_end_to_end_approve_receive_ack_fill(
    backoffice_server: Server,
    backoffice_channel: grpc.aio.Channel,
    gateway_server: Server,
    user: UserCredentials,
    device: KeyCredentials,
    producer: KeyCredentials,
    tmp_path: Path,
) -> None:
    await _subscribe(backoffice_channel, user, producer, bpb.SUBSCRIPTION_MODE_MANUAL)
    executor = PaperExecutor(PaperConfig(seed=4, slippage_ticks=2))
    config = BridgeConfig(str(device.id), (gateway_server.bound_address,), tmp_path / "ledger.db")
    client = BridgeClient(config, signing.parse_secret(device.secret), executor)
    task = asyncio.create_task(client.run())
    try:
        await asyncio.wait_for(client.connected.wait(), 15)
        async with ProducerClient(backoffice_server.bound_address, producer.id, producer.secret) as signals:
            signal = await signals.submit_signal("XAUUSD", "buy", entry_price="2034.15", stop_loss="2020")
        approve = bpb.ApproveSignalRequest(signal_id=signal.id, request_id=str(uuid.uuid4()))
        await brpc.ApprovalServiceStub(backoffice_channel).ApproveSignal(approve, metadata=user.metadata, timeout=10)
        await eventually(lambda: len(executor.fills) == 1, what="the paper fill")
        order, fill = executor.fills[0]
        assert (order.instrument, order.side, order.volume) == ("XAUUSD", "BUY", Decimal("0.10"))
        assert order.entry_price == Decimal("2034.15")

        executions = brpc.ExecutionServiceStub(backoffice_channel)
        request = bpb.GetSignalExecutionRequest(signal_id=signal.id)

        async def filled() -> bool:
            found = await executions.GetSignalExecution(request, metadata=user.metadata, timeout=10)
            return len(found.devices) == 1 and found.devices[0].state == bpb.DELIVERY_STATE_FILLED

        await _until(filled, "GetSignalExecution to show the fill")
        [execution] = (await executions.GetSignalExecution(request, metadata=user.metadata, timeout=10)).devices
        assert execution.device_id == str(device.id) and execution.broker_ticket == fill.broker_ticket
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
    finally:
        client.stop()
        await asyncio.wait_for(task, 15)


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
    await _subscribe(backoffice_channel, user, producer, bpb.SUBSCRIPTION_MODE_AUTO)
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
            await eventually(lambda: client.address == second and client.connected.is_set(), what="failover")
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


def test_ledger_prunes_only_finished_and_receipted_instructions(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.db", "device-1")
    ledger.open()
    try:
        for name in ("old-done", "old-unreceipted", "old-open", "new-done"):
            ack = OutFrame(f"ack-{name}", delivery_subject(name), b"")
            assert ledger.record_delivery(name, b"", ack).new
            ledger.receipted([ack.frame_id])
        assert not ledger.record_delivery("old-done", b"", OutFrame("again", "x", b"")).new
        for name in ("old-done", "old-unreceipted", "new-done"):
            assert ledger.claim_delivery(name)
            frame = OutFrame(f"fill-{name}", delivery_subject(name), b"")
            ledger.finish_delivery(name, fill=None, reason="test", frames=[frame])
            if name != "old-unreceipted":
                ledger.receipted([frame.frame_id])
        ledger.db.execute("UPDATE deliveries SET updated_at = '2000-01-01' WHERE delivery_id LIKE 'old-%'")
        assert ledger.prune(timedelta(days=30)) == 1
        kept = {row[0] for row in ledger.db.execute("SELECT delivery_id FROM deliveries")}
        assert kept == {"old-unreceipted", "old-open", "new-done"}
    finally:
        ledger.close()


@pytest.mark.parametrize("umask", [0o022, 0o000], ids=["umask-022", "umask-000"])
def test_ledger_files_are_owner_only_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "state" / "ledger.db"
    previous = os.umask(umask)
    try:
        ledger = Ledger(path, "device-1")
        ledger.open()
        try:
            ack = OutFrame("ack-1", delivery_subject("d1"), b"")
            assert ledger.record_delivery("d1", b"", ack).new  # a write, so the -wal file exists too
            files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
            assert {f.name: f.stat().st_mode & 0o777 for f in files} == {f.name: 0o600 for f in files}
        finally:
            ledger.close()
        path.chmod(0o644)  # a ledger an older bridge left readable
        ledger.open()
        ledger.close()
        assert path.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(previous)


async def test_an_absurd_entry_price_fills_and_quotes_what_the_gateway_takes(
    res: Resources,
    backoffice_server: Server,
    backoffice_channel: grpc.aio.Channel,
    gateway_server: Server,
    user: UserCredentials,
    device: KeyCredentials,
    producer: KeyCredentials,
    tmp_path: Path,
) -> None:
    """A signal at 0.000000000001 (a valid price, far below gold's tick) through the paper bridge: its
    market stays on the tick grid above zero, so the SELL fill and every quote after it are accepted
    (they used to be refused: a bid of -0.00, sent again every quote_refresh)."""
    await _subscribe(backoffice_channel, user, producer, bpb.SUBSCRIPTION_MODE_AUTO)
    executor = PaperExecutor(PaperConfig(seed=6, slippage_ticks=3))
    config = BridgeConfig(
        str(device.id), (gateway_server.bound_address,), tmp_path / "ledger.db", quote_interval=0.05, quote_refresh=0.1
    )
    client = BridgeClient(config, signing.parse_secret(device.secret), executor)
    task = asyncio.create_task(client.run())
    try:
        await asyncio.wait_for(client.connected.wait(), 15)
        async with ProducerClient(backoffice_server.bound_address, producer.id, producer.secret) as signals:
            await signals.submit_signal("XAUUSD", "sell", entry_price="0.000000000001")

        async def filled() -> bool:
            async with res.sessions() as session:
                states = (await session.scalars(select(Delivery.state).where(Delivery.device_id == device.id))).all()
            return list(states) == [DeliveryState.FILLED]

        await _until(filled, "the gateway to record the fill")

        async def quoted() -> bool:
            async with res.sessions() as session:
                quote = await session.get(Quote, ("XAUUSD", ActorType.DEVICE, device.id), populate_existing=True)
            return quote is not None

        await _until(quoted, "the gateway to store the bridge's quote")
        await eventually(lambda: client.stats.quotes_sent >= 3, what="quotes sent again")
        await eventually(lambda: ledger_rows(tmp_path / "ledger.db", "outbox") == [], what="every frame receipted")
        [(_, fill)] = executor.fills
        assert fill.price == Decimal("0.01")  # the bid, one tick: a price never reaches zero
        assert client.stats.receipts_rejected == 0
    finally:
        client.stop()
        await asyncio.wait_for(task, 15)


class _OddTerminal(PaperExecutor):
    """A terminal quoting a price the gateway refuses (more decimals than a price may carry)."""

    async def quote(self, instrument: str) -> Price | None:
        return Price(instrument, Decimal("1999.0000000000001"), Decimal("2000.01"), datetime.now(UTC))


async def test_a_quote_the_gateway_would_refuse_is_not_sent(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    executor = _OddTerminal(PaperConfig(prices={"XAUUSD": Decimal("2000.00")}))
    client = rig.start(executor, quote_refresh=0.1)
    await client.connected.wait()
    instruction = delivery()
    rig.gateway.push(instruction)
    with caplog.at_level(logging.WARNING, "signalhub.bridge"):
        await eventually(lambda: bool(rig.gateway.fills(instruction.delivery.delivery_id)))
        await eventually(
            lambda: any("quote the gateway would refuse" in r.getMessage() for r in caplog.records), what="a warning"
        )
    assert rig.gateway.of_kind("quote") == [] and client.stats.quotes_sent == 0


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
    client = rig.start(executor, lookup_backoff_base=0.05, lookup_backoff_cap=0.2)
    await client.connected.wait()
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
    client = rig.start(first, lookup_backoff_base=0.05, lookup_backoff_cap=0.2)
    await client.connected.wait()
    instruction = delivery()
    delivery_id = instruction.delivery.delivery_id
    rig.gateway.push(instruction)
    await eventually(lambda: first.lookups >= 2)
    await rig.stop(client)
    assert ledger_rows(rig.ledger) == [(delivery_id, "executing", None)]
    assert _reports(rig, delivery_id) == []

    second = _FlakyTerminal(fill_orders=False)  # after the restart, still unanswered at first
    again = rig.start(second, lookup_backoff_base=0.05, lookup_backoff_cap=0.2)
    await again.connected.wait()
    await eventually(lambda: second.lookups >= 2, what="lookups after the restart")
    assert ledger_rows(rig.ledger)[0][1] == "executing"
    second.answer_lookups = True  # the terminal answers: it never got the order
    await eventually(lambda: bool(rig.gateway.acks(delivery_id, pb.ACK_STAGE_REJECTED)))
    assert _reports(rig, delivery_id) == ["ACK_STAGE_REJECTED"]
    assert rig.gateway.acks(delivery_id, pb.ACK_STAGE_REJECTED)[0].reason.startswith("interrupted")
    assert first.fills == [] and second.fills == []
