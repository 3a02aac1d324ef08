"""Bare limit: an echo DeviceGateway in a process of its own. It answers Hello with Welcome and every
frame with a Receipt, touching no database, with the servers' own gRPC options: the floor under what the
real gateway can do on this machine with this load generator.

Like the gateway, each stream reads in a task of its own and writes from a queue, so that the echo can
also push: told to fan out (over its pipe), it seals one Delivery instruction per connected device (with
the device's own secret, as the gateway does) and queues it on every stream at once. The simulated
bridges open it and record its arrival like any delivery: the floor under the real fan-out.

The same server answers SignalService.SubmitSignal with a Signal made from the request, verifying and
storing nothing: the floor under a signed submit (gRPC's unary handling of the same request and answer,
with the same load generator)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from multiprocessing.connection import Connection
from typing import Any

import grpc

from backoffice.platform.config import Settings
from backoffice.platform.serving import event_loop_factory, server_options
from signalhub.protocol.sealing import InstructionSealer
from signalhub.protocol.signing import HEADER_KEY_ID, parse_secret
from signalhub.v1 import backoffice_pb2 as bpb
from signalhub.v1 import gateway_pb2 as pb
from signalhub.v1 import gateway_pb2_grpc as rpc

from .simdevice import delivery

Outbox = asyncio.Queue[pb.GatewayFrame | None]


class Echo(rpc.DeviceGatewayServicer):
    def __init__(self, secrets: Mapping[str, str]) -> None:
        self.secrets = dict(secrets)  # device id -> shs_ secret, to seal what the echo pushes
        self.streams: dict[int, tuple[InstructionSealer, Outbox]] = {}

    async def Connect(
        self,
        request_iterator: AsyncIterator[pb.DeviceFrame],
        context: grpc.aio.ServicerContext[pb.DeviceFrame, pb.GatewayFrame],
    ) -> AsyncIterator[pb.GatewayFrame]:
        device_id = next((str(v) for k, v in context.invocation_metadata() or () if k == HEADER_KEY_ID), "")
        outbox: Outbox = asyncio.Queue()
        reader = asyncio.create_task(self._read(request_iterator, outbox))
        shown = self.secrets.get(device_id)
        if shown is not None:
            self.streams[id(outbox)] = (InstructionSealer(parse_secret(shown), device_id), outbox)
        try:
            while (frame := await outbox.get()) is not None:
                yield frame
        finally:
            self.streams.pop(id(outbox), None)
            reader.cancel()

    @staticmethod
    async def _read(request_iterator: AsyncIterator[pb.DeviceFrame], outbox: Outbox) -> None:
        try:
            async for frame in request_iterator:
                if frame.WhichOneof("body") == "hello":
                    outbox.put_nowait(pb.GatewayFrame(welcome=pb.Welcome(session_id="echo", heartbeat_seconds=15)))
                receipt = pb.Receipt(frame_id=frame.frame_id, status=pb.RECEIPT_STATUS_ACCEPTED)
                outbox.put_nowait(pb.GatewayFrame(receipt=receipt))
        finally:
            outbox.put_nowait(None)

    def fanout(self, signal_id: str) -> int:
        """One sealed delivery of ``signal_id`` queued on every connected stream; how many."""
        for sealer, outbox in self.streams.values():
            nonce, ciphertext = sealer.seal(delivery(signal_id).SerializeToString())
            outbox.put_nowait(pb.GatewayFrame(instruction=pb.SealedInstruction(nonce=nonce, ciphertext=ciphertext)))
        return len(self.streams)


async def bare_submit(request: bpb.SubmitSignalRequest, context: Any) -> bpb.Signal:
    """SubmitSignal's answer, as the back office gives it, made from the request alone."""
    signal = bpb.Signal(
        id=str(uuid.uuid4()),
        request_id=request.request_id,
        instrument=request.instrument,
        side=request.side,
        entry_price=request.entry_price,
        signal_time=request.signal_time,
        expire_time=request.expire_time,
        status=bpb.SIGNAL_STATUS_OPEN,
    )
    signal.create_time.FromNanoseconds(time.time_ns())
    return signal


BARE_SIGNALS = grpc.method_handlers_generic_handler(
    "signalhub.v1.SignalService",
    {
        "SubmitSignal": grpc.unary_unary_rpc_method_handler(
            bare_submit,
            request_deserializer=bpb.SubmitSignalRequest.FromString,
            response_serializer=bpb.Signal.SerializeToString,
        )
    },
)


def echo_server_main(conn: Connection, secrets: Mapping[str, str]) -> None:
    """The echo server's process: sends its port on ``conn``, then answers ``("fanout", signal_id)`` with
    ``("pushed", streams)``; any other message stops it."""
    # On the loop the servers run on, so that the ratios to the echo compare like with like.
    with asyncio.Runner(loop_factory=event_loop_factory(Settings())) as runner:
        runner.run(_echo_server(conn, secrets))


async def _echo_server(conn: Connection, secrets: Mapping[str, str]) -> None:
    server = grpc.aio.server(options=server_options(Settings()))
    echo = Echo(secrets)
    rpc.add_DeviceGatewayServicer_to_server(echo, server)
    server.add_generic_rpc_handlers((BARE_SIGNALS,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    conn.send(port)
    while True:
        command, *args = await asyncio.to_thread(conn.recv)
        if command != "fanout":
            break
        conn.send(("pushed", echo.fanout(*args)))
    await server.stop(0)
