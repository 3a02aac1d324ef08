"""One housekeeping round of the worker against the real database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert

from backoffice import worker
from backoffice.bootstrap import Resources
from backoffice.models import (
    Approval,
    ApprovalStatus,
    Device,
    DeviceStatus,
    IdempotencyRecord,
    Nonce,
    Side,
    Signal,
    SignalStatus,
    SizingMode,
    Subscription,
    SubscriptionMode,
    SubscriptionStatus,
)
from tests.conftest import KeyCredentials, UserCredentials


async def test_run_once_expires_purges_and_marks_idle(
    res: Resources, producer: KeyCredentials, user: UserCredentials, device: KeyCredentials
) -> None:
    long_ago = datetime.now(UTC) - timedelta(days=8)
    signal_id, approval_id, nonce = uuid.uuid4(), uuid.uuid4(), uuid.uuid4().hex
    async with res.sessions.begin() as session:
        subscription = Subscription(
            id=uuid.uuid4(),
            user_id=user.id,
            producer_id=producer.id,
            mode=SubscriptionMode.MANUAL,
            sizing_mode=SizingMode.FIXED_VOLUME,
            sizing_value=1,
            instruments=[],
            status=SubscriptionStatus.ACTIVE,
        )
        session.add(subscription)
        session.add(
            Signal(
                id=signal_id,
                producer_id=producer.id,
                request_id=uuid.uuid4(),
                instrument="XAUUSD",
                side=Side.BUY,
                signal_time=long_ago,
                expire_time=long_ago + timedelta(seconds=60),
                payload={},
                status=SignalStatus.OPEN,
            )
        )
        await session.flush()
        session.add(
            Approval(
                id=approval_id,
                signal_id=signal_id,
                subscription_id=subscription.id,
                user_id=user.id,
                status=ApprovalStatus.PENDING,
                device_ids=[],
            )
        )
        await session.execute(insert(Nonce).values(key_id="k", nonce=nonce, expires_at=long_ago))
        await session.execute(
            insert(IdempotencyRecord).values(
                id=uuid.uuid4(),
                caller_id=user.id,
                method="X",
                request_id=uuid.uuid4(),
                request_hash=b"h",
                created_at=long_ago,
            )
        )
        await session.execute(update(Device).where(Device.id == device.id).values(last_seen_at=long_ago))
    done = await worker.run_once(res)
    assert done["signals_expired"] >= 1 and done["nonces_purged"] >= 1
    assert done["idempotency_records_purged"] >= 1 and done["devices_marked_inactive"] >= 1
    async with res.sessions() as session:
        signal = await session.get(Signal, signal_id)
        approval = await session.get(Approval, approval_id)
        idle = await session.get(Device, device.id)
        assert await session.get(Nonce, ("k", nonce)) is None
    assert signal is not None and signal.status is SignalStatus.EXPIRED
    assert approval is not None and approval.status is ApprovalStatus.EXPIRED
    assert idle is not None and idle.status is DeviceStatus.INACTIVE
