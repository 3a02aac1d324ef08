"""Waiting that a stop cuts short: the bridge's backoffs and lookups never hold up ``stop()``."""

from __future__ import annotations

import asyncio


async def pause(stopping: asyncio.Event, seconds: float, wake: asyncio.Event | None = None) -> None:
    """Sleep ``seconds``, or less: until ``stopping`` (or ``wake``) is set."""
    events = [stopping] if wake is None else [stopping, wake]
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
