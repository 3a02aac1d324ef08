"""The system under test: a fresh database (dropped at the end) with the back office, one gateway and the
worker started as ``signalhub serve`` children, their output in bench/logs/; or a stack already running."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import asyncpg
import grpc
from grpc_health.v1 import health_pb2
from sqlalchemy.engine import make_url

from backoffice.cli import embedded, local
from backoffice.platform import db, schema
from backoffice.platform.config import Settings

from .options import REPO, Options

DEFAULT_SERVER_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"


@dataclass
class Stack:
    settings: Settings
    backoffice: str
    gateway: str
    gateway_pid: int | None
    backoffice_pid: int | None = None
    worker_pid: int | None = None  # the monitor runs there; None for a running stack named by address
    metrics: dict[str, str] = field(default_factory=dict)  # process -> its Prometheus host:port (if started here)
    env: dict[str, str] = field(default_factory=dict)  # the servers' environment (if started here)

    @property
    def pids(self) -> dict[str, int | None]:
        return {"gateway": self.gateway_pid, "backoffice": self.backoffice_pid}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def wait_serving(address: str, within: float = 60) -> None:
    """Poll a server's health check until it says SERVING (TimeoutError after ``within`` seconds)."""
    deadline = time.monotonic() + within
    async with grpc.aio.insecure_channel(address) as channel:
        # types-grpcio-health-checking's HealthStub declares no methods: the same call, typed.
        check = channel.unary_unary(
            HEALTH_CHECK,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        while True:
            try:
                answer = await check(health_pb2.HealthCheckRequest(), timeout=2)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address} is not serving after {within:g} s")
            await asyncio.sleep(0.2)


@asynccontextmanager
async def exit_stacks() -> AsyncIterator[tuple[AsyncExitStack, ExitStack]]:
    """The exit stacks a run's servers are started on: an async one (processes, the database) and a sync one
    (embedded servers, log files), closed last: the processes stop and the run's database is dropped while
    the servers they use still run and their log files are still open."""
    with ExitStack() as sync_stack:
        async with AsyncExitStack() as stack:
            yield stack, sync_stack


def server_urls(sync_stack: ExitStack) -> tuple[str, str]:
    """Postgres and Redis: SIGNALHUB_DATABASE_URL / SIGNALHUB_REDIS_URL, else the ones on 127.0.0.1, else
    embedded ones (stopped when ``sync_stack`` closes)."""
    server_url = os.environ.get("SIGNALHUB_DATABASE_URL")
    redis_url = os.environ.get("SIGNALHUB_REDIS_URL")
    if server_url and redis_url:
        return server_url, redis_url
    if port_open(5432) and port_open(6379):
        return server_url or DEFAULT_SERVER_URL, redis_url or DEFAULT_REDIS_URL
    print("== no Postgres/Redis on 127.0.0.1: starting embedded ones under .signalhub/bench-servers")
    urls = embedded.start(REPO / ".signalhub" / "bench-servers", sync_stack)
    return urls.database_url, urls.redis_url


