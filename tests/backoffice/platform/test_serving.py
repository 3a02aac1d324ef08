"""Both servers through real channels: health, reflection, and a graceful stop that says NOT_SERVING first."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from backoffice import bootstrap
from backoffice.bootstrap import Resources
from backoffice.platform.config import Settings
from backoffice.platform.serving import GC_THRESHOLDS, Server, event_loop_factory, server_options

BACKOFFICE_SERVICES = {
    "signalhub.v1.AccountService",
    "signalhub.v1.SignalService",
    "signalhub.v1.ApprovalService",
    "signalhub.v1.DeviceService",
    "signalhub.v1.ExecutionService",
    "signalhub.v1.PositionService",
    "signalhub.v1.AffiliateService",
    "signalhub.v1.AuditService",
}


async def _health(channel: grpc.aio.Channel, service: str) -> int:
    response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
    return int(response.status)


async def _reflected(channel: grpc.aio.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def requests():  # type: ignore[no-untyped-def]
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for response in stub.ServerReflectionInfo(requests()):
        return {s.name for s in response.list_services_response.service}
    return set()


async def test_backoffice_health_serving_for_each_service(backoffice_channel: grpc.aio.Channel) -> None:
    for service in ("", *BACKOFFICE_SERVICES):
        assert await _health(backoffice_channel, service) == health_pb2.HealthCheckResponse.SERVING


async def test_gateway_health_serving(gateway_channel: grpc.aio.Channel) -> None:
    for service in ("", "signalhub.v1.DeviceGateway"):
        assert await _health(gateway_channel, service) == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_services(
    backoffice_channel: grpc.aio.Channel, gateway_channel: grpc.aio.Channel
) -> None:
    assert BACKOFFICE_SERVICES | {"grpc.health.v1.Health"} <= await _reflected(backoffice_channel)
    assert {"signalhub.v1.DeviceGateway", "grpc.health.v1.Health"} <= await _reflected(gateway_channel)


async def test_graceful_stop_reports_not_serving_before_closing(res: Resources) -> None:
    server = bootstrap.build_server(res)
    await server.start()
    async with grpc.aio.insecure_channel(server.bound_address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.create_task(server.stop())
        second = await watch.read()
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
        await stopping
    assert isinstance(server, Server)


def test_keepalive_and_size_limits_are_set(res: Resources) -> None:
    options = dict(server_options(res.settings))
    # grpc's own limit sits above ours, so an oversized request reaches the interceptor and gets
    # INVALID_ARGUMENT with details (tests/backoffice/api/test_hostile_input.py) instead of a bare status.
    assert options["grpc.max_receive_message_length"] > res.settings.max_message_bytes
    assert options["grpc.max_send_message_length"] == res.settings.max_message_bytes
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.max_connection_age_grace_ms"] > 0


def test_the_event_loop_is_uvloop_where_installed_unless_asyncio_is_asked_for() -> None:
    """Both loops run a grpc.aio server and a call to it (the benchmark compares their CPU per frame)."""
    assert event_loop_factory(dataclasses.replace(Settings(), event_loop="asyncio")) is None
    factory = event_loop_factory(Settings())  # auto: the server extra installs uvloop here
    assert factory is not None

    async def health_check() -> int:
        server = grpc.aio.server()
        health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                return int(answer.status)
        finally:
            await server.stop(0)

    with asyncio.Runner(loop_factory=factory) as runner:
        assert type(runner.get_loop()).__module__.startswith("uvloop")
        assert runner.run(health_check()) == health_pb2.HealthCheckResponse.SERVING


async def test_the_event_loop_lag_gauge_shows_a_blocked_loop_then_forgets_it() -> None:
    """A loop blocked for 0.3 s shows as at least that much lag; once the window has passed, it is gone."""
    from backoffice.platform.metrics import EVENT_LOOP_LAG
    from backoffice.platform.serving import cancel_and_wait, watch_loop_lag

    def lag() -> float:
        return float(EVENT_LOOP_LAG._value.get())

    watcher = watch_loop_lag(period=0.02, window=0.4)
    try:
        await asyncio.sleep(0.1)
        time.sleep(0.3)  # noqa: ASYNC251 - blocking the loop is the point
        await asyncio.sleep(0.05)
        assert lag() >= 0.25
        await asyncio.sleep(0.6)
        assert lag() < 0.1
    finally:
        await cancel_and_wait([watcher])


SETTLED = """
import gc
from prometheus_client import REGISTRY
from backoffice.platform import serving
serving.settle_heap()
frozen, thresholds = gc.get_freeze_count(), gc.get_threshold()
cycle = []
cycle.append(cycle)  # garbage only a collection frees
del cycle
gc.collect(0)
serving.record_gc_pauses()
pauses = REGISTRY.get_sample_value("signalhub_gc_pause_seconds_count", {"generation": "0"})
print(frozen, *thresholds, int(pauses or 0))
"""


def test_a_settled_heap_is_frozen_collected_rarely_and_each_pause_is_measured() -> None:
    """In a fresh interpreter (freezing this one's heap would outlive the test): what start-up built is
    out of the collector's reach, the thresholds are set, and a collection lands in the pause histogram."""
    result = subprocess.run([sys.executable, "-c", SETTLED], capture_output=True, text=True, check=True, timeout=60)
    frozen, young, middle, oldest, pauses = (int(x) for x in result.stdout.split())
    assert frozen > 10_000  # modules, mappers and descriptors
    assert (young, middle, oldest) == GC_THRESHOLDS
    assert pauses >= 1
