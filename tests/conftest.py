"""Shared fixtures: a database of this run's own on the real Postgres (created, migrated, dropped), the
real Redis, both servers on free ports, and ready-made admin, user, producer and device credentials."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from sqlalchemy.engine import make_url
from xdist.scheduler import LoadGroupScheduling

from backoffice import accounts, bootstrap, devices, models
from backoffice.bootstrap import Resources
from backoffice.models import ActorType, Role
from backoffice.platform import schema
from backoffice.platform.auth import Caller
from backoffice.platform.config import Settings
from backoffice.platform.serving import Server
from backoffice.producer import ProducerClient
from gateway import bootstrap as gateway_bootstrap
from signalhub.protocol.logs import JsonFormatter

ROOT_DIR = Path(__file__).resolve().parents[1]  # the repository
SERVER_URL = os.environ.get("SIGNALHUB_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("SIGNALHUB_REDIS_URL", "redis://127.0.0.1:6379/0")
TEST_MASTER_KEY = base64.b64encode(bytes(range(32))).decode()

# CONTRACT.md's test vectors. A copy lives in the repository so a clone without ../shared still tests;
# tests/test_contract_vectors.py fails when the copy drifts from ../shared/vectors.json.
VECTORS_COPY = Path(__file__).with_name("contract_vectors.json")
SHARED_VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors.json"
CONTRACT_VECTORS = json.loads(VECTORS_COPY.read_text())


# Server-side loggers whose ERROR records mean a failure nobody planned for: an INTERNAL answer, or a
# background round of the gateway or worker that broke. Client SDK loggers are left out on purpose.
SERVER_LOGGERS = (
    "signalhub.rpc",
    "signalhub.gateway.push",
    "signalhub.gateway.sweeper",
    "signalhub.worker",
    "signalhub.monitor",
)


class _UnplannedFailures(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


# Text that must never reach a log line: API tokens and secrets (sht_/shs_ and 43 base64url characters),
# SH1 signatures, and every secret the fixtures made (plus the producer payload the gateway tests use,
# which must never leave the back office).
LEAK_PATTERNS = (re.compile(r"sh[ts]_[A-Za-z0-9_-]{43}"), re.compile(r"v1=[A-Za-z0-9+/]{42,}"))
KNOWN_SECRETS: set[str] = {TEST_MASTER_KEY, "secret-sauce-42"}


class LogScan(logging.Handler):
    """Formats every record as production does (JSON lines) and keeps those that leak a secret."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.leaks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        if any(p.search(line) for p in LEAK_PATTERNS) or any(s in line for s in KNOWN_SECRETS):
            self.leaks.append(line)


@pytest.fixture(autouse=True)
def no_unplanned_server_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test doubles as two hunts. A server error logged while it ran fails it (an INTERNAL answer, a
    broken background round), unless it is marked ``server_error_expected`` (one that breaks a dependency
    on purpose). And every log line written while it ran, at INFO and above from anywhere, is scanned for
    secrets, tokens, signatures and the producer's payload."""
    failures = _UnplannedFailures()
    for name in SERVER_LOGGERS:
        logging.getLogger(name).addHandler(failures)
    scan = LogScan()
    root, ours = logging.getLogger(), logging.getLogger("signalhub")
    previous_level = ours.level
    ours.setLevel(logging.INFO)
    root.addHandler(scan)
    yield
    root.removeHandler(scan)
    ours.setLevel(previous_level)
    for name in SERVER_LOGGERS:
        logging.getLogger(name).removeHandler(failures)
    if scan.leaks:
        pytest.fail(f"{len(scan.leaks)} log line(s) leaked a secret, first: {scan.leaks[0]}")
    if failures.records and request.node.get_closest_marker("server_error_expected") is None:
        first = failures.records[0]
        pytest.fail(
            f"the server logged {len(failures.records)} unplanned error(s), first: {first.name}: "
            f"{first.getMessage()}\n{logging.Formatter().formatException(first.exc_info) if first.exc_info else ''}"
        )


