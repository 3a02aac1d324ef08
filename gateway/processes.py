"""A gateway on every core: ``signalhub serve gateway --processes N`` runs N gateway processes that share
its address through SO_REUSEPORT (the kernel spreads new connections over them), each a whole gateway
with its own streams, uplink writer, pusher, hint listener and sweep, exactly as separate replicas are:
a device that reconnects to another process takes its session over through Redis, as across machines.

This process only supervises. It starts each child as a fresh interpreter (``serve gateway`` with
``SIGNALHUB_GATEWAY_PROCESSES=1``), so no gRPC, asyncio or database state exists before a child starts:
nothing is forked from a process that holds threads or sockets. Child ``i`` serves its metrics on the
metrics address's port plus ``i``. A child that ends within ``STARTUP_SECONDS`` of its start could not
serve (the address taken by something else, a bad setting): every child is stopped and the exit code
says so. One that ends later is started again. SIGTERM or SIGINT stops every child gracefully (each
tells its streams to reconnect elsewhere) and waits for them."""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from types import FrameType

from backoffice.platform.config import ENV_PREFIX, Settings

log = logging.getLogger("signalhub.gateway.processes")

STARTUP_SECONDS = 10.0
POLL_SECONDS = 0.2
KILL_AFTER_SECONDS = 10.0  # beyond the shutdown grace: a child still running then is killed


def process_count(settings: Settings, asked: int | None) -> int:
    """How many gateway processes to run: ``--processes`` when given, else the setting; 0 means one per
    core this process may run on."""
    count = asked if asked is not None else settings.gateway_processes
    return count if count > 0 else len(os.sched_getaffinity(0))


def child_environment(settings: Settings, index: int, environ: Mapping[str, str]) -> dict[str, str]:
    """Child ``index``'s environment: a single gateway process on the shared address, its metrics on a port
    of its own (the metrics port plus ``index``)."""
    host, _, port = settings.metrics_address.rpartition(":")
    base = int(port)
    return {
        **environ,
        f"{ENV_PREFIX}GATEWAY_PROCESSES": "1",
        f"{ENV_PREFIX}GATEWAY_REUSE_PORT": "true",
        f"{ENV_PREFIX}METRICS_ADDRESS": f"{host}:{base + index if base else 0}",  # 0: any free port, each
    }


class Supervisor:
    """Starts ``count`` gateway processes and keeps them running until told to stop."""

    def __init__(self, settings: Settings, count: int) -> None:
        self._settings = settings
        self._count = count
        self._children: list[subprocess.Popen[bytes]] = []
        self._started: list[float] = []
        self._stopping = False

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT (0), or until a child fails to start (its exit code, at least 1)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)
        log.info("gateway processes starting", extra={"processes": self._count})
        for index in range(self._count):
            self._children.append(self._start(index))
            self._started.append(time.monotonic())
        while not self._stopping:
            failed = self._check_children()
            if failed is not None:
                self._stop_children()
                return failed
            time.sleep(POLL_SECONDS)
        self._stop_children()
        return 0

    def _start(self, index: int) -> subprocess.Popen[bytes]:
        return _spawn_gateway(child_environment(self._settings, index, os.environ))

    def _check_children(self) -> int | None:
        """Restart a child that ended after its start-up; an exit code when one failed to start."""
        for index, child in enumerate(self._children):
            code = child.poll()
            if code is None or self._stopping:
                continue
            if time.monotonic() - self._started[index] < STARTUP_SECONDS:
                log.error("a gateway process could not start", extra={"process": index, "exit_code": code})
                return code or 1
            log.warning("a gateway process ended; starting it again", extra={"process": index, "exit_code": code})
            self._children[index] = self._start(index)
            self._started[index] = time.monotonic()
        return None

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _stop_children(self) -> None:
        for child in self._children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._settings.shutdown_grace_seconds + KILL_AFTER_SECONDS
        for child in self._children:
            try:
                child.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        log.info("gateway processes stopped", extra={"processes": self._count})


def _spawn_gateway(environment: dict[str, str]) -> subprocess.Popen[bytes]:
    """``signalhub serve gateway`` as a fresh interpreter, its output this process's; on Linux it gets
    SIGTERM when this process dies, however it dies (a supervisor killed must not leave servers behind)."""
    command = [sys.executable, "-m", "backoffice.cli", "serve", "gateway"]
    end_with_parent = functools.partial(_end_with_parent, os.getpid())
    # Our own interpreter and module, nothing a caller sent.
    return subprocess.Popen(command, env=environment, preexec_fn=end_with_parent)  # noqa: S603


def _end_with_parent(parent: int) -> None:
    """In the child, before it runs: SIGTERM when its parent dies (prctl PR_SET_PDEATHSIG; Linux only), and
    at once if the parent died before that was set."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)


PR_SET_PDEATHSIG = 1
