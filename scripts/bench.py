"""`scripts/bench`: signalhub's benchmark (targets from docs/design.md, "Limits we hold
ourselves to").

It drives the real system through its public APIs: a fresh database, the back office and one gateway
process started here (or the addresses given), users, devices and producers created with the domain
functions an admin's tools use, subscriptions made over ApprovalService, signals submitted signed over
SignalService, approvals over ApprovalService. N simulated bridges (one channel each, spread over several
load processes) hold DeviceGateway streams, open sealed deliveries and ack them the way the SDK does.

Because the machine is shared and noisy, the same run measures the bare limits with the same load
generator (a grpc.aio echo stream with no database, one Postgres commit, one Redis publish) and reports
the figures beside them. Results go to stdout and to ``bench/results.json``: a list of
``{"name", "value", "unit", "target", "met", "scenario"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import multiprocessing
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import AsyncExitStack, ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SERVER_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
INSTRUMENT = "XAUUSD"


# ------------------------------------------------------------------------------------------- figures


@dataclass
class Figure:
    name: str
    value: float | None
    unit: str
    target: str | None
    met: bool | None
    scenario: str


@dataclass
class Report:
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(
        self,
        name: str,
        value: float | None,
        unit: str,
        scenario: str,
        *,
        at_most: float | None = None,
        at_least: float | None = None,
    ) -> None:
        target: str | None = None
        met: bool | None = None
        if at_most is not None:
            target = f"<= {at_most:g}"
            met = value is not None and value <= at_most
        elif at_least is not None:
            target = f">= {at_least:g}"
            met = value is not None and value >= at_least
        rounded = None if value is None else round(value, 3)
        self.figures.append(Figure(name, rounded, unit, target, met, scenario))
        shown = "n/a" if rounded is None else f"{rounded:g}"
        verdict = "" if met is None else ("  met" if met else "  NOT MET")
        print(f"  {name:<42} {shown:>12} {unit:<10} {target or '':<10}{verdict}  [{scenario}]", flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  ! {text}", flush=True)


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


# ------------------------------------------------------------------------------- simulated bridges


@dataclass(frozen=True)
class WorkerSpec:
    index: int
    address: str
    devices: tuple[tuple[str, str], ...]  # (device id, shs_ secret)
    connect_concurrency: int = 25


@dataclass
class Samples:
    """What the devices of one load process saw during the current phase."""

    phase: int = 0
    late: int = 0  # receipts of frames written in an earlier phase (not counted)
    deliveries: list[tuple[str, str, float, int]] = field(default_factory=list)  # signal, device, received, attempt
    receipts: list[tuple[float, float]] = field(default_factory=list)  # (written, receipted) of ack/fill frames
    rejected: int = 0  # receipts other than ACCEPTED/DUPLICATE
    errors: list[str] = field(default_factory=list)


class SimDevice:
    """A bridge reduced to the protocol: opens sealed deliveries and answers RECEIVED, PLACED and a Fill
    at once (no ledger, no broker), and heartbeats."""

    def __init__(self, device_id: str, shown: str, address: str, samples: Samples) -> None:
        from signalhub.protocol.sealing import InstructionSealer
        from signalhub.protocol.signing import parse_secret

        self.device_id = device_id
        self.secret = parse_secret(shown)
        self.sealer = InstructionSealer(self.secret, device_id)
        self.address = address
        self.samples = samples
        self.pending: dict[str, tuple[float, int]] = {}  # frame id -> (written at, phase) of ack/fill frames
        self.drained = asyncio.Event()  # set while nothing tracked awaits its receipt
        self.drained.set()
        self.seen: set[str] = set()
        self.lock = asyncio.Lock()
        self.sequence = 0
        self.call: Any = None
        self.channel: Any = None
        self.tasks: list[asyncio.Task[None]] = []

    async def connect(self) -> None:
        import grpc

        from gateway.bridge import channel_options
        from signalhub.protocol.signing import CONNECT_METHOD, signed_metadata
        from signalhub.v1 import gateway_pb2 as pb
        from signalhub.v1 import gateway_pb2_grpc as rpc

        self.channel = grpc.aio.insecure_channel(self.address, options=channel_options())
        await asyncio.wait_for(self.channel.channel_ready(), 20)
        metadata = signed_metadata(self.secret, CONNECT_METHOD, self.device_id, b"")
        self.call = rpc.DeviceGatewayStub(self.channel).Connect(metadata=metadata)
        spec = pb.SymbolSpec(
            name=INSTRUMENT,
            contract_size="100",
            tick_size="0.01",
            tick_value="1",
            volume_min="0.01",
            volume_step="0.01",
            volume_max="100",
        )
        hello = pb.Hello(
            bridge_version="bench", account_currency="USD", balance="10000", equity="10000", symbols=[spec]
        )
        await self._write(pb.DeviceFrame(hello=hello), track=False)
        heartbeat_seconds = 15
        while True:
            frame = await asyncio.wait_for(self.call.read(), 20)
            if frame is grpc.aio.EOF:
                raise ConnectionError("stream ended before Welcome")
            if frame.WhichOneof("body") == "welcome":
                heartbeat_seconds = max(1, frame.welcome.heartbeat_seconds or 15)
                break
        self.tasks = [
            asyncio.create_task(self._read()),
            asyncio.create_task(self._heartbeat(heartbeat_seconds)),
        ]

    async def _write(self, frame: Any, *, track: bool) -> None:
        async with self.lock:
            self.sequence += 1
            frame.frame_id = f"{self.device_id[:8]}-{self.sequence}-{secrets.token_hex(4)}"
            if track:
                self.pending[frame.frame_id] = (time.time(), self.samples.phase)
                self.drained.clear()
            await self.call.write(frame)

    async def _heartbeat(self, seconds: int) -> None:
        from signalhub.v1 import gateway_pb2 as pb

        while True:
            await asyncio.sleep(seconds)
            await self._write(pb.DeviceFrame(heartbeat=pb.Heartbeat()), track=False)

    async def _read(self) -> None:
        import grpc

        from signalhub.v1 import gateway_pb2 as pb

        try:
            while True:
                frame = await self.call.read()
                if frame is grpc.aio.EOF:
                    return
                now = time.time()
                kind = frame.WhichOneof("body")
                if kind == "receipt":
                    written = self.pending.pop(frame.receipt.frame_id, None)
                    if frame.receipt.status not in (pb.RECEIPT_STATUS_ACCEPTED, pb.RECEIPT_STATUS_DUPLICATE):
                        self.samples.rejected += 1
                    if written is not None and written[1] != self.samples.phase:
                        self.samples.late += 1
                    elif written is not None:
                        self.samples.receipts.append((written[0], now))
                    if not self.pending:
                        self.drained.set()
                elif kind == "instruction":
                    await self._on_instruction(frame.instruction, now)
        except grpc.aio.AioRpcError as exc:
            self.samples.errors.append(f"{exc.code().name}: {exc.details()}")

    async def _on_instruction(self, sealed: Any, received: float) -> None:
        from google.protobuf.timestamp_pb2 import Timestamp

        from signalhub.v1 import gateway_pb2 as pb

        instruction = pb.Instruction.FromString(self.sealer.open(sealed.nonce, sealed.ciphertext))
        if instruction.WhichOneof("body") != "delivery":
            return
        delivery = instruction.delivery
        self.samples.deliveries.append((delivery.signal_id, self.device_id, received, delivery.attempt))
        first = delivery.delivery_id not in self.seen
        self.seen.add(delivery.delivery_id)
        await self._write(
            pb.DeviceFrame(ack=pb.Ack(delivery_id=delivery.delivery_id, stage=pb.ACK_STAGE_RECEIVED)), track=True
        )
        if not first:
            return
        await self._write(
            pb.DeviceFrame(ack=pb.Ack(delivery_id=delivery.delivery_id, stage=pb.ACK_STAGE_PLACED)), track=True
        )
        stamp = Timestamp()
        stamp.GetCurrentTime()
        fill = pb.Fill(
            delivery_id=delivery.delivery_id,
            broker_ticket=str(abs(hash(delivery.delivery_id)) % 10**9),
            price=delivery.entry_price or "2000.00",
            volume=delivery.volume,
            fill_time=stamp,
        )
        await self._write(pb.DeviceFrame(fill=fill), track=True)

    async def echo_frames(self, count: int) -> None:
        """Bare limit: ``count`` ack-sized frames written back to back (the echo server receipts each)."""
        from signalhub.v1 import gateway_pb2 as pb

        for _ in range(count):
            ack = pb.Ack(delivery_id=str(uuid.uuid4()), stage=pb.ACK_STAGE_PLACED)
            await self._write(pb.DeviceFrame(ack=ack), track=True)

    async def echo_one(self) -> None:
        from signalhub.v1 import gateway_pb2 as pb

        ack = pb.Ack(delivery_id=str(uuid.uuid4()), stage=pb.ACK_STAGE_PLACED)
        await self._write(pb.DeviceFrame(ack=ack), track=True)

    async def drain(self, within: float = 30.0) -> None:
        """Wait until every tracked frame has its receipt (or give up after ``within`` seconds)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.drained.wait(), within)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.call is not None:
            self.call.cancel()
        if self.channel is not None:
            await self.channel.close()


