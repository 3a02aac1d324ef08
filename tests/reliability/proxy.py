"""A TCP proxy between bridges and a gateway that breaks the bytes it carries: drops a slice, delays,
duplicates and reorders chunks, and cuts connections, each with a probability per chunk read, from a
seeded random generator.

Without TLS, HTTP/2 has no integrity of its own: a dropped, doubled or swapped chunk corrupts the
connection, and what should follow is that one side notices (a framing, compression or flow-control
error, or a message that does not parse) and tears it down; the bridge reconnects. The proxy counts what
it did, and how many connections it broke were then torn down by an end.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from dataclasses import dataclass, field

CHUNK = 65536


@dataclass(frozen=True)
class Chaos:
    """Probabilities per chunk; ``Chaos()`` forwards everything untouched."""

    drop: float = 0.0
    delay: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    cut: float = 0.0
    max_delay: float = 0.05  # seconds


@dataclass
class _Link:
    corrupted: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class ChaosProxy:
    def __init__(self, upstream: str, seed: int) -> None:
        host, _, port = upstream.rpartition(":")
        self._upstream = (host, int(port))
        self._rng = random.Random(seed)
        self.chaos = Chaos()
        self.injected: Counter[str] = Counter()
        self.connections = 0
        self.corrupted = 0  # connections that carried a dropped, doubled or swapped chunk
        self.torn_down = 0  # ... and were then closed by the bridge or the gateway
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.Task[None]] = set()
        self.address = ""

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        return self.address

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._links):
            task.cancel()
        for task in list(self._links):
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._links.add(task)
        try:
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(*self._upstream)
            except OSError:
                client_writer.close()
                return
            self.connections += 1
            link = _Link()
            pumps = [
                asyncio.create_task(self._pump(client_reader, upstream_writer, link)),
                asyncio.create_task(self._pump(upstream_reader, client_writer, link)),
            ]
            done, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            cut_here = any(not t.cancelled() and t.result() is True for t in done)
            if link.corrupted and not cut_here:
                self.torn_down += 1
            for pump in pending:
                pump.cancel()
            for writer in (client_writer, upstream_writer):
                writer.close()
        finally:
            self._links.discard(task)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, link: _Link) -> bool:
        """Copy until EOF (returns False) or a cut (returns True), breaking chunks as ``chaos`` says."""
        held: bytes | None = None
        with contextlib.suppress(OSError):
            while data := await source.read(CHUNK):
                chaos, roll = self.chaos, self._rng.random
                if roll() < chaos.cut:
                    self.injected["cut"] += 1
                    return True
                if roll() < chaos.delay:
                    self.injected["delay"] += 1
                    await asyncio.sleep(self._rng.uniform(0, chaos.max_delay))
                if roll() < chaos.drop:
                    start = self._rng.randrange(len(data))
                    data = data[:start] + data[self._rng.randrange(start, len(data)) + 1 :]
                    self._corrupt(link, "drop")
                if roll() < chaos.duplicate:
                    data += data
                    self._corrupt(link, "duplicate")
                if held is None and roll() < chaos.reorder:
                    held = data  # goes out after the next chunk
                    self._corrupt(link, "reorder")
                    continue
                sink.write(data)
                if held is not None:
                    sink.write(held)
                    held = None
                await sink.drain()
        return False

    def _corrupt(self, link: _Link, kind: str) -> None:
        self.injected[kind] += 1
        if not link.corrupted:
            link.corrupted = True
            self.corrupted += 1