def server_env(database_url: str, redis_url: str) -> dict[str, str]:
    """The servers' environment: a fresh master key, free ports, warnings only in the logs."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "proto"), os.environ.get("PYTHONPATH", "")]),
        "SIGNALHUB_DATABASE_URL": database_url,
        "SIGNALHUB_REDIS_URL": redis_url,
        "SIGNALHUB_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "SIGNALHUB_MASTER_KEY_ID": "bench",
        "SIGNALHUB_BACKOFFICE_ADDRESS": f"127.0.0.1:{free_port()}",
        "SIGNALHUB_GATEWAY_ADDRESS": f"127.0.0.1:{free_port()}",
        "SIGNALHUB_LOG_LEVEL": "WARNING",
        "SIGNALHUB_GATEWAY_PROCESSES": "1",  # the figures read one gateway pid; two: ``processes_ack_burst``
        # One producer submits 500 signals a second here, a load generator rather than a strategy engine:
        # its share of the calls in flight is the whole server's, so refusals never blur the latency.
        "SIGNALHUB_MAX_CONCURRENT_RPCS_PER_CALLER": os.environ.get("SIGNALHUB_MAX_CONCURRENT_RPCS_PER_CALLER", "1000"),
    }


async def start_stack(options: Options, stack: AsyncExitStack, sync_stack: ExitStack) -> Stack:
    """The running stack named on the command line, or a new one: a fresh database migrated to head, the
    back office and the gateway started and serving, and the worker (the monitor) beside them. Everything
    started is stopped (and the database dropped) when the exit stacks close."""
    if options.backoffice and options.gateway:
        settings = local.load_settings()
        print(f"== using the running stack: back office {options.backoffice}, gateway {options.gateway}", flush=True)
        return Stack(settings, options.backoffice, options.gateway, options.gateway_pid)

    server_url, redis_url = server_urls(sync_stack)
    name = f"signalhub_bench_{uuid.uuid4().hex[:10]}"
    database_url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    env = server_env(database_url, redis_url)
    settings = Settings.from_env(env)
    await db.ensure_database(settings.database_url)
    stack.push_async_callback(drop_database, settings.database_url)
    await asyncio.to_thread(schema.upgrade, settings)
    processes: dict[str, subprocess.Popen[bytes]] = {}
    metrics: dict[str, str] = {}
    logs = REPO / "bench" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for process in ("backoffice", "gateway", "worker"):
        log_file = (logs / f"{process}.log").open("wb")
        sync_stack.callback(log_file.close)
        metrics[process] = f"127.0.0.1:{free_port()}"
        child_env = {**env, "SIGNALHUB_METRICS_ADDRESS": metrics[process]}
        child = spawn_server(process, child_env, log_file)
        processes[process] = child
        stack.push_async_callback(stop_process, child)
    await asyncio.gather(wait_serving(settings.backoffice_address), wait_serving(settings.gateway_address))
    print(
        f"== started back office {settings.backoffice_address} and gateway {settings.gateway_address} "
        f"(pid {processes['gateway'].pid}) on database {name}",
        flush=True,
    )
    return Stack(
        settings,
        settings.backoffice_address,
        settings.gateway_address,
        processes["gateway"].pid,
        processes["backoffice"].pid,
        processes["worker"].pid,
        metrics,
        env,
    )


def spawn_server(process: str, env: dict[str, str], log_file: IO[bytes]) -> subprocess.Popen[bytes]:
    """`signalhub serve <process>` as a child, its output in bench/logs/."""
    return subprocess.Popen(
        [sys.executable, "-m", "backoffice.cli", "serve", process],
        env=env,
        cwd=REPO,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )


@asynccontextmanager
async def gateway_processes(stack: Stack, count: int) -> AsyncIterator[tuple[str, list[int]]]:
    """A second gateway of the stack started here (its database, Redis and master key),
    ``serve gateway --processes count`` on an address of its own, serving: (its address, its processes'
    pids); stopped on the way out."""
    address, metrics = f"127.0.0.1:{free_port()}", free_port()
    env = {
        **stack.env,
        "SIGNALHUB_GATEWAY_ADDRESS": address,
        "SIGNALHUB_GATEWAY_PROCESSES": str(count),
        "SIGNALHUB_METRICS_ADDRESS": f"127.0.0.1:{metrics}",  # process i's: this port plus i
    }
    with (REPO / "bench" / "logs" / f"gateway-{count}-processes.log").open("wb") as log_file:
        supervisor = spawn_server("gateway", env, log_file)
        try:
            await wait_serving(address)
            for _ in range(300):  # each serves its metrics once its gRPC server has started: wait for all
                if all(port_open(metrics + i) for i in range(count)):
                    break
                await asyncio.sleep(0.2)
            yield address, sorted(children(supervisor.pid))
        finally:
            await stop_process(supervisor)


def children(pid: int) -> set[int]:
    """The processes whose parent is ``pid``."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(stat.parent.name))
    return found


async def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the servers drain and stop), SIGKILL after 15 s."""
    if process.poll() is None:
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, 15)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait, 5)


@asynccontextmanager
async def postgres(database_url: str, database: str | None = None) -> AsyncIterator[Any]:
    """A plain asyncpg connection to the URL's server (its database, or ``database``), closed on the way
    out. Typed Any: asyncpg ships no type stubs (see pyproject.toml's mypy overrides)."""
    url = make_url(database_url).set(drivername="postgresql")
    if database is not None:
        url = url.set(database=database)
    conn = await asyncpg.connect(url.render_as_string(hide_password=False))
    try:
        yield conn
    finally:
        await conn.close()


async def drop_database(database_url: str) -> None:
    async with postgres(database_url, "postgres") as conn:
        await conn.execute(f'DROP DATABASE IF EXISTS "{make_url(database_url).database}" WITH (FORCE)')
