"""The full run's last phase: 10,000 simulated bridges on the one gateway. The scenarios run on 1,000 (a
2-core machine serving 10,000 streams and driving them too measures little else); this phase shows what
one gateway process holds for 10,000 streams and how long one signal takes to reach them all."""

from __future__ import annotations

from .loadgen import LoadGenerator
from .meters import CpuMeter
from .options import Options
from .report import Report
from .scenarios import connect_streams, fan_out_once
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
    try:
        connected = await connect_streams(load, FLEET, stack, report, prefix="fleet_")
        if connected == 0:
            return
        await load.collect()
        meter = CpuMeter(stack.pids, load.pids)
        _, where = await fan_out_once(api, load, report, connected, max(options.wait_seconds, 60.0), prefix="fleet_")
        meter.report(report, where)
    finally:
        await api.close()
        await load.close()
