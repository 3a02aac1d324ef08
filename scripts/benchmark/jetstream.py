"""The broker yardstick: NATS JetStream doing signalhub's two jobs on the same machine in the same run.

Two file-backed streams, one for instructions (a subject per device, ``<prefix>.dev.<id>``) and one for
the uplink (``<prefix>.up.<id>``). The devices are spread over the same number of spawned load
processes as the gateway's, each device with a NATS connection of its own (as a bridge would have) and
a durable push consumer of its own subject with explicit acks. Fan-out: one instruction-sized message
per device (signalhub seals each delivery for its device, so one message per device subject), each
published with its PubAck awaited, timed from the first publish to the last device's receipt. Uplink
burst: every device publishes ack-sized frames to its uplink subject, pipelined as the simulated bridges
write theirs (all at once, each PubAck awaited); throughput is frames over the span from the first
publish to the last PubAck. The server's version and the streams' storage settings name the figures.
The streams (and so the consumers) are deleted at the end; an unreachable server is noted and its
figures are None.

A load process imports this module: it imports no server module (nats, the protocol's messages, and
``report``/``options``, which import nothing server-side).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import nats
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig
from nats.js.client import JetStreamContext

from signalhub.v1 import gateway_pb2 as pb

from .options import Options
from .processes import Message, ProcessPool, run_commands, shares
from .report import Report, ms, percentile
from .simdevice import delivery

CONNECT_TIMEOUT = 5
CONNECT_CONCURRENCY = 25
API_TIMEOUT = 20.0  # a JetStream API call (a stream, a consumer) on a loaded machine


@dataclass(frozen=True)
class FleetSpec:
    url: str
    prefix: str  # subjects: <prefix>.dev.<id> (instructions), <prefix>.up.<id> (uplink)
    down: str  # the instructions' stream
    devices: tuple[str, ...]


def instruction_payload() -> bytes:
    """Bytes the size of a sealed delivery frame (nonce, ciphertext and tag) as the gateway sends it."""
    plain = len(delivery(str(uuid.uuid4())).SerializeToString())
    sealed = pb.SealedInstruction(nonce=os.urandom(12), ciphertext=os.urandom(plain + 16))
    return pb.GatewayFrame(instruction=sealed).SerializeToString()


def ack_payload(device_id: str, sequence: int) -> bytes:
    """An ack frame as a bridge writes it."""
    ack = pb.Ack(delivery_id=str(uuid.uuid4()), stage=pb.ACK_STAGE_PLACED)
    return pb.DeviceFrame(frame_id=f"{device_id[:8]}-{sequence}-{os.urandom(4).hex()}", ack=ack).SerializeToString()


async def quiet(_: Exception) -> None:
    """NATS errors are counted where they surface (a failed call), not logged per connection."""


# No reconnects: a refused first connection fails at once (without max_reconnect_attempts, nats-py keeps
# trying the first connection for ever, whatever allow_reconnect says).
CONNECT_OPTIONS: dict[str, Any] = {
    "connect_timeout": CONNECT_TIMEOUT,
    "allow_reconnect": False,
    "max_reconnect_attempts": 1,
    "error_cb": quiet,
}


@dataclass
class JsDevice:
    device_id: str
    conn: Nats
    arrivals: list[float] = field(default_factory=list)


class FleetWorker:
    """One load process's JetStream devices; a method per command of the coordinator."""

    def __init__(self, spec: FleetSpec) -> None:
        self.spec = spec
        self.devices: list[JsDevice] = []
        self.errors: list[str] = []

    async def _connect_one(self, device_id: str, gate: asyncio.Semaphore) -> JsDevice | None:
        async with gate:
            try:
                conn = await nats.connect(self.spec.url, name=device_id, **CONNECT_OPTIONS)
                device = JsDevice(device_id, conn)

                async def received(msg: Msg) -> None:
                    device.arrivals.append(time.time())
                    await msg.ack()

                config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT)
                await conn.jetstream(timeout=API_TIMEOUT).subscribe(
                    f"{self.spec.prefix}.dev.{device_id}",
                    durable=f"dev-{device_id}",
                    stream=self.spec.down,
                    config=config,
                    manual_ack=True,
                    cb=received,
                )
            except Exception as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                return None
        return device

    async def connect(self) -> Message:
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        found = await asyncio.gather(*(self._connect_one(d, gate) for d in self.spec.devices))
        self.devices = [d for d in found if d is not None]
        return ("connected", len(self.devices), self.errors[:3])

    async def count(self) -> Message:
        return ("count", sum(len(d.arrivals) for d in self.devices))

    async def arrivals(self) -> Message:
        found = [t for d in self.devices for t in d.arrivals]
        for device in self.devices:
            device.arrivals.clear()
        return ("arrivals", found)

    async def burst(self, frames: int) -> Message:
        """Every device publishes ``frames`` ack frames to its uplink subject, pipelined (all sent at once,
        each PubAck awaited); (first publish, last PubAck, PubAcks, errors) of this process."""
        first: list[float] = []
        last: list[float] = []
        errors: list[str] = []

        async def publish(js: JetStreamContext, subject: str, payload: bytes) -> None:
            try:
                await js.publish(subject, payload, timeout=30)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                return
            last.append(time.time())

        async def device_burst(device: JsDevice) -> None:
            # Pipelined, as a bridge writes its frames: every publish goes out at once, each PubAck awaited.
            js = device.conn.jetstream()
            subject = f"{self.spec.prefix}.up.{device.device_id}"
            first.append(time.time())
            await asyncio.gather(*(publish(js, subject, ack_payload(device.device_id, k)) for k in range(frames)))

        await asyncio.gather(*(device_burst(d) for d in self.devices))
        return ("burst", min(first, default=None), max(last, default=None), len(last), errors[:3])

    async def close(self) -> Message:
        await asyncio.gather(*(d.conn.close() for d in self.devices), return_exceptions=True)
        return ("closed",)


