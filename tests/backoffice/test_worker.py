"""The worker against the real database: one housekeeping round, and the monitor in a real worker process
that is killed in the middle of its work."""

from __future__ import annotations

import asyncio
import signal
import uuid
from datetime import UTC, datetime, timedelta

import grpc
from sqlalchemy import select, text, update
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
    Position,
    PositionStatus,
    Signal,
    SignalStatus,
)
from backoffice.platform.config import Settings
from tests.backoffice.monitor.support import commands, instrument, quote, submit
from tests.conftest import (
    REDIS_URL,
    ROOT_DIR,
    KeyCredentials,
    UserCredentials,
    approval_row,
    run_module,
    server_env,
    signal_row,
    subscription_row,
)
from tests.gateway.support import Book, eventually, row


async def test_run_once_expires_purges_and_marks_idle(
    res: Resources, producer: KeyCredentials, user: UserCredentials, device: KeyCredentials
) -> None:
    long_ago = datetime.now(UTC) - timedelta(days=8)
    signal_id, approval_id, nonce = uuid.uuid4(), uuid.uuid4(), uuid.uuid4().hex
    async with res.sessions.begin() as session:
        subscription = subscription_row(user.id, producer.id, sizing_value=1, instruments=[])
        session.add(subscription)
        session.add(signal_row(producer.id, long_ago, long_ago + timedelta(seconds=60), id=signal_id, payload={}))
        await session.flush()
        session.add(
            approval_row(signal_id, subscription.id, user.id, ApprovalStatus.PENDING, id=approval_id, device_ids=[])
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


async def test_killing_the_worker_in_the_middle_never_doubles_a_close(
    res: Resources,
    settings: Settings,
    backoffice_channel: grpc.aio.Channel,
    user: UserCredentials,
    device: KeyCredentials,
) -> None:
    """`signalhub serve worker` as a real process. A first quote closes ten positions. A second quote
    reaches ten more while the test holds one of their rows: the worker's transaction stops in the middle,
    and the worker is SIGKILLed there. A new worker (a restart) closes those ten; the first ten, closing
    already, are left alone: each position has exactly one close command."""
    book = await Book.open(res, user.id)
    first, second = instrument(), instrument()
    closed_first = [
        await book.position(device.id, signal_instrument=first, entry="100", stop_loss="99") for _ in range(10)
    ]
    closed_after = [
        await book.position(device.id, signal_instrument=second, entry="100", stop_loss="99") for _ in range(10)
    ]
    env = server_env(settings.database_url, REDIS_URL, monitor_sweep_seconds="0.2")
    worker_process = run_module("backoffice.cli", "serve", "worker", env=env, cwd=ROOT_DIR)
    try:
        await submit(backoffice_channel, book.producer, quote(first, "98"))
        for position_id in closed_first:
            await eventually(lambda p=position_id: _status(res, p, PositionStatus.CLOSING), "the first worker")
        async with res.sessions.begin() as holder:
            held = sorted(closed_after)[5]
            await holder.execute(select(Position.id).where(Position.id == held).with_for_update())
            await submit(backoffice_channel, book.producer, quote(second, "98"))
            await eventually(lambda: _waiting_on_a_lock(res), "the worker to stop on the held row")
            worker_process.send_signal(signal.SIGKILL)
            await asyncio.to_thread(worker_process.wait, 15)
        for position_id in closed_after:
            assert (await row(res, Position, position_id)).status is PositionStatus.OPEN  # nothing committed
        worker_process = run_module("backoffice.cli", "serve", "worker", env=env, cwd=ROOT_DIR)
        for position_id in closed_after:
            await eventually(lambda p=position_id: _status(res, p, PositionStatus.CLOSING), "the restarted worker")
        await asyncio.sleep(1.0)  # its sweeps read both quotes again
    finally:
        worker_process.terminate()
        await asyncio.to_thread(worker_process.wait, 15)
    for position_id in closed_first + closed_after:
        assert len(await commands(res, position_id)) == 1


async def _status(res: Resources, position_id: uuid.UUID, status: PositionStatus) -> bool:
    return (await row(res, Position, position_id)).status is status


async def _waiting_on_a_lock(res: Resources) -> bool:
    async with res.sessions() as session:
        waiting = await session.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )
        )
    return bool(waiting)
