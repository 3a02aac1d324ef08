"""The full run's last phase: 10,000 simulated bridges on the one gateway. The scenarios run on 1,000 (a
2-core machine serving 10,000 streams and driving them too measures little else); this phase shows what
one gateway process holds for 10,000 streams and how long one signal takes to reach them all."""

from __future__ import annotations

import asyncio
import time

from .loadgen import LoadGenerator
from .meters import CpuMeter, rss_kib
from .options import Options
from .report import Report, ms, percentile
from .scenarios import fanout_arrivals
from .system import Stack
from .world import Backoffice, provision

FLEET = 10_000
FLEET_USERS = 500
NAME = "10,000 devices"  # as --only names this phase


async def ten_thousand(options: Options, stack: Stack, report: Report) -> None:
    """Provision and connect 10,000 more bridges, report the gateway's memory per stream and the fan-out
    of one AUTO signal to all of them (the design's limit: within a second, in under 1 GiB)."""
    world = await provision(stack, FLEET_USERS, FLEET)
    load = LoadGenerator(stack.gateway, world.devices, options.processes)
    api = Backoffice(stack, world)
    where = f"{FLEET} devices on one gateway"
    try:
        before = rss_kib(stack.gateway_pid)
        began = time.monotonic()
        connected, errors = await load.connect()
        report.add("fleet_streams_connected", connected, "streams", where, at_least=FLEET)
        report.add("fleet_connect_seconds", time.monotonic() - began, "s", where)
        if connected == 0:
            report.note(f"no stream of the 10,000 reached the gateway: {errors[:3]}")
            return
        await asyncio.sleep(2)
        after = rss_kib(stack.gateway_pid)
        if before is not None and after is not None:
            # 10,000 streams under 1 GiB on one gateway process: at most 104.9 KiB each.
            report.add("fleet_gateway_rss_per_stream", (after - before) / connected, "KiB", where, at_most=104.8)
        await load.collect()
        meter = CpuMeter(stack.pids, load.pids)
        arrivals, got = await fanout_arrivals(api, load, connected, max(options.wait_seconds, 60.0))
        fanned = f"one AUTO signal to {connected} devices"
        last = ms(max(arrivals)) if len(arrivals) >= connected else None  # not all arrived: not met
        report.add("fleet_fanout_last_delivery", last, "ms", fanned, at_most=1000)
        report.add("fleet_fanout_p50_delivery", ms(percentile(arrivals, 50)), "ms", fanned)
        meter.report(report, fanned)
        if got < connected:
            report.note(f"10,000-device fan-out: {got} of {connected} devices got the signal in time")
    finally:
        await api.close()
        await load.close()