def worker_main(spec: WorkerSpec, conn: Connection) -> None:
    """A load process: holds its share of the devices and answers the coordinator's commands."""
    asyncio.run(_worker(spec, conn))


async def _connect_one(
    spec: WorkerSpec, device_id: str, shown: str, samples: Samples, gate: asyncio.Semaphore
) -> SimDevice | None:
    device = SimDevice(device_id, shown, spec.address, samples)
    async with gate:
        try:
            await device.connect()
        except Exception as exc:
            code = getattr(exc, "code", None)
            samples.errors.append(f"{code().name if callable(code) else type(exc).__name__}: {exc}")
            await device.close()
            return None
    return device


async def _worker(spec: WorkerSpec, conn: Connection) -> None:
    samples = Samples()
    devices: list[SimDevice] = []
    while True:
        command, *args = await asyncio.to_thread(conn.recv)
        if command == "connect":
            gate = asyncio.Semaphore(spec.connect_concurrency)
            found = await asyncio.gather(*(_connect_one(spec, d, s, samples, gate) for d, s in spec.devices))
            devices = [d for d in found if d is not None]
            conn.send(("connected", len(devices), samples.errors[:3]))
        elif command == "echo":
            (count,) = args
            await asyncio.gather(*(d.echo_frames(count) for d in devices))
            await asyncio.gather(*(d.drain() for d in devices))
            conn.send(("done",))
        elif command == "echo_paced":
            total, seconds = args  # frames from this process, evenly over ``seconds``, round-robin
            began, sends = time.monotonic(), []
            for k in range(total):
                delay = began + k * seconds / total - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                sends.append(asyncio.create_task(devices[k % len(devices)].echo_one()))
            await asyncio.gather(*sends)
            await asyncio.gather(*(d.drain() for d in devices))
            conn.send(("done",))
        elif command == "count":
            (signal_ids,) = args
            wanted = set(signal_ids)
            conn.send(("count", sum(1 for s, *_ in samples.deliveries if s in wanted), len(samples.receipts)))
        elif command == "drain":
            (within,) = args
            await asyncio.gather(*(d.drain(within) for d in devices))
            conn.send(("drained", sum(len(d.pending) for d in devices)))
        elif command == "collect":
            conn.send(
                ("samples", samples.deliveries, samples.receipts, samples.rejected, samples.errors[:5], samples.late)
            )
            samples = Samples(phase=samples.phase + 1)
            for device in devices:
                device.samples = samples
        elif command == "close":
            await asyncio.gather(*(d.close() for d in devices))
            conn.send(("closed",))
            return


