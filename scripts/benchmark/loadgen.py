"""The load generator: simulated bridges spread over several spawned processes (one Python process
cannot drive 1,000 streams and time them fairly), each answering the coordinator's commands over a pipe.

This module is what a load process imports: keep it free of the servers' dependencies.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from multiprocessing.connection import Connection

import grpc

from .processes import Message, ProcessPool, run_commands, shares
from .simdevice import Samples, SimDevice


@dataclass(frozen=True)
class WorkerSpec:
    index: int
    address: str
    devices: tuple[tuple[str, str], ...]  # (device id, shs_ secret)
    connect_concurrency: int = 25


def worker_main(spec: WorkerSpec, conn: Connection) -> None:
    """A load process: holds its share of the devices and answers the coordinator's commands."""
    commands = ("connect", "echo", "echo_paced", "account_states", "account_state", "count", "closes", "drain")
    run_commands(Worker(spec), (*commands, "collect", "close"), conn)


class Worker:
    """One load process's devices and what they saw in the current phase; a method per command."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.samples = Samples()
        self.devices: list[SimDevice] = []

    async def _connect_one(self, device_id: str, shown: str, gate: asyncio.Semaphore) -> SimDevice | None:
        device = SimDevice(device_id, shown, self.spec.address, self.samples)
        async with gate:
            try:
                await device.connect()
            except Exception as exc:
                code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else type(exc).__name__
                self.samples.errors.append(f"{code}: {exc}")
                await device.close()
                return None
        return device

    async def connect(self) -> Message:
        gate = asyncio.Semaphore(self.spec.connect_concurrency)
        found = await asyncio.gather(*(self._connect_one(d, s, gate) for d, s in self.spec.devices))
        self.devices = [d for d in found if d is not None]
        return ("connected", len(self.devices), self.samples.errors[:3])

    async def echo(self, count: int) -> Message:
        await asyncio.gather(*(d.echo_frames(count) for d in self.devices))
        await asyncio.gather(*(d.drain() for d in self.devices))
        return ("done",)

    async def echo_paced(self, total: int, seconds: float) -> Message:
        """``total`` frames from this process, evenly over ``seconds``, round-robin over its devices."""
        began, sends = time.monotonic(), []
        for k in range(total):
            delay = began + k * seconds / total - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            sends.append(asyncio.create_task(self.devices[k % len(self.devices)].echo_one()))
        await asyncio.gather(*sends)
        await asyncio.gather(*(d.drain() for d in self.devices))
        return ("done",)

    async def account_states(self, seconds: float, interval: float) -> Message:
        """Every device reports its account every ``interval`` seconds for ``seconds`` (each from a phase of
        its own); once all are receipted (or 30 s passed), how many were written."""
        began = time.monotonic()
        written = await asyncio.gather(*(d.account_states(began, seconds, interval) for d in self.devices))
        await asyncio.gather(*(d.drain() for d in self.devices))
        return ("done", sum(written))

    async def account_state(self, device_id: str, balance: Decimal, equity: Decimal) -> Message:
        """That device (if this process holds it) reports this account state: when it was written, else None."""
        for device in self.devices:
            if device.device_id == device_id:
                return ("written", await device.account_state(balance, equity))
        return ("written", None)

    async def count(self, signal_ids: Sequence[str]) -> Message:
        wanted = set(signal_ids)
        return ("count", sum(1 for s, *_ in self.samples.deliveries if s in wanted), len(self.samples.receipts))

    async def closes(self, position_ids: Sequence[str]) -> Message:
        """When the CloseOrders of these positions arrived (those that did)."""
        return ("closes", {p: self.samples.closes[p] for p in position_ids if p in self.samples.closes})

    async def drain(self, within: float) -> Message:
        await asyncio.gather(*(d.drain(within) for d in self.devices))
        return ("drained", sum(len(d.pending) for d in self.devices))

    async def collect(self) -> Message:
        """Hand over this phase's samples and start the next phase."""
        s = self.samples
        answer = ("samples", s.deliveries, s.receipts, s.rejected, s.errors[:5], s.late, s.fills)
        self.samples = Samples(phase=s.phase + 1)
        for device in self.devices:
            device.samples = self.samples
        return answer

    async def close(self) -> Message:
        await asyncio.gather(*(d.close() for d in self.devices))
        return ("closed",)


class LoadGenerator(ProcessPool):
    """The coordinator's side of the load processes."""

    def __init__(self, address: str, devices: Sequence[tuple[str, str]], processes: int) -> None:
        specs = [WorkerSpec(index, address, share) for index, share in enumerate(shares(devices, processes))]
        super().__init__(worker_main, specs)

    async def connect(self) -> tuple[int, list[str]]:
        answers = await self.ask("connect")
        return sum(a[1] for a in answers), [e for a in answers for e in a[2]]

    async def echo(self, count: int) -> None:
        """Every device writes ``count`` frames back to back; returns once all are receipted."""
        await self.ask("echo", count)

    async def echo_paced(self, per_process: int, seconds: float) -> None:
        """``per_process`` frames from each load process, evenly over ``seconds``."""
        await self.ask("echo_paced", per_process, seconds)

    async def account_states(self, seconds: float, interval: float) -> int:
        """Every device reports its account every ``interval`` seconds for ``seconds``; returns once all are
        receipted, with how many were written."""
        return sum(a[1] for a in await self.ask("account_states", seconds, interval))

    async def account_state(self, device_id: str, balance: Decimal, equity: Decimal) -> float | None:
        """One device reports this account state; when it was written (None: no load process holds it)."""
        found = [a[1] for a in await self.ask("account_state", device_id, balance, equity) if a[1] is not None]
        return found[0] if found else None

    async def collect(self) -> Samples:
        """What every device saw since the last collect; the devices start a new phase."""
        merged = Samples()
        for answer in await self.ask("collect"):
            merged.deliveries.extend(answer[1])
            merged.receipts.extend(answer[2])
            merged.rejected += answer[3]
            merged.errors.extend(answer[4])
            merged.late += answer[5]
            merged.fills.update(answer[6])
        return merged

    async def closes(self, position_ids: Sequence[str]) -> dict[str, float]:
        """When the CloseOrder of each of these positions reached its device, for those it did."""
        found: dict[str, float] = {}
        for answer in await self.ask("closes", list(position_ids)):
            found.update(answer[1])
        return found

    async def drain(self, within: float) -> int:
        """Wait (at most ``within`` seconds) for every written frame's receipt; the number still missing."""
        return sum(a[1] for a in await self.ask("drain", within))

    async def count(self, signal_ids: Sequence[str]) -> tuple[int, int]:
        answers = await self.ask("count", list(signal_ids))
        return sum(a[1] for a in answers), sum(a[2] for a in answers)
