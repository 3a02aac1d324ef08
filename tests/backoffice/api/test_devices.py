"""DeviceService through the stubs, against the real Postgres and Redis."""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from sqlalchemy import func, select

from backoffice.bootstrap import Resources
from backoffice.devices import account_states
from backoffice.models import Device, DeviceStatus
from backoffice.platform import hints
from backoffice.platform.auth import KeyKind
from backoffice.platform.vault import Binding
from signalhub.protocol import signing
from signalhub.protocol.signing import AuthFailure, SignatureError
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import backoffice_pb2_grpc as rpc
from tests.conftest import KeyCredentials, UserCredentials, make_device, make_user, rpc_failure

CONNECT = "/signalhub.v1.DeviceGateway/Connect"
SECRET_RE = re.compile(r"^shs_[A-Za-z0-9_-]{43}$")


def stub(channel: grpc.aio.Channel) -> rpc.DeviceServiceStub:
    return rpc.DeviceServiceStub(channel)


async def register(channel: grpc.aio.Channel, owner: UserCredentials, **fields: object) -> pb.RegisterDeviceResponse:
    request = pb.RegisterDeviceRequest(request_id=str(uuid.uuid4()), name="terminal", **fields)  # type: ignore[arg-type]
    return await stub(channel).RegisterDevice(request, metadata=owner.metadata, timeout=5)


async def failure_of(call: Awaitable[object]) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    failure = rpc_failure(info.value)
    return failure.code, failure.reason, failure.violations


async def verify(res: Resources, device_id: str, secret: str) -> None:
    md = signing.signed_metadata(signing.parse_secret(secret), CONNECT, device_id, b"")
    await res.verifier.verify(KeyKind.DEVICE, CONNECT, md, b"")


async def verify_fails(res: Resources, device_id: str, secret: str) -> AuthFailure:
    with pytest.raises(SignatureError) as info:
        await verify(res, device_id, secret)
    return info.value.reason


async def load(res: Resources, device_id: str | uuid.UUID) -> Device:
    async with res.sessions() as session:
        device = await session.get(Device, uuid.UUID(str(device_id)))
    assert device is not None
    return device


async def test_register_shows_the_secret_once_and_stores_it_sealed(
    backoffice_channel: grpc.aio.Channel, res: Resources, user: UserCredentials
) -> None:
    created = await register(backoffice_channel, user, mac_address="AA:BB:CC:DD:EE:0F", symbol_map={"XAUUSD": "GOLD.m"})
    assert SECRET_RE.match(created.secret)
    device = created.device
    assert device.user_id == str(user.id) and device.name == "terminal"
    assert device.status == pb.DEVICE_STATUS_ACTIVE and device.create_time.seconds > 0
    assert device.mac_address == "aa:bb:cc:dd:ee:0f" and dict(device.symbol_map) == {"XAUUSD": "GOLD.m"}
    assert not device.HasField("secret_rotate_time") and not device.HasField("revoke_time")

    fetched = await stub(backoffice_channel).GetDevice(pb.GetDeviceRequest(id=device.id), metadata=user.metadata)
    assert fetched == device
    assert created.secret not in str(fetched)

    row = await load(res, device.id)
    raw = signing.parse_secret(created.secret)
    assert row.secret_sealed.startswith("sv1:")
    assert created.secret[4:] not in row.secret_sealed and raw.hex() not in row.secret_sealed
    assert res.vault.open(row.secret_sealed, Binding("devices", device.id, "secret_sealed")) == raw
    await verify(res, device.id, created.secret)


