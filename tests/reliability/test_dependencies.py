"""The servers' dependencies fail under steady load: Postgres restarted (an immediate shutdown: crash
recovery on start) and stalled (every Postgres process SIGSTOPped for 5 s), Redis unreachable for 10 s
(nonces are in Postgres anyway, the gateways' sweep stands in for the lost hints) and brought back empty.
Nothing is restarted but what the test breaks."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from tests.reliability.conftest import WorldOpener

STALL_SECONDS = 5.0
REDIS_OUTAGE_SECONDS = 10.0


async def test_postgres_restarted_then_stalled(new_world: WorldOpener) -> None:
    async with new_world() as (world, postgres, _):
        await asyncio.sleep(1.0)
        started = datetime.now(UTC)
        await postgres.restart()
        back = datetime.now(UTC)
        await world.recovered_after("postgres restart", back, down_s=(back - started).total_seconds())
        await asyncio.sleep(1.0)
        await postgres.stall(STALL_SECONDS)
        await world.recovered_after("postgres stall", datetime.now(UTC), stalled_s=STALL_SECONDS)
        await world.settle_and_check()


async def test_redis_unreachable_for_ten_seconds(new_world: WorldOpener) -> None:
    async with new_world() as (world, _, redis):
        await asyncio.sleep(1.0)
        before = len(world.load.submitted)
        await redis.kill()
        await asyncio.sleep(REDIS_OUTAGE_SECONDS)
        during = len(world.load.submitted) - before
        # Signals were signed: their nonces are in Postgres, which Redis being gone does not touch.
        assert during > 0, "producers were served while Redis was gone"
        await world.recovered_after("redis outage (before it came back)", datetime.now(UTC), signals_during=during)
        await redis.start()
        await world.recovered_after("redis back", datetime.now(UTC))
        await world.settle_and_check()