class LoadGenerator:
    """The coordinator's side of the load processes."""

    def __init__(self, address: str, devices: Sequence[tuple[str, str]], processes: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.processes: list[Any] = []
        share = [tuple(devices[i::processes]) for i in range(processes)]
        for index, chunk in enumerate(share):
            if not chunk:
                continue
            mine, theirs = context.Pipe()
            process = context.Process(target=worker_main, args=(WorkerSpec(index, address, chunk), theirs), daemon=True)
            process.start()
            self.pipes.append(mine)
            self.processes.append(process)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    async def ask(self, *command: Any) -> list[tuple[Any, ...]]:
        for pipe in self.pipes:
            pipe.send(command)
        return list(await asyncio.gather(*(asyncio.to_thread(pipe.recv) for pipe in self.pipes)))

    async def connect(self) -> tuple[int, list[str]]:
        answers = await self.ask("connect")
        return sum(a[1] for a in answers), [e for a in answers for e in a[2]]

    async def collect(self) -> Samples:
        merged = Samples()
        for answer in await self.ask("collect"):
            merged.deliveries.extend(answer[1])
            merged.receipts.extend(answer[2])
            merged.rejected += answer[3]
            merged.errors.extend(answer[4])
            merged.late += answer[5]
        return merged

    async def drain(self, within: float) -> int:
        """Wait (at most ``within`` seconds) for every written frame's receipt; the number still missing."""
        return sum(a[1] for a in await self.ask("drain", within))

    async def count(self, signal_ids: Sequence[str]) -> tuple[int, int]:
        answers = await self.ask("count", list(signal_ids))
        return sum(a[1] for a in answers), sum(a[2] for a in answers)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ask("close"), 30)
        for process in self.processes:
            process.join(5)
            if process.is_alive():
                process.kill()


# ------------------------------------------------------------------------------------- echo server


def echo_server_main(conn: Connection) -> None:
    """Bare limit: DeviceGateway.Connect that answers Hello with Welcome and every frame with a Receipt,
    touching no database."""
    asyncio.run(_echo_server(conn))


async def _echo_server(conn: Connection) -> None:
    import grpc

    from backoffice.serving import server_options
    from signalhub.v1 import gateway_pb2 as pb
    from signalhub.v1 import gateway_pb2_grpc as rpc

    class Echo:
        async def Connect(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
            async for frame in requests:
                if frame.WhichOneof("body") == "hello":
                    yield pb.GatewayFrame(welcome=pb.Welcome(session_id="echo", heartbeat_seconds=15))
                receipt = pb.Receipt(frame_id=frame.frame_id, status=pb.RECEIPT_STATUS_ACCEPTED)
                yield pb.GatewayFrame(receipt=receipt)

    from backoffice.config import Settings

    server = grpc.aio.server(options=server_options(Settings()))
    rpc.add_DeviceGatewayServicer_to_server(Echo(), server)  # type: ignore[arg-type]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    conn.send(port)
    await asyncio.to_thread(conn.recv)  # any message stops it
    await server.stop(0)


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time a process has used so far (Linux)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float | None:
    """CPU time (all cores) the whole machine spent busy so far (Linux /proc/stat)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU used during one scenario, as a share of one core: each server, the load processes together,
    and the whole machine (on a 2-core machine, 200 % is saturation)."""

    def __init__(self, pids: dict[str, int | None], load_pids: Sequence[int] = ()) -> None:
        self.pids = pids
        self.load_pids = list(load_pids)
        self.began = time.monotonic()
        self.start = {name: cpu_seconds(pid) for name, pid in pids.items()}
        self.load_start = [cpu_seconds(pid) for pid in self.load_pids]
        self.machine_start = machine_busy_seconds()

    def report(self, report: Report, scenario: str, frames: int | None = None) -> None:
        elapsed = time.monotonic() - self.began
        if elapsed <= 0:
            return
        for name, pid in self.pids.items():
            before, after = self.start[name], cpu_seconds(pid)
            if before is None or after is None:
                continue
            report.add(f"{name}_cpu_share", 100 * (after - before) / elapsed, "% of a core", scenario)
            if frames:
                report.add(f"{name}_cpu_per_frame", 1e6 * (after - before) / frames, "us", scenario)
        used = [(b, cpu_seconds(pid)) for b, pid in zip(self.load_start, self.load_pids, strict=True)]
        load = sum(a - b for b, a in used if a is not None and b is not None)
        if self.load_pids:
            report.add("load_generator_cpu_share", 100 * load / elapsed, "% of a core", scenario)
        machine_end = machine_busy_seconds()
        if self.machine_start is not None and machine_end is not None:
            busy = 100 * (machine_end - self.machine_start) / elapsed
            report.add("machine_cpu_busy", busy, f"% of {os.cpu_count()} cores", scenario)


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


# -------------------------------------------------------------------------------------------- stack


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Stack:
    settings: Any  # backoffice.config.Settings
    backoffice: str
    gateway: str
    gateway_pid: int | None
    backoffice_pid: int | None = None

    @property
    def pids(self) -> dict[str, int | None]:
        return {"gateway": self.gateway_pid, "backoffice": self.backoffice_pid}


async def wait_serving(address: str, within: float = 60) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + within
    async with grpc.aio.insecure_channel(address) as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address} is not serving after {within:g} s")
            await asyncio.sleep(0.2)


