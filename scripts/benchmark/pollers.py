"""The devices of the polling yardstick (``polling``): each asks a unary ``Poll`` once a second, from a
random phase, for the work pending for it, executes what it gets at once and says so with ``Report``.
They are spread over spawned load processes, one gRPC channel per device as a bridge would have.

A load process imports this module: grpc and the standard library only, no server module.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Final

import grpc

SERVICE: Final = "signalhub.bench.Polling"
POLL: Final = f"/{SERVICE}/Poll"  # request: the device id; answer: the taken work ids, comma-separated
REPORT: Final = f"/{SERVICE}/Report"  # request: "<device id>,<work id>"; answer: empty
INTERVAL_SECONDS: Final = 1.0


def raw(data: bytes) -> bytes:
    """The (de)serialiser of both sides: the messages are bytes as they are."""
    return data


@dataclass(frozen=True)
class PollerSpec:
    address: str
    devices: tuple[str, ...]


@dataclass
class Stats:
    polls: int = 0
    executed: int = 0
    poll_seconds: list[float] = field(default_factory=list)  # each Poll's round trip
    errors: list[str] = field(default_factory=list)


async def device(device_id: str, channel: grpc.aio.Channel, stats: Stats) -> None:
    """Poll once a second from a random phase (a late poll does not make up for the ones it missed);
    execute each work item at once, i.e. report it."""
    poll = channel.unary_unary(POLL, request_serializer=raw, response_deserializer=raw)
    report = channel.unary_unary(REPORT, request_serializer=raw, response_deserializer=raw)
    began = time.monotonic() + random.random() * INTERVAL_SECONDS  # noqa: S311 - a phase, not a secret
    tick = -1
    while True:
        tick = max(tick + 1, int((time.monotonic() - began) / INTERVAL_SECONDS))
        delay = began + tick * INTERVAL_SECONDS - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            sent = time.perf_counter()
            answer: bytes = await poll(device_id.encode(), timeout=10)
            stats.poll_seconds.append(time.perf_counter() - sent)
            stats.polls += 1
            for work_id in filter(None, answer.decode().split(",")):
                await report(f"{device_id},{work_id}".encode(), timeout=10)
                stats.executed += 1
        except grpc.aio.AioRpcError as exc:
            stats.errors.append(f"{exc.code().name}: {exc.details()}")


def pollers_main(spec: PollerSpec, conn: Connection) -> None:
    """A polling load process: says ("ready", channels) once its devices poll; the next message stops
    them, answered with ("stopped", polls, executed, errors, each Poll's seconds)."""
    asyncio.run(_run(spec, conn))


async def _run(spec: PollerSpec, conn: Connection) -> None:
    channels = [grpc.aio.insecure_channel(spec.address) for _ in spec.devices]
    stats = Stats()
    tasks: list[asyncio.Task[None]] = []
    try:
        ready = await asyncio.gather(
            *(asyncio.wait_for(c.channel_ready(), 30) for c in channels), return_exceptions=True
        )
        for device_id, channel, outcome in zip(spec.devices, channels, ready, strict=True):
            if isinstance(outcome, BaseException):
                stats.errors.append(f"{type(outcome).__name__}: {outcome}")
            else:
                tasks.append(asyncio.create_task(device(device_id, channel, stats)))
        conn.send(("ready", len(tasks)))
        await asyncio.to_thread(conn.recv)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*(c.close() for c in channels), return_exceptions=True)
    conn.send(("stopped", stats.polls, stats.executed, stats.errors[:3], stats.poll_seconds))
