"""Seen signature nonces: Redis ``SET NX EX`` per key id, with Postgres as the fallback while Redis is
unreachable. When neither answers, the call fails UNAVAILABLE: a nonce check never fails open."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import delete, exists, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backoffice.models import Nonce
from signalhub.protocol.errors import Unavailable

log = logging.getLogger(__name__)

_KEY_PREFIX = "sh:nonce:"
# Set while some process recorded nonces in Postgres: until it expires, the Redis path also checks
# Postgres, so a nonce recorded during an outage cannot be replayed once Redis is back.
_PG_WINDOW_KEY = "sh:nonce-pg-window"
_REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


class NonceStore:
    def __init__(
        self,
        redis: Redis,
        sessions: async_sessionmaker[AsyncSession],
        ttl_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._sessions = sessions
        self._ttl = ttl_seconds
        self._clock = clock
        self._fell_back_until = 0.0

    async def remember(self, key_id: str, nonce: str) -> bool:
        """Record the nonce; True when it is new, False when it was seen within the TTL."""
        try:
            return await self._remember_in_redis(key_id, nonce)
        except _REDIS_ERRORS:
            log.warning("redis unreachable; recording nonce in postgres")
        return await self._remember_in_postgres(key_id, nonce)

    async def _remember_in_redis(self, key_id: str, nonce: str) -> bool:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(_KEY_PREFIX + key_id + ":" + nonce, b"1", nx=True, ex=self._ttl)
            pipe.get(_PG_WINDOW_KEY)
            created, window = await pipe.execute()
        now = self._clock()
        if self._fell_back_until > now:
            await self._redis.set(_PG_WINDOW_KEY, str(self._fell_back_until), ex=self._ttl)
            window = str(self._fell_back_until).encode()
        if not created:
            return False
        if window is not None and float(window) > now:
            return not await self._seen_in_postgres(key_id, nonce)
        return True

    async def _seen_in_postgres(self, key_id: str, nonce: str) -> bool:
        try:
            async with self._sessions() as session:
                query = select(
                    exists().where(Nonce.key_id == key_id, Nonce.nonce == nonce, Nonce.expires_at > _utc(self._clock()))
                )
                return bool(await session.scalar(query))
        except (SQLAlchemyError, OSError):
            raise Unavailable("nonce store unavailable; retry later") from None

    async def _remember_in_postgres(self, key_id: str, nonce: str) -> bool:
        now = self._clock()
        self._fell_back_until = now + self._ttl
        try:
            async with self._sessions.begin() as session:
                # An expired row for the same nonce is reused rather than counted as a replay.
                await session.execute(
                    delete(Nonce).where(Nonce.key_id == key_id, Nonce.nonce == nonce, Nonce.expires_at <= _utc(now))
                )
                inserted = await session.scalar(
                    insert(Nonce)
                    .values(key_id=key_id, nonce=nonce, expires_at=_utc(now + self._ttl))
                    .on_conflict_do_nothing()
                    .returning(Nonce.nonce)
                )
                return inserted is not None
        except (SQLAlchemyError, OSError):
            log.error("neither redis nor postgres could record a nonce")
            raise Unavailable("nonce store unavailable; retry later") from None

    async def purge_expired(self, session: AsyncSession) -> int:
        result = await session.execute(delete(Nonce).where(Nonce.expires_at <= _utc(self._clock())))
        return int(result.rowcount)  # type: ignore[attr-defined]


def _utc(ts: float) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=ts)