async def start_stack(args: argparse.Namespace, stack: AsyncExitStack, sync_stack: ExitStack) -> Stack:
    from sqlalchemy.engine import make_url

    from backoffice import db, local, schema
    from backoffice.config import Settings

    if args.backoffice and args.gateway:
        settings = local.load_settings()
        print(f"== using the running stack: back office {args.backoffice}, gateway {args.gateway}", flush=True)
        return Stack(settings, args.backoffice, args.gateway, args.gateway_pid)

    server_url = os.environ.get("SIGNALHUB_DATABASE_URL")
    redis_url = os.environ.get("SIGNALHUB_REDIS_URL")
    if not server_url or not redis_url:
        if port_open(5432) and port_open(6379):
            server_url, redis_url = server_url or DEFAULT_SERVER_URL, redis_url or DEFAULT_REDIS_URL
        else:
            from backoffice import embedded

            print("== no Postgres/Redis on 127.0.0.1: starting embedded ones under .signalhub/bench-servers")
            urls = embedded.start(REPO / ".signalhub" / "bench-servers", sync_stack)
            server_url, redis_url = urls.database_url, urls.redis_url
    name = f"signalhub_bench_{uuid.uuid4().hex[:10]}"
    database_url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "proto"), os.environ.get("PYTHONPATH", "")]),
        "SIGNALHUB_DATABASE_URL": database_url,
        "SIGNALHUB_REDIS_URL": redis_url,
        "SIGNALHUB_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "SIGNALHUB_MASTER_KEY_ID": "bench",
        "SIGNALHUB_BACKOFFICE_ADDRESS": f"127.0.0.1:{free_port()}",
        "SIGNALHUB_GATEWAY_ADDRESS": f"127.0.0.1:{free_port()}",
        "SIGNALHUB_LOG_LEVEL": "WARNING",
    }
    settings = Settings.from_env(env)
    await db.ensure_database(settings.database_url)
    stack.push_async_callback(drop_database, settings.database_url)
    await asyncio.to_thread(schema.upgrade, settings)
    processes: dict[str, subprocess.Popen[bytes]] = {}
    logs = REPO / "bench" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for process in ("backoffice", "gateway"):
        log_file = (logs / f"{process}.log").open("wb")
        sync_stack.callback(log_file.close)
        child_env = {**env, "SIGNALHUB_METRICS_ADDRESS": f"127.0.0.1:{free_port()}"}
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
    )


def spawn_server(process: str, env: dict[str, str], log_file: Any) -> subprocess.Popen[bytes]:
    """`signalhub serve <process>` as a child, its output in bench/logs/."""
    return subprocess.Popen(
        [sys.executable, "-m", "backoffice.cli", "serve", process],
        env=env,
        cwd=REPO,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )


async def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, 15)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait, 5)


async def drop_database(database_url: str) -> None:
    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    dsn = url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')
    finally:
        await conn.close()


# ---------------------------------------------------------------------------------------- provision


@dataclass
class Account:
    user_id: str
    token: str
    devices: list[str]


@dataclass
class World:
    accounts: list[Account]
    devices: list[tuple[str, str]]  # (id, shs_ secret) in creation order
    manual: tuple[str, str]  # producer (id, secret) with MANUAL subscribers
    auto: tuple[str, str]  # producer with AUTO subscribers
    idle: tuple[str, str]  # producer without subscribers


