"""The servers as the processes production runs (``signalhub serve backoffice|gateway|worker``), on a
Postgres and a Redis of the test's own, each on a port of its own with its log in the test's directory."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import ROOT_DIR, free_port, health, run_module, server_env, wait_serving

# Short enough that a test sees recovery within seconds; production defaults are in the README.
FAST_SETTINGS = {
    "ack_timeout_seconds": "1",
    "sweep_interval_seconds": "0.5",
    "heartbeat_seconds": "2",
    "worker_interval_seconds": "0.5",
    "hello_timeout_seconds": "5",
    "readiness_grace_seconds": "1",
}


def stop_process(process: subprocess.Popen[str] | None) -> None:
    """SIGTERM (the process drains and closes), SIGKILL if it takes too long."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


@dataclass
class ServerProcess:
    """One ``signalhub serve`` process; ``address`` is None for the worker (it serves no RPC)."""

    kind: str
    name: str
    address: str | None
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[str] | None = None
    starts: int = 0

    def start(self) -> None:
        self.process = run_module("backoffice.cli", "serve", self.kind, env=self.env, cwd=ROOT_DIR, output=self.log)
        self.starts += 1

    async def serving(self) -> None:
        assert self.process is not None
        if self.address is not None:
            await wait_serving(self.address, self.process)

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye to anyone."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        stop_process(self.process)

    def errors(self) -> list[str]:
        """The ERROR lines this process logged (JSON lines), for the report."""
        if not self.log.exists():
            return []
        return [line for line in self.log.read_text(errors="replace").splitlines() if '"level": "ERROR"' in line]


@dataclass
class Cluster:
    """A back office, ``gateways`` gateway replicas and a worker."""

    workdir: Path
    database_url: str
    redis_url: str
    gateways: int = 2
    processes: dict[str, ServerProcess] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def add(kind: str, name: str, variable: str | None) -> None:
            address = f"127.0.0.1:{free_port()}" if variable else None
            extra = {variable: address} if variable and address else {}
            env = server_env(self.database_url, self.redis_url, **FAST_SETTINGS, **extra)
            self.processes[name] = ServerProcess(kind, name, address, env, self.workdir / f"{name}.log")

        add("backoffice", "backoffice", "backoffice_address")
        for n in range(1, self.gateways + 1):
            add("gateway", f"gateway{n}", "gateway_address")
        add("worker", "worker", None)

    def __getitem__(self, name: str) -> ServerProcess:
        return self.processes[name]

    @property
    def backoffice(self) -> str:
        address = self.processes["backoffice"].address
        assert address is not None
        return address

    @property
    def gateway_addresses(self) -> list[str]:
        return [p.address for p in self.processes.values() if p.kind == "gateway" and p.address is not None]

    async def start(self) -> None:
        for process in self.processes.values():
            process.start()
        await asyncio.gather(*(p.serving() for p in self.processes.values()))

    async def restart(self, name: str) -> None:
        """Start a killed process again on the same address, as a supervisor would."""
        process = self.processes[name]
        process.start()
        await process.serving()

    async def health(self) -> dict[str, str]:
        """Each RPC server's grpc health (the worker: whether its process runs)."""
        found: dict[str, str] = {}
        for name, process in self.processes.items():
            if process.address is None:
                found[name] = "RUNNING" if process.alive() else "EXITED"
            else:
                found[name] = await health(process.address)
        return found

    def stop(self) -> None:
        for process in self.processes.values():
            process.stop()
