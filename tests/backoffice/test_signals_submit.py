"""A signal's submission written whole or not at all: a fan-out planned from what no longer holds when it is
written (a subscriber turned AUTO meanwhile, before or while the write waits for a capped device's lock)
writes nothing and is planned again, so every AUTO subscriber taking the signal gets its approval and
deliveries."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any

import asyncpg
import grpc
import pytest
from sqlalchemy import select

from backoffice import approvals
from backoffice.bootstrap import Resources
from backoffice.models import Approval, ApprovalStatus, Delivery, DeliveryState, RiskPolicy, Signal
from signalhub.v1 import backoffice_pb2 as pb
from tests.backoffice.api.test_signals import signal_request, submit
from tests.conftest import KeyCredentials, UserCredentials, make_device, make_user, subscribe


async def test_a_fan_out_planned_before_a_subscriber_turned_auto_is_planned_again(
    res: Resources,
    backoffice_channel: grpc.aio.Channel,
    producer: KeyCredentials,
    user: UserCredentials,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    late = await make_user(res)
    devices = {user.id: await make_device(res, user), late.id: await make_device(res, late)}
    await subscribe(backoffice_channel, user, producer, pb.SUBSCRIPTION_MODE_AUTO)
    plan_fan_out = approvals.plan_fan_out
    plans: list[int] = []

    async def plan_then_subscribe(connection: Any, signal: Signal, now: datetime) -> approvals.FanOut:
        """The real plan; the first time, a second subscriber turns up AUTO before it is written."""
        planned = await plan_fan_out(connection, signal, now)
        plans.append(len(planned.subscriptions))
        if len(plans) == 1:
            await subscribe(backoffice_channel, late, producer, pb.SUBSCRIPTION_MODE_AUTO)
        return planned

    monkeypatch.setattr(approvals, "plan_fan_out", plan_then_subscribe)
    signal = await submit(backoffice_channel, producer, signal_request())
    assert plans == [1, 2]
    async with res.sessions() as session:
        signal_id = uuid.UUID(signal.id)
        decided = (await session.scalars(select(Approval).where(Approval.signal_id == signal_id))).all()
        made = (await session.scalars(select(Delivery).where(Delivery.signal_id == signal_id))).all()
        stored = (await session.scalars(select(Signal).where(Signal.producer_id == producer.id))).all()
    assert [s.id for s in stored] == [signal_id]  # the first plan's write left nothing behind
    assert {(a.user_id, a.status, a.automatic) for a in decided} == {
        (user.id, ApprovalStatus.APPROVED, True),
        (late.id, ApprovalStatus.APPROVED, True),
    }
    assert sorted((d.device_id, d.state) for d in made) == sorted(
        (device.id, DeliveryState.PENDING) for device in devices.values()
    )


async def test_a_subscriber_turning_auto_while_the_write_waits_is_planned_for(
    res: Resources, backoffice_channel: grpc.aio.Channel, producer: KeyCredentials, user: UserCredentials
) -> None:
    """The write takes a capped device's lock before it reads the subscriptions: one that turned AUTO while
    it waited is found, and the fan-out is planned again with it (not left a PENDING approval)."""
    device = await make_device(res, user)
    async with res.sessions.begin() as session:
        session.add(RiskPolicy(device_id=device.id, max_open_positions=100))
    await subscribe(backoffice_channel, user, producer, pb.SUBSCRIPTION_MODE_AUTO)
    late = await make_user(res)
    await make_device(res, late)
    holder = await asyncpg.connect(res.settings.database_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        await holder.execute("SELECT pg_advisory_lock(hashtextextended($1::text, 0))", str(device.id))
        submitting = asyncio.create_task(submit(backoffice_channel, producer, signal_request()))
        await asyncio.sleep(1.0)  # its write now waits for the device's lock
        await subscribe(backoffice_channel, late, producer, pb.SUBSCRIPTION_MODE_AUTO)
        await holder.execute("SELECT pg_advisory_unlock(hashtextextended($1::text, 0))", str(device.id))
        signal = await submitting
    finally:
        await holder.close()
    async with res.sessions() as session:
        decided = (await session.scalars(select(Approval).where(Approval.signal_id == uuid.UUID(signal.id)))).all()
    assert {(a.user_id, a.status, a.automatic) for a in decided} == {
        (user.id, ApprovalStatus.APPROVED, True),
        (late.id, ApprovalStatus.APPROVED, True),
    }