async def test_register_is_idempotent_on_request_id(
    backoffice_channel: grpc.aio.Channel, res: Resources, user: UserCredentials
) -> None:
    request = pb.RegisterDeviceRequest(request_id=str(uuid.uuid4()), name="once", symbol_map={"EURUSD": "EURUSD.x"})
    first = await stub(backoffice_channel).RegisterDevice(request, metadata=user.metadata)
    again = await stub(backoffice_channel).RegisterDevice(request, metadata=user.metadata)
    assert again.device.id == first.device.id and again.secret == first.secret
    async with res.sessions() as session:
        count = await session.scalar(
            select(func.count()).select_from(Device).where(Device.name == "once", Device.user_id == user.id)
        )
    assert count == 1

    changed = pb.RegisterDeviceRequest(request_id=request.request_id, name="twice")
    code, reason, _ = await failure_of(stub(backoffice_channel).RegisterDevice(changed, metadata=user.metadata))
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")


@pytest.mark.parametrize(
    ("fields", "bad"),
    [
        ({"mac_address": "aa:bb:cc:dd:ee"}, {"mac_address"}),
        ({"mac_address": "zz:bb:cc:dd:ee:ff"}, {"mac_address"}),
        ({"symbol_map": {"XAU USD": "GOLD"}}, {"symbol_map[XAU USD]"}),
        ({"symbol_map": {"XAUUSD": ""}}, {"symbol_map[XAUUSD]"}),
        ({"name": "   "}, {"name"}),
        ({"name": "", "mac_address": "nope"}, {"name", "mac_address"}),
        ({"request_id": "not-a-uuid"}, {"request_id"}),
    ],
)
async def test_register_validation_names_each_bad_field(
    backoffice_channel: grpc.aio.Channel, res: Resources, fields: dict[str, object], bad: set[str]
) -> None:
    owner = await make_user(res)
    request = pb.RegisterDeviceRequest(**{"request_id": str(uuid.uuid4()), "name": "ok", **fields})  # type: ignore[arg-type]
    code, _, violations = await failure_of(stub(backoffice_channel).RegisterDevice(request, metadata=owner.metadata))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations) == bad
    async with res.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Device).where(Device.user_id == owner.id)) == 0


async def test_update_with_and_without_mask(backoffice_channel: grpc.aio.Channel, user: UserCredentials) -> None:
    devices = stub(backoffice_channel)
    created = (await register(backoffice_channel, user, symbol_map={"XAUUSD": "GOLD"})).device

    only_name = pb.UpdateDeviceRequest(
        id=created.id, name="renamed", symbol_map={"EURUSD": "EU"}, update_mask=FieldMask(paths=["name"])
    )
    updated = await devices.UpdateDevice(only_name, metadata=user.metadata)
    assert updated.name == "renamed" and dict(updated.symbol_map) == {"XAUUSD": "GOLD"}

    only_map = pb.UpdateDeviceRequest(id=created.id, name="ignored", update_mask=FieldMask(paths=["symbol_map"]))
    updated = await devices.UpdateDevice(only_map, metadata=user.metadata)
    assert updated.name == "renamed" and dict(updated.symbol_map) == {}

    both = pb.UpdateDeviceRequest(id=created.id, name="both", symbol_map={"US30": "DJ30.cash"})
    updated = await devices.UpdateDevice(both, metadata=user.metadata)
    assert updated.name == "both" and dict(updated.symbol_map) == {"US30": "DJ30.cash"}
    fetched = await devices.GetDevice(pb.GetDeviceRequest(id=created.id), metadata=user.metadata)
    assert fetched == updated


@pytest.mark.parametrize(
    ("request_fields", "bad"),
    [
        ({"update_mask": FieldMask(paths=["status"]), "name": "x"}, {"update_mask"}),
        ({"name": "", "symbol_map": {"A": "B C"}}, {"name", "symbol_map[A]"}),
        ({"symbol_map": {"A": "B C"}, "update_mask": FieldMask(paths=["symbol_map"])}, {"symbol_map[A]"}),
    ],
)
async def test_update_validation(
    backoffice_channel: grpc.aio.Channel,
    res: Resources,
    device: KeyCredentials,
    user: UserCredentials,
    request_fields: dict[str, object],
    bad: set[str],
) -> None:
    request = pb.UpdateDeviceRequest(id=str(device.id), **request_fields)  # type: ignore[arg-type]
    code, _, violations = await failure_of(stub(backoffice_channel).UpdateDevice(request, metadata=user.metadata))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and set(violations) == bad
    assert (await load(res, device.id)).name == "test device"


