"""The process's one Redis pub/sub connection: its route's wake-up channel (the devices it holds), the
shared one (devices whose session key names no route), and a pattern subscription to every device's own
hint channel.

A WAKE (a batch naming many devices, or the one-device form a back office of the previous release
still sends) has the device's session read what is pending; REVOKED ends its stream (UNAUTHENTICATED,
KEY_REVOKED); a takeover message ends an older session of the device. Hints for devices not connected
here are ignored. A hint may be lost (Redis restarts, the connection drops): after every reconnect all
sessions re-read Postgres, and the sweep does so periodically, so a lost hint costs latency, never data.
The connection is pinged; one that stops answering is replaced.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from backoffice.platform import hints
from backoffice.platform.metrics import REDIS_UP
from backoffice.platform.serving import cancel_and_wait
from gateway.sessions import TAKEOVER_PREFIX, SessionRegistry, revoked

log = logging.getLogger("signalhub.gateway.listener")

PATTERN = hints.DEVICE_CHANNEL_PREFIX + "*"
PING_EVERY = 5.0
DEAD_AFTER = 3 * PING_EVERY
MAX_BACKOFF = 5.0


class HintListener:
    def __init__(self, redis: Redis, registry: SessionRegistry, on_reconnect: Callable[[], None]) -> None:
        self._redis = redis
        self._registry = registry
        self._on_reconnect = on_reconnect
        self.ready = asyncio.Event()  # subscribed (tests wait for it before publishing)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="hint-listener")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])

    async def _run(self) -> None:
        backoff = 0.1
        connected_before = False
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(hints.route_channel(self._registry.route), hints.WAKE_CHANNEL)
                    await pubsub.psubscribe(PATTERN)
                    backoff = 0.1
                    await self._listen(pubsub, connected_before)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.ready.clear()
                REDIS_UP.set(0)
                log.warning("hint subscription lost; reconnecting", extra={"error": str(exc), "backoff": backoff})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                connected_before = True

    async def _listen(self, pubsub: PubSub, connected_before: bool) -> None:
        heard = pinged = time.monotonic()
        while True:
            message = await pubsub.get_message(timeout=1.0)
            now = time.monotonic()
            if message is not None:
                heard = now
                kind = message["type"]
                if kind == "psubscribe" and not self.ready.is_set():
                    self.ready.set()
                    REDIS_UP.set(1)
                    if connected_before:
                        self._on_reconnect()  # hints may have been lost while we were away
                elif kind == "pmessage":
                    self._dispatch(message["channel"], message["data"])
                elif kind == "message":  # the route's channel or WAKE_CHANNEL: device ids, batched
                    self._wake(message["data"])
            if now - pinged >= PING_EVERY:
                await pubsub.ping()
                pinged = now
            if now - heard > DEAD_AFTER:
                raise ConnectionError("the pub/sub connection stopped answering pings")

    def _wake(self, payload: bytes) -> None:
        for device_id in hints.woken(payload):
            session = self._registry.get(device_id)
            if session is not None:
                session.wake()

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        try:
            device_id = uuid.UUID(channel.decode()[len(hints.DEVICE_CHANNEL_PREFIX) :])
        except ValueError:
            return
        session = self._registry.get(device_id)
        if session is None:
            return
        if data == hints.WAKE:
            session.wake()
        elif data == hints.REVOKED:
            session.end(revoked())
        elif data.startswith(TAKEOVER_PREFIX):
            self._registry.on_takeover(device_id, data[len(TAKEOVER_PREFIX) :].decode())
