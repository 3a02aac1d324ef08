"""Test support for the gateway's server side: a raw signed device stream (the real bridge SDK is tested
on its own), gateways with test settings, and rows for deliveries, positions and close commands written
with the ORM."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

import grpc
from sqlalchemy import func, select

from backoffice.bootstrap import Resources
from backoffice.models import (
    ApprovalStatus,
    CloseCommand,
    CloseCommandStatus,
    CloseReason,
    Delivery,
    DeliveryState,
    ExecutionEvent,
    Position,
    PositionStatus,
    Side,
)
from backoffice.positions.levels import Levels, start_trailing
from gateway.bootstrap import GatewayServer
from gateway.bridge import BridgeClient, BridgeConfig, Executor
from signalhub.protocol import signing
from signalhub.protocol.sealing import InstructionSealer
from signalhub.protocol.signing import CONNECT_METHOD
from signalhub.v1 import common_pb2
from signalhub.v1 import gateway_pb2 as pb
from signalhub.v1 import gateway_pb2_grpc as rpc
from tests.conftest import (
    GOLD_SPEC,
    KeyCredentials,
    RpcFailure,
    approval_row,
    make_producer,
    rpc_failure,
    signal_row,
    subscription_row,
)

# Short enough to keep the suite fast; every wait below is a safety net, never a performance claim.
FAST = {"ack_timeout_seconds": 0.5, "sweep_interval_seconds": 0.2, "hello_timeout_seconds": 2.0}
WAIT = 15.0  # a safety net for a hung test on a loaded machine, never a performance claim


@asynccontextmanager
async def gateway(res: Resources, **overrides: Any) -> AsyncIterator[tuple[GatewayServer, grpc.aio.Channel]]:
    """A gateway replica of its own (sharing the test database and Redis) with test settings."""
    settings = dataclasses.replace(res.settings, **{**FAST, **overrides})
    server = GatewayServer(dataclasses.replace(res, settings=settings), "127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.bound_address) as channel:
            yield server, channel
    finally:
        await server.stop()


@asynccontextmanager
async def running_bridge(
    config: BridgeConfig, device: KeyCredentials, executor: Executor
) -> AsyncIterator[BridgeClient]:
    """A BridgeClient for ``device``, running and connected for the block, then stopped."""
    client = BridgeClient(config, signing.parse_secret(device.secret), executor)
    task = asyncio.create_task(client.run())
    try:
        await asyncio.wait_for(client.connected.wait(), WAIT)
        yield client
    finally:
        client.stop()
        await asyncio.wait_for(task, WAIT)


async def eventually(predicate: Callable[[], Any], what: str = "condition", within: float = WAIT) -> None:
    """Wait for ``predicate`` (sync or async); ``within`` is a safety net for a hung test, not a performance claim."""
    deadline = time.monotonic() + within
    while not await _maybe_await(predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _maybe_await(value: Any) -> Any:
    return await value if asyncio.iscoroutine(value) else value


def signed(device: KeyCredentials, secret: bytes | None = None, **kw: Any) -> tuple[tuple[str, str], ...]:
    key = signing.parse_secret(device.secret) if secret is None else secret
    return signing.signed_metadata(key, CONNECT_METHOD, str(device.id), b"", **kw)


HELLO = pb.Hello(
    bridge_version="test-1.0",
    account_currency="USD",
    balance="10000.00",
    equity="10050.50",
    symbols=[pb.SymbolSpec(name="GOLD.m", **GOLD_SPEC)],
)


class DeviceStream:
    """A raw Connect stream: the test writes frames and reads what the gateway sends back."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        device: KeyCredentials,
        *,
        metadata: tuple[tuple[str, str], ...] | None = None,
    ) -> None:
        self.device = device
        self.sealer = InstructionSealer(signing.parse_secret(device.secret), str(device.id))
        self.call = rpc.DeviceGatewayStub(channel).Connect(metadata=signed(device) if metadata is None else metadata)
        self.received: asyncio.Queue[pb.GatewayFrame] = asyncio.Queue()
        self.error: grpc.aio.AioRpcError | None = None
        self.ended = asyncio.Event()
        self.ended_at: float | None = None
        self.welcome: pb.Welcome | None = None
        self._reader = asyncio.create_task(self._read())
        self._frames = 0

    async def _read(self) -> None:
        try:
            while True:
                frame = await self.call.read()
                if frame is grpc.aio.EOF:
                    break
                self.received.put_nowait(cast(pb.GatewayFrame, frame))
        except grpc.aio.AioRpcError as exc:
            self.error = exc
        finally:
            self.ended_at = time.monotonic()
            self.ended.set()

    def frame_id(self) -> str:
        self._frames += 1
        return f"f{self._frames}-{uuid.uuid4().hex[:8]}"

    async def send(self, frame: pb.DeviceFrame) -> str:
        """Write ``frame`` once the gateway has accepted the open; onto a stream it refused, nothing (a write
        racing the refusal can fail on the client and hide the stream's status, which the reader keeps)."""
        await self.call.initial_metadata()
        if not self.call.done():
            await self.call.write(frame)
        return frame.frame_id

    async def hello(self, hello: pb.Hello = HELLO, frame_id: str | None = None) -> pb.Welcome:
        frame_id = frame_id or self.frame_id()
        await self.send(pb.DeviceFrame(frame_id=frame_id, hello=hello))
        first = await self.next()
        assert first.WhichOneof("body") == "welcome", first
        self.welcome = first.welcome
        receipt = await self.next()
        assert receipt.receipt.frame_id == frame_id and receipt.receipt.status == pb.RECEIPT_STATUS_ACCEPTED, receipt
        return first.welcome

    async def next(self, within: float = WAIT, *, heartbeats: bool = False) -> pb.GatewayFrame:
        """The next frame (heartbeats skipped unless asked for)."""
        deadline = time.monotonic() + within
        while True:
            remaining = deadline - time.monotonic()
            getter = asyncio.ensure_future(self.received.get())
            ended = asyncio.ensure_future(self.ended.wait())
            done, _ = await asyncio.wait({getter, ended}, timeout=max(0.0, remaining), return_when="FIRST_COMPLETED")
            if getter in done:
                ended.cancel()
                frame = getter.result()
                if frame.WhichOneof("body") == "heartbeat" and not heartbeats:
                    continue
                return frame
            getter.cancel()
            ended.cancel()
            if ended in done:
                raise AssertionError(f"the stream ended: {self.error!r}")
            raise TimeoutError("no frame from the gateway")

    async def nothing(self, seconds: float) -> None:
        """Assert that no frame other than heartbeats comes within ``seconds``."""
        try:
            frame = await self.next(seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame: {frame}")

    async def receipt(self, frame: pb.DeviceFrame) -> pb.Receipt:
        """Send ``frame`` and return its Receipt (no other frame may come first)."""
        await self.send(frame)
        answer = await self.next()
        assert answer.WhichOneof("body") == "receipt", answer
        assert answer.receipt.frame_id == frame.frame_id
        return answer.receipt

    async def instruction(self, within: float = WAIT) -> pb.Instruction:
        frame = await self.next(within)
        assert frame.WhichOneof("body") == "instruction", frame
        return pb.Instruction.FromString(self.sealer.open(frame.instruction.nonce, frame.instruction.ciphertext))

    async def delivery(self, within: float = WAIT) -> pb.Delivery:
        instruction = await self.instruction(within)
        assert instruction.WhichOneof("body") == "delivery", instruction
        return instruction.delivery

    async def failure(self, within: float = WAIT) -> RpcFailure:
        """How the gateway ended the stream."""
        await asyncio.wait_for(self.ended.wait(), within)
        assert self.error is not None, "the stream ended cleanly"
        return rpc_failure(self.error)

    def ack(
        self, delivery_id: str | uuid.UUID, stage: pb.AckStage.ValueType, reason: str = "", frame_id: str | None = None
    ) -> pb.DeviceFrame:
        return pb.DeviceFrame(
            frame_id=frame_id or self.frame_id(), ack=pb.Ack(delivery_id=str(delivery_id), stage=stage, reason=reason)
        )

    def fill(
        self, delivery_id: str | uuid.UUID, price: str = "2034.25", volume: str = "0.10", ticket: str = "T-1"
    ) -> pb.DeviceFrame:
        fill = pb.Fill(delivery_id=str(delivery_id), broker_ticket=ticket, price=price, volume=volume)
        fill.fill_time.FromDatetime(datetime.now(UTC))
        return pb.DeviceFrame(frame_id=self.frame_id(), fill=fill)

    def close_result(
        self, command_id: str | uuid.UUID, *, success: bool = True, price: str = "2040.25"
    ) -> pb.DeviceFrame:
        result = pb.CloseResult(command_id=str(command_id), success=success)
        if success:
            result.close_price = price
        else:
            result.error = "market closed"
        return pb.DeviceFrame(frame_id=self.frame_id(), close_result=result)

    def heartbeat(self) -> pb.DeviceFrame:
        beat = pb.Heartbeat()
        beat.send_time.GetCurrentTime()
        return pb.DeviceFrame(frame_id=self.frame_id(), heartbeat=beat)

    async def close(self) -> None:
        self.call.cancel()
        await self.ended.wait()


@asynccontextmanager
async def stream(
    channel: grpc.aio.Channel, device: KeyCredentials, *, hello: bool = True, **kw: Any
) -> AsyncIterator[DeviceStream]:
    opened = DeviceStream(channel, device, **kw)
    try:
        if hello:
            await opened.hello()
        yield opened
    finally:
        await opened.close()


# ------------------------------------------------------------------------------------------- rows


@dataclass
class Book:
    """A producer with one subscription of the device owner's: what deliveries hang off."""

    res: Resources
    user_id: uuid.UUID
    producer: KeyCredentials  # whose signals the book's deliveries and positions come from
    subscription_id: uuid.UUID

    @property
    def producer_id(self) -> uuid.UUID:
        return self.producer.id

    @classmethod
    async def open(cls, res: Resources, user_id: uuid.UUID) -> Book:
        producer = await make_producer(res)
        async with res.sessions.begin() as session:
            subscription = subscription_row(user_id, producer.id)
            session.add(subscription)
        return cls(res, user_id, producer, subscription.id)

    async def delivery(
        self,
        device_id: uuid.UUID,
        *,
        expire_in: float = 60.0,
        created_at: datetime | None = None,
        state: DeliveryState = DeliveryState.PENDING,
        stop_loss: str = "2030.55",
        take_profit: str = "2040.77",
        payload: dict[str, Any] | None = None,
    ) -> uuid.UUID:
        now = datetime.now(UTC)
        created = created_at or now
        expire = now + timedelta(seconds=expire_in)
        signal_id, approval_id, delivery_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        async with self.res.sessions.begin() as session:
            session.add(
                signal_row(
                    self.producer_id,
                    now,
                    expire,
                    id=signal_id,
                    entry_price=Decimal("2034.15"),
                    stop_loss=Decimal(stop_loss),
                    take_profit=Decimal(take_profit),
                    payload=payload or {"strategy": "secret-sauce-42"},
                )
            )
            await session.flush()
            session.add(
                approval_row(
                    signal_id,
                    self.subscription_id,
                    self.user_id,
                    ApprovalStatus.APPROVED,
                    id=approval_id,
                    decided_at=now,
                    device_ids=[device_id],
                )
            )
            await session.flush()
            session.add(
                Delivery(
                    id=delivery_id,
                    approval_id=approval_id,
                    signal_id=signal_id,
                    device_id=device_id,
                    instrument="GOLD.m",
                    side=Side.BUY,
                    volume=Decimal("0.10"),
                    entry_price=Decimal("2034.15"),
                    max_deviation=Decimal("0.50"),
                    expire_time=expire,
                    state=state,
                    created_at=created,
                    updated_at=created,
                )
            )
        return delivery_id

    async def position(
        self,
        device_id: uuid.UUID,
        *,
        volume: str = "0.10",
        side: Side = Side.BUY,
        instrument: str = "GOLD.m",
        signal_instrument: str = "XAUUSD",
        entry: str = "2034.25",
        stop_loss: str | None = "2030.55",
        take_profit: str | None = "2040.77",
        trailing_distance: str | None = None,
        breakeven_trigger: str | None = None,
        breakeven_offset: str | None = None,
    ) -> uuid.UUID:
        """An OPEN position, from a FILLED delivery, with the levels given (a trailing stop starts from
        the entry, as a fill's would)."""
        delivery_id = await self.delivery(device_id, state=DeliveryState.FILLED)

        def decimal(value: str | None) -> Decimal | None:
            return None if value is None else Decimal(value)

        levels = start_trailing(
            Levels(
                side,
                Decimal(entry),
                stop_loss=decimal(stop_loss),
                take_profit=decimal(take_profit),
                trailing_distance=decimal(trailing_distance),
                breakeven_trigger=decimal(breakeven_trigger),
                breakeven_offset=decimal(breakeven_offset),
            )
        )
        async with self.res.sessions.begin() as session:
            delivery = await session.get_one(Delivery, delivery_id)
            position = Position(
                id=uuid.uuid4(),
                device_id=device_id,
                signal_id=delivery.signal_id,
                delivery_id=delivery_id,
                instrument=instrument,
                signal_instrument=signal_instrument,
                side=side,
                volume=Decimal(volume),
                entry_price=levels.entry,
                stop_loss=levels.stop_loss,
                take_profit=levels.take_profit,
                trailing_distance=levels.trailing_distance,
                best_price=levels.best_price,
                breakeven_trigger=levels.breakeven_trigger,
                breakeven_offset=levels.breakeven_offset,
                broker_ticket="T-77",
                status=PositionStatus.OPEN,
            )
            session.add(position)
        return position.id

    async def close_command(
        self,
        device_id: uuid.UUID,
        position_id: uuid.UUID,
        *,
        volume: str = "0.10",
        created_at: datetime | None = None,
        reason: CloseReason = CloseReason.TAKE_PROFIT,
        whole: bool = False,
    ) -> uuid.UUID:
        command_id = uuid.uuid4()
        async with self.res.sessions.begin() as session:
            session.add(
                CloseCommand(
                    id=command_id,
                    position_id=position_id,
                    device_id=device_id,
                    volume=Decimal(volume),
                    whole=whole,
                    reason=reason,
                    status=CloseCommandStatus.PENDING,
                    created_at=created_at or datetime.now(UTC),
                )
            )
        return command_id


async def row(res: Resources, model: type[Any], object_id: Any) -> Any:
    async with res.sessions() as session:
        return await session.get_one(model, object_id, populate_existing=True)


async def events(res: Resources, device_id: uuid.UUID, **where: Any) -> list[ExecutionEvent]:
    async with res.sessions() as session:
        query = select(ExecutionEvent).where(ExecutionEvent.device_id == device_id)
        for name, value in where.items():
            query = query.where(getattr(ExecutionEvent, name) == value)
        return list(await session.scalars(query.order_by(ExecutionEvent.received_at, ExecutionEvent.id)))


async def count_events(res: Resources, device_id: uuid.UUID) -> int:
    async with res.sessions() as session:
        query = select(func.count()).select_from(ExecutionEvent).where(ExecutionEvent.device_id == device_id)
        return int(await session.scalar(query) or 0)


SIDE_BUY = common_pb2.SIDE_BUY