async def test_rotate_keeps_the_old_secret_for_the_grace_period(
    backoffice_channel: grpc.aio.Channel, res: Resources, user: UserCredentials, device: KeyCredentials
) -> None:
    request = pb.RotateDeviceSecretRequest(id=str(device.id), request_id=str(uuid.uuid4()))
    before = datetime.now(UTC)
    rotated = await stub(backoffice_channel).RotateDeviceSecret(request, metadata=user.metadata)
    assert SECRET_RE.match(rotated.secret) and rotated.secret != device.secret
    assert rotated.device.HasField("secret_rotate_time")
    await verify(res, str(device.id), rotated.secret)
    await verify(res, str(device.id), device.secret)  # inside the grace period
    row = await load(res, device.id)
    grace = timedelta(seconds=res.settings.secret_grace_seconds)
    assert row.previous_secret_expires_at is not None
    assert before + grace <= row.previous_secret_expires_at <= datetime.now(UTC) + grace

    # A retry with the same request_id returns the same secret and does not rotate again.
    retry = await stub(backoffice_channel).RotateDeviceSecret(request, metadata=user.metadata)
    assert retry.secret == rotated.secret
    await verify(res, str(device.id), device.secret)

    # A new rotation replaces the previous secret: the first one no longer verifies.
    third = await stub(backoffice_channel).RotateDeviceSecret(
        pb.RotateDeviceSecretRequest(id=str(device.id), request_id=str(uuid.uuid4())), metadata=user.metadata
    )
    assert third.secret not in (rotated.secret, device.secret)
    await verify(res, str(device.id), third.secret)
    await verify(res, str(device.id), rotated.secret)
    assert await verify_fails(res, str(device.id), device.secret) is AuthFailure.SIGNATURE_INVALID


async def _next_message(pubsub: object, deadline: float) -> dict[str, object] | None:
    while time.monotonic() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)  # type: ignore[attr-defined]
        if message is not None:
            return dict(message)
    return None


async def test_revoke_publishes_a_hint_and_the_key_stops_working(
    backoffice_channel: grpc.aio.Channel, res: Resources, user: UserCredentials, device: KeyCredentials
) -> None:
    pubsub = res.redis.pubsub()
    await pubsub.subscribe(hints.device_channel(device.id))
    try:
        revoked = await stub(backoffice_channel).RevokeDevice(
            pb.RevokeDeviceRequest(id=str(device.id)), metadata=user.metadata
        )
        message = await _next_message(pubsub, time.monotonic() + 3)
    finally:
        await pubsub.unsubscribe()
        await pubsub.aclose()
    assert message is not None and message["data"] == hints.REVOKED
    assert message["channel"] == f"sh:device:{device.id}".encode()
    assert revoked.status == pb.DEVICE_STATUS_REVOKED and revoked.HasField("revoke_time")
    assert await verify_fails(res, str(device.id), device.secret) is AuthFailure.KEY_REVOKED

    again = await stub(backoffice_channel).RevokeDevice(
        pb.RevokeDeviceRequest(id=str(device.id)), metadata=user.metadata
    )
    assert again.status == pb.DEVICE_STATUS_REVOKED and again.revoke_time == revoked.revoke_time

    code, reason, _ = await failure_of(
        stub(backoffice_channel).RotateDeviceSecret(
            pb.RotateDeviceSecretRequest(id=str(device.id), request_id=str(uuid.uuid4())), metadata=user.metadata
        )
    )
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "DEVICE_REVOKED")


