"""CPU and memory of the processes under test, read from /proc (Linux), and the sums of their own
Prometheus histograms (from a server's metrics endpoint); None where they cannot be read."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from backoffice.cli.status import Scrape, fetch

from .report import Report

# The gateway's uplink histograms (backoffice/platform/metrics.py: UPLINK_BATCH, UPLINK_COMMIT).
UPLINK_BATCH = "signalhub_uplink_batch_frames"
UPLINK_COMMIT = "signalhub_uplink_commit_seconds"


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time a process has used so far (Linux)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_seconds() -> float | None:
    """User + system CPU time every Postgres process on this machine has used so far, those that ended
    included (their time is counted in their parent's): the database's share of a scenario (Linux)."""
    total, found = 0.0, False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # ended meanwhile
        name, _, rest = text.partition(" (")[2].partition(") ")
        if name != "postgres":
            continue
        fields = rest.split()
        # utime, stime, and (the postmaster's) cutime, cstime of its ended children; a backend's own are 0.
        total += sum(int(v) for v in fields[11:15])
        found = True
    return total / os.sysconf("SC_CLK_TCK") if found else None


def machine_busy_seconds() -> float | None:
    """CPU time (all cores) the whole machine spent busy so far (Linux /proc/stat)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int | None) -> int | None:
    """A process's resident memory now, in KiB."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class CpuMeter:
    """CPU used during one scenario, as a share of one core: each server, the benchmark's own process, the
    load processes together, Postgres, and the whole machine (on a 2-core machine, 200 % is saturation)."""

    def __init__(self, pids: Mapping[str, int | None], load_pids: Sequence[int] = ()) -> None:
        self.pids = dict(pids)
        self.load_pids = list(load_pids)
        self.began = time.monotonic()
        self.start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.load_start = [cpu_seconds(pid) for pid in self.load_pids]
        self.machine_start = machine_busy_seconds()
        self.postgres_start = postgres_seconds()
        self.own_start = cpu_seconds(os.getpid())  # its clients: the producers' signed calls, the approvals

    def report(self, report: Report, scenario: str, frames: int | None = None) -> dict[str, float]:
        """Report each process's share of a core (and CPU per frame when ``frames`` is given), the load
        processes' and the machine's; returns the CPU seconds each server process used."""
        elapsed = time.monotonic() - self.began
        used_by: dict[str, float] = {}
        if elapsed <= 0:
            return used_by
        for name, pid in self.pids.items():
            before, after = self.start[name], cpu_seconds(pid)
            if before is None or after is None:
                continue
            used_by[name] = after - before
            report.add(f"{name}_cpu_share", 100 * (after - before) / elapsed, "% of a core", scenario)
            if frames:
                report.add(f"{name}_cpu_per_frame", 1e6 * (after - before) / frames, "us", scenario)
        used = [(b, cpu_seconds(pid)) for b, pid in zip(self.load_start, self.load_pids, strict=True)]
        load = sum(a - b for b, a in used if a is not None and b is not None)
        if self.load_pids:
            report.add("load_generator_cpu_share", 100 * load / elapsed, "% of a core", scenario)
        for name, began, now in (
            ("bench_process", self.own_start, cpu_seconds(os.getpid())),
            ("postgres", self.postgres_start, postgres_seconds()),
        ):
            if began is not None and now is not None:
                report.add(f"{name}_cpu_share", 100 * (now - began) / elapsed, "% of a core", scenario)
        machine_end = machine_busy_seconds()
        if self.machine_start is not None and machine_end is not None:
            busy = 100 * (machine_end - self.machine_start) / elapsed
            report.add("machine_cpu_busy", busy, f"% of {os.cpu_count()} cores", scenario)
        return used_by


async def histogram_sums(address: str | None, *names: str) -> dict[str, tuple[float, float]] | None:
    """(sum, count) of each named histogram at a metrics endpoint (host:port), summed over its labels;
    None when there is no endpoint or it does not answer."""
    if address is None:
        return None
    scrape = Scrape()
    try:
        scrape.add(await asyncio.to_thread(fetch, address))
    except (OSError, ValueError):
        return None
    return {name: (scrape.total(f"{name}_sum"), scrape.total(f"{name}_count")) for name in names}


def histogram_mean(
    before: dict[str, tuple[float, float]] | None, after: dict[str, tuple[float, float]] | None, name: str
) -> float | None:
    """The mean of what a histogram observed between two scrapes (None without both or observations)."""
    if before is None or after is None:
        return None
    total, count = (a - b for a, b in zip(after[name], before[name], strict=True))
    return total / count if count > 0 else None
