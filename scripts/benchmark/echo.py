"""Bare limit: an echo DeviceGateway in a process of its own. It answers Hello with Welcome and every
frame with a Receipt, touching no database, with the servers' own gRPC options: the floor under what the
real gateway can do on this machine with this load generator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from multiprocessing.connection import Connection

import grpc

from backoffice.platform.config import Settings
from backoffice.platform.serving import server_options
from signalhub.v1 import gateway_pb2 as pb
from signalhub.v1 import gateway_pb2_grpc as rpc


class Echo(rpc.DeviceGatewayServicer):
    async def Connect(
        self,
        request_iterator: AsyncIterator[pb.DeviceFrame],
        context: grpc.aio.ServicerContext[pb.DeviceFrame, pb.GatewayFrame],
    ) -> AsyncIterator[pb.GatewayFrame]:
        async for frame in request_iterator:
            if frame.WhichOneof("body") == "hello":
                yield pb.GatewayFrame(welcome=pb.Welcome(session_id="echo", heartbeat_seconds=15))
            receipt = pb.Receipt(frame_id=frame.frame_id, status=pb.RECEIPT_STATUS_ACCEPTED)
            yield pb.GatewayFrame(receipt=receipt)


def echo_server_main(conn: Connection) -> None:
    """The echo server's process: sends its port on ``conn``, stops at the next message."""
    asyncio.run(_echo_server(conn))


async def _echo_server(conn: Connection) -> None:
    server = grpc.aio.server(options=server_options(Settings()))
    rpc.add_DeviceGatewayServicer_to_server(Echo(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    conn.send(port)
    await asyncio.to_thread(conn.recv)  # any message stops it
    await server.stop(0)
