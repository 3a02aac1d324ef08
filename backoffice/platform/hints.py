"""Wake-up hints on Redis. A hint only tells someone to re-read Postgres; losing one costs latency, never
data, so publishing never fails the caller's request.

- Pub/sub: a gateway replica holding a woken device's stream reads what is pending (every reconnect and
  a periodic sweep re-read it too). Wake-ups go out batched, many devices in one message on
  ``WAKE_CHANNEL`` (16 bytes per device id), so a signal fanned out to 10,000 devices costs a few
  messages rather than 10,000; revocations and takeovers go to the device's own channel.
- The commissions doorbell: a one-element Redis list the gateway rings after committing fills, on which
  the worker's accrual loop blocks (BLPOP), so a referred user's fill accrues its commission within a
  moment, not at the next housekeeping round (which still drains the queue, for a ring that was lost).
- The monitor stream: stored quotes and changed positions, for the worker's stop-loss / take-profit
  monitor (``backoffice.monitor``), which also re-reads both tables periodically. A capped Redis stream
  rather than pub/sub: two workers can both follow it, and a worker reading a moment late misses nothing.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence

from redis.asyncio import Redis
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

log = logging.getLogger(__name__)

DEVICE_CHANNEL_PREFIX = "sh:device:"
WAKE = b"wake"  # something is pending for the device: read it
REVOKED = b"revoked"  # the device was revoked: end its stream

WAKE_CHANNEL = "sh:wake"  # payload: device ids, 16 raw bytes each
WAKE_BATCH = 4096  # device ids per wake message (64 KiB)
MONITOR_STREAM = "sh:monitor"
MONITOR_STREAM_LENGTH = 100_000  # approximate cap: a worker further behind than this re-reads Postgres
POSITIONS_FIELD = "p"  # an entry naming positions that changed (comma-separated ids)
COMMISSIONS_DUE = "sh:commissions:due"  # a list of at most one element: fills are queued for accrual


def device_channel(device_id: uuid.UUID | str) -> str:
    return f"{DEVICE_CHANNEL_PREFIX}{device_id}"


async def publish(redis: Redis, device_ids: Iterable[uuid.UUID], message: bytes = WAKE) -> None:
    """Tell the gateways holding these devices' streams: WAKE (batched on ``WAKE_CHANNEL``), REVOKED or
    a takeover (on each device's channel). A failure is logged, never raised: the sweep catches up."""
    targets = sorted(set(device_ids))
    if not targets:
        return
    try:
        async with redis.pipeline(transaction=False) as pipe:
            if message == WAKE:
                for start in range(0, len(targets), WAKE_BATCH):
                    pipe.publish(WAKE_CHANNEL, b"".join(d.bytes for d in targets[start : start + WAKE_BATCH]))
            else:
                for device_id in targets:
                    pipe.publish(device_channel(device_id), message)
            await pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("hint not published; the gateway sweep will catch up", extra={"error": str(exc)})


def woken(payload: bytes) -> list[uuid.UUID]:
    """The device ids of a ``WAKE_CHANNEL`` message (a malformed tail is ignored)."""
    return [uuid.UUID(bytes=payload[i : i + 16]) for i in range(0, len(payload) - 15, 16)]


def positions_entry(position_ids: Iterable[uuid.UUID]) -> dict[str, str]:
    return {POSITIONS_FIELD: ",".join(sorted({str(p) for p in position_ids}))}


async def publish_monitor(redis: Redis, entries: Sequence[Mapping[str, str]]) -> None:
    """Append entries to the monitor stream (after the commit that made them true)."""
    if not entries:
        return
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for entry in entries:
                fields: dict[FieldT, EncodableT] = {key: value for key, value in entry.items()}
                pipe.xadd(MONITOR_STREAM, fields, maxlen=MONITOR_STREAM_LENGTH, approximate=True)
            await pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("monitor hint not published; its sweep will catch up", extra={"error": str(exc)})


async def ring_commissions(redis: Redis) -> None:
    """Tell a worker that fills were queued for commission accrual (one element, however often rung)."""
    try:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.lpush(COMMISSIONS_DUE, b"1")
            pipe.ltrim(COMMISSIONS_DUE, 0, 0)
            await pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("commissions hint not published; the worker's round will accrue them", extra={"error": str(exc)})


async def wait_for_commissions(redis: Redis, seconds: float) -> bool:
    """Block until the doorbell rings (True) or ``seconds`` pass (False). Redis errors are the caller's."""
    return await redis.blpop([COMMISSIONS_DUE], timeout=seconds) is not None
