"""Wake-up hints on Redis. A hint only tells someone to re-read Postgres; losing one costs latency, never
data, so publishing never fails the caller's request.

- Pub/sub: the gateway process holding a woken device's stream reads what is pending (every reconnect
  and a periodic sweep re-read it too). Each gateway process has a route of its own, named in the
  session key of every device it holds (``sh:session:<device>`` = ``<session id> <route>``), and
  listens on its route's channel. A wake-up is routed in Redis, one script call: the devices' session
  keys are read and each process is sent, batched on its channel (16 bytes per device id), the devices
  it holds and no others, so a signal fanned out to 10,000 devices costs a few messages rather than
  10,000 and no process parses the others' hints. A device with no session key (never connected, or
  the key lost with Redis's data) or one written without a route goes to the shared ``WAKE_CHANNEL``,
  which every gateway process also listens on. Revocations and takeovers go to the device's own channel.
- The commissions doorbell: a one-element Redis list the gateway rings after committing fills, on which
  the worker's accrual loop blocks (BLPOP), so a referred user's fill accrues its commission within a
  moment, not at the next housekeeping round (which still drains the queue, for a ring that was lost).
- The monitor stream: stored quotes and changed positions, for the worker's stop-loss / take-profit
  monitor (``backoffice.monitor``), which also re-reads both tables periodically. A capped Redis stream
  rather than pub/sub: two workers can both follow it, and a worker reading a moment late misses nothing.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError
from redis.typing import EncodableT, FieldT

log = logging.getLogger(__name__)

SESSION_KEY_PREFIX = "sh:session:"  # + device id: its newest session, "<session id> <route>"
ROUTE_CHANNEL_PREFIX = "sh:wake:"  # + route: the wake-ups of the devices one gateway process holds
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


def session_key(device_id: uuid.UUID) -> str:
    return f"{SESSION_KEY_PREFIX}{device_id}"


def session_value(session_id: str, route: str) -> str:
    """What a device's session key holds: its newest session, and the route of the process holding it."""
    return f"{session_id} {route}"


def route_channel(route: str) -> str:
    return f"{ROUTE_CHANNEL_PREFIX}{route}"


# KEYS: the devices' session keys; ARGV: their ids (16 raw bytes each) in the same order, then the shared
# channel, the route channels' prefix and the ids per message. MGET in slices: unpack has a stack limit.
_ROUTE_WAKES = """
local n = #KEYS
local shared, prefix, batch = ARGV[n + 1], ARGV[n + 2], tonumber(ARGV[n + 3])
local groups, order = {}, {}
for start = 1, n, 1000 do
  local values = redis.call('MGET', unpack(KEYS, start, math.min(start + 999, n)))
  for i, value in ipairs(values) do
    local channel = shared
    local space = value and string.find(value, ' ', 1, true)
    if space then channel = prefix .. string.sub(value, space + 1) end
    local group = groups[channel]
    if not group then
      group = {}
      groups[channel] = group
      order[#order + 1] = channel
    end
    group[#group + 1] = ARGV[start + i - 1]
  end
end
for _, channel in ipairs(order) do
  local group = groups[channel]
  for first = 1, #group, batch do
    redis.call('PUBLISH', channel, table.concat(group, '', first, math.min(first + batch - 1, #group)))
  end
end
return #order
"""
_ROUTE_WAKES_SHA = hashlib.sha1(_ROUTE_WAKES.encode()).hexdigest()  # noqa: S324 (Redis names scripts so)


async def publish(redis: Redis, device_ids: Iterable[uuid.UUID], message: bytes = WAKE) -> None:
    """Tell the gateway processes holding these devices' streams: WAKE (each process its own devices, on its
    route's channel: ``_ROUTE_WAKES``), REVOKED or a takeover (on each device's channel). A failure is
    logged, never raised: the sweep catches up."""
    targets = sorted(set(device_ids))
    if not targets:
        return
    try:
        if message == WAKE:
            await _route_wakes(redis, targets)
            return
        async with redis.pipeline(transaction=False) as pipe:
            for device_id in targets:
                pipe.publish(device_channel(device_id), message)
            await pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("hint not published; the gateway sweep will catch up", extra={"error": str(exc)})


async def _route_wakes(redis: Redis, targets: Sequence[uuid.UUID]) -> None:
    keys = [session_key(d) for d in targets]
    args: list[EncodableT] = [*(d.bytes for d in targets), WAKE_CHANNEL, ROUTE_CHANNEL_PREFIX, WAKE_BATCH]
    try:
        await redis.evalsha(_ROUTE_WAKES_SHA, len(keys), *keys, *args)
    except NoScriptError:  # a Redis that has not seen it yet (or restarted): EVAL also caches it
        await redis.eval(_ROUTE_WAKES, len(keys), *keys, *args)


def woken(payload: bytes) -> list[uuid.UUID]:
    """The device ids of a wake-up message, on a route's channel or ``WAKE_CHANNEL`` (a malformed tail is
    ignored)."""
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
