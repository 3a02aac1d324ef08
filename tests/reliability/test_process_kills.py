"""SIGKILL under steady load: a gateway replica (its bridges move to the other), the worker (a new one
resumes its rounds) and a bridge (its ledger and outbox carry it across the restart)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from tests.reliability.conftest import WorldOpener
from tests.reliability.load import wait_for


async def test_sigkill_a_gateway_replica_bridges_move_to_the_other(new_world: WorldOpener) -> None:
    async with new_world() as (world, _, _):
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
        await world.settle_and_check(restarted=frozenset({"gateway1"}))


async def test_sigkill_the_worker_a_new_one_resumes_its_rounds(new_world: WorldOpener) -> None:
    async with new_world() as (world, _, _):
        await asyncio.sleep(1.0)
        killed = datetime.now(UTC)
        world.cluster["worker"].kill()
        await asyncio.sleep(2.0)  # signals come due with no worker to expire them
        overdue = await world.overdue_signals(datetime.now(UTC))
        assert overdue, "signals came due while the worker was gone"
        world.cluster["worker"].start()
        restarted = datetime.now(UTC)

        async def caught_up() -> bool:
            return not await world.overdue_signals(restarted)

        took = await wait_for(caught_up, "the new worker to expire what came due")
        world.report.add(
            "worker SIGKILL", down_s=(restarted - killed).total_seconds(), resumed_s=took, overdue=len(overdue)
        )
        await world.settle_and_check(restarted=frozenset({"worker"}))


async def test_sigkill_a_bridge_its_ledger_and_outbox_carry_it(new_world: WorldOpener) -> None:
    async with new_world() as (world, _, _):
        for round_ in range(3):  # at different moments: mid-order, mid-report, between the two
            await asyncio.sleep(0.6 + 0.3 * round_)
            killed = datetime.now(UTC)
            world.bridges.kill()
            await asyncio.sleep(0.5)  # deliveries pile up and are sent again to nobody
            world.bridges.start()

            async def back() -> bool:
                return world.bridges.connected()

            took = await wait_for(back, "the bridges to reconnect")
            await world.recovered_after(f"bridge SIGKILL #{round_ + 1}", killed, within=30.0, reconnected_s=took)
        await world.settle_and_check(within=30.0, bridges_killed=True)
        assert world.bridges.starts == 4