OtherCall = Callable[[rpc.DeviceServiceStub, str, UserCredentials], Awaitable[object]]
OTHER_USER_CALLS: dict[str, OtherCall] = {
    "GetDevice": lambda s, i, u: s.GetDevice(pb.GetDeviceRequest(id=i), metadata=u.metadata),
    "UpdateDevice": lambda s, i, u: s.UpdateDevice(pb.UpdateDeviceRequest(id=i, name="mine now"), metadata=u.metadata),
    "RotateDeviceSecret": lambda s, i, u: s.RotateDeviceSecret(
        pb.RotateDeviceSecretRequest(id=i, request_id=str(uuid.uuid4())), metadata=u.metadata
    ),
    "RevokeDevice": lambda s, i, u: s.RevokeDevice(pb.RevokeDeviceRequest(id=i), metadata=u.metadata),
}


@pytest.mark.parametrize("method", sorted(OTHER_USER_CALLS))
async def test_another_users_device_is_not_found_and_unchanged(
    backoffice_channel: grpc.aio.Channel, res: Resources, device: KeyCredentials, method: str
) -> None:
    stranger = await make_user(res)
    before = await load(res, device.id)
    for device_id in (str(device.id), str(uuid.uuid4())):  # someone else's and absent: told apart by nothing
        code, reason, _ = await failure_of(OTHER_USER_CALLS[method](stub(backoffice_channel), device_id, stranger))
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    after = await load(res, device.id)
    assert (after.name, after.status, after.secret_sealed, after.secret_rotated_at) == (
        before.name,
        before.status,
        before.secret_sealed,
        before.secret_rotated_at,
    )
    await verify(res, str(device.id), device.secret)


