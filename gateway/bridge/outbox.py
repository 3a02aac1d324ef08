"""The ledger as the event loop uses it, and the stream its frames go out on.

Every ledger call runs on one thread of its own (SQLite commits are fsync'd and would stall the loop). A
frame is committed before it is queued; the queue belongs to the current session (``Uplink``), and on
each new session every unreceipted frame is queued again, oldest first, before anything new.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gateway.bridge.frames import new_frame_id
from gateway.bridge.ledger import Ledger, OutFrame
from signalhub.v1 import gateway_pb2 as pb

_T = TypeVar("_T")


@dataclass
class Uplink:
    """What one session sends, in order: durable frames (each queued once, unless sent ``again``) and
    ephemeral ones (Hello, Heartbeat, Quote, AccountState), whose receipts are only counted."""

    queue: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)
    queued: set[str] = field(default_factory=set)  # durable frame ids already queued on this stream
    ephemeral: set[str] = field(default_factory=set)  # ephemeral frame ids awaiting receipts

    def put(self, frame: OutFrame, *, again: bool = False) -> None:
        if frame.frame_id in self.queued and not again:
            return
        self.queued.add(frame.frame_id)
        self.queue.put_nowait(frame.data)

    def put_ephemeral(self, frame: pb.DeviceFrame) -> None:
        """Queue a frame that is not kept: it gets a frame_id of its own, and a lost one is not resent."""
        self.mark_ephemeral(frame)
        self.queue.put_nowait(frame.SerializeToString())

    def mark_ephemeral(self, frame: pb.DeviceFrame) -> None:
        frame.frame_id = new_frame_id()
        self.ephemeral.add(frame.frame_id)


@dataclass(frozen=True)
class LedgerStateStore:
    """The executor's ``StateStore``: a row of the ledger, read and written on the ledger's thread."""

    outbox: Outbox
    name: str

    async def load(self) -> bytes | None:
        return await self.outbox.db(self.outbox.ledger.executor_state, self.name)

    async def save(self, data: bytes) -> None:
        await self.outbox.db(self.outbox.ledger.save_executor_state, self.name, data)


class Outbox:
    """The ledger on its own thread, and the uplink of the current session (None between sessions)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bridge-ledger")
        self._lock = asyncio.Lock()  # guards the current uplink: nothing is queued on a session going away
        self._uplink: Uplink | None = None

    async def db(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run a ledger call on the ledger's thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, lambda: fn(*args, **kwargs))

    async def close(self) -> None:
        await self.db(self.ledger.close)
        self._thread.shutdown(wait=True)

    async def pending(self, subject: str | None = None) -> list[OutFrame]:
        return await self.db(self.ledger.pending, subject)

    async def report(self, frames: Sequence[OutFrame], store: Callable[[], None] | None = None) -> None:
        """Commit (``store`` commits the frames with whatever else must be atomic), then queue for sending."""
        if store is None:
            await self.db(self.ledger.store, frames)
        else:
            await self.db(store)
        await self.send(frames)

    async def send(self, frames: Sequence[OutFrame], *, again: bool = False) -> None:
        """Queue committed frames on the current session, if there is one (the next one sends them else)."""
        async with self._lock:
            if self._uplink is not None:
                for frame in frames:
                    self._uplink.put(frame, again=again)

    async def resend(self, subject: str) -> bool:
        """Queue again what is unreceipted about ``subject``; False when nothing is."""
        pending = await self.pending(subject)
        if pending:
            await self.send(pending, again=True)
        return bool(pending)

    async def receipted(self, frame_id: str) -> None:
        await self.db(self.ledger.receipted, [frame_id])

    async def attach(self, uplink: Uplink) -> int:
        """Make ``uplink`` the current session's: from here on every stored frame is queued on it, the
        backlog first. Returns how many unreceipted frames were queued again."""
        async with self._lock:
            self._uplink = uplink
            backlog = await self.pending()
            for frame in backlog:
                uplink.put(frame)
        return len(backlog)

    async def detach(self, uplink: Uplink) -> None:
        async with self._lock:
            if self._uplink is uplink:
                self._uplink = None
