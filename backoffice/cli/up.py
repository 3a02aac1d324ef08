"""`signalhub up`: everything on one machine, for a newcomer and for demos.

Uses SIGNALHUB_DATABASE_URL / SIGNALHUB_REDIS_URL when set, else embedded Postgres and Redis with data
under ./.signalhub/; migrates; creates (or reuses) a demo admin, user, producer and device; serves the
back office, the gateway and the web console, and runs the worker, until Ctrl-C. Every address it needs
is checked first (a second `up` says in one line which one is taken, and by what when it can tell); each
server's JSON log goes to .signalhub/logs/<server>.log, warnings also to the terminal.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket
import sys
import uuid
from contextlib import ExitStack
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from backoffice import accounts, bootstrap, devices, subscriptions, worker
from backoffice.bootstrap import Resources
from backoffice.cli import embedded, local
from backoffice.console import server as console_server
from backoffice.console.config import ConsoleConfig
from backoffice.models import (
    ActorType,
    Device,
    DeviceStatus,
    Producer,
    ProducerStatus,
    Role,
    SizingMode,
    Subscription,
    SubscriptionMode,
    SubscriptionStatus,
    User,
)
from backoffice.platform import auth, db, schema, serving
from backoffice.platform.config import ENV_PREFIX, Settings
from backoffice.platform.vault import Vault
from gateway import bootstrap as gateway_bootstrap
from signalhub.protocol import logs, state
from signalhub.protocol.errors import Unauthenticated

log = logging.getLogger("signalhub.up")

DEMO_DATABASE = "signalhub"


ADMIN_EMAIL = "admin@demo.signalhub"
TRADER_EMAIL = "trader@demo.signalhub"
PRODUCER_NAME = "demo strategy"
DEVICE_NAME = "demo terminal"
LOG_DIR = "logs"
# Which file of .signalhub/logs/ a logger's lines go to, by the logger's name (the rest: backoffice.log).
LOG_FILES = (
    ("signalhub.console", "console"),
    ("uvicorn", "console"),
    ("signalhub.gateway", "gateway"),
    ("signalhub.worker", "worker"),
    ("signalhub.monitor", "worker"),
)


class PortTaken(Exception):
    """An address `up` needs is in use; the message names it (and who holds it, when that is known)."""


def log_to_files(log_dir: Path) -> dict[str, Path]:
    """Send every server's JSON lines at INFO to its own file under ``log_dir`` (owner-only), and
    warnings also to the terminal; returns the files by server."""
    log_dir.mkdir(parents=True, exist_ok=True)
    files = {name: log_dir / f"{name}.log" for name in ("backoffice", "gateway", "worker", "console")}
    root = logging.getLogger()
    terminal = logging.StreamHandler(sys.stderr)
    terminal.setLevel(logging.WARNING)
    terminal.setFormatter(logs.JsonFormatter())
    handlers: list[logging.Handler] = [terminal]
    for name, path in files.items():
        if not path.exists():
            state.write_private(path, "")  # owner-only: the lines name users, devices and addresses
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logs.JsonFormatter())
        handler.addFilter(_ServerLines(name))
        handlers.append(handler)
    root.handlers[:] = handlers
    root.setLevel(logging.INFO)
    return files


class _ServerLines(logging.Filter):
    """Passes the lines of one server's file (by LOG_FILES)."""

    def __init__(self, server: str) -> None:
        super().__init__()
        self.server = server

    def filter(self, record: logging.LogRecord) -> bool:
        return _log_file(record.name) == self.server


def _log_file(logger: str) -> str:
    for prefix, name in LOG_FILES:
        if logger == prefix or logger.startswith(prefix + "."):
            return name
    return "backoffice"


async def check_free(addresses: dict[str, str]) -> None:
    """Raise PortTaken naming the first address something already listens on: another `signalhub up`
    when it answers gRPC health (or the console's page), another program otherwise."""
    for what, address in addresses.items():
        host, _, port = address.rpartition(":")
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            try:
                probe.bind((host.strip("[]"), int(port)))
            except OSError:
                pass
            else:
                continue
        holder = "another signalhub (is `signalhub up` running already?)" if await _ours(address) else "another program"
        raise PortTaken(f"{address} ({what}) is taken by {holder}; stop it, or set the address variables")