async def provision(stack: Stack, users: int, devices: int) -> World:
    """What an admin's tools do (domain functions), then subscriptions over the public API."""
    import grpc

    from backoffice import accounts, bootstrap
    from backoffice import devices as device_domain
    from backoffice.auth import Caller
    from backoffice.models import ActorType, Role
    from signalhub.v1 import backoffice_pb2 as bpb
    from signalhub.v1 import backoffice_pb2_grpc as brpc

    run = uuid.uuid4().hex[:8]
    made: list[Account] = []
    creds: list[tuple[str, str]] = []
    async with bootstrap.resources(stack.settings) as res:
        async with res.sessions.begin() as session:
            for i in range(users):
                user, token = await accounts.create_user(
                    session, email=f"bench-{run}-{i}@bench.signalhub", role=Role.USER
                )
                made.append(Account(str(user.id), token, []))
            producers = []
            for name in ("manual", "auto", "idle"):
                producer, secret = await accounts.create_producer(session, res.vault, name=f"bench {name} {run}")
                producers.append((str(producer.id), secret))
        for start in range(0, devices, 250):
            async with res.sessions.begin() as session:
                for i in range(start, min(devices, start + 250)):
                    owner = made[i % users]
                    caller = Caller(ActorType.USER, uuid.UUID(owner.user_id), Role.USER)
                    device, secret = await device_domain.register_device(
                        session, res.vault, owner=caller, name=f"bench device {i}"
                    )
                    owner.devices.append(str(device.id))
                    creds.append((str(device.id), secret))
    async with grpc.aio.insecure_channel(stack.backoffice) as channel:
        approvals = brpc.ApprovalServiceStub(channel)
        gate = asyncio.Semaphore(16)

        async def subscribe(account: Account, producer_id: str, mode: bpb.SubscriptionMode.ValueType) -> None:
            request = bpb.SubscribeRequest(
                request_id=str(uuid.uuid4()),
                producer_id=producer_id,
                mode=mode,
                sizing=bpb.SIZING_MODE_FIXED_VOLUME,
                sizing_value="0.01",
            )
            async with gate:
                await approvals.Subscribe(request, metadata=(("authorization", f"Bearer {account.token}"),), timeout=30)

        await asyncio.gather(
            *(subscribe(a, producers[0][0], bpb.SUBSCRIPTION_MODE_MANUAL) for a in made),
            *(subscribe(a, producers[1][0], bpb.SUBSCRIPTION_MODE_AUTO) for a in made),
        )
    return World(made, creds, producers[0], producers[1], producers[2])


# ------------------------------------------------------------------------------------------ scenarios


async def bare_postgres(stack: Stack, report: Report, commits: int) -> float | None:
    import asyncpg
    from sqlalchemy.engine import make_url

    dsn = make_url(stack.settings.database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    table = f"bench_commit_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, at timestamptz NOT NULL)")
        latencies = []
        for _ in range(commits):
            began = time.perf_counter()
            await conn.execute(f"INSERT INTO {table} (at) VALUES (now())")  # noqa: S608 - a generated name
            latencies.append(time.perf_counter() - began)
        await conn.execute(f"DROP TABLE {table}")
    finally:
        await conn.close()
    report.add("postgres_commit_p50", ms(percentile(latencies, 50)), "ms", "bare")
    report.add("postgres_commit_p99", ms(percentile(latencies, 99)), "ms", "bare")
    return percentile(latencies, 50)


async def bare_redis(stack: Stack, report: Report, publishes: int) -> float | None:
    from redis.asyncio import Redis

    redis = Redis.from_url(stack.settings.redis_url)
    try:
        latencies = []
        for _ in range(publishes):
            began = time.perf_counter()
            await redis.publish("sh:bench", b"wake")
            latencies.append(time.perf_counter() - began)
    finally:
        await redis.aclose()
    report.add("redis_publish_p50", ms(percentile(latencies, 50)), "ms", "bare")
    report.add("redis_publish_p99", ms(percentile(latencies, 99)), "ms", "bare")
    return percentile(latencies, 50)


def throughput(receipts: Sequence[tuple[float, float]]) -> float | None:
    if len(receipts) < 2:
        return None
    span = max(r for _, r in receipts) - min(w for w, _ in receipts)
    return len(receipts) / span if span > 0 else None


async def bare_echo(args: argparse.Namespace, world: World, report: Report) -> dict[str, float | None]:
    """The same load generator against an echo stream: connect N, RSS per stream, a low and a steady paced
    rate (the floors of delivery and ack latency), then a burst (the ceiling of throughput)."""
    context = multiprocessing.get_context("spawn")
    mine, theirs = context.Pipe()
    server = context.Process(target=echo_server_main, args=(theirs,), daemon=True)
    server.start()
    port = await asyncio.to_thread(mine.recv)
    load = LoadGenerator(f"127.0.0.1:{port}", world.devices, args.processes)
    found: dict[str, float | None] = {}
    try:
        before = rss_kib(server.pid or 0)
        connected, errors = await load.connect()
        await asyncio.sleep(1)
        after = rss_kib(server.pid or 0)
        if connected < len(world.devices):
            report.note(f"echo: only {connected} of {len(world.devices)} streams connected: {errors[:2]}")
        if not connected:
            return found
        if before is not None and after is not None:
            report.add("echo_rss_per_stream", (after - before) / connected, "KiB", "bare")
        await load.collect()
        low = args.approval_rate
        await load.ask("echo_paced", max(1, round(low * args.low_seconds / len(load.pipes))), args.low_seconds)
        rtts = [r - w for w, r in (await load.collect()).receipts]
        found["rtt"] = percentile(rtts, 50)
        report.add("echo_rtt_p50", ms(found["rtt"]), "ms", f"bare, {low:g} frames/s")
        report.add("echo_rtt_p99", ms(percentile(rtts, 99)), "ms", f"bare, {low:g} frames/s")
        await load.ask("echo_paced", round(args.ack_rate * args.ack_seconds / len(load.pipes)), args.ack_seconds)
        steady = (await load.collect()).receipts
        where = f"bare, {args.ack_rate:g} frames/s"
        report.add("echo_steady_rtt_p50", ms(percentile([r - w for w, r in steady], 50)), "ms", where)
        report.add("echo_steady_rtt_p99", ms(percentile([r - w for w, r in steady], 99)), "ms", where)
        await load.ask("echo", args.burst_signals * 3)
        burst = (await load.collect()).receipts
        found["echo_rate"] = throughput(burst)
        where = f"bare, {args.burst_signals * 3} frames per stream at once"
        report.add("echo_burst_throughput", found["echo_rate"], "frames/s", where)
        report.add("echo_burst_rtt_p99", ms(percentile([r - w for w, r in burst], 99)), "ms", where)
        return found
    finally:
        await load.close()
        mine.send("stop")
        server.join(10)
        if server.is_alive():
            server.kill()


