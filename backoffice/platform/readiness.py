"""Readiness: a server's gRPC health says NOT_SERVING for its services while a dependency they cannot work
without has been unreachable for longer than a grace period, and SERVING again once it answers.

Each probe is one cheap round trip (``SELECT 1`` on Postgres, ``PING`` on Redis) made once a second with a
short timeout. The overall health (the empty service name) is liveness and stays SERVING: the process is
alive and will recover by itself; restarting it would not bring Postgres back. Balancers route by the
service names (``signalhub.v1.SignalService``, ``signalhub.v1.DeviceGateway``, ...), orchestrators restart
by the empty name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger("signalhub.readiness")

PROBE_INTERVAL_SECONDS = 1.0
PROBE_TIMEOUT_SECONDS = 1.0


@dataclass(frozen=True)
class Probe:
    """A dependency by name, and one round trip to it (raises, or times out, when it cannot answer)."""

    name: str
    check: Callable[[], Coroutine[Any, Any, None]]


def postgres(engine: AsyncEngine) -> Probe:
    async def check() -> None:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    return Probe("postgres", check)


def redis(client: Redis) -> Probe:
    async def check() -> None:
        await client.ping()

    return Probe("redis", check)


class Readiness:
    """Probes ``probes`` every ``interval`` and sets ``services`` NOT_SERVING while any of them has failed
    for longer than ``grace`` (a blip or one slow answer changes nothing), SERVING once all answer."""

    def __init__(
        self,
        health: health_aio.HealthServicer,
        services: Sequence[str],
        probes: Sequence[Probe],
        grace: float,
        interval: float = PROBE_INTERVAL_SECONDS,
    ) -> None:
        self._health = health
        self._services = tuple(services)
        self._probes = tuple(probes)
        self._grace = grace
        self._interval = interval
        self._failing_since: dict[str, float] = {}
        self._ready = True
        self._task: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Task[None]] = {}

    @property
    def ready(self) -> bool:
        return self._ready

    def start(self) -> None:
        if self._probes and self._task is None:
            self._task = asyncio.create_task(self._run(), name="readiness")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for pending in self._pending.values():
            pending.cancel()  # not awaited: it may wait on the dependency that stalled it
        self._pending.clear()

    async def _run(self) -> None:
        while True:
            await self.probe_once()
            await asyncio.sleep(self._interval)

    async def probe_once(self) -> None:
        """Probe every dependency once and set the services' health from what has been failing how long."""
        now = time.monotonic()
        for probe in self._probes:
            error = await self._check(probe)
            if error is not None:
                if probe.name not in self._failing_since:
                    log.warning("dependency unreachable", extra={"dependency": probe.name, "error": error})
                self._failing_since.setdefault(probe.name, now)
            elif self._failing_since.pop(probe.name, None) is not None:
                log.info("dependency reachable again", extra={"dependency": probe.name})
        down = sorted(name for name, since in self._failing_since.items() if now - since >= self._grace)
        await self._set(not down, down)

    async def _check(self, probe: Probe) -> str | None:
        """Why ``probe`` failed, or None when it answered in time. A probe that does not answer is left to
        finish on its own rather than cancelled and awaited (cancelling a query on a stalled Postgres waits
        for that Postgres), and counts as failing until it does."""
        pending = self._pending.get(probe.name)
        if pending is not None and not pending.done():
            return "still waiting for the last probe's answer"
        task = asyncio.create_task(probe.check())
        task.add_done_callback(_retrieve)
        done, _ = await asyncio.wait({task}, timeout=PROBE_TIMEOUT_SECONDS)
        if not done:
            self._pending[probe.name] = task
            return f"no answer within {PROBE_TIMEOUT_SECONDS:g} s"
        self._pending.pop(probe.name, None)
        error = task.exception()
        return None if error is None else repr(error)

    async def _set(self, ready: bool, down: list[str]) -> None:
        if ready == self._ready:
            return
        self._ready = ready
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in self._services:
            await self._health.set(name, status)
        if ready:
            log.info("ready: serving again", extra={"services": list(self._services)})
        else:
            log.error("not ready: dependencies unreachable", extra={"dependencies": down})


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark a probe's failure seen, so a late one is not reported as never retrieved."""
    if not task.cancelled():
        task.exception()
