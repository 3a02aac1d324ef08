"""Readiness (backoffice/platform/readiness.py): services NOT_SERVING once a dependency has failed for
longer than the grace, SERVING again when it answers, liveness untouched; a probe that hangs counts as
failing without holding the prober; and a real server's probes on real Postgres and Redis."""

from __future__ import annotations

import asyncio

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from backoffice.bootstrap import Resources
from backoffice.platform import readiness
from backoffice.platform.readiness import Probe, Readiness

SERVICE = "signalhub.v1.SignalService"
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


async def _status(health: health_aio.HealthServicer, service: str) -> int:
    answer = await health.Check(health_pb2.HealthCheckRequest(service=service), None)  # type: ignore[arg-type]
    return int(answer.status)


class _Dependency:
    """A dependency the test turns off (raises), stalls (never answers) and on again."""

    def __init__(self) -> None:
        self.state = "up"
        self.resumed = asyncio.Event()

    async def check(self) -> None:
        if self.state == "down":
            raise ConnectionRefusedError("refused")
        if self.state == "stalled":
            await self.resumed.wait()


async def _serving_health() -> health_aio.HealthServicer:
    health = health_aio.HealthServicer()
    for name in ("", SERVICE):
        await health.set(name, SERVING)
    return health


async def test_not_serving_only_after_the_grace_and_serving_again() -> None:
    health = await _serving_health()
    dependency = _Dependency()
    watch = Readiness(health, [SERVICE], [Probe("postgres", dependency.check)], grace=0.3)
    await watch.probe_once()
    assert watch.ready and await _status(health, SERVICE) == SERVING
    dependency.state = "down"
    await watch.probe_once()
    assert await _status(health, SERVICE) == SERVING  # one failure is a blip
    await asyncio.sleep(0.35)
    await watch.probe_once()
    assert not watch.ready and await _status(health, SERVICE) == NOT_SERVING
    assert await _status(health, "") == SERVING  # alive: a restart would not bring the dependency back
    dependency.state = "up"
    await watch.probe_once()
    assert watch.ready and await _status(health, SERVICE) == SERVING


async def test_a_probe_that_hangs_is_failing_and_does_not_hold_the_prober() -> None:
    health = await _serving_health()
    dependency = _Dependency()
    dependency.state = "stalled"
    watch = Readiness(health, [SERVICE], [Probe("postgres", dependency.check)], grace=0.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await watch.probe_once()  # waits the probe's timeout, not for the dependency
    await watch.probe_once()  # the last probe is still out: failing at once
    assert loop.time() - started < readiness.PROBE_TIMEOUT_SECONDS + 0.5
    assert await _status(health, SERVICE) == NOT_SERVING
    dependency.state = "up"
    dependency.resumed.set()
    await asyncio.sleep(0)
    await watch.probe_once()
    assert await _status(health, SERVICE) == SERVING
    await watch.stop()


async def test_the_real_probes_answer_on_real_servers(res: Resources) -> None:
    health = await _serving_health()
    probes = [readiness.postgres(res.engine), readiness.redis(res.redis)]
    watch = Readiness(health, [SERVICE], probes, grace=0.0)
    await watch.probe_once()
    assert watch.ready and await _status(health, SERVICE) == SERVING
