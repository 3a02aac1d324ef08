"""Load processes: spawned children that each hold a share of the simulated devices and answer the
coordinator's commands over a pipe. The benchmark's bridges, its JetStream devices and the soak's fleet
all run this way; this module is the one place the pipe protocol lives.

It is what a load process imports: keep it free of the servers' dependencies.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
from collections.abc import Awaitable, Callable, Mapping, Sequence
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from typing import Any

# A pipe message: the command (or answer) name, then its arguments. Pickled across processes, so untyped.
Message = tuple[Any, ...]
Handlers = Mapping[str, Callable[..., Awaitable[Message]]]


async def serve(handlers: Handlers, conn: Connection) -> None:
    """A load process's loop: run each command that arrives and send back its answer; "close" is the last."""
    while True:
        command, *args = await asyncio.to_thread(conn.recv)
        conn.send(await handlers[command](*args))
        if command == "close":
            return


def run_commands(worker: object, commands: Sequence[str], conn: Connection) -> None:
    """A load process's body: ``serve`` the coordinator's ``commands``, each answered by the worker's method
    of that name, until "close" (which must be one of them)."""
    if "close" not in commands:
        raise ValueError("a load process must answer close")
    asyncio.run(serve({name: getattr(worker, name) for name in commands}, conn))


class ProcessPool:
    """The coordinator's side: one spawned process per spec, each asked over its own pipe."""

    def __init__(self, target: Callable[[Any, Connection], None], specs: Sequence[Any]) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.processes: list[SpawnProcess] = []
        for spec in specs:
            mine, theirs = context.Pipe()
            process = context.Process(target=target, args=(spec, theirs), daemon=True)
            process.start()
            self.pipes.append(mine)
            self.processes.append(process)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    async def ask(self, *command: object) -> list[Message]:
        """Send a command to every load process; their answers, in process order."""
        for pipe in self.pipes:
            pipe.send(command)
        return list(await asyncio.gather(*(asyncio.to_thread(pipe.recv) for pipe in self.pipes)))

    async def close(self) -> None:
        """Ask every process to close (30 s at most), then make sure each has ended."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ask("close"), 30)
        for process in self.processes:
            process.join(5)
            if process.is_alive():
                process.kill()


def shares(items: Sequence[Any], processes: int) -> list[tuple[Any, ...]]:
    """``items`` dealt out over at most ``processes`` processes (none gets an empty share)."""
    return [share for share in (tuple(items[i::processes]) for i in range(processes)) if share]