async def _ours(address: str) -> bool:
    """Whether ``address`` answers like a signalhub server: gRPC health, or the console's sign-in page."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)
        try:
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
            return True
        except grpc.aio.AioRpcError:
            pass
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*address.rsplit(":", 1)), 1.0)
        writer.write(b"GET /signin HTTP/1.0\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(4096), 1.0)
        writer.close()
        return b"signalhub" in answer
    except (OSError, TimeoutError):
        return False


async def ensure_demo(res: Resources, state_dir: Path) -> dict[str, str]:
    """The demo credentials: reused while they still authenticate, made afresh otherwise."""
    path = state_dir / state.DEMO_FILE
    if path.exists():
        try:
            demo: dict[str, str] = json.loads(path.read_text())
            await auth.authenticate_token(res.sessions, demo["admin_token"])
            return demo
        except (Unauthenticated, KeyError, ValueError):
            log.info("demo credentials in demo.json are stale; making new ones")
    async with res.sessions.begin() as session:
        return await demo_credentials(session, res.vault)


async def demo_credentials(session: AsyncSession, vault: Vault) -> dict[str, str]:
    """Credentials for the demo admin, trader, producer and device, creating whichever is missing.

    The database outlives demo.json (deleted, or a new checkout beside an old database): demo accounts
    that already exist get new API tokens and their producer and device new secrets (the lost ones stop
    verifying at once), so `signalhub up` always ends with working credentials."""
    admin, admin_token = await _demo_user(session, ADMIN_EMAIL, Role.ADMIN)
    user, user_token = await _demo_user(session, TRADER_EMAIL, Role.USER)
    admin_caller = auth.Caller(kind=ActorType.USER, id=admin.id, role=Role.ADMIN)
    trader = auth.Caller(kind=ActorType.USER, id=user.id, role=Role.USER)
    producer = await _followed_producer(session, user.id)
    if producer is None:
        producer, producer_secret = await accounts.create_producer(session, vault, name=PRODUCER_NAME)
        # The demo trader follows the demo strategy automatically, so a submitted signal reaches the
        # demo device at once (`signalhub producer submit`, then `signalhub bridge --executor paper`).
        terms = subscriptions.SubscriptionTerms(
            producer_id=producer.id,
            mode=SubscriptionMode.AUTO,
            sizing=SizingMode.FIXED_VOLUME,
            sizing_value=Decimal("0.10"),
            max_volume=Decimal("1"),
            instruments=(),
        )
        await subscriptions.subscribe(session, trader, terms, request_id="")
    else:
        producer, producer_secret = await accounts.rotate_producer_secret(
            session, vault, admin_caller, producer.id, grace=timedelta(0), request_id=""
        )
    device_id = await session.scalar(
        select(Device.id)
        .where(Device.user_id == user.id, Device.name == DEVICE_NAME, Device.status == DeviceStatus.ACTIVE)
        .order_by(Device.created_at)
        .limit(1)
    )
    if device_id is None:
        device, device_secret = await devices.register_device(
            session, vault, owner=trader, name=DEVICE_NAME, symbol_map={"XAUUSD": "GOLD.m"}
        )
    else:
        device, device_secret = await devices.rotate_device_secret(
            session, vault, trader, device_id, grace=timedelta(0)
        )
    return {
        "admin_token": admin_token,
        "user_token": user_token,
        "producer_id": str(producer.id),
        "producer_secret": producer_secret,
        "device_id": str(device.id),
        "device_secret": device_secret,
    }


async def _demo_user(session: AsyncSession, email: str, role: Role) -> tuple[User, str]:
    """The demo user with this email and a new API token, creating the user when absent."""
    user = await session.scalar(select(User).where(User.email == email))
    if user is None:
        return await accounts.create_user(session, email=email, role=role)
    _, token = await accounts.create_api_token(session, user_id=user.id, name="demo")
    return user, token


async def _followed_producer(session: AsyncSession, user_id: uuid.UUID) -> Producer | None:
    """The active producer the demo trader actively follows (the demo strategy), if any."""
    result: Producer | None = await session.scalar(
        select(Producer)
        .join(Subscription, Subscription.producer_id == Producer.id)
        .where(
            Subscription.user_id == user_id,
            Subscription.status == SubscriptionStatus.ACTIVE,
            Producer.status == ProducerStatus.ACTIVE,
        )
        .order_by(Subscription.created_at)
        .limit(1)
    )
    return result


async def run(state_dir: Path) -> None:
    """Start what the environment does not name (embedded Postgres and Redis), migrate, and serve the demo
    until stopped; an address in use ends it with one line."""
    try:
        await _run(state_dir)
    except PortTaken as exc:
        raise SystemExit(f"signalhub: {exc}") from None


async def _run(state_dir: Path) -> None:
    env = local.environment(state_dir)
    with ExitStack() as stack:
        if ENV_PREFIX + "DATABASE_URL" not in env or ENV_PREFIX + "REDIS_URL" not in env:
            urls = embedded.start(state_dir, stack)
            database_url = make_url(urls.database_url).set(database=DEMO_DATABASE).render_as_string(False)
            env.setdefault(ENV_PREFIX + "DATABASE_URL", database_url)
            env.setdefault(ENV_PREFIX + "REDIS_URL", urls.redis_url)
            runtime = {"database_url": env[ENV_PREFIX + "DATABASE_URL"], "redis_url": env[ENV_PREFIX + "REDIS_URL"]}
            state.write_private(state_dir / local.RUNTIME_FILE, json.dumps(runtime))
            stack.callback((state_dir / local.RUNTIME_FILE).unlink, missing_ok=True)
        if ENV_PREFIX + "MASTER_KEY" not in env:
            env[ENV_PREFIX + "MASTER_KEY"] = local.ensure_dev_master_key(state_dir)
            env[ENV_PREFIX + "MASTER_KEY_ID"] = local.DEV_KEY_ID
        settings = Settings.from_env(env)
        # Its back office and gateway are the ones started here (their addresses are known once bound).
        console = ConsoleConfig.from_env(
            {
                k: v
                for k, v in env.items()
                if k not in (ENV_PREFIX + "BACKOFFICE_ADDRESS", ENV_PREFIX + "GATEWAY_ADDRESS")
            }
        )
        await check_free(
            {
                "back office": settings.backoffice_address,
                "gateway": settings.gateway_address,
                "metrics": settings.metrics_address,
                "console": f"{console.host}:{console.port}",
            }
        )
        # One clear line, not a traceback, when a server named in the environment is not there.
        await local.check_postgres(settings.database_url, database="postgres")
        await local.check_redis(settings.redis_url)
        await db.ensure_database(settings.database_url)
        # Alembic's env runs its own event loop, so it gets a thread of its own.
        await asyncio.to_thread(schema.upgrade, settings)
        log_files = log_to_files(state_dir / LOG_DIR)
        await serve_demo(settings, console, state_dir, log_files)


async def serve_demo(
    settings: Settings, console: ConsoleConfig, state_dir: Path, log_files: dict[str, Path] | None = None
) -> None:
    """Serve the back office, the gateway, the console and the worker in this process until SIGINT or
    SIGTERM, with the demo's credentials in demo.json; prints where everything is."""
    async with bootstrap.resources(settings) as res:
        demo = await ensure_demo(res, state_dir)
        backoffice = bootstrap.build_server(res)
        gateway = gateway_bootstrap.build_server(res)
        await backoffice.start()
        await gateway.start()
        serving.start_metrics(settings)
        lag = serving.watch_loop_lag()
        addresses: dict[str, Any] = {"backoffice": backoffice.bound_address, "gateway": gateway.bound_address}
        console = dataclasses.replace(
            console, backoffice_target=backoffice.bound_address, gateway_address=gateway.bound_address
        )
        web = console_server.server_for(console)
        web_task = asyncio.create_task(web.serve(), name="console")
        while not web.started and not web_task.done():  # noqa: ASYNC110 - uvicorn says so by a flag only
            await asyncio.sleep(0.05)
        if web_task.done():  # it could not start: say why (its exception), after stopping the rest
            await asyncio.gather(gateway.stop(), backoffice.stop())
            await web_task
            raise PortTaken(f"the console could not listen on {console.host}:{console.port}")
        port = web.servers[0].sockets[0].getsockname()[1]  # the one bound, when the address asked for port 0
        url = f"{'https' if console.tls else 'http'}://{console.host}:{port}/"
        state.write_private(
            state_dir / state.DEMO_FILE, json.dumps({**demo, **addresses, "console": url}, indent=2) + "\n"
        )
        logs_line = f"  logs         {state_dir / LOG_DIR}/ (one JSON file per server)\n" if log_files else ""
        print(
            f"signalhub is up\n  console      {url} (sign in with an API token: the demo's are in demo.json)\n"
            f"  back office  {backoffice.bound_address}\n  gateway      {gateway.bound_address}\n"
            f"  metrics      {settings.metrics_address}\n  credentials  {state_dir / state.DEMO_FILE} (mode 0600)\n"
            f"{logs_line}Ctrl-C stops.",
            flush=True,
        )
        stop = asyncio.Event()
        serving.install_stop_signals(stop)
        housekeeping = asyncio.create_task(worker.run(res, stop))
        await stop.wait()
        print("stopping...", flush=True)
        web.should_exit = True
        await asyncio.gather(web_task, gateway.stop(), backoffice.stop(), housekeeping)
        await serving.cancel_and_wait([lag])