def fleet_main(spec: FleetSpec, conn: Connection) -> None:
    """A JetStream load process: holds its devices and answers the coordinator's commands."""
    run_commands(FleetWorker(spec), ("connect", "count", "arrivals", "burst", "close"), conn)


class Fleet(ProcessPool):
    """The coordinator's side of the JetStream load processes."""

    def __init__(self, url: str, prefix: str, down: str, devices: Sequence[str], processes: int) -> None:
        super().__init__(fleet_main, [FleetSpec(url, prefix, down, share) for share in shares(devices, processes)])


def report_none(report: Report, where: str) -> None:
    report.add("jetstream_fanout_last", None, "ms", where)
    report.add("jetstream_fanout_p50", None, "ms", where)
    report.add("jetstream_ack_burst_throughput", None, "frames/s", where)


async def bare_jetstream(options: Options, device_ids: Sequence[str], report: Report) -> dict[str, float | None]:
    """The JetStream yardstick (see the module's docstring): streams created, the devices connected and
    subscribed in their load processes, the fan-out, then the uplink burst; the streams are deleted
    whatever happens. Returns "jetstream_fanout_last" (seconds) and "jetstream_rate" (frames/s)."""
    found: dict[str, float | None] = {"jetstream_fanout_last": None, "jetstream_rate": None}
    where = f"NATS JetStream, file storage, {len(device_ids)} devices over {options.processes} load processes"
    try:
        coordinator = await asyncio.wait_for(nats.connect(options.nats, **CONNECT_OPTIONS), 3 * CONNECT_TIMEOUT)
    except Exception as exc:
        report.note(f"JetStream: {options.nats} unreachable ({type(exc).__name__}: {exc}); its figures are n/a")
        report_none(report, where)
        return found
    run = uuid.uuid4().hex[:10]
    prefix, down, up = f"shbench{run}", f"SHBENCH_DOWN_{run}", f"SHBENCH_UP_{run}"
    js = coordinator.jetstream(timeout=API_TIMEOUT)
    fleet: Fleet | None = None
    try:
        await js.add_stream(name=down, subjects=[f"{prefix}.dev.*"], storage=StorageType.FILE)
        uplink = await js.add_stream(name=up, subjects=[f"{prefix}.up.*"], storage=StorageType.FILE)
        where = storage_settings(coordinator, uplink.config, len(device_ids), options.processes)
        fleet = Fleet(options.nats, prefix, down, device_ids, options.processes)
        answers = await fleet.ask("connect")
        connected = sum(a[1] for a in answers)
        if connected < len(device_ids):
            errors = [e for a in answers for e in a[2]]
            report.note(f"JetStream: {connected} of {len(device_ids)} devices subscribed, e.g. {errors[:2]}")
        if connected:
            arrivals = await jetstream_fanout(options, js, fleet, prefix, device_ids, connected)
            found["jetstream_fanout_p50"] = percentile(arrivals, 50)
            if len(arrivals) >= connected:  # otherwise not every subscribed device got it in time
                found["jetstream_fanout_last"] = max(arrivals)
            else:
                report.note(f"JetStream fan-out: {len(arrivals)} of {connected} devices got it in time")
            found["jetstream_rate"] = await jetstream_burst(options, fleet, report, where)
    except Exception as exc:
        report.note(f"JetStream did not finish: {type(exc).__name__}: {exc}")
    finally:
        if fleet is not None:
            await fleet.close()
        for stream in (down, up):
            with contextlib.suppress(Exception):
                await js.delete_stream(stream)  # its consumers with it
        await coordinator.close()
    report.add("jetstream_fanout_last", ms(found["jetstream_fanout_last"]), "ms", where)
    report.add("jetstream_fanout_p50", ms(found.get("jetstream_fanout_p50")), "ms", where)
    report.add("jetstream_ack_burst_throughput", found["jetstream_rate"], "frames/s", where)
    return found