class Backoffice:
    """The public API as the bench's users and producers use it."""

    def __init__(self, stack: Stack, world: World) -> None:
        import grpc

        from backoffice.producer import ProducerClient, RetryPolicy
        from signalhub.v1 import backoffice_pb2_grpc as brpc

        self.channel = grpc.aio.insecure_channel(stack.backoffice)
        self.approvals = brpc.ApprovalServiceStub(self.channel)
        self.approve_latencies: list[float] = []
        once = RetryPolicy(max_attempts=1)
        self.manual = ProducerClient(stack.backoffice, *world.manual, deadline_seconds=30)
        self.auto = ProducerClient(stack.backoffice, *world.auto, deadline_seconds=30)
        self.idle = ProducerClient(stack.backoffice, *world.idle, deadline_seconds=10, retry=once)

    async def close(self) -> None:
        for client in (self.manual, self.auto, self.idle):
            await client.close()
        await self.channel.close()

    @staticmethod
    async def signal(client: Any) -> str:
        submitted = await client.submit_signal(
            INSTRUMENT, "buy", signal_time=datetime.now(UTC), expire_time=timedelta(seconds=300)
        )
        return str(submitted.id)

    async def approve(self, account: Account, signal_id: str, device_ids: Sequence[str] = ()) -> float:
        """Approve; returns the approval's decide_time (Unix seconds), the origin of the latency."""
        from signalhub.v1 import backoffice_pb2 as bpb

        request = bpb.ApproveSignalRequest(signal_id=signal_id, request_id=str(uuid.uuid4()), device_ids=device_ids)
        began = time.perf_counter()
        approval = await self.approvals.ApproveSignal(
            request, metadata=(("authorization", f"Bearer {account.token}"),), timeout=30
        )
        self.approve_latencies.append(time.perf_counter() - began)
        return approval.decide_time.ToDatetime(tzinfo=UTC).timestamp()


async def paced(count: int, rate: float, make: Callable[[int], Coroutine[Any, Any, None]]) -> None:
    """Start ``make(i)`` at ``rate`` per second (open loop), then wait for all."""
    began = time.monotonic()
    tasks: list[asyncio.Task[None]] = []
    for i in range(count):
        delay = began + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(make(i)))
    await asyncio.gather(*tasks)


async def wait_for_deliveries(load: LoadGenerator, signal_ids: Sequence[str], expected: int, within: float) -> int:
    deadline = time.monotonic() + within
    got = 0
    while time.monotonic() < deadline:
        got, _ = await load.count(signal_ids)
        if got >= expected:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # let the last receipts arrive
    return got


