"""The bare limits, measured on the same machine in the same run so the system's figures can be read
beside them: one Postgres commit, one Redis publish, and the load generator against an echo stream (its
round trips, its burst throughput and CPU per frame, its fan-out). The other yardsticks, NATS JetStream
and a device polling once a second, are in ``jetstream`` and ``polling``."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import uuid
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection

from redis.asyncio import Redis

from backoffice.producer import ProducerClient, RetryPolicy

from .echo import echo_server_main
from .loadgen import LoadGenerator
from .meters import cpu_seconds, rss_kib
from .options import Options
from .report import Report, ms, percentile, round_trips, throughput
from .system import Stack, postgres
from .world import Backoffice, World

ACCOUNT_STATE_INTERVAL = 2.0  # seconds between one device's AccountState frames (the risk limits' scenario)

# What the bare limits and yardsticks found, read by the scenarios: "commit", "publish", "rtt",
# "echo_cpu_per_frame", "echo_cpu_per_account_state", "echo_fanout_last", "jetstream_fanout_last",
# "polling_p50", "echo_submit_p99", "echo_cpu_per_submit" (seconds), "echo_rate", "jetstream_rate" (frames/s).
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


async def bare_echo(
    options: Options, world: World, report: Report, *, account_states: bool = False, submits: bool = False
) -> Bare:
    """The same load generator against an echo stream: connect N, RSS per stream, a low and a steady paced
    rate (the floors of delivery and ack latency), a burst (the ceiling of throughput), with
    ``account_states`` every device's AccountState every 2 s (the floor under risk limits' cost), with
    ``submits`` the cheap submit's rate of signed SubmitSignal calls to a bare unary server (the floor
    under their latency and CPU), then a fan-out."""
    context = multiprocessing.get_context("spawn")
    mine, theirs = context.Pipe()
    server = context.Process(target=echo_server_main, args=(theirs, dict(world.devices)), daemon=True)
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
        await echo_rates(options, load, report, found, server.pid)
        if account_states:
            await echo_account_states(options, load, report, found, server.pid)
        if submits:
            await echo_submits(options, f"127.0.0.1:{port}", world, report, found, server.pid)
        await echo_fanout(options, load, mine, report, found)
        return found
    finally:
        await load.close()
        mine.send(("stop",))
        server.join(10)
        if server.is_alive():
            server.kill()


async def echo_rates(options: Options, load: LoadGenerator, report: Report, found: Bare, pid: int | None) -> None:
    """Echo round trips at the approval rate, at the steady ack rate, then a burst's throughput and the
    echo process's CPU per frame in it (``pid`` is the echo server's)."""
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
    before = cpu_seconds(pid)
    await load.echo(options.burst_signals * 3)
    after = cpu_seconds(pid)
    burst = (await load.collect()).receipts
    found["echo_rate"] = throughput(burst)
    where = f"bare, {options.burst_signals * 3} frames per stream at once"
    report.add("echo_burst_throughput", found["echo_rate"], "frames/s", where)
    report.add("echo_burst_rtt_p99", ms(percentile(round_trips(burst), 99)), "ms", where)
    if before is not None and after is not None and burst:
        per_frame = (after - before) / len(burst)
        found["echo_cpu_per_frame"] = per_frame
        report.add("echo_cpu_per_frame", 1e6 * per_frame, "us", where)


async def echo_account_states(
    options: Options, load: LoadGenerator, report: Report, found: Bare, pid: int | None
) -> None:
    """The echo's CPU per frame when every device reports its account every 2 s, as in the risk limits'
    scenario: frames that come one at a time, each a wake-up of its own, cost more than a burst's."""
    before = cpu_seconds(pid)
    await load.account_states(options.account_seconds, ACCOUNT_STATE_INTERVAL)
    after = cpu_seconds(pid)
    receipted = len((await load.collect()).receipts)
    if before is not None and after is not None and receipted:
        per_frame = (after - before) / receipted
        found["echo_cpu_per_account_state"] = per_frame
        where = f"bare, {options.devices} devices, an AccountState every {ACCOUNT_STATE_INTERVAL:g} s each"
        report.add("echo_cpu_per_account_state", 1e6 * per_frame, "us", where)


async def echo_submits(
    options: Options, address: str, world: World, report: Report, found: Bare, pid: int | None
) -> None:
    """Signed SubmitSignal calls at the cheap submit's rate, from the same producer client, to the echo's
    bare SignalService: their latency and the echo's CPU per call, the floor under the real figures."""
    client = ProducerClient(address, *world.idle, deadline_seconds=10, retry=RetryPolicy(max_attempts=1))
    try:
        before = cpu_seconds(pid)
        submitted = await Backoffice.submits(client, options.submit_rate, options.submit_seconds)
        after = cpu_seconds(pid)
    finally:
        await client.close()
    where = f"bare, {options.submit_rate:g} signed SubmitSignal/s for {options.submit_seconds:g} s"
    found["echo_submit_p99"] = percentile(submitted.latencies, 99)
    report.add("echo_submit_p50", ms(percentile(submitted.latencies, 50)), "ms", where)
    report.add("echo_submit_p99", ms(found["echo_submit_p99"]), "ms", where)
    if before is not None and after is not None and submitted.latencies:
        found["echo_cpu_per_submit"] = (after - before) / submitted.calls
        report.add("echo_cpu_per_submit", ms(found["echo_cpu_per_submit"]), "ms", where)
    if submitted.failures:
        report.note(f"bare submits: {len(submitted.failures)} failed, e.g. {submitted.failures[0]}")


async def echo_fanout(options: Options, load: LoadGenerator, pipe: Connection, report: Report, found: Bare) -> None:
    """The echo pushes one sealed delivery to every connected stream at once; the time from the command
    to the last device's receipt of it (every clock is time.time on this machine)."""
    signal_id = f"echo-fanout-{uuid.uuid4()}"
    began = time.time()
    pipe.send(("fanout", signal_id))
    _, pushed = await asyncio.to_thread(pipe.recv)
    deadline = time.monotonic() + options.wait_seconds
    while time.monotonic() < deadline:
        if (await load.count([signal_id]))[0] >= pushed:
            break
        await asyncio.sleep(0.05)
    await load.drain(options.wait_seconds)  # the devices' acks of it, so that they do not leak into later phases
    arrivals = [r - began for s, _, r, _ in (await load.collect()).deliveries if s == signal_id]
    last = max(arrivals) if arrivals and len(arrivals) >= pushed else None
    found["echo_fanout_last"] = last
    where = f"bare, one sealed delivery pushed to {pushed} streams at once"
    report.add("echo_fanout_last", ms(last), "ms", where)
    report.add("echo_fanout_p50", ms(percentile(arrivals, 50)), "ms", where)
    if last is None:
        report.note(f"echo fan-out: {len(arrivals)} of {pushed} devices got it within {options.wait_seconds:g} s")
