"""Wake-up routing: each gateway process is sent the devices it holds, on its route's channel, and no
others; a device whose session key names no route goes to the shared channel."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from backoffice.bootstrap import Resources
from backoffice.platform import hints


@pytest.fixture
async def pubsub(res: Resources) -> AsyncIterator[PubSub]:
    async with res.redis.pubsub() as subscribed:
        yield subscribed


async def _listen(pubsub: PubSub, *channels: str) -> None:
    await pubsub.subscribe(*channels)
    for _ in channels:
        assert (await pubsub.get_message(timeout=2.0)) is not None  # the subscription's confirmation


async def _woken(pubsub: PubSub, ours: set[uuid.UUID], within: float = 0.5) -> dict[str, list[list[uuid.UUID]]]:
    """The messages heard within ``within`` s, by channel, each as the devices it names; on the shared channel
    only those naming any of ``ours`` (every server on this Redis publishes there)."""
    heard: dict[str, list[list[uuid.UUID]]] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while (left := deadline - loop.time()) > 0:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
        if message is None:
            continue
        devices = hints.woken(message["data"])
        channel = message["channel"].decode()
        if channel != hints.WAKE_CHANNEL or ours & set(devices):
            heard.setdefault(channel, []).append(devices)
    return heard


async def _hold(redis: Redis, route: str, *devices: uuid.UUID) -> None:
    for device_id in devices:
        await redis.set(hints.session_key(device_id), hints.session_value(str(uuid.uuid4()), route), ex=60)


async def test_each_process_is_sent_exactly_the_devices_it_holds(res: Resources, pubsub: PubSub) -> None:
    one, two = secrets.token_hex(8), secrets.token_hex(8)
    held_one = [uuid.uuid4() for _ in range(3)]
    held_two = [uuid.uuid4()]
    unconnected = uuid.uuid4()  # no session key: never connected, or Redis lost it
    unrouted = uuid.uuid4()  # a key without a route (a gateway of the previous release wrote it)
    await _hold(res.redis, one, *held_one)
    await _hold(res.redis, two, *held_two)
    await res.redis.set(hints.session_key(unrouted), str(uuid.uuid4()), ex=60)
    await _listen(pubsub, hints.route_channel(one), hints.route_channel(two), hints.WAKE_CHANNEL)
    everyone = {*held_one, *held_two, unconnected, unrouted}
    await hints.publish(res.redis, everyone)
    heard = await _woken(pubsub, everyone)
    assert {channel: [sorted(m) for m in messages] for channel, messages in heard.items()} == {
        hints.route_channel(one): [sorted(held_one)],
        hints.route_channel(two): [sorted(held_two)],
        hints.WAKE_CHANNEL: [sorted([unconnected, unrouted])],
    }


async def test_a_process_holding_many_devices_gets_them_in_batches(res: Resources, pubsub: PubSub) -> None:
    route = secrets.token_hex(8)
    devices = [uuid.uuid4() for _ in range(hints.WAKE_BATCH + 10)]
    async with res.redis.pipeline(transaction=False) as pipe:
        for device_id in devices:
            pipe.set(hints.session_key(device_id), hints.session_value("s", route), ex=60)
        await pipe.execute()
    await _listen(pubsub, hints.route_channel(route))
    await hints.publish(res.redis, devices)
    messages = (await _woken(pubsub, set(devices)))[hints.route_channel(route)]
    assert [len(m) for m in messages] == [hints.WAKE_BATCH, 10]
    assert sorted(d for m in messages for d in m) == sorted(devices)


async def test_a_redis_without_the_script_is_given_it(res: Resources, pubsub: PubSub) -> None:
    route, device_id = secrets.token_hex(8), uuid.uuid4()
    await _hold(res.redis, route, device_id)
    await _listen(pubsub, hints.route_channel(route))
    await res.redis.script_flush()  # as after a Redis restart
    await hints.publish(res.redis, [device_id])
    assert (await _woken(pubsub, {device_id}))[hints.route_channel(route)] == [[device_id]]


async def test_a_revocation_still_goes_to_the_device_channel(res: Resources, pubsub: PubSub) -> None:
    device_id = uuid.uuid4()
    await _hold(res.redis, secrets.token_hex(8), device_id)
    await _listen(pubsub, hints.device_channel(device_id))
    await hints.publish(res.redis, [device_id], hints.REVOKED)
    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2.0)
    assert message is not None and message["data"] == hints.REVOKED
