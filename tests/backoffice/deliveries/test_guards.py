"""The owner's risk guards at approval time, AUTO and MANUAL alike, through the back office's RPCs: an
active stopout, the sides allowed and the caps on open positions SKIP a device's delivery with the
contract's reason; max_volume caps it, max_delay_seconds brings its expiry forward, max_deviation
travels in it; and concurrent approvals never pass max_open_positions."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from backoffice.bootstrap import Resources
from backoffice.models import Delivery, DeliveryState, RiskPolicy, Stopout
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import backoffice_pb2_grpc as rpc
from tests.backoffice.api.test_signals import signal_request, submit
from tests.conftest import KeyCredentials, UserCredentials, make_device, make_user, subscribe
from tests.gateway.support import Book


async def _policy(res: Resources, device_id: uuid.UUID, **values: Any) -> None:
    async with res.sessions.begin() as session:
        session.add(RiskPolicy(device_id=device_id, **values))


async def _stopout(res: Resources, device_id: uuid.UUID, *, end_time: datetime | None = None) -> None:
    now = datetime.now(UTC)
    async with res.sessions.begin() as session:
        session.add(
            Stopout(
                device_id=device_id,
                limit_key="k",
                limit={"period": "DAY", "metric": "LOSS", "max_percent": "5", "action": "STOP_OPENING"},
                period_start=now - timedelta(hours=1),
                reference=Decimal(10000),
                value=Decimal(600),
                equity=Decimal(9400),
                trigger_time=now,
                end_time=end_time,
            )
        )


async def _approve_at_once(channel: grpc.aio.Channel, user: UserCredentials, signals: list[pb.Signal]) -> None:
    """ApproveSignal for each signal, all at once."""
    stub = rpc.ApprovalServiceStub(channel)
    await asyncio.gather(
        *(
            stub.ApproveSignal(
                pb.ApproveSignalRequest(signal_id=s.id, request_id=str(uuid.uuid4())), metadata=user.metadata
            )
            for s in signals
        )
    )


def _skips(reason: str) -> float:
    return REGISTRY.get_sample_value("signalhub_risk_guard_skips_total", {"reason": reason}) or 0.0


async def _deliveries(res: Resources, signal_id: str) -> dict[uuid.UUID, Delivery]:
    async with res.sessions() as session:
        rows = await session.scalars(select(Delivery).where(Delivery.signal_id == uuid.UUID(signal_id)))
        return {d.device_id: d for d in rows}


async def test_auto_deliveries_keep_to_each_devices_guards(
    res: Resources, backoffice_channel: grpc.aio.Channel, producer: KeyCredentials, user: UserCredentials
) -> None:
    """One AUTO signal, five devices of one owner: unguarded, stopped out, SELL only, capped at one open
    position (one held), and capped in volume, delay and deviation."""
    free, stopped, sells, full, capped = [await make_device(res, user) for _ in range(5)]
    await _stopout(res, stopped.id)
    await _stopout(res, free.id, end_time=datetime.now(UTC) - timedelta(minutes=1))  # over: no guard
    await _policy(res, sells.id, allowed_sides=["SELL"])
    await _policy(res, full.id, max_open_positions=1)
    await (await Book.open(res, user.id)).position(full.id)
    await _policy(res, capped.id, max_volume=Decimal("0.05"), max_delay_seconds=20, max_deviation=Decimal("1.5"))
    await subscribe(backoffice_channel, user, producer, pb.SUBSCRIPTION_MODE_AUTO)
    before = {r: _skips(r) for r in ("RISK_STOPOUT", "SIDE_NOT_ALLOWED", "MAX_OPEN_POSITIONS")}
    signal = await submit(backoffice_channel, producer, signal_request())
    assert {r: _skips(r) - n for r, n in before.items()} == dict.fromkeys(before, 1.0)
    found = await _deliveries(res, signal.id)
    skipped = {d: (found[d].state, found[d].state_reason) for d in (stopped.id, sells.id, full.id)}
    assert skipped == {
        stopped.id: (DeliveryState.SKIPPED, "RISK_STOPOUT"),
        sells.id: (DeliveryState.SKIPPED, "SIDE_NOT_ALLOWED"),
        full.id: (DeliveryState.SKIPPED, "MAX_OPEN_POSITIONS"),
    }
    plain, bounded = found[free.id], found[capped.id]
    assert (plain.state, plain.volume, plain.max_deviation) == (DeliveryState.PENDING, Decimal("0.10"), None)
    assert (bounded.state, bounded.volume, bounded.max_deviation) == (
        DeliveryState.PENDING,
        Decimal("0.05"),
        Decimal("1.5"),
    )
    assert bounded.expire_time == signal.signal_time.ToDatetime(UTC) + timedelta(seconds=20)
    assert plain.expire_time == signal.expire_time.ToDatetime(UTC)


async def test_a_manual_approval_keeps_to_the_guards_too(
    res: Resources, backoffice_channel: grpc.aio.Channel, producer: KeyCredentials, user: UserCredentials
) -> None:
    device = await make_device(res, user)
    await _stopout(res, device.id)
    await subscribe(backoffice_channel, user, producer, pb.SUBSCRIPTION_MODE_MANUAL)
    signal = await submit(backoffice_channel, producer, signal_request())
    await rpc.ApprovalServiceStub(backoffice_channel).ApproveSignal(
        pb.ApproveSignalRequest(signal_id=signal.id, request_id=str(uuid.uuid4())), metadata=user.metadata
    )
    (delivery,) = (await _deliveries(res, signal.id)).values()
    assert (delivery.state, delivery.state_reason) == (DeliveryState.SKIPPED, "RISK_STOPOUT")
    execution = await rpc.ExecutionServiceStub(backoffice_channel).GetSignalExecution(
        pb.GetSignalExecutionRequest(signal_id=signal.id), metadata=user.metadata
    )
    (shown,) = execution.devices
    assert shown.state == pb.DELIVERY_STATE_SKIPPED and "RISK_STOPOUT" in str(shown)


@pytest.mark.parametrize("per_instrument", [False, True])
async def test_concurrent_approvals_never_pass_max_open_positions(
    res: Resources,
    backoffice_channel: grpc.aio.Channel,
    producer: KeyCredentials,
    user: UserCredentials,
    per_instrument: bool,
) -> None:
    """Ten MANUAL approvals of ten signals at once for one device capped at three: three deliveries."""
    device = await make_device(res, user)
    cap = {"max_open_positions_per_instrument" if per_instrument else "max_open_positions": 3}
    await _policy(res, device.id, **cap)
    await subscribe(backoffice_channel, user, producer, pb.SUBSCRIPTION_MODE_MANUAL)
    signals = [await submit(backoffice_channel, producer, signal_request()) for _ in range(10)]
    await _approve_at_once(backoffice_channel, user, signals)
    states = [d.state for s in signals for d in (await _deliveries(res, s.id)).values()]
    assert states.count(DeliveryState.PENDING) == 3
    assert states.count(DeliveryState.SKIPPED) == 7


async def test_concurrent_auto_signals_never_pass_max_open_positions(
    res: Resources, backoffice_channel: grpc.aio.Channel, producer: KeyCredentials, user: UserCredentials
) -> None:
    """Ten signals submitted at once to an AUTO subscriber whose one device is capped at three: each fan-out
    is planned from a count that the others change before it writes, so all but one must plan again, and
    the device ends with three deliveries to send, never more."""
    device = await make_device(res, user)
    await _policy(res, device.id, max_open_positions=3)
    await subscribe(backoffice_channel, user, producer, pb.SUBSCRIPTION_MODE_AUTO)
    signals = await asyncio.gather(*(submit(backoffice_channel, producer, signal_request()) for _ in range(10)))
    states = [d.state for s in signals for d in (await _deliveries(res, s.id)).values()]
    assert states.count(DeliveryState.PENDING) == 3
    assert states.count(DeliveryState.SKIPPED) == 7


async def test_concurrent_decisions_under_a_cap_they_do_not_reach_all_succeed(
    res: Resources, backoffice_channel: grpc.aio.Channel, producer: KeyCredentials, user: UserCredentials
) -> None:
    """Thirty AUTO signals and thirty approvals at once for devices capped at a hundred: each decision's
    write checks only whether the device still has room, which none of the others takes away, so every
    call succeeds (none is refused as a lost race) and every delivery is to be sent."""
    for _ in range(2):
        await _policy(res, (await make_device(res, user)).id, max_open_positions=100)
    await subscribe(backoffice_channel, user, producer, pb.SUBSCRIPTION_MODE_AUTO)
    signals = await asyncio.gather(*(submit(backoffice_channel, producer, signal_request()) for _ in range(30)))
    states = [d.state for s in signals for d in (await _deliveries(res, s.id)).values()]
    assert states == [DeliveryState.PENDING] * 60  # the AUTO subscriber's two devices

    other = await make_user(res)
    device = await make_device(res, other)
    await _policy(res, device.id, max_open_positions=100)
    await subscribe(backoffice_channel, other, producer, pb.SUBSCRIPTION_MODE_MANUAL)
    signals = [await submit(backoffice_channel, producer, signal_request()) for _ in range(30)]
    await _approve_at_once(backoffice_channel, other, signals)
    made = [(await _deliveries(res, s.id)).get(device.id) for s in signals]
    assert [d.state if d else None for d in made] == [DeliveryState.PENDING] * 30
