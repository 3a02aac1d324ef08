"""A simulated EA bridge, built on the protocol layer alone (``signalhub.protocol``): it signs the stream
open, opens sealed deliveries and answers each at once with RECEIVED, PLACED and a Fill (no ledger, no
broker), closes what a CloseOrder names at once (noting when it arrived), reports its trading account
(AccountState) when told, heartbeats, and times every frame it writes until its Receipt (noting when each
delivery's Fill was receipted: its execution is on record). It imports no server module, so it measures
what any bridge speaking the contract would see."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Final

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from signalhub.protocol.client import device_channel_options
from signalhub.protocol.sealing import InstructionSealer
from signalhub.protocol.signing import CONNECT_METHOD, parse_secret, signed_metadata
from signalhub.v1 import common_pb2
from signalhub.v1 import gateway_pb2 as pb
from signalhub.v1 import gateway_pb2_grpc as rpc

INSTRUMENT: Final = "XAUUSD"
BALANCE: Final = Decimal("10000.00")  # what the Hello reports, and AccountState frames move around
MARGIN: Final = Decimal("100.00")
FRAME_LIMIT_BYTES: Final = 1024 * 1024
# What the bridge SDK's channels use (each real bridge is a process with a connection of its own).
CHANNEL_OPTIONS: Final = tuple(device_channel_options(FRAME_LIMIT_BYTES))
Stream = grpc.aio.StreamStreamCall[pb.DeviceFrame, pb.GatewayFrame]


@dataclass
class Samples:
    """What the devices of one load process saw during the current phase."""

    phase: int = 0
    late: int = 0  # receipts of frames written in an earlier phase (not counted)
    deliveries: list[tuple[str, str, float, int]] = field(default_factory=list)  # signal, device, received, attempt
    receipts: list[tuple[float, float]] = field(default_factory=list)  # (written, receipted) of ack/fill frames
    rejected: int = 0  # receipts other than ACCEPTED/DUPLICATE
    errors: list[str] = field(default_factory=list)
    closes: dict[str, float] = field(default_factory=dict)  # position id -> when its first CloseOrder arrived
    fills: dict[tuple[str, str], float] = field(default_factory=dict)  # (signal, device) -> its Fill receipted


async def read_frame(call: Stream) -> pb.GatewayFrame | None:
    """The next frame from the gateway; None once the stream has ended."""
    frame = await call.read()
    return frame if isinstance(frame, pb.GatewayFrame) else None  # otherwise grpc.aio.EOF


def hello() -> pb.Hello:
    """What the bridge reports on connecting: one tradable symbol, a 10,000 USD account."""
    spec = pb.SymbolSpec(
        name=INSTRUMENT,
        contract_size="100",
        tick_size="0.01",
        tick_value="1",
        volume_min="0.01",
        volume_step="0.01",
        volume_max="100",
    )
    return pb.Hello(
        bridge_version="bench", account_currency="USD", balance=str(BALANCE), equity=str(BALANCE), symbols=[spec]
    )


def delivery(signal_id: str) -> pb.Instruction:
    """A Delivery instruction of the size the gateway pushes for one approved signal (what the
    yardsticks push in its place)."""
    expire = Timestamp()
    expire.FromDatetime(datetime.now(UTC) + timedelta(seconds=300))
    body = pb.Delivery(
        delivery_id=str(uuid.uuid4()),
        signal_id=signal_id,
        instrument=INSTRUMENT,
        side=common_pb2.SIDE_BUY,
        volume="0.01",
        expire_time=expire,
        attempt=1,
    )
    return pb.Instruction(delivery=body)


class SimDevice:
    """A bridge reduced to the protocol: opens sealed deliveries and answers RECEIVED, PLACED and a Fill
    at once (no ledger, no broker), and heartbeats."""

    def __init__(self, device_id: str, shown: str, address: str, samples: Samples) -> None:
        self.device_id = device_id
        self.secret = parse_secret(shown)
        self.sealer = InstructionSealer(self.secret, device_id)
        self.address = address
        self.samples = samples
        self.pending: dict[str, tuple[float, int]] = {}  # frame id -> (written at, phase) of ack/fill frames
        self.fills: dict[str, str] = {}  # frame id -> signal id of a Fill awaiting its receipt
        self.drained = asyncio.Event()  # set while nothing tracked awaits its receipt
        self.drained.set()
        self.seen: set[str] = set()
        self.lock = asyncio.Lock()
        self.sequence = 0
        self.call: Stream | None = None
        self.channel: grpc.aio.Channel | None = None
        self.tasks: list[asyncio.Task[None]] = []

    async def connect(self) -> None:
        """Open the signed stream, say Hello, wait for Welcome, then read and heartbeat in the background."""
        self.channel = grpc.aio.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        await asyncio.wait_for(self.channel.channel_ready(), 20)
        metadata = signed_metadata(self.secret, CONNECT_METHOD, self.device_id, b"")
        self.call = rpc.DeviceGatewayStub(self.channel).Connect(metadata=metadata)
        await self._write(pb.DeviceFrame(hello=hello()), track=False)
        heartbeat_seconds = 15
        while True:
            frame = await asyncio.wait_for(read_frame(self.call), 20)
            if frame is None:
                raise ConnectionError("stream ended before Welcome")
            if frame.WhichOneof("body") == "welcome":
                heartbeat_seconds = max(1, frame.welcome.heartbeat_seconds or 15)
                break
        self.tasks = [
            asyncio.create_task(self._read(self.call)),
            asyncio.create_task(self._heartbeat(heartbeat_seconds)),
        ]

    async def _write(self, frame: pb.DeviceFrame, *, track: bool, fill_of: str | None = None) -> float:
        """Number and send a frame; a tracked one is timed until its receipt (and for the Fill of signal
        ``fill_of``, when it was receipted is noted: the delivery's execution is then on record). Returns
        when it was written (time.time)."""
        if self.call is None:
            raise ConnectionError("not connected")
        async with self.lock:
            self.sequence += 1
            frame.frame_id = f"{self.device_id[:8]}-{self.sequence}-{secrets.token_hex(4)}"
            written = time.time()
            if track:
                self.pending[frame.frame_id] = (written, self.samples.phase)
                self.drained.clear()
            if fill_of is not None:
                self.fills[frame.frame_id] = fill_of
            await self.call.write(frame)
            return written

    async def _heartbeat(self, seconds: int) -> None:
        while True:
            await asyncio.sleep(seconds)
            await self._write(pb.DeviceFrame(heartbeat=pb.Heartbeat()), track=False)

    async def _read(self, call: Stream) -> None:
        try:
            while (frame := await read_frame(call)) is not None:
                now = time.time()
                kind = frame.WhichOneof("body")
                if kind == "receipt":
                    self._on_receipt(frame.receipt, now)
                elif kind == "instruction":
                    await self._on_instruction(frame.instruction, now)
        except grpc.aio.AioRpcError as exc:
            self.samples.errors.append(f"{exc.code().name}: {exc.details()}")

    def _on_receipt(self, receipt: pb.Receipt, now: float) -> None:
        written = self.pending.pop(receipt.frame_id, None)
        signal_id = self.fills.pop(receipt.frame_id, None)
        if signal_id is not None:
            self.samples.fills.setdefault((signal_id, self.device_id), now)
        if receipt.status not in (pb.RECEIPT_STATUS_ACCEPTED, pb.RECEIPT_STATUS_DUPLICATE):
            self.samples.rejected += 1
        if written is not None and written[1] != self.samples.phase:
            self.samples.late += 1
        elif written is not None:
            self.samples.receipts.append((written[0], now))
        if not self.pending:
            self.drained.set()

    async def _on_instruction(self, sealed: pb.SealedInstruction, received: float) -> None:
        """Open a sealed instruction; a delivery is acked RECEIVED, and the first time also PLACED and
        filled at once (a redelivery only gets RECEIVED, as a bridge executes a delivery once)."""
        instruction = pb.Instruction.FromString(self.sealer.open(sealed.nonce, sealed.ciphertext))
        if instruction.WhichOneof("body") == "close":
            await self._on_close(instruction.close, received)
            return
        if instruction.WhichOneof("body") != "delivery":
            return
        delivery = instruction.delivery
        self.samples.deliveries.append((delivery.signal_id, self.device_id, received, delivery.attempt))
        first = delivery.delivery_id not in self.seen
        self.seen.add(delivery.delivery_id)
        await self._ack(delivery.delivery_id, pb.ACK_STAGE_RECEIVED)
        if not first:
            return
        await self._ack(delivery.delivery_id, pb.ACK_STAGE_PLACED)
        stamp = Timestamp()
        stamp.GetCurrentTime()
        fill = pb.Fill(
            delivery_id=delivery.delivery_id,
            broker_ticket=str(abs(hash(delivery.delivery_id)) % 10**9),
            price=delivery.entry_price or "2000.00",
            volume=delivery.volume,
            fill_time=stamp,
        )
        await self._write(pb.DeviceFrame(fill=fill), track=True, fill_of=delivery.signal_id)

    async def _on_close(self, close: pb.CloseOrder, received: float) -> None:
        """Note when the order to close a position first arrived, and report it closed at once."""
        self.samples.closes.setdefault(close.position_id, received)
        result = pb.CloseResult(
            command_id=close.command_id, success=True, close_price="2000.00", closed_volume=close.volume
        )
        await self._write(pb.DeviceFrame(close_result=result), track=False)

    async def _ack(self, delivery_id: str, stage: pb.AckStage.ValueType) -> None:
        await self._write(pb.DeviceFrame(ack=pb.Ack(delivery_id=delivery_id, stage=stage)), track=True)

    async def account_state(self, balance: Decimal, equity: Decimal) -> float:
        """Report the trading account now (100 of margin in use), timed until its receipt; when it was
        written."""
        stamp = Timestamp()
        stamp.GetCurrentTime()
        state = pb.AccountState(
            balance=str(balance),
            equity=str(equity),
            margin=str(MARGIN),
            free_margin=str(equity - MARGIN),
            state_time=stamp,
        )
        return await self._write(pb.DeviceFrame(account_state=state), track=True)

    async def account_states(self, began: float, seconds: float, interval: float) -> int:
        """An AccountState every ``interval`` seconds from a random phase, until ``seconds`` after ``began``
        (time.monotonic), the balance and equity moving a little around the Hello's 10,000 (within 0.7 % of
        it, far from any limit a person would set); how many were written."""
        at, written = began + interval * secrets.randbelow(1000) / 1000, 0
        while at < began + seconds:
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            balance = BALANCE + Decimal(secrets.randbelow(4001) - 2000) / 100  # +-20.00
            equity = balance + Decimal(secrets.randbelow(10001) - 5000) / 100  # +-50.00 floating
            await self.account_state(balance, equity)
            written += 1
            at += interval
        return written

    async def echo_one(self) -> None:
        """Bare limit: one ack-sized frame (the echo server receipts it)."""
        await self._ack(str(uuid.uuid4()), pb.ACK_STAGE_PLACED)

    async def echo_frames(self, count: int) -> None:
        """Bare limit: ``count`` ack-sized frames written back to back."""
        for _ in range(count):
            await self.echo_one()

    async def drain(self, within: float = 30.0) -> None:
        """Wait until every tracked frame has its receipt (or give up after ``within`` seconds)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.drained.wait(), within)

    async def _stop_tasks(self) -> None:
        # Awaited before the channel closes: a channel closed while a cancelled read is still unwinding
        # keeps its TCP connection open on grpcio 1.85.
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []

    async def close(self) -> None:
        """Drop the whole connection (the stream is cancelled with it), the reader and heartbeat stopped first."""
        await self._stop_tasks()
        if self.call is not None:
            self.call.cancel()
        if self.channel is not None:
            await self.channel.close()
