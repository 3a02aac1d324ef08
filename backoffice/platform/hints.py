"""Wake-up hints on Redis pub/sub. A hint only tells a gateway replica to re-read Postgres; losing one
costs latency, never data (every reconnect and a periodic sweep re-read what is pending), so publishing
never fails the caller's request."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

DEVICE_CHANNEL_PREFIX = "sh:device:"
WAKE = b"wake"  # something is pending for the device: read it
REVOKED = b"revoked"  # the device was revoked: end its stream


def device_channel(device_id: uuid.UUID | str) -> str:
    return f"{DEVICE_CHANNEL_PREFIX}{device_id}"


async def publish(redis: Redis, device_ids: Iterable[uuid.UUID], message: bytes = WAKE) -> None:
    targets = sorted({str(d) for d in device_ids})
    if not targets:
        return
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for device_id in targets:
                pipe.publish(device_channel(device_id), message)
            await pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("hint not published; the gateway sweep will catch up", extra={"error": str(exc)})
