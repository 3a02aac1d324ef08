"""The scenarios against the real system, one function each, run in order over the same connected
simulated bridges: approval to delivery (and to execution), fan-out, acks at a steady rate, acks in a
burst, signed SubmitSignal, quote to CloseOrder (``positions``), risk limits (``risk``: AccountState
frames' cost, and a limit's CLOSE_ALL to the CloseOrders), the web console's pages with 1,000
positions (``console``), and a referred trader's fill to its affiliate's commission (``commissions``).
Each reports its figures beside the targets of docs/design.md, and beside the yardsticks measured earlier
in the run (the echo, JetStream, a device polling once a second) as ratios: signalhub's figure over the
yardstick's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from backoffice.producer import ProducerClient

from .commissions import fill_to_commission
from .console import console_pages
from .limits import Bare
from .loadgen import LoadGenerator
from .meters import UPLINK_BATCH, UPLINK_COMMIT, CpuMeter, histogram_mean, histogram_sums, rss_kib
from .options import Options
from .positions import quote_to_close
from .profile import profiled
from .report import Report, ms, percentile, round_trips, throughput
from .risk import risk_limits
from .simdevice import Samples
from .system import Stack, gateway_processes
from .world import Backoffice, World, paced


@dataclass
class Run:
    """What the scenarios against the real system share."""

    options: Options
    stack: Stack
    world: World
    report: Report
    bare: Bare
    load: LoadGenerator
    api: Backoffice
    connected: int = 0

    @property
    def per_user(self) -> int:
        return max(1, len(self.world.devices) // len(self.world.accounts))

    def meter(self) -> CpuMeter:
        """CPU of the servers and the load processes from now on."""
        return CpuMeter(self.stack.pids, self.load.pids)


def over(value: float | None, yardstick: float | None) -> float | None:
    """signalhub's figure over the yardstick's; None when either is missing."""
    return None if value is None or not yardstick else value / yardstick


async def wait_for_deliveries(load: LoadGenerator, signal_ids: Sequence[str], expected: int, within: float) -> int:
    """Poll until ``expected`` deliveries of these signals arrived (or ``within`` seconds passed)."""
    deadline = time.monotonic() + within
    got = 0
    while time.monotonic() < deadline:
        got, _ = await load.count(signal_ids)
        if got >= expected:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # let the last receipts arrive
    return got


async def approval_to_delivery(run: Run) -> None:
    """One delivery per approval (one user, one of their devices), approvals paced; the latency runs from
    the approval's decide_time to the device's first receipt of the delivery, and to execution: the
    Receipt of the device's Fill (set beside a device polling once a second for its work)."""
    options, world, report = run.options, run.world, run.report
    meter = run.meter()
    approvals: dict[tuple[str, str], float] = {}
    run.api.approve_latencies.clear()
    rounds = max(1, min(run.per_user, -(-options.latency_samples // len(world.accounts))))
    for r in range(rounds):
        signal_id = await run.api.signal(run.api.manual)

        async def approve_one(i: int, signal_id: str = signal_id, r: int = r) -> None:
            account = world.accounts[i]
            device_id = account.devices[r % len(account.devices)]
            approvals[(signal_id, device_id)] = await run.api.approve(account, signal_id, [device_id])

        await paced(len(world.accounts), options.approval_rate, approve_one)
    signal_ids = sorted({s for s, _ in approvals})
    await wait_for_deliveries(run.load, signal_ids, len(approvals), options.wait_seconds)
    await run.load.drain(options.wait_seconds)  # the Fills' receipts
    samples = await run.load.collect()
    first: dict[tuple[str, str], float] = {}
    for signal_id, device_id, received, _ in samples.deliveries:
        key = (signal_id, device_id)
        if key in approvals:
            first[key] = min(received, first.get(key, received))
    latencies = [first[k] - approvals[k] for k in first]
    where = f"{run.connected} devices connected, {len(approvals)} approvals at {options.approval_rate:g}/s"
    report.add("approval_to_delivery_p50", ms(percentile(latencies, 50)), "ms", where, at_most=5)
    report.add("approval_to_delivery_p95", ms(percentile(latencies, 95)), "ms", where)
    report.add("approval_to_delivery_p99", ms(percentile(latencies, 99)), "ms", where, at_most=20)
    report.add("approve_signal_rpc_p50", ms(percentile(run.api.approve_latencies, 50)), "ms", where)
    report.add("approve_signal_rpc_p99", ms(percentile(run.api.approve_latencies, 99)), "ms", where)
    floor = sum(v for v in (run.bare.get("commit"), run.bare.get("publish"), run.bare.get("rtt")) if v is not None)
    p50 = percentile(latencies, 50)
    bare_where = f"{where}; bare = commit+publish+echo rtt"
    report.add("approval_to_delivery_p50_over_bare", over(p50, floor), "x", bare_where, at_most=3)
    executed = [t - approvals[k] for k, t in samples.fills.items() if k in approvals]
    report.add("approval_to_execution_p50", ms(percentile(executed, 50)), "ms", f"{where}; to the Fill's Receipt")
    report.add("approval_to_execution_p99", ms(percentile(executed, 99)), "ms", f"{where}; to the Fill's Receipt")
    report.add(
        "approval_to_execution_over_polling",
        over(percentile(executed, 50), run.bare.get("polling_p50")),
        "ratio",
        f"{where}; p50 over a device polling once a second",
        at_most=0.02,
    )
    meter.report(report, where)
    if len(first) < len(approvals):
        report.note(f"{len(approvals) - len(first)} of {len(approvals)} approved deliveries did not arrive in time")


async def connect_streams(load: LoadGenerator, wanted: int, stack: Stack, report: Report, prefix: str = "") -> int:
    """Connect the ``wanted`` simulated bridges of ``load``: how many and how long, the gateway's memory per
    stream and its whole resident memory then (figures named with ``prefix``); how many connected."""
    where = f"{wanted} devices on one gateway"
    before = rss_kib(stack.gateway_pid)
    began = time.monotonic()
    connected, errors = await load.connect()
    report.add(f"{prefix}streams_connected", connected, "streams", where, at_least=wanted)
    report.add(f"{prefix}connect_all_seconds", time.monotonic() - began, "s", where)
    if connected < wanted:
        report.note(f"only {connected} of {wanted} streams connected: {errors[:3]}")
    if connected == 0:
        return 0
    await asyncio.sleep(2)
    after = rss_kib(stack.gateway_pid)
    if before is not None and after is not None:
        # 10,000 streams under 1 GiB on one gateway process: at most 104.9 KiB each.
        report.add(f"{prefix}gateway_rss_per_stream", (after - before) / connected, "KiB", where, at_most=104.8)
    if after is not None:
        # Measured, not extrapolated: the whole gateway process with every stream held (the full run's
        # last phase holds 10,000 more beside the scenarios' 1,000: under 1 GiB).
        limit = 1024.0 if wanted >= 10_000 else None
        report.add(f"{prefix}gateway_rss", after / 1024, "MiB", where, at_most=limit)
    return connected


async def fan_out_once(
    api: Backoffice, load: LoadGenerator, report: Report, connected: int, wait: float, prefix: str = ""
) -> tuple[float | None, str]:
    """Submit one AUTO signal and report when the devices first received it, the last and the median
    (figures named with ``prefix``); the last in seconds (None unless every device had it within
    ``wait``), and where it was measured."""
    t0 = time.time()
    signal_id = await api.signal(api.auto)
    got = await wait_for_deliveries(load, [signal_id], connected, wait)
    samples = await load.collect()
    arrivals = [received - t0 for s, _, received, attempt in samples.deliveries if s == signal_id and attempt == 1]
    where = f"one AUTO signal to {connected} devices"
    last = max(arrivals) if len(arrivals) >= connected else None  # not all arrived: not met
    report.add(f"{prefix}fanout_last_delivery", ms(last), "ms", where, at_most=1000)
    report.add(f"{prefix}fanout_p50_delivery", ms(percentile(arrivals, 50)), "ms", where)
    if got < connected:
        report.note(f"fan-out: {got} of {connected} devices got the signal within {wait:g} s")
    return last, where


async def fanout(run: Run) -> None:
    """One AUTO signal to every connected device (the design's target is for 10,000: see fleet.py)."""
    meter = run.meter()
    last, where = await fan_out_once(run.api, run.load, run.report, run.connected, run.options.wait_seconds)
    echo, jetstream = run.bare.get("echo_fanout_last"), run.bare.get("jetstream_fanout_last")
    run.report.add("fanout_last_delivery_over_echo", over(last, echo), "ratio", f"{where}; over the echo's", at_most=2)
    run.report.add("fanout_over_jetstream", over(last, jetstream), "ratio", f"{where}; over JetStream's", at_most=1)
    meter.report(run.report, where)


async def ack_steady(run: Run) -> None:
    """Acks at a steady offered rate: whole-account approvals (one delivery per device, three frames
    each: RECEIVED, PLACED, Fill), paced."""
    options, world = run.options, run.world
    meter = run.meter()
    approval_rate = options.ack_rate / (3 * run.per_user)
    count = max(1, int(approval_rate * options.ack_seconds))
    signal_ids = []
    for start in range(0, count, len(world.accounts)):
        signal_id = await run.api.signal(run.api.manual)
        signal_ids.append(signal_id)

        async def approve_account(i: int, signal_id: str = signal_id) -> None:
            await run.api.approve(world.accounts[i], signal_id)

        await paced(min(len(world.accounts), count - start), approval_rate, approve_account)
    await wait_for_deliveries(run.load, signal_ids, count * run.per_user, options.wait_seconds)
    missing = await run.load.drain(options.wait_seconds)
    samples = await run.load.collect()
    latencies = round_trips(samples.receipts)
    if missing:
        run.report.note(f"steady: {missing} frames still had no receipt after {options.wait_seconds:g} s")
    where = f"~{options.ack_rate:g} ack/fill frames/s offered for {options.ack_seconds:g} s"
    run.report.add("ack_to_receipt_p50", ms(percentile(latencies, 50)), "ms", where)
    run.report.add("ack_to_receipt_p99", ms(percentile(latencies, 99)), "ms", where, at_most=10)
    run.report.add("ack_steady_throughput", throughput(samples.receipts), "frames/s", where)
    meter.report(run.report, where, len(samples.receipts))
    if samples.rejected:
        run.report.note(f"{samples.rejected} frames were answered REJECTED")


async def burst(run: Run, load: LoadGenerator, connected: int) -> Samples:
    """Several AUTO signals at once to the devices of ``load``, every device acking each (RECEIVED, PLACED,
    Fill): what the devices saw, once every frame has its receipt (or the wait is over)."""
    options = run.options
    signal_ids = [await run.api.signal(run.api.auto) for _ in range(options.burst_signals)]
    await wait_for_deliveries(load, signal_ids, connected * options.burst_signals, 2 * options.wait_seconds)
    missing = await load.drain(2 * options.wait_seconds)
    if missing:
        run.report.note(f"burst: {missing} frames still had no receipt after {2 * options.wait_seconds:g} s")
    return await load.collect()


async def ack_burst(run: Run) -> None:
    """Several AUTO signals at once, every device acking each (RECEIVED, PLACED, Fill)."""
    options = run.options
    metrics = run.stack.metrics.get("gateway")
    histograms = await histogram_sums(metrics, UPLINK_BATCH, UPLINK_COMMIT)
    meter = run.meter()
    samples = await burst(run, run.load, run.connected)
    rate = throughput(samples.receipts)
    where = f"{options.burst_signals} AUTO signals x {run.connected} devices x 3 frames"
    run.report.add("ack_burst_frames_receipted", len(samples.receipts), "frames", where)
    run.report.add("ack_burst_throughput", rate, "frames/s", where, at_least=5000)
    run.report.add("ack_burst_receipt_p99", ms(percentile(round_trips(samples.receipts), 99)), "ms", where)
    used = meter.report(run.report, where, len(samples.receipts))
    after = await histogram_sums(metrics, UPLINK_BATCH, UPLINK_COMMIT)
    run.report.add(
        "ack_burst_over_echo_throughput", over(rate, run.bare.get("echo_rate")), "ratio", where, at_least=0.5
    )
    run.report.add("ack_burst_over_jetstream", over(rate, run.bare.get("jetstream_rate")), "ratio", where, at_least=1)
    per_frame = used["gateway"] / len(samples.receipts) if "gateway" in used and samples.receipts else None
    echo_cpu = run.bare.get("echo_cpu_per_frame")
    run.report.add("gateway_cpu_per_frame_over_echo", over(per_frame, echo_cpu), "ratio", where, at_most=2)
    run.report.add("uplink_batch_mean", histogram_mean(histograms, after, UPLINK_BATCH), "frames", where)
    run.report.add("uplink_commit_ms_mean", ms(histogram_mean(histograms, after, UPLINK_COMMIT)), "ms", where)
    if histograms is None or after is None:
        run.report.note(f"burst: the gateway's metrics ({metrics or 'no address'}) could not be read")


async def two_processes_burst(run: Run) -> None:
    """The ack burst again, on a gateway of two processes (``serve gateway --processes 2``, sharing its
    address): the devices leave the one-process gateway for it, so this runs last. The figure is its
    throughput over the one-process burst's in the same run (``acks, burst`` runs first when it did not)."""
    if not run.stack.env:
        run.report.note("2 processes: only on a stack the benchmark started (it starts the second gateway)")
        return
    one = run.report.value("ack_burst_throughput")
    if one is None:
        await ack_burst(run)
        one = run.report.value("ack_burst_throughput")
    await run.load.close()
    async with gateway_processes(run.stack, 2) as (address, pids):
        load = LoadGenerator(address, run.world.devices, run.options.processes)
        try:
            connected, errors = await load.connect()
            where = f"{run.options.burst_signals} AUTO signals x {connected} devices x 3 frames, 2 gateway processes"
            if connected < len(run.world.devices):
                run.report.note(f"2 processes: {connected} of {len(run.world.devices)} connected: {errors[:2]}")
            await asyncio.sleep(2)
            meter = CpuMeter({f"gateway_process_{i}": pid for i, pid in enumerate(pids)}, load.pids)
            samples = await burst(run, load, connected)
            used = meter.report(run.report, where, len(samples.receipts))
        finally:
            await load.close()
    rate = throughput(samples.receipts)
    run.report.add("ack_burst_2proc_throughput", rate, "frames/s", where)
    run.report.add("ack_burst_2proc_over_1proc", over(rate, one), "ratio", f"{where}; over one process's")
    per_frame = sum(used.values()) / len(samples.receipts) if used and samples.receipts else None
    run.report.add("gateway_2proc_cpu_per_frame", None if per_frame is None else 1e6 * per_frame, "us", where)


async def submit_signals(run: Run) -> None:
    """Signed SubmitSignal at a steady rate: the cheap path (a producer without subscribers, at 500/s),
    then the path a real producer takes (every AUTO subscriber's devices get a sized delivery: the
    1,000 simulated bridges), paced so its fan-outs do not pile up."""
    options = run.options
    await _submits(run, run.api.idle, options.submit_rate, options.submit_seconds, "", "without subscribers")
    await _submits(
        run,
        run.api.auto,
        options.auto_submit_rate,
        options.auto_submits / options.auto_submit_rate,
        "auto_",
        f"to {run.connected} devices of AUTO subscribers",
    )
    await run.load.drain(options.wait_seconds)  # their deliveries acked and filled before the next scenario
    await run.load.collect()


async def _submits(run: Run, producer: ProducerClient, rate: float, seconds: float, prefix: str, to: str) -> None:
    """``rate`` signed SubmitSignal calls a second for ``seconds`` from ``producer``: latency (p50, p99
    against 15 ms), failures, and the back office's CPU per call (against 1 ms), figures named with
    ``prefix``; for the cheap path, each also over the bare unary server's under the same load."""
    meter = run.meter()
    submitted = await Backoffice.submits(producer, rate, seconds)
    where = f"{rate:g} signed SubmitSignal/s for {seconds:g} s, {to}"
    p99 = percentile(submitted.latencies, 99)
    run.report.add(f"{prefix}submit_signal_p50", ms(percentile(submitted.latencies, 50)), "ms", where)
    run.report.add(f"{prefix}submit_signal_p99", ms(p99), "ms", where, at_most=15)
    run.report.add(f"{prefix}submit_signal_failed", len(submitted.failures), "calls", where, at_most=0)
    used = meter.report(run.report, where)
    per_call = used["backoffice"] / submitted.calls if "backoffice" in used else None
    run.report.add(f"backoffice_cpu_per_{prefix}submit", ms(per_call), "ms", where, at_most=1)
    if not prefix:
        bare = f"{where}; over the bare unary server's"
        run.report.add("submit_signal_p99_over_echo", over(p99, run.bare.get("echo_submit_p99")), "ratio", bare)
        cpu = over(per_call, run.bare.get("echo_cpu_per_submit"))
        run.report.add("backoffice_cpu_per_submit_over_echo", cpu, "ratio", bare)
    if submitted.failures:
        run.report.note(f"{len(submitted.failures)} SubmitSignal calls failed, e.g. {submitted.failures[0]}")


SCENARIOS: tuple[tuple[str, Callable[[Run], Coroutine[Any, Any, None]]], ...] = (
    ("approval to delivery", approval_to_delivery),
    ("fan-out", fanout),
    ("acks, steady", ack_steady),
    ("acks, burst", ack_burst),
    ("signed SubmitSignal", submit_signals),
    ("quote to CloseOrder", quote_to_close),
    ("risk limits", risk_limits),
    ("console", console_pages),
    ("commissions", fill_to_commission),
    ("acks, burst, 2 gateway processes", two_processes_burst),  # last: the devices leave the first gateway
)


async def gateway_scenarios(options: Options, stack: Stack, world: World, report: Report, bare: Bare) -> None:
    """Connect every simulated bridge to the gateway (streams connected, how long, RSS per stream), measure
    it idle, then run each of SCENARIOS in turn; one that fails is noted and the next one still runs."""
    load = LoadGenerator(stack.gateway, world.devices, options.processes)
    run = Run(options, stack, world, report, bare, load, Backoffice(stack, world))
    try:
        run.connected = await connect_streams(load, len(world.devices), stack, report)
        if run.connected == 0:
            return
        idle = run.meter()
        await asyncio.sleep(options.idle_seconds)
        idle.report(report, f"{run.connected} streams connected, nothing to do")
        await run.load.collect()
        for name, scenario in SCENARIOS:
            if options.only and name not in options.only:
                continue
            began = time.monotonic()
            print(f"== {name}", flush=True)
            try:
                with profiled(name, {**stack.pids, "worker": stack.worker_pid}, options.profile):
                    await scenario(run)
            except Exception as exc:
                report.note(f"{name} did not finish: {type(exc).__name__}: {exc}")
                await run.load.collect()
            print(f"   ({time.monotonic() - began:.0f} s)", flush=True)
    finally:
        await run.api.close()
        await run.load.close()
