"""The soak's bridges: simulated EA bridges (``scripts.benchmark.simdevice``) spread over spawned load
processes, kept connected while a fraction of them is torn down and reconnected every churn interval.

Half of the churned bridges cancel their stream and keep the connection (an RST_STREAM on a live HTTP/2
connection, the case where grpc.aio has leaked native memory), the other half close the whole channel;
either may happen while instructions, acks or fills are in flight. Every bridge also sends a quote now
and then and heartbeats as the gateway asks. A bridge remembers across reconnects which deliveries it
executed, as the real one does with its ledger, so a delivery sent again is acked and never filled twice.

This module is what a load process imports: keep it free of the servers' dependencies.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from scripts.benchmark.processes import Message, ProcessPool, run_commands, shares
from scripts.benchmark.simdevice import INSTRUMENT, Samples, SimDevice
from signalhub.v1 import common_pb2
from signalhub.v1 import gateway_pb2 as pb


@dataclass(frozen=True)
class FleetSpec:
    """One load process's share of the bridges and how they behave."""

    address: str
    devices: tuple[tuple[str, str], ...]  # (device id, shs_ secret)
    churn_fraction: float  # of this process's bridges, reconnected every churn interval
    churn_seconds: float
    quote_seconds: float
    seed: int
    connect_concurrency: int = 25


class SoakBridge(SimDevice):
    """A simulated bridge that also sends quotes; ``seen`` outlives the connection (see the module doc)."""

    def __init__(self, device_id: str, shown: str, address: str, samples: Samples, seen: set[str]) -> None:
        super().__init__(device_id, shown, address, samples)
        self.seen = seen

    async def quote(self) -> None:
        stamp = Timestamp()
        stamp.GetCurrentTime()
        mid = 2000 + random.uniform(-5, 5)  # noqa: S311 - a made-up price, not a secret
        quote = common_pb2.Quote(instrument=INSTRUMENT, bid=f"{mid:.2f}", ask=f"{mid + 0.3:.2f}", quote_time=stamp)
        await self._write(pb.DeviceFrame(quote=quote), track=False)

    async def cancel_stream(self) -> None:
        """End the stream with a cancel (RST_STREAM) on the live connection, then close the channel."""
        await self._stop_tasks()
        if self.call is not None:
            self.call.cancel()
        await asyncio.sleep(0.05)
        if self.channel is not None:
            await self.channel.close()


class Fleet:
    """One load process's bridges: connect them all, then churn and quote until told to stop."""

    def __init__(self, spec: FleetSpec) -> None:
        self.spec = spec
        self.samples = Samples()
        self.random = random.Random(spec.seed)  # noqa: S311 - which bridges churn, not a secret
        self.secrets = dict(spec.devices)
        self.seen: dict[str, set[str]] = {device_id: set() for device_id in self.secrets}
        self.live: dict[str, SoakBridge] = {}
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.tasks: list[asyncio.Task[None]] = []

    async def _connect(self, device_id: str, gate: asyncio.Semaphore | None = None) -> None:
        bridge = SoakBridge(device_id, self.secrets[device_id], self.spec.address, self.samples, self.seen[device_id])
        try:
            async with gate or contextlib.nullcontext():
                await bridge.connect()
        except Exception as exc:
            code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else type(exc).__name__
            self.errors[f"connect {code}"] += 1
            await bridge.close()
            return
        self.live[device_id] = bridge
        self.counts["connects"] += 1

    async def connect(self) -> Message:
        gate = asyncio.Semaphore(self.spec.connect_concurrency)
        await asyncio.gather(*(self._connect(d, gate) for d in self.secrets))
        self.tasks = [asyncio.create_task(self._churn()), asyncio.create_task(self._quotes())]
        return ("connected", len(self.live), dict(self.errors))

    async def _churn(self) -> None:
        """Every churn interval: take a random share of the connected bridges down (half by cancelling
        the stream, half by closing the channel), then connect each again after a short pause."""
        while True:
            await asyncio.sleep(self.spec.churn_seconds)
            live = list(self.live)
            count = min(len(live), round(len(self.secrets) * self.spec.churn_fraction))
            for n, device_id in enumerate(self.random.sample(live, count)):
                bridge = self.live.pop(device_id)
                if n % 2:
                    await bridge.cancel_stream()
                    self.counts["cancelled_streams"] += 1
                else:
                    await bridge.close()
                    self.counts["closed_channels"] += 1
            await asyncio.sleep(min(1.0, self.spec.churn_seconds / 4))
            gone = [d for d in self.secrets if d not in self.live]
            await asyncio.gather(*(self._connect(d) for d in gone))

    async def _quotes(self) -> None:
        """Each connected bridge sends a quote about once per quote interval, spread evenly over it."""
        while True:
            began = time.monotonic()
            live = list(self.live.values())
            for n, bridge in enumerate(live):
                delay = began + n * self.spec.quote_seconds / max(1, len(live)) - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if bridge.call is not None and not bridge.call.done():
                    with contextlib.suppress(Exception):  # a bridge churned meanwhile
                        await bridge.quote()
                        self.counts["quotes"] += 1
            await asyncio.sleep(max(0.0, began + self.spec.quote_seconds - time.monotonic()))

    async def stats(self) -> Message:
        """What this process's bridges did since the last call (the samples start afresh: a long run
        must not keep every delivery it saw)."""
        s, self.samples = self.samples, Samples()
        for bridge in self.live.values():
            bridge.samples = self.samples
        for error in s.errors:
            self.errors[error.split(":", 1)[0]] += 1
        counts = {
            **self.counts,
            "deliveries": len(s.deliveries),
            "closes": len(s.closes),
            "receipts": len(s.receipts),
            "rejected": s.rejected,
        }
        self.counts.clear()
        errors, self.errors = dict(self.errors), Counter()
        return ("stats", len(self.live), counts, errors)

    async def close(self) -> Message:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*(b.close() for b in self.live.values()), return_exceptions=True)
        return ("closed",)


def fleet_main(spec: FleetSpec, conn: Connection) -> None:
    """A load process: holds its share of the bridges and answers the coordinator's commands."""
    run_commands(Fleet(spec), ("connect", "stats", "close"), conn)


@dataclass
class Totals:
    """What every load process reported, summed."""

    connected: int
    counts: Counter[str]
    errors: Counter[str]


class FleetHost(ProcessPool):
    """The coordinator's side: spawns the load processes and asks them."""

    def __init__(self, address: str, devices: Sequence[tuple[str, str]], processes: int, **behaviour: float) -> None:
        specs = [
            FleetSpec(
                address,
                share,
                churn_fraction=behaviour["churn_fraction"],
                churn_seconds=behaviour["churn_seconds"],
                quote_seconds=behaviour["quote_seconds"],
                seed=index,
            )
            for index, share in enumerate(shares(devices, processes))
        ]
        super().__init__(fleet_main, specs)

    async def connect(self) -> Totals:
        answers = await self.ask("connect")
        return Totals(sum(a[1] for a in answers), Counter(), sum((Counter(a[2]) for a in answers), Counter()))

    async def stats(self) -> Totals:
        answers = await self.ask("stats")
        counts: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        for answer in answers:
            counts.update(answer[2])
            errors.update(answer[3])
        return Totals(sum(a[1] for a in answers), counts, errors)
