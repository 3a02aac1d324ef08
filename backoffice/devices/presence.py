"""A device's presence, as the gateway records it: its Hello (kept as a typed record, see
``backoffice.devices.hello``), its reactivation, when it was last seen; and which connected devices were
revoked."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from backoffice import audit, execution_events
from backoffice.devices import account_states
from backoffice.devices.hello import Hello
from backoffice.models import ActorType, Device, DeviceStatus, EventKind, ExecutionEvent
from backoffice.platform.db import any_id
from signalhub.protocol.errors import Unauthenticated
from signalhub.protocol.signing import AuthFailure

# A device not seen for this long becomes INACTIVE (its next Hello makes it ACTIVE again).
IDLE_AFTER = timedelta(days=7)


async def store_hello(session: AsyncSession, device_id: uuid.UUID, frame_id: str, hello: Hello, now: datetime) -> bool:
    """Record the Hello (a HELLO event, and ``last_hello`` for sizing), mark the device seen and make an
    INACTIVE device ACTIVE again. A Hello that says both balance and equity (neither negative) is also the
    device's account state, dated ``now``. False when the frame_id was recorded before: the Hello then
    changes nothing. A device revoked since its stream opened is refused."""
    # FOR NO KEY UPDATE: serialised with a revocation (its UPDATE takes the same lock), while the foreign-key
    # checks of rows naming this device (an uplink storing its account state and stopouts) pass: FOR UPDATE
    # would wait on them while they wait on this Hello's account state, a deadlock.
    status = await session.scalar(select(Device.status).where(Device.id == device_id).with_for_update(key_share=True))
    if status is None or status is DeviceStatus.REVOKED:
        raise Unauthenticated("this device key is revoked", reason=AuthFailure.KEY_REVOKED.value)
    stored = hello.to_json()
    summary = {k: stored[k] for k in ("bridge_version", "account_currency", "balance", "equity")}
    row = execution_events.event_row(device_id, EventKind.HELLO, now, frame_id=frame_id, body=summary)
    inserted = await session.scalar(
        pg_insert(ExecutionEvent)
        .values(**row)
        .on_conflict_do_nothing(index_elements=[ExecutionEvent.device_id, ExecutionEvent.frame_id])
        .returning(ExecutionEvent.id)
    )
    values: dict[str, Any] = {"last_seen_at": now, "status": DeviceStatus.ACTIVE}
    if inserted is not None:
        values.update(last_hello=stored, last_hello_at=now)
        await _store_account_state(session, device_id, hello, now)
    await session.execute(
        update(Device).where(Device.id == device_id).values(**values).execution_options(synchronize_session=False)
    )
    if status is DeviceStatus.INACTIVE:
        audit.record(
            session,
            (ActorType.DEVICE, device_id),
            "device.reactivate",
            "device",
            device_id,
        )
    return inserted is not None


async def _store_account_state(session: AsyncSession, device_id: uuid.UUID, hello: Hello, now: datetime) -> None:
    if hello.balance is None or hello.equity is None or hello.balance < 0 or hello.equity < 0:
        return  # not an account state an AccountState frame could carry: the stored one stays
    # No frame id: the server dated it, so the device's own AccountState frames after it replace it.
    state = account_states.AccountStateIn(device_id, hello.balance, hello.equity, None, None, now, None)
    await account_states.store_latest(session, [state], now)


async def mark_seen(session: AsyncSession, device_ids: Sequence[uuid.UUID], now: datetime) -> None:
    if device_ids:
        await session.execute(
            update(Device)
            .where(any_id(Device.id, device_ids))
            .values(last_seen_at=now)
            .execution_options(synchronize_session=False)
        )


async def revoked_among(session: AsyncSession, device_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    if not device_ids:
        return set()
    rows = await session.scalars(
        select(Device.id).where(any_id(Device.id, device_ids), Device.status == DeviceStatus.REVOKED)
    )
    return set(rows)


async def mark_idle_devices_inactive(session: AsyncSession, now: datetime, idle: timedelta = IDLE_AFTER) -> int:
    """ACTIVE devices not seen (or, never seen, not registered) for ``idle`` become INACTIVE; the gateway
    makes them ACTIVE again when they connect. Returns how many changed."""
    result = await session.execute(
        update(Device)
        .where(
            Device.status == DeviceStatus.ACTIVE,
            func.coalesce(Device.last_seen_at, Device.created_at) < now - idle,
        )
        .values(status=DeviceStatus.INACTIVE)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
