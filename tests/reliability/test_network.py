"""Bytes broken between bridge and gateway: a proxy drops, delays, duplicates and reorders chunks of the
HTTP/2 stream and cuts connections at random, under steady load. A broken connection is torn down, the
bridge reconnects, and nothing is lost or done twice."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime

from tests.reliability.conftest import WorldOpener
from tests.reliability.load import wait_for
from tests.reliability.proxy import Chaos, ChaosProxy

CHAOS = Chaos(drop=0.01, delay=0.2, duplicate=0.01, reorder=0.01, cut=0.005)
CHAOS_SECONDS = 6.0  # at least
KINDS = {"drop", "delay", "duplicate", "reorder", "cut"}


async def test_bytes_dropped_delayed_duplicated_reordered_and_cut(new_world: WorldOpener) -> None:
    proxies: list[ChaosProxy] = []

    async def through_proxies(gateways: list[str]) -> list[str]:
        for n, gateway in enumerate(gateways):
            proxies.append(ChaosProxy(gateway, seed=n))
            await proxies[-1].start()
        return [p.address for p in proxies]

    try:
        async with new_world(route=through_proxies) as (world, _, _):
            await asyncio.sleep(1.0)
            for proxy in proxies:
                proxy.chaos = CHAOS
            await asyncio.sleep(CHAOS_SECONDS)

            # Each kind strikes by chance per chunk, and a busy machine moves fewer chunks in that time:
            # the chaos lasts until every kind has struck at least once.
            async def every_kind_struck() -> bool:
                return set(sum((p.injected for p in proxies), Counter[str]())) >= KINDS

            await wait_for(every_kind_struck, "every kind of damage to strike", within=60.0)
            for proxy in proxies:
                proxy.chaos = Chaos()
            ended = datetime.now(UTC)

            async def reconnected() -> bool:
                return world.bridges.connected()

            try:
                took = await wait_for(reconnected, "every bridge to hold a session again")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; where the bridges wait:\n{world.bridges.where_they_wait()}") from None
            injected = sum((p.injected for p in proxies), Counter[str]())
            corrupted = sum(p.corrupted for p in proxies)
            await world.recovered_after(
                "proxy chaos",
                ended,
                within=30.0,
                reconnected_s=took,
                injected=dict(injected),
                connections_corrupted=corrupted,
            )
            await world.settle_and_check(corrupted=True, within=30.0)
            torn_down = sum(p.torn_down for p in proxies)
            world.report.add("proxy connections", corrupted=corrupted, torn_down=torn_down)
            assert set(injected) >= KINDS, injected
            assert world.bridges.total("sessions") > len(world.devices), "the bridges reconnected"
            # Damage that breaks HTTP/2 framing tears the connection down; a whole frame doubled or swapped
            # can pass (answered DUPLICATE, or overtaken): either way nothing was lost or done twice.
            assert torn_down > 0, "damaged connections were torn down by an end"
    finally:
        for proxy in proxies:
            await proxy.stop()
