"""Composition root of the gateway process: the stream servicer and the process-wide parts it shares
(session registry, uplink writer, pusher, hint listener, sweeper), started before the server accepts
streams and stopped after every stream was told to reconnect elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import secrets

from backoffice.bootstrap import Resources
from backoffice.platform import readiness
from backoffice.platform.interceptors import Auth, RpcInterceptor
from backoffice.platform.registry import service_handler
from backoffice.platform.serving import Server
from gateway.listener import HintListener
from gateway.push import Pusher
from gateway.service import DeviceGatewayServicer
from gateway.sessions import Services, SessionRegistry, shutting_down
from gateway.sweeper import Sweeper
from gateway.uplink import UplinkWriter
from signalhub.v1 import gateway_pb2

SERVICE = gateway_pb2.DESCRIPTOR.services_by_name["DeviceGateway"]
# How long start() waits for the hint subscription; without Redis the gateway still serves (the sweep
# finds what is pending), so this only bounds the delay.
LISTENER_READY_SECONDS = 2.0


class GatewayServer(Server):
    def __init__(self, res: Resources, address: str) -> None:
        interceptor = RpcInterceptor(
            policies={},
            default_policy=Auth.SELF,
            sessions=res.sessions,
            verifier=res.verifier,
            max_in_flight=res.settings.max_streams,
            max_message_bytes=res.settings.max_message_bytes,
        )
        # Postgres holds every frame's outcome; Redis the one-session-per-device takeover between replicas and
        # the wake-ups: a gateway that reaches neither should not be given streams.
        dependencies = [readiness.postgres(res.engine), readiness.redis(res.redis)]
        super().__init__(
            res.settings,
            address,
            [interceptor],
            [SERVICE.full_name],
            tls=res.settings.gateway_tls,
            dependencies=dependencies,
            reuse_port=res.settings.gateway_reuse_port,  # one of the processes of `serve gateway --processes N`
        )
        settings = res.settings
        self.writer = UplinkWriter(res.sessions, res.redis)
        self.pusher = Pusher(
            res.sessions,
            ack_timeout_seconds=settings.ack_timeout_seconds,
            max_close_attempts=settings.close_max_attempts,
        )
        # This process's route: its devices' wake-ups reach it, and no other process, on the route's channel.
        route = secrets.token_hex(8)
        self.registry = SessionRegistry(res.redis, Services(settings, res.sessions, self.writer, self.pusher), route)
        self.listener = HintListener(res.redis, self.registry, on_reconnect=self._wake_all)
        self.sweeper = Sweeper(res.sessions, self.registry, settings)
        self.grpc.add_generic_rpc_handlers(
            [service_handler(SERVICE, DeviceGatewayServicer(res.verifier, self.registry))]
        )
        self._closing = False

    def _wake_all(self) -> None:
        for session in self.registry.sessions():
            session.wake()

    async def start(self) -> int:
        self.writer.start()
        self.pusher.start()
        self.sweeper.start()
        self.listener.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.listener.ready.wait(), LISTENER_READY_SECONDS)
        try:
            return await super().start()
        except BaseException:  # e.g. its address taken: nothing of it may keep the process alive
            await self._stop_parts()
            raise

    async def stop(self) -> None:
        """Stop accepting, end every stream UNAVAILABLE (SERVER_SHUTTING_DOWN: the bridge reconnects,
        to another replica), then stop the server and the background work."""
        if self._closing:
            return
        self._closing = True
        await self.health.enter_graceful_shutdown()  # load balancers first
        self.registry.close_all(shutting_down())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.registry.drained(), self.settings.shutdown_grace_seconds)
        await super().stop()
        await self._stop_parts()

    async def _stop_parts(self) -> None:
        await self.listener.stop()
        await self.sweeper.stop()
        await self.pusher.stop()
        await self.writer.stop()


def build_server(res: Resources, address: str | None = None) -> Server:
    return GatewayServer(res, address or res.settings.gateway_address)
