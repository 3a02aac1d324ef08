"""Risk protection end to end, on real Postgres and Redis: the owner sets a day-loss limit with
`signalhub risk set`; the producer's AUTO signals open two positions on a paper bridge; the paper market
falls, the bridge reports its account state, the loss reaches the limit, and the gateway closes every
position (one close command each); the next signal is skipped (RISK_STOPOUT); `signalhub risk reset`
lifts the stopout and the signal after that is filled again."""

from __future__ import annotations

import uuid
from decimal import Decimal
from pathlib import Path

from gateway.bridge import BridgeConfig, PaperConfig, PaperExecutor
from gateway.bridge.executors.base import SymbolInfo
from gateway.bridge.executors.paper import DEFAULT_SYMBOLS
from signalhub.v1 import backoffice_pb2 as bpb
from signalhub.v1 import backoffice_pb2_grpc as brpc
from signalhub.v1 import common_pb2
from tests.backoffice.api.test_approvals import subscribe, subscribe_request
from tests.backoffice.cli.test_risk import risk_command
from tests.conftest import Stack
from tests.gateway.support import eventually, running_bridge

D = Decimal


async def test_a_day_loss_limit_closes_everything_skips_the_next_signal_and_a_reset_resumes(
    stack: Stack, tmp_path: Path
) -> None:
    symbol = "RSK" + uuid.uuid4().hex[:8].upper()
    spec = SymbolInfo(symbol, D(100), D("0.01"), D(1), D("0.01"), D("0.01"), D(100))
    executor = PaperExecutor(PaperConfig(seed=3, slippage_ticks=0, symbols=(*DEFAULT_SYMBOLS, spec)))
    executor.set_price(symbol, D("2034.15"))
    target, token, device_id = stack.backoffice.bound_address, stack.user.token, str(stack.device.id)
    code, policy, err = await risk_command(
        "set",
        "--device",
        device_id,
        "--limit",
        "period=day,metric=loss,amount=100,action=close-all",
        token=token,
        target=target,
    )
    assert code == 0, err
    assert [limit["action"] for limit in policy["limits"]] == ["RISK_ACTION_CLOSE_ALL"]
    await subscribe(stack.backoffice_channel, stack.user, subscribe_request(stack.producer, sizing_value="0.10"))
    positions = brpc.PositionServiceStub(stack.backoffice_channel)
    executions = brpc.ExecutionServiceStub(stack.backoffice_channel)
    metadata = stack.user.metadata

    async def listed(status: int) -> list[bpb.Position]:
        found = await positions.ListPositions(
            bpb.ListPositionsRequest(instrument=symbol, status=status), metadata=metadata
        )
        return list(found.positions)

    async def device_state(signal_id: str) -> bpb.DeviceExecution:
        execution = await executions.GetSignalExecution(
            bpb.GetSignalExecutionRequest(signal_id=signal_id), metadata=metadata
        )
        (device,) = execution.devices
        return device

    config = BridgeConfig(
        device_id,
        (stack.gateway.bound_address,),
        tmp_path / "ledger.db",
        quote_interval=0.05,
        account_state_interval=0.1,
    )
    async with running_bridge(config, stack.device, executor), stack.producer_client() as signals:
        for _ in range(2):
            await signals.submit_signal(symbol, "buy", entry_price="2034.15")

        async def both_open() -> bool:
            return len(await listed(bpb.POSITION_STATUS_OPEN)) == 2

        await eventually(both_open, "two positions to open")
        # Two 0.10-lot BUYs: a fall of 6.00 is 600 ticks of 1 USD x 0.10 lots each, 120 USD in all.
        executor.set_price(symbol, D("2028.15"))

        async def all_closed() -> bool:
            return len(await listed(bpb.POSITION_STATUS_CLOSED)) == 2

        await eventually(all_closed, "the CLOSE_ALL limit to close every position", within=30)
        for position in await listed(bpb.POSITION_STATUS_CLOSED):
            commands = await positions.ListCloseCommands(
                bpb.ListCloseCommandsRequest(position_id=position.id), metadata=metadata
            )
            assert [c.reason for c in commands.close_commands] == [common_pb2.CLOSE_REASON_RISK_LIMIT]
        code, listing, err = await risk_command(
            "stopouts", "--device", device_id, "--active", token=token, target=target
        )
        assert code == 0, err
        (stopout,) = listing["stopouts"]
        assert D(stopout["value"]) >= D(100) and stopout["active"]

        skipped = await signals.submit_signal(symbol, "buy", entry_price="2028.15")
        state = await device_state(skipped.id)
        assert (state.state, state.reason) == (bpb.DELIVERY_STATE_SKIPPED, "RISK_STOPOUT")

        code, _, err = await risk_command("reset", stopout["id"], token=token, target=target)
        assert code == 0, err
        resumed = await signals.submit_signal(symbol, "buy", entry_price="2028.15")

        async def filled() -> bool:
            return (await device_state(resumed.id)).state == bpb.DELIVERY_STATE_FILLED

        await eventually(filled, "the signal after the reset to be filled")
    assert len(executor.closes) == 2  # each position closed once at the broker
