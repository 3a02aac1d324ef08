"""A transparent DeviceGateway in front of the real one, for end-to-end tests: it forwards each stream both
ways byte for byte (the device's signed metadata too, so its signature still verifies) and keeps every
GatewayFrame the gateway sent. ``assert_redacted`` opens each sealed instruction with the device's secret
and checks that no Delivery or CloseOrder carries a hidden level, a trailing or breakeven setting or the
producer's payload, and that no other frame does either."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc

from signalhub.protocol import signing
from signalhub.protocol.sealing import InstructionSealer
from signalhub.protocol.signing import CONNECT_METHOD
from signalhub.v1 import gateway_pb2 as pb
from tests.conftest import KeyCredentials

HIDDEN_FIELDS = {"stop_loss", "take_profit", "trailing_distance", "breakeven_trigger", "breakeven_offset", "payload"}


class DeviceTap:
    def __init__(self, upstream: str) -> None:
        self.frames: list[bytes] = []  # every GatewayFrame the gateway sent, as sent
        self._upstream = upstream
        self._server = grpc.aio.server()
        handler = grpc.stream_stream_rpc_method_handler(self._connect)  # bytes in, bytes out
        service, method = CONNECT_METHOD.strip("/").split("/")
        self._server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service, {method: handler})])
        self.address = f"127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"
        self._channel: grpc.aio.Channel | None = None

    async def start(self) -> None:
        self._channel = grpc.aio.insecure_channel(self._upstream)
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop(0.5)
        if self._channel is not None:
            await self._channel.close()

    async def _connect(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        assert self._channel is not None
        metadata = tuple((k, v) for k, v in context.invocation_metadata() if k.startswith("x-sh-"))
        call = self._channel.stream_stream(CONNECT_METHOD)(metadata=metadata)

        async def forward() -> None:
            async for frame in requests:
                await call.write(frame)
            await call.done_writing()

        pumping = asyncio.create_task(forward())
        try:
            async for frame in call:
                self.frames.append(frame)
                yield frame
        except grpc.aio.AioRpcError as error:  # the gateway ended the stream: so does the tap
            await context.abort(error.code(), error.details() or "")
        finally:
            pumping.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await pumping

    def instructions(self, device: KeyCredentials) -> list[pb.Instruction]:
        return opened(self.frames, device)

    def assert_redacted(self, device: KeyCredentials, secrets: Iterable[str]) -> list[pb.Instruction]:
        return assert_redacted(self.frames, device, secrets)


def opened(frames: Iterable[bytes], device: KeyCredentials) -> list[pb.Instruction]:
    """The instructions among ``frames``, opened with the device's secret."""
    sealer = InstructionSealer(signing.parse_secret(device.secret), str(device.id))
    found = []
    for raw in frames:
        frame = pb.GatewayFrame.FromString(raw)
        if frame.WhichOneof("body") == "instruction":
            found.append(pb.Instruction.FromString(sealer.open(frame.instruction.nonce, frame.instruction.ciphertext)))
    return found


def assert_redacted(frames: list[bytes], device: KeyCredentials, secrets: Iterable[str]) -> list[pb.Instruction]:
    """Every frame sent to ``device``: no hidden field anywhere, and none of ``secrets`` (the hidden levels'
    and payload's texts) in any string of an opened instruction or in any frame's bytes. Returns the
    instructions, for the test to look at."""
    marks = [s for s in secrets if s]
    instructions = opened(frames, device)
    for instruction in instructions:
        texts = list(_strings(instruction))
        for mark in marks:
            assert not any(mark in text for text in texts), f"{mark!r} leaked in {instruction}"
            assert mark.encode() not in instruction.SerializeToString()
        assert not HIDDEN_FIELDS & set(_field_names(instruction))
    for raw in frames:
        assert not any(mark.encode() in raw for mark in marks), "a hidden value leaked in a frame"
        assert not HIDDEN_FIELDS & set(_field_names(pb.GatewayFrame.FromString(raw)))
    return instructions


def _strings(message: Any) -> Iterable[str]:
    for field, value in message.ListFields():
        if field.message_type is not None:
            for item in value if field.is_repeated else [value]:
                yield from _strings(item)
        elif isinstance(value, str):
            yield value


def _field_names(message: Any) -> Iterable[str]:
    for field, value in message.ListFields():
        yield field.name
        if field.message_type is not None:
            for item in value if field.is_repeated else [value]:
                yield from _field_names(item)


@contextlib.asynccontextmanager
async def tapped(upstream: str) -> AsyncIterator[DeviceTap]:
    tap = DeviceTap(upstream)
    await tap.start()
    try:
        yield tap
    finally:
        await tap.stop()
