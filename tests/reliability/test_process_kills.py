"""SIGKILL under steady load: a gateway replica (its bridges move to the other), the worker (a new one
resumes its rounds) and a bridge (its ledger and outbox carry it across the restart)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from tests.reliability.conftest import open_world
from tests.reliability.load import wait_for
from tests.reliability.services import PostgresTemplate


async def test_sigkill_a_gateway_replica_bridges_move_to_the_other(
    template: PostgresTemplate, scratch: Path, tmp_path: Path
) -> None:
    async with open_world(template, scratch, tmp_path) as (world, _, _):
        first, second = world.cluster.gateway_addresses
        assert world.bridges.connected({first}), "every bridge starts on the first replica"
        await asyncio.sleep(1.0)
        killed = datetime.now(UTC)
        world.cluster["gateway1"].kill()

        async def moved() -> bool:
            return world.bridges.connected({second})

        took = await wait_for(moved, "every bridge to move to the second replica")
        await world.recovered_after("gateway SIGKILL", killed, bridges_moved_s=took)
        await world.cluster.restart("gateway1")  # as a supervisor would; the rest never restarts
        await asyncio.sleep(1.0)
        await world.settle_and_check(restarted={"gateway1"})