# scripts/test runs the suite on two pytest-xdist workers: any test may run beside any other but these,
# which each run a whole stack of processes under load and are judged by what they measure (recovery
# times, event-loop lag, memory). Two at once on a 2-core machine would skew each other's figures, so one
# worker runs them all, one after another, while the other takes the rest.
ONE_AT_A_TIME = (
    "tests/reliability/",
    "tests/gateway/bridge/test_end_to_end.py",
    "tests/scripts/test_soak.py::test_a_short_soak_does_not_grow",
)


class OneAtATimeScheduling(LoadGroupScheduling):
    """xdist's loadgroup, with the tests of ONE_AT_A_TIME as one group. Not by xdist_group marks: xdist 3.8
    carries a test's group in its node id, which pytest 9.2 no longer reads back, so every mark is lost;
    the controller sees node ids only, so the rule goes by path. The largest group is handed out first."""

    def _split_scope(self, nodeid: str) -> str:
        return "one_at_a_time" if nodeid.startswith(ONE_AT_A_TIME) else super()._split_scope(nodeid)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> OneAtATimeScheduling | None:
    """Under ``--dist loadgroup`` (pyproject's addopts); another --dist gets xdist's own."""
    return OneAtATimeScheduling(config, log) if config.getoption("dist") == "loadgroup" else None


def run_module(
    module: str, *args: str, env: dict[str, str], cwd: Path, output: Path | None = None
) -> subprocess.Popen[str]:
    """``python -m <module> <args>`` as a child process with text pipes (the CLI, the embedded servers), or
    with stdout and stderr appended to ``output`` (a long-lived server whose pipes nobody reads)."""
    if output is None:
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    with output.open("a") as log:
        return subprocess.Popen(
            [sys.executable, "-m", module, *args], env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, text=True
        )


# The ports free_port hands out: from LOWEST_PORT up to the kernel's ephemeral range, where a bind to port 0
# and every outgoing connection take theirs.
LOWEST_PORT = 10_000
_ports_handed_out: set[int] = set()
_port_picker = random.Random()  # its own: hypothesis seeds the global one


def _ephemeral_ports_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; elsewhere the ephemeral range starts higher still


def _port_band() -> range:
    """This process's share of the ports below the ephemeral range: all of them in a plain run, one band
    each under pytest-xdist (workers gw0, gw1...), so no two workers ever hand out the same port."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    start, end = LOWEST_PORT, max(_ephemeral_ports_start(), LOWEST_PORT + 4096)
    width = (end - start) // workers
    return range(start + int(worker) * width, start + (int(worker) + 1) * width)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on, for a server started as a process to bind later.
    Until then nobody else may take it: it comes from this worker's band below the ephemeral range (no
    other worker, bind to port 0 or outgoing connection on this machine lands there), at random (another
    run on the machine is unlikely to pick it too), and no port is handed out twice in a run."""
    band = _port_band()
    for _ in range(1000):
        port = _port_picker.choice(band)
        if port in _ports_handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:  # something has it
                continue
        _ports_handed_out.add(port)
        return port
    raise AssertionError(f"no free port in {band.start}-{band.stop - 1}")


# What a client-side process (a bridge, a load process) must not load: the servers and their dependencies.
SERVER_PACKAGES = frozenset({"backoffice", "gateway", "sqlalchemy", "asyncpg", "redis"})


def packages_imported_by(module: str) -> set[str]:
    """The top-level packages a fresh interpreter has loaded once it imported ``module`` of this repository."""
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": f"{ROOT_DIR}{os.pathsep}{ROOT_DIR / 'proto'}"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT_DIR, capture_output=True, text=True, check=True
    )
    return {name.split(".")[0] for name in json.loads(done.stdout)}