async def test_malformed_id_is_invalid_argument(backoffice_channel: grpc.aio.Channel, user: UserCredentials) -> None:
    code, _, violations = await failure_of(
        stub(backoffice_channel).GetDevice(pb.GetDeviceRequest(id="device-1"), metadata=user.metadata)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and set(violations) == {"id"}


async def _list_all(
    channel: grpc.aio.Channel, who: UserCredentials, page_size: int, **filters: object
) -> tuple[list[pb.Device], int]:
    found: list[pb.Device] = []
    token, pages = "", 0
    while True:
        page = await stub(channel).ListDevices(
            pb.ListDevicesRequest(page_size=page_size, page_token=token, **filters),  # type: ignore[arg-type]
            metadata=who.metadata,
        )
        found.extend(page.devices)
        pages += 1
        token = page.next_page_token
        if not token:
            return found, pages


async def test_list_pages_newest_first_and_users_see_only_their_own(
    backoffice_channel: grpc.aio.Channel, res: Resources, admin: UserCredentials
) -> None:
    owner, other = await make_user(res), await make_user(res)
    mine = [await make_device(res, owner) for _ in range(7)]
    theirs = await make_device(res, other)

    listed, pages = await _list_all(backoffice_channel, owner, page_size=3)
    assert pages == 3
    assert [d.id for d in listed] == [str(d.id) for d in reversed(mine)]
    first = await stub(backoffice_channel).ListDevices(pb.ListDevicesRequest(), metadata=owner.metadata)
    assert len(first.devices) == 7 and first.next_page_token == ""

    everyone = await stub(backoffice_channel).ListDevices(pb.ListDevicesRequest(page_size=500), metadata=admin.metadata)
    ids = {d.id for d in everyone.devices}
    assert {str(d.id) for d in mine} | {str(theirs.id)} <= ids
    theirs_for_admin = await stub(backoffice_channel).GetDevice(
        pb.GetDeviceRequest(id=str(theirs.id)), metadata=admin.metadata
    )
    assert theirs_for_admin.user_id == str(other.id)


async def test_list_filters_by_status(backoffice_channel: grpc.aio.Channel, res: Resources) -> None:
    owner = await make_user(res)
    kept, gone = await make_device(res, owner), await make_device(res, owner)
    await stub(backoffice_channel).RevokeDevice(pb.RevokeDeviceRequest(id=str(gone.id)), metadata=owner.metadata)
    revoked, _ = await _list_all(backoffice_channel, owner, 10, status=pb.DEVICE_STATUS_REVOKED)
    active, _ = await _list_all(backoffice_channel, owner, 10, status=pb.DEVICE_STATUS_ACTIVE)
    assert [d.id for d in revoked] == [str(gone.id)] and [d.id for d in active] == [str(kept.id)]

    page = await stub(backoffice_channel).ListDevices(pb.ListDevicesRequest(page_size=1), metadata=owner.metadata)
    changed = pb.ListDevicesRequest(page_size=1, page_token=page.next_page_token, status=pb.DEVICE_STATUS_ACTIVE)
    code, _, violations = await failure_of(stub(backoffice_channel).ListDevices(changed, metadata=owner.metadata))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and set(violations) == {"page_token"}
    code, _, violations = await failure_of(
        stub(backoffice_channel).ListDevices(pb.ListDevicesRequest(page_size=-1), metadata=owner.metadata)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and set(violations) == {"page_size"}


async def test_page_size_over_500_is_coerced(
    backoffice_channel: grpc.aio.Channel, res: Resources, admin: UserCredentials
) -> None:
    filler = await make_user(res)
    ids = [uuid.uuid4() for _ in range(501)]
    async with res.sessions.begin() as session:
        # Rows straight into the table (501 registrations through the API would only slow the suite), with
        # properly sealed secrets: other tests re-seal every row when rotating the master key.
        session.add_all(
            Device(
                id=device_id,
                user_id=filler.id,
                name="filler",
                status=DeviceStatus.REVOKED,
                secret_sealed=res.vault.seal(os.urandom(32), Binding("devices", str(device_id), "secret_sealed")),
            )
            for device_id in ids
        )
    page = await stub(backoffice_channel).ListDevices(
        pb.ListDevicesRequest(page_size=10_000, status=pb.DEVICE_STATUS_REVOKED), metadata=admin.metadata
    )
    assert len(page.devices) == 500 and page.next_page_token


async def test_list_is_authenticated(backoffice_channel: grpc.aio.Channel) -> None:
    code, reason, _ = await failure_of(stub(backoffice_channel).ListDevices(pb.ListDevicesRequest()))
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING")


async def test_concurrent_registers_with_one_request_id_make_one_device(
    backoffice_channel: grpc.aio.Channel, res: Resources
) -> None:
    owner = await make_user(res)
    request = pb.RegisterDeviceRequest(request_id=str(uuid.uuid4()), name="racer")
    answers = await asyncio.gather(
        *(stub(backoffice_channel).RegisterDevice(request, metadata=owner.metadata) for _ in range(10))
    )
    assert len({(a.device.id, a.secret) for a in answers}) == 1
    async with res.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Device).where(Device.user_id == owner.id)) == 1


async def test_a_device_shows_its_newest_account_state(
    backoffice_channel: grpc.aio.Channel, user: UserCredentials, res: Resources
) -> None:
    """GetDevice and ListDevices carry the newest AccountState its bridge reported, unset before any."""
    device = (await register(backoffice_channel, user)).device
    assert not device.HasField("account_state")
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    async with res.sessions.begin() as session:
        await account_states.store_latest(
            session,
            [
                account_states.AccountStateIn(
                    uuid.UUID(device.id), Decimal("10000.50"), Decimal("9876.25"), Decimal("120"), None, when, "f-1"
                )
            ],
            datetime.now(UTC),
        )
    got = await stub(backoffice_channel).GetDevice(pb.GetDeviceRequest(id=device.id), metadata=user.metadata)
    state = got.account_state
    assert (state.balance, state.equity, state.margin, state.free_margin) == ("10000.50", "9876.25", "120", "")
    assert state.state_time.ToDatetime(UTC) == when
    listed = await stub(backoffice_channel).ListDevices(pb.ListDevicesRequest(), metadata=user.metadata)
    assert [d.account_state for d in listed.devices if d.id == device.id] == [state]