@dataclass
class Run:
    """What the scenarios against the real system share."""

    args: argparse.Namespace
    stack: Stack
    world: World
    report: Report
    bare: dict[str, float | None]
    load: LoadGenerator
    api: Backoffice
    connected: int = 0

    @property
    def per_user(self) -> int:
        return max(1, len(self.world.devices) // len(self.world.accounts))


async def approval_to_delivery(run: Run) -> None:
    """One delivery per approval (one user, one of their devices), approvals paced."""
    args, world, report = run.args, run.world, run.report
    meter = CpuMeter(run.stack.pids, run.load.pids)
    approvals: dict[tuple[str, str], float] = {}
    run.api.approve_latencies.clear()
    rounds = max(1, min(run.per_user, -(-args.latency_samples // len(world.accounts))))
    for r in range(rounds):
        signal_id = await run.api.signal(run.api.manual)

        async def approve_one(i: int, signal_id: str = signal_id, r: int = r) -> None:
            account = world.accounts[i]
            device_id = account.devices[r % len(account.devices)]
            approvals[(signal_id, device_id)] = await run.api.approve(account, signal_id, [device_id])

        await paced(len(world.accounts), args.approval_rate, approve_one)
    signal_ids = sorted({s for s, _ in approvals})
    await wait_for_deliveries(run.load, signal_ids, len(approvals), args.wait_seconds)
    samples = await run.load.collect()
    first: dict[tuple[str, str], float] = {}
    for signal_id, device_id, received, _ in samples.deliveries:
        key = (signal_id, device_id)
        if key in approvals:
            first[key] = min(received, first.get(key, received))
    latencies = [first[k] - approvals[k] for k in first]
    where = f"{run.connected} devices connected, {len(approvals)} approvals at {args.approval_rate:g}/s"
    report.add("approval_to_delivery_p50", ms(percentile(latencies, 50)), "ms", where, at_most=5)
    report.add("approval_to_delivery_p95", ms(percentile(latencies, 95)), "ms", where)
    report.add("approval_to_delivery_p99", ms(percentile(latencies, 99)), "ms", where, at_most=20)
    report.add("approve_signal_rpc_p50", ms(percentile(run.api.approve_latencies, 50)), "ms", where)
    report.add("approve_signal_rpc_p99", ms(percentile(run.api.approve_latencies, 99)), "ms", where)
    floor = sum(v for v in (run.bare.get("commit"), run.bare.get("publish"), run.bare.get("rtt")) if v is not None)
    p50 = percentile(latencies, 50)
    if p50 is not None and floor > 0:
        report.add("approval_to_delivery_p50_over_bare", p50 / floor, "x", f"{where}; bare = commit+publish+echo rtt")
    meter.report(report, where)
    if len(first) < len(approvals):
        report.note(f"{len(approvals) - len(first)} of {len(approvals)} approved deliveries did not arrive in time")


async def fanout(run: Run) -> None:
    """One AUTO signal to every connected device."""
    meter = CpuMeter(run.stack.pids, run.load.pids)
    t0 = time.time()
    signal_id = await run.api.signal(run.api.auto)
    got = await wait_for_deliveries(run.load, [signal_id], run.connected, run.args.wait_seconds)
    samples = await run.load.collect()
    arrivals = [received - t0 for s, _, received, attempt in samples.deliveries if s == signal_id and attempt == 1]
    where = f"one AUTO signal to {run.connected} devices (the target is for 10,000)"
    last = ms(max(arrivals)) if len(arrivals) >= run.connected else None  # not all arrived: not met
    run.report.add("fanout_last_delivery", last, "ms", where, at_most=1000)
    run.report.add("fanout_p50_delivery", ms(percentile(arrivals, 50)), "ms", where)
    meter.report(run.report, where)
    if got < run.connected:
        run.report.note(f"fan-out: {got} of {run.connected} devices got the signal within {run.args.wait_seconds:g} s")


async def ack_steady(run: Run) -> None:
    """Acks at a steady offered rate: whole-account approvals (one delivery per device, three frames
    each: RECEIVED, PLACED, Fill), paced."""
    args, world = run.args, run.world
    meter = CpuMeter(run.stack.pids, run.load.pids)
    approval_rate = args.ack_rate / (3 * run.per_user)
    count = max(1, int(approval_rate * args.ack_seconds))
    signal_ids = []
    for start in range(0, count, len(world.accounts)):
        signal_id = await run.api.signal(run.api.manual)
        signal_ids.append(signal_id)

        async def approve_account(i: int, signal_id: str = signal_id) -> None:
            await run.api.approve(world.accounts[i], signal_id)

        await paced(min(len(world.accounts), count - start), approval_rate, approve_account)
    await wait_for_deliveries(run.load, signal_ids, count * run.per_user, args.wait_seconds)
    missing = await run.load.drain(args.wait_seconds)
    samples = await run.load.collect()
    latencies = [r - w for w, r in samples.receipts]
    if missing:
        run.report.note(f"steady: {missing} frames still had no receipt after {args.wait_seconds:g} s")
    where = f"~{args.ack_rate:g} ack/fill frames/s offered for {args.ack_seconds:g} s"
    run.report.add("ack_to_receipt_p50", ms(percentile(latencies, 50)), "ms", where)
    run.report.add("ack_to_receipt_p99", ms(percentile(latencies, 99)), "ms", where, at_most=10)
    run.report.add("ack_steady_throughput", throughput(samples.receipts), "frames/s", where)
    meter.report(run.report, where, len(samples.receipts))
    if samples.rejected:
        run.report.note(f"{samples.rejected} frames were answered REJECTED")


async def ack_burst(run: Run) -> None:
    """Several AUTO signals at once, every device acking each (RECEIVED, PLACED, Fill)."""
    args = run.args
    meter = CpuMeter(run.stack.pids, run.load.pids)
    signal_ids = [await run.api.signal(run.api.auto) for _ in range(args.burst_signals)]
    await wait_for_deliveries(run.load, signal_ids, run.connected * args.burst_signals, 2 * args.wait_seconds)
    missing = await run.load.drain(2 * args.wait_seconds)
    samples = await run.load.collect()
    rate = throughput(samples.receipts)
    if missing:
        run.report.note(f"burst: {missing} frames still had no receipt after {2 * args.wait_seconds:g} s")
    where = f"{args.burst_signals} AUTO signals x {run.connected} devices x 3 frames"
    run.report.add("ack_burst_frames_receipted", len(samples.receipts), "frames", where)
    run.report.add("ack_burst_throughput", rate, "frames/s", where, at_least=5000)
    run.report.add("ack_burst_receipt_p99", ms(percentile([r - w for w, r in samples.receipts], 99)), "ms", where)
    meter.report(run.report, where, len(samples.receipts))
    echo_rate = run.bare.get("echo_rate")
    if rate is not None and echo_rate:
        run.report.add("ack_burst_over_echo_throughput", rate / echo_rate, "ratio", where, at_least=0.5)


async def submit_signals(run: Run) -> None:
    """Signed SubmitSignal at a steady rate, from a producer without subscribers."""
    args = run.args
    meter = CpuMeter(run.stack.pids, run.load.pids)
    latencies: list[float] = []
    failures: list[str] = []

    async def submit(_: int) -> None:
        began = time.perf_counter()
        try:
            await Backoffice.signal(run.api.idle)
        except Exception as exc:
            failures.append(str(exc))
        else:
            latencies.append(time.perf_counter() - began)

    await paced(int(args.submit_rate * args.submit_seconds), args.submit_rate, submit)
    where = f"{args.submit_rate:g} signed SubmitSignal/s for {args.submit_seconds:g} s"
    run.report.add("submit_signal_p50", ms(percentile(latencies, 50)), "ms", where)
    run.report.add("submit_signal_p99", ms(percentile(latencies, 99)), "ms", where, at_most=15)
    run.report.add("submit_signal_failed", len(failures), "calls", where, at_most=0)
    meter.report(run.report, where)
    if failures:
        run.report.note(f"{len(failures)} SubmitSignal calls failed, e.g. {failures[0]}")


SCENARIOS: tuple[tuple[str, Callable[[Run], Coroutine[Any, Any, None]]], ...] = (
    ("approval to delivery", approval_to_delivery),
    ("fan-out", fanout),
    ("acks, steady", ack_steady),
    ("acks, burst", ack_burst),
    ("signed SubmitSignal", submit_signals),
)


async def gateway_scenarios(
    args: argparse.Namespace, stack: Stack, world: World, report: Report, bare: dict[str, float | None]
) -> None:
    where = f"{len(world.devices)} devices on one gateway"
    run = Run(
        args,
        stack,
        world,
        report,
        bare,
        LoadGenerator(stack.gateway, world.devices, args.processes),
        Backoffice(stack, world),
    )
    try:
        before = rss_kib(stack.gateway_pid) if stack.gateway_pid else None
        began = time.monotonic()
        run.connected, errors = await run.load.connect()
        report.add("streams_connected", run.connected, "streams", where, at_least=len(world.devices))
        report.add("connect_all_seconds", time.monotonic() - began, "s", where)
        if run.connected == 0:
            report.note(f"no stream reached the gateway: {errors[:3]}")
            return
        if run.connected < len(world.devices):
            report.note(f"only {run.connected} streams connected: {errors[:3]}")
        await asyncio.sleep(2)
        after = rss_kib(stack.gateway_pid) if stack.gateway_pid else None
        if before is not None and after is not None:
            # 10,000 streams under 1 GiB on one gateway process: at most 104.9 KiB each.
            report.add("gateway_rss_per_stream", (after - before) / run.connected, "KiB", where, at_most=104.8)
        idle = CpuMeter(stack.pids, run.load.pids)
        await asyncio.sleep(args.idle_seconds)
        idle.report(report, f"{run.connected} streams connected, nothing to do")
        await run.load.collect()
        for name, scenario in SCENARIOS:
            began = time.monotonic()
            print(f"== {name}", flush=True)
            try:
                await scenario(run)
            except Exception as exc:
                report.note(f"{name} did not finish: {type(exc).__name__}: {exc}")
                await run.load.collect()
            print(f"   ({time.monotonic() - began:.0f} s)", flush=True)
    finally:
        await run.api.close()
        await run.load.close()


# ------------------------------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="a short run (within 2 minutes)")
    parser.add_argument("--devices", type=int, default=1000, help="simulated bridges (default 1000)")
    parser.add_argument("--users", type=int, default=50, help="accounts the devices are spread over (default 50)")
    parser.add_argument("--processes", type=int, default=4, help="load processes (default 4)")
    parser.add_argument("--backoffice", metavar="HOST:PORT", help="use a running back office (with --gateway)")
    parser.add_argument("--gateway", metavar="HOST:PORT", help="use a running gateway (with --backoffice)")
    parser.add_argument("--gateway-pid", type=int, help="the running gateway's pid, for memory per stream")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results.json")
    args = parser.parse_args(argv)
    if bool(args.backoffice) != bool(args.gateway):
        parser.error("--backoffice and --gateway go together")
    quick = args.quick
    args.latency_samples = 100 if quick else 1000
    args.approval_rate = 20.0
    args.ack_rate = 2000.0
    args.ack_seconds = 4.0 if quick else 20.0
    args.burst_signals = 2 if quick else 10
    args.wait_seconds = 8.0 if quick else 30.0
    args.submit_rate = 500.0
    args.submit_seconds = 1.0 if quick else 10.0
    args.low_seconds = 3.0 if quick else 10.0
    args.idle_seconds = 3.0 if quick else 10.0
    args.commits = 200 if quick else 1000
    args.publishes = 500 if quick else 2000
    return args


def write_results(path: Path, report: Report) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(f) for f in report.figures], indent=2) + "\n")


async def main_async(args: argparse.Namespace) -> int:
    report = Report()
    began = time.monotonic()

    def phase(name: str) -> None:
        print(f"== {name} (at {time.monotonic() - began:.0f} s)", flush=True)

    try:
        async with AsyncExitStack() as stack:
            with ExitStack() as sync_stack:
                system = await start_stack(args, stack, sync_stack)
                phase(f"provisioning {args.users} users, {args.devices} devices, 3 producers")
                world = await provision(system, args.users, args.devices)
                phase("bare limits: Postgres commit, Redis publish")
                bare: dict[str, float | None] = {
                    "commit": await bare_postgres(system, report, args.commits),
                    "publish": await bare_redis(system, report, args.publishes),
                }
                phase(f"bare limits: echo stream, {args.devices} streams over {args.processes} load processes")
                bare.update(await bare_echo(args, world, report))
                phase(f"the system: {args.devices} simulated bridges on one gateway")
                await gateway_scenarios(args, system, world, report, bare)
                phase("stopping")
    finally:
        write_results(args.output, report)
    missed = [f.name for f in report.figures if f.met is False]
    print(f"== {len(report.figures)} figures in {time.monotonic() - began:.0f} s -> {args.output}", flush=True)
    if missed:
        print("== targets not met: " + ", ".join(missed), flush=True)
    return 0


def raise_file_limit() -> None:
    """1,000 streams (and the servers' database connections) need more than 1,024 descriptors."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    raise_file_limit()
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