def server_env(database_url: str, redis_url: str, **settings: str) -> dict[str, str]:
    """The environment of a ``signalhub serve`` process of a test's own: its database and Redis, the test
    master key, a metrics port of its own, quiet logs, a gateway of one process; ``settings`` are more
    SIGNALHUB_<NAME> values."""
    return {
        **os.environ,
        "PYTHONPATH": f"{ROOT_DIR}{os.pathsep}{ROOT_DIR / 'proto'}",
        "SIGNALHUB_DATABASE_URL": database_url,
        "SIGNALHUB_REDIS_URL": redis_url,
        "SIGNALHUB_MASTER_KEY": TEST_MASTER_KEY,
        "SIGNALHUB_MASTER_KEY_ID": "test1",
        "SIGNALHUB_METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
        "SIGNALHUB_SHUTDOWN_GRACE_SECONDS": "1",
        "SIGNALHUB_LOG_LEVEL": "WARNING",
        "SIGNALHUB_GATEWAY_PROCESSES": "1",  # one pid to stop or kill (the default is one per core)
        **{f"SIGNALHUB_{name.upper()}": value for name, value in settings.items()},
    }


async def health(
    address: str, *, deadline: float = 1.0, tls: bool = False, root_certificates: bytes | None = None
) -> str:
    """The server's overall grpc health status by name (SERVING, NOT_SERVING...), or why none came; with
    ``tls``, through a TLS channel that trusts ``root_certificates`` (None: gRPC's default roots)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = (
        grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(root_certificates))
        if tls
        else grpc.aio.insecure_channel(address)
    )
    async with channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)
        try:
            answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=deadline)
        except grpc.aio.AioRpcError as exc:
            return f"unreachable ({exc.code().name})"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))


async def wait_serving(address: str, process: subprocess.Popen[Any], within: float = 30.0) -> None:
    """Wait until the server ``process`` started reports SERVING (``within``: a safety net, no claim)."""
    deadline = asyncio.get_running_loop().time() + within
    while await health(address) != "SERVING":
        if process.poll() is not None:
            raise AssertionError(f"the server for {address} exited with {process.returncode}")
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{address} is not serving")
        await asyncio.sleep(0.1)


def _dsn(url: str, database: str) -> str:
    return make_url(url).set(drivername="postgresql", database=database).render_as_string(hide_password=False)


async def _on_server(statement: str) -> None:
    """Run ``statement`` on the test server's ``postgres`` database (CREATE and DROP DATABASE)."""
    conn = await asyncpg.connect(_dsn(SERVER_URL, "postgres"))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def create_database(name: str) -> str:
    await _on_server(f'CREATE DATABASE "{name}"')
    return make_url(SERVER_URL).set(drivername="postgresql+asyncpg", database=name).render_as_string(False)


