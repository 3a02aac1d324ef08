"""The soak run: a fresh database, the back office, one gateway and the worker as ``signalhub serve``
processes, the bridges connected, then churn and traffic for the time asked while the gateway's memory,
open descriptors and event-loop lag are sampled; then the table, the JSON and the verdict (exit 1 when a
bound was breached)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from contextlib import AsyncExitStack, ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from sqlalchemy.engine import make_url

from backoffice.platform import db, schema
from backoffice.platform.config import Settings
from scripts.benchmark import system, world
from scripts.benchmark.cli import RunClock, raise_file_limit
from scripts.endurance import probe
from scripts.endurance.fleet import FleetHost
from scripts.endurance.judge import Sample, Verdict, judge, table
from scripts.endurance.options import Options, parse_args
from scripts.endurance.traffic import Traffic


@dataclass(frozen=True)
class Servers:
    stack: system.Stack
    gateway: probe.Target
    backoffice: probe.Target


def _spawn(process: str, env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    return system.spawn_server(process, env, log)


async def start_servers(options: Options, stack: AsyncExitStack, sync_stack: ExitStack) -> Servers:
    """A fresh database (dropped at the end) migrated to head, and the three server processes, each with
    a metrics port of its own, their output beside the JSON in ``soak-logs/``; stopped on the way out."""
    server_url, redis_url = system.server_urls(sync_stack)
    name = f"signalhub_soak_{uuid.uuid4().hex[:10]}"
    database_url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    # The soak does not measure draining: a short grace keeps its end quick.
    env = {**system.server_env(database_url, redis_url), "SIGNALHUB_SHUTDOWN_GRACE_SECONDS": "2"}
    settings = Settings.from_env(env)
    await db.ensure_database(settings.database_url)
    stack.push_async_callback(system.drop_database, settings.database_url)
    await asyncio.to_thread(schema.upgrade, settings)
    logs = options.output.parent / "soak-logs"
    logs.mkdir(parents=True, exist_ok=True)
    pids: dict[str, int] = {}
    metrics: dict[str, str] = {}
    for process in ("backoffice", "gateway", "worker"):
        log = (logs / f"{process}.log").open("wb")
        sync_stack.callback(log.close)
        metrics[process] = f"127.0.0.1:{system.free_port()}"
        child = _spawn(process, {**env, "SIGNALHUB_METRICS_ADDRESS": metrics[process]}, log)
        stack.push_async_callback(system.stop_process, child)
        pids[process] = child.pid
    await asyncio.gather(
        system.wait_serving(settings.backoffice_address), system.wait_serving(settings.gateway_address)
    )
    return Servers(
        system.Stack(
            settings,
            settings.backoffice_address,
            settings.gateway_address,
            pids["gateway"],
            pids["backoffice"],
            pids["worker"],
        ),
        probe.Target(pids["gateway"], metrics["gateway"]),
        probe.Target(pids["backoffice"], metrics["backoffice"]),
    )


async def sample_loop(
    options: Options, servers: Servers, fleet: FleetHost, samples: list[Sample], totals: Counter[str]
) -> None:
    """Every sample interval until the run's time is up: read both servers and the bridges' counts, print
    the line and keep it."""
    began = time.monotonic()
    end = began + options.minutes * 60
    print(table([]), flush=True)
    tick = 1
    while True:
        next_at = began + tick * options.sample_seconds
        if next_at > end + 1e-6:
            return
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        tick += 1
        gateway, backoffice = await asyncio.gather(probe.read(servers.gateway), probe.read(servers.backoffice))
        bridges = await fleet.stats()
        totals.update(bridges.counts)
        totals.update({f"error {k}": v for k, v in bridges.errors.items()})
        sample = Sample(
            at_s=round(time.monotonic() - began, 1),
            gateway_rss_mib=None if gateway.rss_mib is None else round(gateway.rss_mib, 2),
            gateway_fds=gateway.fds,
            gateway_lag_s=gateway.lag_s,
            backoffice_lag_s=backoffice.lag_s,
            sessions=gateway.sessions,
            bridges_connected=bridges.connected,
            deliveries=bridges.counts["deliveries"],
            receipts=bridges.counts["receipts"],
            closes=bridges.counts["closes"],
            quotes=bridges.counts["quotes"],
            reconnects=bridges.counts["cancelled_streams"] + bridges.counts["closed_channels"],
        )
        samples.append(sample)
        print(table([sample]).splitlines()[1], flush=True)


async def main_async(options: Options) -> int:
    """Start, connect, run traffic and churn while sampling, stop; write the JSON whatever happened."""
    samples: list[Sample] = []
    totals: Counter[str] = Counter()
    logs = options.output.parent / "soak-logs"
    ran_until: dict[Path, int] = {}  # how much of each server log the run itself wrote
    failures: list[str] = []
    verdict: Verdict | None = None
    clock = RunClock()
    try:
        async with system.exit_stacks() as (stack, sync_stack):
            servers = await start_servers(options, stack, sync_stack)
            clock.phase(f"provisioning {options.users} accounts and {options.bridges} devices")
            made = await world.provision(servers.stack, options.users, options.bridges)
            clock.phase(f"connecting {options.bridges} bridges over {options.processes} load processes")
            fleet = FleetHost(
                servers.stack.gateway,
                made.devices,
                options.processes,
                churn_fraction=options.churn_fraction,
                churn_seconds=options.churn_seconds,
                quote_seconds=options.quote_seconds,
            )
            stack.push_async_callback(fleet.close)
            connected = await fleet.connect()
            clock.phase(f"{connected.connected} connected; traffic and churn for {options.minutes:g} min")
            api = world.Backoffice(servers.stack, made)
            stack.push_async_callback(api.close)
            traffic = Traffic(api, made, options.signal_seconds, options.manual_accounts, options.cancel_after_seconds)
            running = asyncio.create_task(traffic.run())
            try:
                await sample_loop(options, servers, fleet, samples, totals)
            finally:
                ran_until.update(log_sizes(logs))
                running.cancel()
                await traffic.stop()
            totals.update(traffic.counts)
            failures = traffic.failures
            clock.phase("stopping")
    finally:
        verdict = judge(samples, options.warmup_seconds, options.bounds)
        if failures:
            verdict.breaches.append(f"{len(failures)} API calls failed, first: {failures[0]}")
        errors, at_stop = error_lines(logs, ran_until)
        if errors:
            verdict.breaches.append(f"the servers logged {len(errors)} ERROR lines, first: {errors[0][:500]}")
        for line in at_stop:  # shutdown is not what the soak judges; shown, not counted
            print(f"!! while stopping: {line[:500]}", flush=True)
        write(options, samples, totals, verdict)
    print(f"== totals: {dict(sorted(totals.items()))}", flush=True)
    print(
        f"== after {options.warmup_seconds:g} s of warm-up ({verdict.judged_samples} samples): "
        f"RSS growth {_fmt(verdict.rss_growth_mib, 'MiB')}, fd growth {_fmt(verdict.fd_growth, '')}, "
        f"lag p99 gateway {_fmt(verdict.gateway_lag_p99_s, 's')} / "
        f"back office {_fmt(verdict.backoffice_lag_p99_s, 's')}",
        flush=True,
    )
    for breach in verdict.breaches:
        print(f"!! {breach}", flush=True)
    print(
        f"== {'PASSED' if verdict.passed else 'FAILED'} in {clock.seconds():.0f} s -> {options.output}",
        flush=True,
    )
    return 0 if verdict.passed else 1


def log_sizes(logs: Path) -> dict[Path, int]:
    return {path: path.stat().st_size for path in logs.glob("*.log")}


def error_lines(logs: Path, ran_until: dict[Path, int]) -> tuple[list[str], list[str]]:
    """The ERROR lines the servers wrote (JSON lines) while the soak ran (a soak that made a server fail
    did not pass), and those written after, while everything stopped."""
    during: list[str] = []
    after: list[str] = []
    for path in sorted(logs.glob("*.log")):
        data = path.read_bytes()
        cut = ran_until.get(path, len(data))
        for part, found in ((data[:cut], during), (data[cut:], after)):
            found.extend(line for line in part.decode(errors="replace").splitlines() if '"level": "ERROR"' in line)
    return during, after


def _fmt(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:.3f} {unit}".strip()


def write(options: Options, samples: Sequence[Sample], totals: Counter[str], verdict: Verdict) -> None:
    options.output.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "options": {k: (str(v) if k == "output" else v) for k, v in asdict(options).items() if k != "bounds"},
        "bounds": asdict(options.bounds),
        "verdict": {**asdict(verdict), "passed": verdict.passed},
        "totals": dict(totals),
        "samples": [s.row() for s in samples],
    }
    options.output.write_text(json.dumps(document, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_args(argv)
    raise_file_limit()
    sys.exit(asyncio.run(main_async(options)))
