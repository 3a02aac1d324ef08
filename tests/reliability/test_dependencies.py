"""The servers' dependencies fail under steady load: Postgres restarted (an immediate shutdown: crash
recovery on start) and stalled (every Postgres process SIGSTOPped for 5 s), Redis unreachable for 10 s
(nonces are in Postgres anyway, the gateways' sweep stands in for the lost hints) and brought back empty.
Nothing is restarted but what the test breaks. Readiness follows: while Postgres does not answer, every
server's services are NOT_SERVING; while Redis does not, the gateways' (the back office serves on); each
SERVING again on recovery, and liveness (the empty service name) SERVING throughout."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.reliability.conftest import WorldOpener
from tests.reliability.load import wait_for

STALL_SECONDS = 5.0
REDIS_OUTAGE_SECONDS = 10.0
BACKOFFICE_SERVICE = "signalhub.v1.SignalService"
GATEWAY_SERVICE = "signalhub.v1.DeviceGateway"


async def _status(address: str, service: str) -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
        except grpc.aio.AioRpcError as exc:
            return f"unreachable ({exc.code().name})"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))


@contextlib.asynccontextmanager
async def _watching(checks: dict[str, tuple[str, str]]) -> AsyncIterator[dict[str, list[str]]]:
    """Every status each (address, service) of ``checks`` reported while the block ran, polled 5 times a
    second, in order, repeats left out."""
    seen: dict[str, list[str]] = {name: [] for name in checks}

    async def poll() -> None:
        while True:
            for name, (address, service) in checks.items():
                status = await _status(address, service)
                if not seen[name] or seen[name][-1] != status:
                    seen[name].append(status)
            await asyncio.sleep(0.2)

    task = asyncio.create_task(poll())
    try:
        yield seen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _until(address: str, service: str, status: str, within: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while (found := await _status(address, service)) != status:
        assert asyncio.get_running_loop().time() < deadline, f"{address} {service!r}: {found}, not {status}"
        await asyncio.sleep(0.2)


async def test_postgres_restarted_then_stalled(new_world: WorldOpener) -> None:
    async with new_world() as (world, postgres, _):
        await asyncio.sleep(1.0)
        started = datetime.now(UTC)
        await postgres.restart()
        back = datetime.now(UTC)
        await world.recovered_after("postgres restart", back, down_s=(back - started).total_seconds())
        await asyncio.sleep(1.0)
        backoffice, gateway = world.cluster.backoffice, world.cluster.gateway_addresses[0]
        checks = {
            "backoffice": (backoffice, BACKOFFICE_SERVICE),
            "gateway": (gateway, GATEWAY_SERVICE),
            "gateway liveness": (gateway, ""),
        }
        async with _watching(checks) as seen:
            await postgres.stall(STALL_SECONDS)
            await world.recovered_after("postgres stall", datetime.now(UTC), stalled_s=STALL_SECONDS)

            # Until the watcher itself saw both back (a probe of our own could see it before its next poll).
            async def serving_again() -> bool:
                return all(len(seen[name]) > 1 and seen[name][-1] == "SERVING" for name in ("backoffice", "gateway"))

            await wait_for(serving_again, "the watcher to see both SERVING again", within=15.0)
        assert seen["backoffice"] == ["SERVING", "NOT_SERVING", "SERVING"], seen
        assert seen["gateway"] == ["SERVING", "NOT_SERVING", "SERVING"], seen
        assert seen["gateway liveness"] == ["SERVING"], seen
        await world.settle_and_check()


async def test_redis_unreachable_for_ten_seconds(new_world: WorldOpener) -> None:
    async with new_world() as (world, _, redis):
        await asyncio.sleep(1.0)
        before = len(world.load.submitted)
        backoffice, gateway = world.cluster.backoffice, world.cluster.gateway_addresses[0]
        await redis.kill()
        # The gateways need Redis for takeover between replicas and wake-ups; the back office does not.
        await _until(gateway, GATEWAY_SERVICE, "NOT_SERVING")
        assert await _status(backoffice, BACKOFFICE_SERVICE) == "SERVING"
        assert await _status(gateway, "") == "SERVING"  # alive: nothing a restart would fix
        await asyncio.sleep(REDIS_OUTAGE_SECONDS)
        during = len(world.load.submitted) - before
        # Signals were signed: their nonces are in Postgres, which Redis being gone does not touch.
        assert during > 0, "producers were served while Redis was gone"
        await world.recovered_after("redis outage (before it came back)", datetime.now(UTC), signals_during=during)
        await redis.start()
        await _until(gateway, GATEWAY_SERVICE, "SERVING")
        await world.recovered_after("redis back", datetime.now(UTC))
        await world.settle_and_check()
