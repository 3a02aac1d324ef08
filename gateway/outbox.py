"""A stream's outgoing frames: a bounded buffer between the tasks that produce frames (receipts, pushed
instructions, heartbeats) and the one that writes them to the stream.

A slow device must never grow server memory. Receipts wait for room (so the device's own frames stop
being read: backpressure). Instructions are only read from Postgres for the room reserved first; when
there is none, the session is marked starved and re-reads Postgres once the device has caught up.
Closing the outbox ends the stream: with an error right away, or cleanly once it is drained.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from signalhub.v1 import gateway_pb2 as pb


class StreamFinished(Exception):
    """The outbox was closed cleanly and everything in it was written."""


class Outbox:
    def __init__(self, size: int, on_room: Callable[[], None]) -> None:
        self._size = size
        self._frames: deque[pb.GatewayFrame] = deque()
        self._reserved = 0
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._error: BaseException | None = None
        self._finishing = False
        self._starved = False
        self._on_room = on_room

    @property
    def closed(self) -> bool:
        return self._error is not None or self._finishing

    def room(self) -> int:
        return max(0, self._size - len(self._frames) - self._reserved)

    def reserve(self) -> int:
        """Reserve all the room there is (for instructions about to be read); 0 marks the outbox starved:
        ``on_room`` is called once it has drained to half."""
        room = 0 if self.closed else self.room()
        self._reserved += room
        if room == 0:
            self._starved = True
        return room

    def release(self, count: int) -> None:
        """Give back reserved room a read did not fill: a receipt waiting in ``put`` (the read had reserved
        all the room) goes on now, not when the next frame happens to be written."""
        self._reserved = max(0, self._reserved - count)
        if self.room() > 0:
            self._writable.set()
        self._check_room()

    def fill(self, frame: pb.GatewayFrame) -> None:
        """Put a frame into room reserved earlier."""
        self._reserved = max(0, self._reserved - 1)
        self._append(frame)

    def offer(self, frame: pb.GatewayFrame) -> bool:
        """Put a frame if there is room (heartbeats: a full outbox means the stream is busy anyway)."""
        if self.room() == 0:
            return False
        self._append(frame)
        return True

    async def put(self, frame: pb.GatewayFrame) -> None:
        """Put a frame, waiting for room."""
        while self.room() == 0 and not self.closed:
            self._writable.clear()
            await self._writable.wait()
        self._append(frame)

    def _append(self, frame: pb.GatewayFrame) -> None:
        if self.closed:
            return  # the stream is ending: what it did not send is re-sent on the next one
        self._frames.append(frame)
        self._readable.set()

    def close(self, error: BaseException | None = None) -> None:
        """End the stream: with ``error`` at once (frames still queued are dropped), or, without one,
        after writing what is queued. The first close wins."""
        if self.closed:
            return
        if error is None:
            self._finishing = True
        else:
            self._error = error
        self._readable.set()
        self._writable.set()

    def _check_room(self) -> None:
        # Reserving found no room (the outbox was full, or another read held the room): read again once
        # half of it is free, whether a write or a released reservation freed it.
        if self._starved and not self.closed and len(self._frames) + self._reserved <= self._size // 2:
            self._starved = False
            self._on_room()

    async def get(self) -> pb.GatewayFrame:
        """The next frame to write; raises the close error, or StreamFinished when cleanly done."""
        while True:
            if self._error is not None:
                raise self._error
            if self._frames:
                frame = self._frames.popleft()
                self._writable.set()
                self._check_room()
                return frame
            if self._finishing:
                raise StreamFinished
            self._readable.clear()
            await self._readable.wait()
