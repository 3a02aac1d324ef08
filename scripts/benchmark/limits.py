"""The bare limits, measured on the same machine in the same run so the system's figures can be read
beside them: one Postgres commit, one Redis publish, and the load generator against an echo stream."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import uuid
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from .echo import echo_server_main
from .loadgen import LoadGenerator
from .meters import rss_kib
from .options import Options
from .report import Report, ms, percentile, round_trips, throughput
from .system import Stack, postgres
from .world import World

# What the bare limits found, read by the scenarios: "commit", "publish", "rtt" (seconds), "echo_rate".
Bare = dict[str, float | None]


async def timed(count: int, once: Callable[[], Awaitable[object]]) -> list[float]:
    """Seconds each of ``count`` calls of ``once`` took, one after another."""
    latencies = []
    for _ in range(count):
        began = time.perf_counter()
        await once()
        latencies.append(time.perf_counter() - began)
    return latencies


def add_p50_p99(report: Report, name: str, latencies: list[float]) -> float | None:
    """Report a bare latency's median and 99th percentile; the median, in seconds."""
    report.add(f"{name}_p50", ms(percentile(latencies, 50)), "ms", "bare")
    report.add(f"{name}_p99", ms(percentile(latencies, 99)), "ms", "bare")
    return percentile(latencies, 50)


async def bare_postgres(stack: Stack, report: Report, commits: int) -> float | None:
    """One-row INSERTs, each its own commit, into a scratch table."""
    table = f"bench_commit_{uuid.uuid4().hex[:8]}"
    async with postgres(stack.settings.database_url) as conn:
        await conn.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, at timestamptz NOT NULL)")
        insert = f"INSERT INTO {table} (at) VALUES (now())"  # noqa: S608 - a generated name
        latencies = await timed(commits, lambda: conn.execute(insert))
        await conn.execute(f"DROP TABLE {table}")
    return add_p50_p99(report, "postgres_commit", latencies)


async def bare_redis(stack: Stack, report: Report, publishes: int) -> float | None:
    """PUBLISH to a channel nobody listens on."""
    redis = Redis.from_url(stack.settings.redis_url)
    try:
        latencies = await timed(publishes, lambda: redis.publish("sh:bench", b"wake"))
    finally:
        await redis.aclose()
    return add_p50_p99(report, "redis_publish", latencies)


async def bare_echo(options: Options, world: World, report: Report) -> Bare:
    """The same load generator against an echo stream: connect N, RSS per stream, a low and a steady paced
    rate (the floors of delivery and ack latency), then a burst (the ceiling of throughput)."""
    context = multiprocessing.get_context("spawn")
    mine, theirs = context.Pipe()
    server = context.Process(target=echo_server_main, args=(theirs,), daemon=True)
    server.start()
    port = await asyncio.to_thread(mine.recv)
    load = LoadGenerator(f"127.0.0.1:{port}", world.devices, options.processes)
    found: Bare = {}
    try:
        before = rss_kib(server.pid)
        connected, errors = await load.connect()
        await asyncio.sleep(1)
        after = rss_kib(server.pid)
        if connected < len(world.devices):
            report.note(f"echo: only {connected} of {len(world.devices)} streams connected: {errors[:2]}")
        if not connected:
            return found
        if before is not None and after is not None:
            report.add("echo_rss_per_stream", (after - before) / connected, "KiB", "bare")
        await load.collect()
        await echo_rates(options, load, report, found)
        return found
    finally:
        await load.close()
        mine.send("stop")
        server.join(10)
        if server.is_alive():
            server.kill()


async def echo_rates(options: Options, load: LoadGenerator, report: Report, found: Bare) -> None:
    """Echo round trips at the approval rate, at the steady ack rate, then a burst's throughput."""
    low = options.approval_rate
    await load.echo_paced(max(1, round(low * options.low_seconds / len(load.pipes))), options.low_seconds)
    rtts = round_trips((await load.collect()).receipts)
    found["rtt"] = percentile(rtts, 50)
    report.add("echo_rtt_p50", ms(found["rtt"]), "ms", f"bare, {low:g} frames/s")
    report.add("echo_rtt_p99", ms(percentile(rtts, 99)), "ms", f"bare, {low:g} frames/s")
    await load.echo_paced(round(options.ack_rate * options.ack_seconds / len(load.pipes)), options.ack_seconds)
    steady = round_trips((await load.collect()).receipts)
    where = f"bare, {options.ack_rate:g} frames/s"
    report.add("echo_steady_rtt_p50", ms(percentile(steady, 50)), "ms", where)
    report.add("echo_steady_rtt_p99", ms(percentile(steady, 99)), "ms", where)
    await load.echo(options.burst_signals * 3)
    burst = (await load.collect()).receipts
    found["echo_rate"] = throughput(burst)
    where = f"bare, {options.burst_signals * 3} frames per stream at once"
    report.add("echo_burst_throughput", found["echo_rate"], "frames/s", where)
    report.add("echo_burst_rtt_p99", ms(percentile(round_trips(burst), 99)), "ms", where)
