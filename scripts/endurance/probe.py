"""What the soak samples from the processes under test: resident memory and open descriptors from /proc
(Linux), and the figures each server exports on its metrics port (event-loop lag, connected streams)."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

from backoffice.cli.status import Scrape, fetch


def rss_mib(pid: int) -> float | None:
    """VmRSS of ``pid`` in MiB, or None when it cannot be read (the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def open_fds(pid: int) -> int | None:
    """How many file descriptors ``pid`` holds open (sockets, pipes, files)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


async def scrape(address: str) -> Scrape | None:
    """The metrics endpoint at ``address``, or None when it does not answer."""
    try:
        text = await asyncio.to_thread(fetch, address)
    except OSError:
        return None
    found = Scrape()
    found.add(text)
    return found


@dataclass(frozen=True)
class Target:
    """A server process to watch: its pid and its metrics endpoint."""

    pid: int
    metrics: str


@dataclass(frozen=True)
class Reading:
    """One sample of one process; None where the figure could not be read."""

    rss_mib: float | None
    fds: int | None
    lag_s: float | None
    sessions: float | None


async def read(target: Target) -> Reading:
    found = await scrape(target.metrics)
    lag = found.total("signalhub_event_loop_lag_seconds") if found is not None else None
    sessions = found.total("signalhub_gateway_sessions") if found is not None else None
    return Reading(rss_mib(target.pid), open_fds(target.pid), lag, sessions)
