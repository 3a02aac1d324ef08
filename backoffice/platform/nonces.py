"""Seen signature nonces, every one recorded in Postgres, the store every replica shares.

A replay is refused whatever Redis does: Redis restarting empty, unreachable for a while, or reachable
from some replicas and not others never opens a window, because no nonce lives in Redis. Recording is
one statement on the connection that just looked the key up, into an UNLOGGED table (no WAL, so a
commit waits for no disk flush); an expired row for the same nonce is renewed rather than counted as a
replay. The worker purges expired rows. Postgres not answering is UNAVAILABLE, never a pass: a nonce
check never fails open. What an unlogged table gives up: after a crash of Postgres itself (not a clean
restart) it starts empty, like Redis did, and a standby promoted in a failover has no copy."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from backoffice.models import Nonce

# A nonce is new unless a row for it lives: an expired one is taken over.
_RECORD = """
INSERT INTO nonces (key_id, nonce, expires_at) VALUES ($1, $2, $4)
ON CONFLICT (key_id, nonce) DO UPDATE SET expires_at = EXCLUDED.expires_at WHERE nonces.expires_at <= $3
RETURNING 1
"""


class NonceStore:
    def __init__(self, ttl_seconds: int, clock: Callable[[], float] = time.time) -> None:
        self._ttl = ttl_seconds
        self._clock = clock

    async def remember(self, connection: Any, key_id: str, nonce: str) -> bool:
        """Record the nonce on ``connection`` (asyncpg's, each statement its own transaction); True when
        it is new, False when it was seen within the TTL."""
        now = self._clock()
        return await connection.fetchval(_RECORD, key_id, nonce, _utc(now), _utc(now + self._ttl)) is not None

    async def purge_expired(self, session: AsyncSession) -> int:
        result = await session.execute(delete(Nonce).where(Nonce.expires_at <= _utc(self._clock())))
        return int(result.rowcount)  # type: ignore[attr-defined]


def _utc(ts: float) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=ts)
