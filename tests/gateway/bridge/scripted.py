"""A scripted DeviceGateway for the bridge SDK's tests, and the rig that runs real BridgeClients against it.

``ScriptedGateway`` checks the signed open with the real signing code, seals with the real sealing code
and maps errors with the real error mapping, while the test decides what it pushes, when it receipts and
when it ends a stream.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from backoffice.platform.rpc_errors import build_status, trailing_metadata
from gateway.bridge import BridgeClient, BridgeConfig, PaperConfig, PaperExecutor
from signalhub.protocol import errors, signing
from signalhub.protocol.sealing import InstructionSealer
from signalhub.protocol.signing import CONNECT_METHOD
from signalhub.v1 import common_pb2
from signalhub.v1 import gateway_pb2 as pb
from signalhub.v1 import gateway_pb2_grpc as rpc

REPO = Path(__file__).resolve().parents[3]


def spawn(command: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """A child process (started from a plain function: starting it is quick and never awaited)."""
    return subprocess.Popen(command, **kwargs)


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


# ---------------------------------------------------------------------------------------- scripted gateway


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
        self.swallow: set[str] = set()  # frame kinds whose first frame is lost: recorded, never receipted
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
        """Check the signed open, end it with a planned error if the test asked for one, then answer each
        Hello with a Welcome and each frame with a receipt (unless held back), and send what the test pushes."""
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
                if frame.WhichOneof("body") in self.swallow:
                    self.swallow.discard(frame.WhichOneof("body"))
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


# ------------------------------------------------------------------------------------------------- the rig


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

    async def connect(self, executor: PaperExecutor | None = None, **overrides: Any) -> BridgeClient:
        """``start``, then wait until the client is connected."""
        client = self.start(executor, **overrides)
        await client.connected.wait()
        return client

    async def stop(self, client: BridgeClient) -> None:
        for known, task in self.clients:
            if known is client:
                client.stop()
                await asyncio.wait_for(task, 15)


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
        if table == "close_commands":
            return db.execute("SELECT command_id, state FROM close_commands").fetchall()
        return db.execute("SELECT frame_id, subject FROM outbox ORDER BY seq").fetchall()
    finally:
        db.close()
