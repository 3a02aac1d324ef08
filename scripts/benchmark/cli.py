"""The run, phase by phase: start the stack, provision, measure the bare limits and the yardsticks (the
echo, NATS JetStream, a device polling once a second), run the scenarios on the gateway, stop; the
figures go to ``bench/results.json`` even when a phase fails."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import sys
import time
from collections.abc import Awaitable, Sequence

from .fleet import NAME as FLEET_PHASE
from .fleet import ten_thousand
from .jetstream import bare_jetstream
from .limits import Bare, bare_echo, bare_postgres, bare_redis
from .options import Options, parse_args
from .polling import bare_polling
from .report import Report, write_results
from .scenarios import gateway_scenarios
from .system import exit_stacks, start_stack
from .world import provision


class RunClock:
    """The time since a run began, for announcing each of its phases (the soak's too)."""

    def __init__(self) -> None:
        self.began = time.monotonic()

    def seconds(self) -> float:
        return time.monotonic() - self.began

    def phase(self, name: str) -> None:
        print(f"== {name} (at {self.seconds():.0f} s)", flush=True)


async def main_async(options: Options) -> int:
    """Every phase in order, each announced with the time since the start; the servers and the database
    are stopped and dropped on the way out, whatever happened, and the figures so far are written."""
    report = Report()
    clock = RunClock()
    try:
        async with exit_stacks() as (stack, sync_stack):
            system = await start_stack(options, stack, sync_stack)
            clock.phase(f"provisioning {options.users} users, {options.devices} devices, 3 producers")
            world = await provision(system, options.users, options.devices)
            clock.phase("bare limits: Postgres commit, Redis publish")
            bare: Bare = {
                "commit": await bare_postgres(system, report, options.commits),
                "publish": await bare_redis(system, report, options.publishes),
            }
            clock.phase(f"bare limits: echo stream, {options.devices} streams over {options.processes} load processes")
            bare.update(
                await bare_echo(
                    options,
                    world,
                    report,
                    account_states=wanted(options, "risk limits"),
                    submits=wanted(options, "signed SubmitSignal"),
                )
            )
            device_ids = [d for d, _ in world.devices]
            if wanted(options, "fan-out", "acks, burst"):
                clock.phase(f"yardstick: NATS JetStream ({options.nats}), {options.devices} devices")
                bare.update(await yardstick(report, "JetStream", bare_jetstream(options, device_ids, report)))
            if wanted(options, "approval to delivery"):
                clock.phase(f"yardstick: {options.devices} devices polling once a second")
                url = system.settings.database_url
                bare.update(await yardstick(report, "polling", bare_polling(options, url, device_ids, report)))
            clock.phase(f"the system: {options.devices} simulated bridges on one gateway")
            await gateway_scenarios(options, system, world, report, bare)
            if FLEET_PHASE in options.only or not (options.quick or options.only):
                clock.phase(f"{FLEET_PHASE}: memory per stream and one fan-out")
                await ten_thousand(options, system, report)
            clock.phase("stopping")
    finally:
        write_results(options.output, report)
    missed = report.missed()
    print(f"== {len(report.figures)} figures in {clock.seconds():.0f} s -> {options.output}", flush=True)
    if missed:
        print("== targets not met: " + ", ".join(missed), flush=True)
    return report.exit_status(options.check)


def wanted(options: Options, *scenarios: str) -> bool:
    """Whether a yardstick is needed: one of the scenarios that read it runs (all do without --only)."""
    return not options.only or any(name in options.only for name in scenarios)


async def yardstick(report: Report, name: str, measure: Awaitable[Bare]) -> Bare:
    """What a yardstick found; nothing (its ratios then n/a) when it failed, and the run goes on."""
    try:
        return await measure
    except Exception as exc:
        report.note(f"the {name} yardstick did not finish: {type(exc).__name__}: {exc}")
        return {}


def raise_file_limit() -> None:
    """1,000 streams (and the servers' database connections) need more than 1,024 descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_args(argv)
    raise_file_limit()
    sys.exit(asyncio.run(main_async(options)))