async def drop_database(name: str) -> None:
    await _on_server(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """The URL of a new, empty database of its own (``prefix`` and a random suffix), dropped on the way out."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    url = asyncio.run(create_database(name))
    try:
        yield url
    finally:
        asyncio.run(drop_database(name))


def settings_for(database_url: str, **overrides: str) -> Settings:
    env = {
        "SIGNALHUB_DATABASE_URL": database_url,
        "SIGNALHUB_REDIS_URL": REDIS_URL,
        "SIGNALHUB_MASTER_KEY": TEST_MASTER_KEY,
        "SIGNALHUB_MASTER_KEY_ID": "test1",
        "SIGNALHUB_BACKOFFICE_ADDRESS": "127.0.0.1:0",
        "SIGNALHUB_GATEWAY_ADDRESS": "127.0.0.1:0",
        "SIGNALHUB_SHUTDOWN_GRACE_SECONDS": "1",
        **overrides,
    }
    return Settings.from_env(env)


@pytest.fixture(scope="session")
def database_name() -> Iterator[str]:
    name = f"signalhub_test_{uuid.uuid4().hex[:12]}"
    url = asyncio.run(create_database(name))
    schema.upgrade(settings_for(url))
    yield name
    asyncio.run(drop_database(name))


@pytest.fixture(scope="session")
def settings(database_name: str) -> Settings:
    url = make_url(SERVER_URL).set(drivername="postgresql+asyncpg", database=database_name)
    return settings_for(url.render_as_string(hide_password=False))


@pytest.fixture(scope="session")
async def res(settings: Settings) -> AsyncIterator[Resources]:
    async with bootstrap.resources(settings) as resources:
        yield resources


@asynccontextmanager
async def serving(server: Server) -> AsyncIterator[Server]:
    """``server`` started, and stopped on the way out."""
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture(scope="session")
async def backoffice_server(res: Resources) -> AsyncIterator[Server]:
    async with serving(bootstrap.build_server(res)) as server:
        yield server


@pytest.fixture(scope="session")
async def gateway_server(res: Resources) -> AsyncIterator[Server]:
    async with serving(gateway_bootstrap.build_server(res)) as server:
        yield server


@pytest.fixture(scope="session")
async def backoffice_channel(backoffice_server: Server) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(backoffice_server.bound_address) as channel:
        yield channel


@pytest.fixture(scope="session")
async def gateway_channel(gateway_server: Server) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(gateway_server.bound_address) as channel:
        yield channel


@dataclass(frozen=True)
class UserCredentials:
    id: uuid.UUID
    token: str
    role: Role

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)

    @property
    def caller(self) -> Caller:
        return Caller(ActorType.USER, self.id, self.role)


@dataclass(frozen=True)
class KeyCredentials:
    id: uuid.UUID
    secret: str  # the shs_ form


async def make_user(res: Resources, role: Role = Role.USER) -> UserCredentials:
    async with res.sessions.begin() as session:
        user, token = await accounts.create_user(session, email=f"{uuid.uuid4().hex}@test.signalhub", role=role)
    KNOWN_SECRETS.add(token)
    return UserCredentials(user.id, token, role)


async def make_producer(res: Resources) -> KeyCredentials:
    async with res.sessions.begin() as session:
        producer, secret = await accounts.create_producer(session, res.vault, name="test producer")
    KNOWN_SECRETS.add(secret)
    return KeyCredentials(producer.id, secret)


async def make_device(res: Resources, owner: UserCredentials) -> KeyCredentials:
    async with res.sessions.begin() as session:
        device, secret = await devices.register_device(session, res.vault, owner=owner.caller, name="test device")
    KNOWN_SECRETS.add(secret)
    return KeyCredentials(device.id, secret)


@pytest.fixture
async def admin(res: Resources) -> UserCredentials:
    return await make_user(res, Role.ADMIN)


@pytest.fixture
async def user(res: Resources) -> UserCredentials:
    return await make_user(res, Role.USER)


@pytest.fixture
async def producer(res: Resources) -> KeyCredentials:
    return await make_producer(res)


@pytest.fixture
async def device(res: Resources, user: UserCredentials) -> KeyCredentials:
    return await make_device(res, user)


@dataclass(frozen=True)
class Stack:
    """Both servers, serving, and the three parties of a trade: a user, the user's device, a producer."""

    res: Resources
    backoffice: Server
    backoffice_channel: grpc.aio.Channel
    gateway: Server
    user: UserCredentials
    device: KeyCredentials
    producer: KeyCredentials

    def producer_client(self) -> ProducerClient:
        return ProducerClient(self.backoffice.bound_address, self.producer.id, self.producer.secret)


@pytest.fixture
async def stack(
    res: Resources,
    backoffice_server: Server,
    backoffice_channel: grpc.aio.Channel,
    gateway_server: Server,
    user: UserCredentials,
    device: KeyCredentials,
    producer: KeyCredentials,
) -> Stack:
    return Stack(res, backoffice_server, backoffice_channel, gateway_server, user, device, producer)


@pytest.fixture
def traversable_dir() -> Iterator[Path]:
    """A directory the embedded Postgres user can reach when tests run as root (pytest's tmp is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="signalhub-embedded-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class RpcFailure:
    code: grpc.StatusCode
    reason: str
    domain: str
    metadata: dict[str, str]
    violations: dict[str, str]  # field -> description, from google.rpc.BadRequest


def rpc_failure(error: grpc.aio.AioRpcError) -> RpcFailure:
    """The contract's error details of a failed call: exactly one ErrorInfo, maybe a BadRequest."""
    from google.rpc import error_details_pb2, status_pb2

    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert raw is not None, f"no status details on {error.code()}: {error.details()}"
    status = status_pb2.Status.FromString(raw)  # type: ignore[arg-type]
    assert status.code == error.code().value[0]
    infos, violations = [], {}
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.update({v.field: v.description for v in bad.field_violations})
    assert len(infos) == 1, status
    return RpcFailure(error.code(), infos[0].reason, infos[0].domain, dict(infos[0].metadata), violations)


async def signed_call(
    channel: grpc.aio.Channel,
    key: KeyCredentials,
    method: str,
    request: Any,
    response_type: Any,
    *,
    deadline: float = 10,
) -> Any:
    """A producer-signed unary call: sign the exact bytes, send those bytes."""
    from signalhub.protocol import signing

    body = request.SerializeToString()
    metadata = signing.signed_metadata(signing.parse_secret(key.secret), method, str(key.id), body)
    call = channel.unary_unary(method, response_deserializer=response_type.FromString)
    return await call(body, metadata=metadata, timeout=deadline)


async def subscribe(channel: grpc.aio.Channel, user: UserCredentials, producer: KeyCredentials, mode: Any) -> None:
    """``user`` follows ``producer`` (FIXED_VOLUME 0.10) through the back office's ApprovalService."""
    from signalhub.v1 import backoffice_pb2 as bpb
    from signalhub.v1 import backoffice_pb2_grpc as brpc

    request = bpb.SubscribeRequest(
        request_id=str(uuid.uuid4()),
        producer_id=str(producer.id),
        mode=mode,
        sizing=bpb.SIZING_MODE_FIXED_VOLUME,
        sizing_value="0.10",
    )
    await brpc.ApprovalServiceStub(channel).Subscribe(request, metadata=user.metadata, timeout=10)


# The broker symbol test devices trade (GOLD.m), as its Hello carries it and the back office stores it.
GOLD_SPEC = {
    "contract_size": "100",
    "tick_size": "0.01",
    "tick_value": "1",
    "volume_min": "0.01",
    "volume_step": "0.01",
    "volume_max": "50",
}

# Rows written directly with the ORM, for states the API cannot reach (or not quickly): the columns every
# such test fills the same way, each overridable by keyword.


def subscription_row(user_id: uuid.UUID, producer_id: uuid.UUID, **columns: Any) -> models.Subscription:
    """An ACTIVE MANUAL subscription, FIXED_VOLUME 0.10."""
    defaults: dict[str, Any] = {
        "id": uuid.uuid4(),
        "mode": models.SubscriptionMode.MANUAL,
        "sizing_mode": models.SizingMode.FIXED_VOLUME,
        "sizing_value": Decimal("0.10"),
        "status": models.SubscriptionStatus.ACTIVE,
    }
    return models.Subscription(**defaults | columns, user_id=user_id, producer_id=producer_id)


def signal_row(producer_id: uuid.UUID, signal_time: datetime, expire_time: datetime, **columns: Any) -> models.Signal:
    """An OPEN XAUUSD BUY signal with a new request id."""
    defaults: dict[str, Any] = {
        "id": uuid.uuid4(),
        "request_id": uuid.uuid4(),
        "instrument": "XAUUSD",
        "side": models.Side.BUY,
        "status": models.SignalStatus.OPEN,
    }
    return models.Signal(
        **defaults | columns, producer_id=producer_id, signal_time=signal_time, expire_time=expire_time
    )


def approval_row(
    signal_id: uuid.UUID,
    subscription_id: uuid.UUID,
    user_id: uuid.UUID,
    status: models.ApprovalStatus,
    **columns: Any,
) -> models.Approval:
    """An approval of ``signal_id`` for ``user_id`` in ``status``."""
    return models.Approval(
        **{"id": uuid.uuid4()} | columns,
        signal_id=signal_id,
        subscription_id=subscription_id,
        user_id=user_id,
        status=status,
    )
