"""The gateway's periodic work, so that nothing depends on a hint arriving.

Every ``sweep_interval_seconds``: expire what can no longer be delivered (for every device, connected or
not) and close commands sent their bounded number of times without a CloseResult (their positions
CLOSED_ERROR, with an alert), wake the sessions of devices with something due (PENDING, or SENT and
unacknowledged past the ack timeout), end sessions of devices revoked meanwhile and sessions a newer one
replaced (a tenth of the sessions each round: these back up the hints), and write ``devices.last_seen_at``
in one statement for the devices heard from since it was last written (at most once per LAST_SEEN_EVERY
per device, never once per frame).

Every second or so, in memory only: a heartbeat to each stream that has not had one for
``heartbeat_seconds``, and the end of streams whose device has been silent for MISSED_HEARTBEATS periods.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backoffice import alerts, deliveries, positions
from backoffice.devices import presence
from backoffice.platform.config import Settings
from backoffice.platform.serving import cancel_and_wait
from gateway.sessions import MISSED_HEARTBEATS, DeviceSession, SessionRegistry, heartbeat, revoked
from signalhub.protocol.client import silence_noticed_within
from signalhub.protocol.errors import Unavailable

log = logging.getLogger("signalhub.gateway.sweeper")

LAST_SEEN_EVERY = 30.0  # seconds
SESSION_CHECK_ROUNDS = 10  # sweeps to check every session once for revocation and replacement


class Sweeper:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], registry: SessionRegistry, settings: Settings
    ) -> None:
        self._sessions = sessions
        self._registry = registry
        self._settings = settings
        self._tasks: list[asyncio.Task[None]] = []
        self._cursor = 0  # where the next slice of sessions to check starts
        # A stream still heard from this long after a send received it (expire_closes).
        self._proof = timedelta(seconds=silence_noticed_within(settings.heartbeat_seconds))

    def start(self) -> None:
        beat = min(1.0, self._settings.heartbeat_seconds / 3)
        self._tasks = [
            asyncio.create_task(_every(self._settings.sweep_interval_seconds, self.sweep), name="gateway-sweep"),
            asyncio.create_task(_every(beat, self._tick), name="gateway-heartbeats"),
        ]

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)

    async def sweep(self) -> None:
        """One round: expiry, wake-ups of what is due, last_seen_at, and the checks of a slice of the
        sessions (revoked? replaced?), every session once per SESSION_CHECK_ROUNDS rounds: those checks
        only back up the revocation and takeover hints, and asking Postgres and Redis about 10,000 idle
        streams every second was most of an idle gateway's CPU."""
        now = datetime.now(UTC)
        local = self._registry.sessions()
        checked = self._slice(local)
        monotonic = time.monotonic()
        stale = [s for s in local if s.last_heard > s.seen_recorded and monotonic - s.seen_recorded >= LAST_SEEN_EVERY]
        ack_timeout = timedelta(seconds=self._settings.ack_timeout_seconds)
        attempts = self._settings.close_max_attempts
        async with self._sessions.begin() as session:
            await deliveries.expire_due(session, now)
            raised = await positions.expire_closes(
                session, now, ack_timeout, attempts, _streams(local, now, monotonic), self._proof
            )
            due = await deliveries.due_devices(session, now, ack_timeout, attempts)
            gone = await presence.revoked_among(session, [s.device_id for s in checked])
            await presence.mark_seen(session, [s.device_id for s in stale], now)
        alerts.announce(raised)
        for stream in stale:
            stream.seen_recorded = monotonic
        for stream in checked:
            if stream.device_id in gone:
                stream.end(revoked())
        for stream in local:
            if stream.device_id in due:
                stream.wake()
        await self._registry.check_current(checked)

    def _slice(self, local: list[DeviceSession]) -> list[DeviceSession]:
        """The next SESSION_CHECK_ROUNDS-th of the sessions, round robin (all of them when there are few)."""
        size = -(-len(local) // SESSION_CHECK_ROUNDS)
        if size == 0:
            return []
        start = self._cursor % len(local)
        self._cursor = start + size
        return (local[start:] + local[:start])[:size]

    async def _tick(self) -> None:
        period = self._settings.heartbeat_seconds
        now = time.monotonic()
        for stream in self._registry.sessions():
            if now - stream.last_heard > MISSED_HEARTBEATS * period:
                stream.end(
                    Unavailable(
                        f"nothing heard from the device for {MISSED_HEARTBEATS * period} s; reconnect",
                        reason="HEARTBEAT_MISSED",
                    )
                )
            elif stream.welcomed and now - stream.last_beat >= period and stream.outbox.offer(heartbeat()):
                stream.last_beat = now


async def _every(interval: float, work: Callable[[], Awaitable[None]]) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception:  # a failed round is retried next round; the loop keeps going
            log.exception("gateway periodic work failed", extra={"work": getattr(work, "__name__", "")})


def _streams(local: list[DeviceSession], now: datetime, monotonic: float) -> dict[uuid.UUID, tuple[datetime, datetime]]:
    """For each device held here: when its stream connected, and when the device last sent a frame on it."""
    return {s.device_id: (s.connected_at, now - timedelta(seconds=monotonic - s.last_heard)) for s in local}
