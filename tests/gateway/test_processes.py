"""``signalhub serve gateway --processes N`` as an operator runs it: N gateway processes share one address
(SO_REUSEPORT), each holding some of the streams with its metrics on a port of its own; SIGTERM stops
them all; an address something else holds stops the start with an error, not a restart loop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from backoffice.bootstrap import Resources
from backoffice.platform.config import Settings
from gateway.processes import child_environment
from scripts.benchmark.system import children
from tests.conftest import ROOT_DIR, UserCredentials, free_port, make_device, run_module, server_env
from tests.gateway.support import stream

DEVICES = 16  # each on a connection of its own: all on one of two processes has odds of 1 in 32,768


def _sessions(metrics_port: int) -> float | None:
    """The process's ``signalhub_gateway_sessions``, or None while its metrics do not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=1) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    return next(float(line.split()[1]) for line in text.splitlines() if line.startswith("signalhub_gateway_sessions "))


def _metrics_ports() -> int:
    """A free port whose next port is free too: the two processes' metrics."""
    while True:
        port = free_port()
        with socket.socket() as probe, contextlib.suppress(OSError):
            probe.bind(("127.0.0.1", port + 1))
            return port


def _alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if Path(f"/proc/{pid}").exists()}


async def _eventually(check: object, what: str, within: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await asyncio.to_thread(check):  # type: ignore[arg-type]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


@dataclass
class _Gateway:
    process: subprocess.Popen[str]  # the supervisor
    address: str
    metrics: int  # process i's metrics port: this plus i
    children: set[int]


@contextlib.asynccontextmanager
async def _two_processes(res: Resources, tmp_path: Path) -> AsyncIterator[_Gateway]:
    """``serve gateway --processes 2`` started and both processes serving (each serves its metrics once its
    gRPC server has started); killed on the way out if still running."""
    address, metrics = f"127.0.0.1:{free_port()}", _metrics_ports()
    env = server_env(
        res.settings.database_url,
        res.settings.redis_url,
        gateway_address=address,
        metrics_address=f"127.0.0.1:{metrics}",
    )
    command = ("backoffice.cli", "serve", "gateway", "--processes", "2")
    supervisor = run_module(*command, env=env, cwd=ROOT_DIR, output=tmp_path / "gateway.log")
    try:
        await _eventually(lambda: all(_sessions(metrics + i) is not None for i in range(2)), "both processes")
        yield _Gateway(supervisor, address, metrics, children(supervisor.pid))
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()


async def test_processes_share_the_address_each_holding_streams_and_stop_together(
    res: Resources, user: UserCredentials, tmp_path: Path
) -> None:
    async with _two_processes(res, tmp_path) as gateway:
        assert len(gateway.children) == 2
        devices = [await make_device(res, user) for _ in range(DEVICES)]
        async with contextlib.AsyncExitStack() as streams:
            for device in devices:
                # A connection of its own: channels to one target otherwise share a subchannel.
                own = [("grpc.use_local_subchannel_pool", 1)]
                channel = await streams.enter_async_context(grpc.aio.insecure_channel(gateway.address, options=own))
                await streams.enter_async_context(stream(channel, device))
            held = [_sessions(gateway.metrics + i) or 0 for i in range(2)]
            assert sum(held) == DEVICES and all(h > 0 for h in held), held
        gateway.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(gateway.process.wait, 60) == 0
        assert not await asyncio.to_thread(_alive, gateway.children)  # each stopped and reaped


async def test_an_address_held_by_another_program_ends_the_start_with_an_exit_code(
    res: Resources, tmp_path: Path
) -> None:
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))  # without SO_REUSEPORT: no gateway process may share it
        holder.listen()
        env = server_env(res.settings.database_url, res.settings.redis_url, gateway_address=f"127.0.0.1:{port}")
        command = ("backoffice.cli", "serve", "gateway", "--processes", "2")
        supervisor = run_module(*command, env=env, cwd=ROOT_DIR, output=tmp_path / "gateway.log")
        try:
            assert await asyncio.to_thread(supervisor.wait, 60) != 0
        except subprocess.TimeoutExpired:
            supervisor.kill()
            raise
    log = (tmp_path / "gateway.log").read_text()
    assert "could not start" in log
    assert f"signalhub: invalid configuration:\n  - cannot listen on 127.0.0.1:{port}" in log


async def test_processes_end_with_their_supervisor_however_it_ends(res: Resources, tmp_path: Path) -> None:
    async with _two_processes(res, tmp_path) as gateway:
        gateway.process.kill()
        gateway.process.wait()
    await _eventually(lambda: not _alive(gateway.children), "the processes to end")


def test_only_the_gateway_runs_as_several_processes(res: Resources) -> None:
    env = server_env(res.settings.database_url, res.settings.redis_url)
    done = subprocess.run(
        [sys.executable, "-m", "backoffice.cli", "serve", "worker", "--processes", "2"],
        env=env,
        cwd=ROOT_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert done.stderr.splitlines()[-1] == "  - --processes: only the gateway runs as several processes"


def test_each_process_has_a_metrics_port_of_its_own() -> None:
    environ = {"OTHER": "kept"}
    child = child_environment(Settings(metrics_address="127.0.0.1:9200"), 1, environ)
    assert child["SIGNALHUB_METRICS_ADDRESS"] == "127.0.0.1:9201" and child["OTHER"] == "kept"
    assert child["SIGNALHUB_GATEWAY_PROCESSES"] == "1" and child["SIGNALHUB_GATEWAY_REUSE_PORT"] == "true"
    any_port = child_environment(Settings(metrics_address="127.0.0.1:0"), 1, environ)
    assert any_port["SIGNALHUB_METRICS_ADDRESS"] == "127.0.0.1:0"  # not port 1
