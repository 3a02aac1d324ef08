"""Device rules below the API: idle devices become INACTIVE, and a rotated secret's grace period ends."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from backoffice import devices, worker
from backoffice.bootstrap import Resources
from backoffice.devices import presence
from backoffice.models import Device, DeviceStatus
from backoffice.platform.auth import KeyKind, SignatureVerifier
from signalhub.protocol import signing
from signalhub.protocol.errors import FailedPrecondition
from signalhub.protocol.signing import AuthFailure, SignatureError
from tests.conftest import UserCredentials, make_device

CONNECT = "/signalhub.v1.DeviceGateway/Connect"


async def _age(res: Resources, device_id: uuid.UUID, *, created: timedelta, seen: timedelta | None) -> None:
    now = datetime.now(UTC)
    async with res.sessions.begin() as session:
        await session.execute(
            update(Device)
            .where(Device.id == device_id)
            .values(created_at=now - created, last_seen_at=None if seen is None else now - seen)
        )


async def _status(res: Resources, device_id: uuid.UUID) -> DeviceStatus:
    async with res.sessions() as session:
        device = await session.get(Device, device_id)
    assert device is not None
    return device.status


async def test_idle_devices_become_inactive(res: Resources, user: UserCredentials) -> None:
    never_seen_old = (await make_device(res, user)).id
    seen_long_ago = (await make_device(res, user)).id
    seen_recently = (await make_device(res, user)).id
    never_seen_new = (await make_device(res, user)).id
    revoked_old = (await make_device(res, user)).id
    await _age(res, never_seen_old, created=timedelta(days=8), seen=None)
    await _age(res, seen_long_ago, created=timedelta(days=30), seen=timedelta(days=7, minutes=1))
    await _age(res, seen_recently, created=timedelta(days=30), seen=timedelta(days=6, hours=23))
    await _age(res, never_seen_new, created=timedelta(days=6), seen=None)
    await _age(res, revoked_old, created=timedelta(days=30), seen=None)
    async with res.sessions.begin() as session:
        await devices.revoke_device(session, user.caller, revoked_old)

    async with res.sessions.begin() as session:
        changed = await presence.mark_idle_devices_inactive(session, datetime.now(UTC))
    assert changed >= 2  # the database is shared with other tests: at least these two
    assert await _status(res, never_seen_old) is DeviceStatus.INACTIVE
    assert await _status(res, seen_long_ago) is DeviceStatus.INACTIVE
    assert await _status(res, seen_recently) is DeviceStatus.ACTIVE
    assert await _status(res, never_seen_new) is DeviceStatus.ACTIVE
    assert await _status(res, revoked_old) is DeviceStatus.REVOKED


async def test_worker_round_marks_idle_devices(res: Resources, user: UserCredentials) -> None:
    idle = (await make_device(res, user)).id
    await _age(res, idle, created=timedelta(days=10), seen=timedelta(days=9))
    done = await worker.run_once(res)
    assert done["devices_marked_inactive"] >= 1
    assert await _status(res, idle) is DeviceStatus.INACTIVE


def _verifier_at(res: Resources, moment: datetime) -> SignatureVerifier:
    return SignatureVerifier(
        res.sessions, res.vault, res.nonces, res.settings.signature_tolerance_seconds, clock=moment.timestamp
    )


async def _verify_at(res: Resources, moment: datetime, device_id: uuid.UUID, secret: str) -> None:
    md = signing.signed_metadata(
        signing.parse_secret(secret), CONNECT, str(device_id), b"", timestamp=int(moment.timestamp())
    )
    await _verifier_at(res, moment).verify(KeyKind.DEVICE, CONNECT, md, b"")


async def test_rotated_secret_is_valid_only_during_the_grace_period(res: Resources, user: UserCredentials) -> None:
    device = await make_device(res, user)
    grace = timedelta(hours=24)
    async with res.sessions.begin() as session:
        row, new_secret = await devices.rotate_device_secret(session, res.vault, user.caller, device.id, grace=grace)
    rotated_at = row.secret_rotated_at
    assert rotated_at is not None and row.previous_secret_expires_at == rotated_at + grace

    inside = rotated_at + grace - timedelta(minutes=1)
    after = rotated_at + grace + timedelta(minutes=1)
    await _verify_at(res, inside, device.id, device.secret)
    await _verify_at(res, inside, device.id, new_secret)
    await _verify_at(res, after, device.id, new_secret)
    with pytest.raises(SignatureError) as info:
        await _verify_at(res, after, device.id, device.secret)
    assert info.value.reason is AuthFailure.SIGNATURE_INVALID


async def test_revoked_device_cannot_rotate(res: Resources, user: UserCredentials) -> None:
    device = await make_device(res, user)
    async with res.sessions.begin() as session:
        await devices.revoke_device(session, user.caller, device.id)
    with pytest.raises(FailedPrecondition):
        async with res.sessions.begin() as session:
            await devices.rotate_device_secret(session, res.vault, user.caller, device.id, grace=timedelta(hours=1))