def storage_settings(server: Nats, config: StreamConfig, devices: int, processes: int) -> str:
    """What the JetStream figures were measured on, as the results name them: the server's version and
    the streams' storage, replicas and persistence (a file stream is synced to disk on the server's
    interval, 2 minutes by default, not per message; Postgres commits each uplink batch with fsync)."""
    version = server._server_info.get("version", "?")  # the INFO the server sent on connect
    persist = getattr(config, "persist_mode", None) or "default"
    storage = getattr(config.storage, "value", config.storage) or "?"  # the server's answer: an enum or its name
    return (
        f"NATS {version} JetStream, {storage} storage, {config.num_replicas or 1} replica, persist {persist},"
        f" {devices} devices over {processes} load processes"
    )


async def jetstream_fanout(
    options: Options, js: JetStreamContext, fleet: Fleet, prefix: str, device_ids: Sequence[str], connected: int
) -> list[float]:
    """One message per device subject, all published at once, each PubAck awaited; the seconds from the
    first publish to each device's receipt."""
    payload = instruction_payload()
    began = time.time()
    await asyncio.gather(*(js.publish(f"{prefix}.dev.{d}", payload, timeout=30) for d in device_ids))
    deadline = time.monotonic() + options.wait_seconds
    while time.monotonic() < deadline:
        if sum(a[1] for a in await fleet.ask("count")) >= connected:
            break
        await asyncio.sleep(0.05)
    return [t - began for a in await fleet.ask("arrivals") for t in a[1]]


async def jetstream_burst(options: Options, fleet: Fleet, report: Report, where: str) -> float | None:
    """Every device publishes 3 x burst_signals ack frames, each awaiting its PubAck; PubAcks per second
    from the first publish to the last PubAck, across the load processes."""
    answers = await fleet.ask("burst", 3 * options.burst_signals)
    firsts: list[float] = [a[1] for a in answers if a[1] is not None]
    lasts: list[float] = [a[2] for a in answers if a[2] is not None]
    total: int = sum(a[3] for a in answers)
    errors = [e for a in answers for e in a[4]]
    if errors:
        report.note(f"JetStream burst: publishes failed, e.g. {errors[0]}")
    if not firsts or not lasts or max(lasts) <= min(firsts):
        return None
    return total / (max(lasts) - min(firsts))
