"""AuditService through the stubs, and the audit rows that DeviceService's mutations write."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from backoffice.bootstrap import Resources
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import backoffice_pb2_grpc as rpc
from tests.conftest import UserCredentials, make_user, rpc_failure


def stub(channel: grpc.aio.Channel) -> rpc.AuditServiceStub:
    return rpc.AuditServiceStub(channel)


async def events(channel: grpc.aio.Channel, who: UserCredentials, **filters: Any) -> list[pb.AuditEvent]:
    response = await stub(channel).ListAuditEvents(pb.ListAuditEventsRequest(**filters), metadata=who.metadata)
    return list(response.audit_events)


async def failure(call: Any) -> tuple[grpc.StatusCode, str, set[str]]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    found = rpc_failure(info.value)
    return found.code, found.reason, set(found.violations)


async def _device_history(channel: grpc.aio.Channel, owner: UserCredentials) -> tuple[str, list[str], list[str]]:
    """Register, update, rotate and revoke one device; returns its id, the request ids, and the secrets."""
    devices = rpc.DeviceServiceStub(channel)
    register_id, rotate_id = str(uuid.uuid4()), str(uuid.uuid4())
    created = await devices.RegisterDevice(
        pb.RegisterDeviceRequest(request_id=register_id, name="audited"), metadata=owner.metadata
    )
    device_id = created.device.id
    await devices.UpdateDevice(
        pb.UpdateDeviceRequest(id=device_id, name="renamed", update_mask=FieldMask(paths=["name"])),
        metadata=owner.metadata,
    )
    rotated = await devices.RotateDeviceSecret(
        pb.RotateDeviceSecretRequest(id=device_id, request_id=rotate_id), metadata=owner.metadata
    )
    await devices.RevokeDevice(pb.RevokeDeviceRequest(id=device_id), metadata=owner.metadata)
    await devices.RevokeDevice(pb.RevokeDeviceRequest(id=device_id), metadata=owner.metadata)  # a no-op
    return device_id, [register_id, rotate_id], [created.secret, rotated.secret]


async def test_device_mutations_are_audited_newest_first(
    backoffice_channel: grpc.aio.Channel, res: Resources, admin: UserCredentials
) -> None:
    owner = await make_user(res)
    device_id, (register_id, rotate_id), secrets = await _device_history(backoffice_channel, owner)

    found = await events(backoffice_channel, admin, object_id=device_id)
    assert [e.action for e in found] == ["RevokeDevice", "RotateDeviceSecret", "UpdateDevice", "RegisterDevice"]
    for event in found:
        assert (event.actor_type, event.actor_id) == (pb.ACTOR_TYPE_USER, str(owner.id))
        assert (event.object_type, event.object_id) == ("device", device_id)
        assert event.id and event.create_time.seconds > 0
    assert [e.create_time.ToDatetime() for e in found] == sorted(
        (e.create_time.ToDatetime() for e in found), reverse=True
    )
    revoke, rotate, update, register = found
    assert (register.request_id, rotate.request_id) == (register_id, rotate_id)
    assert dict(update.details)["fields"] == ["name"]
    assert dict(revoke.details)["previous_status"] == "ACTIVE"
    assert register.details["name"] == "audited"
    for event in found:  # never a secret, in any form
        text = event.SerializeToString()
        assert all(secret.encode() not in text and secret[4:].encode() not in text for secret in secrets)


async def test_filters_and_paging(backoffice_channel: grpc.aio.Channel, res: Resources, admin: UserCredentials) -> None:
    owner, bystander = await make_user(res), await make_user(res)
    first, _, _ = await _device_history(backoffice_channel, owner)
    second, _, _ = await _device_history(backoffice_channel, owner)

    mine = await events(backoffice_channel, admin, actor_id=str(owner.id))
    assert len(mine) == 8 and {e.object_id for e in mine} == {first, second}
    rotations = await events(backoffice_channel, admin, actor_id=str(owner.id), action="RotateDeviceSecret")
    assert [e.object_id for e in rotations] == [second, first]
    assert len(await events(backoffice_channel, admin, actor_id=str(owner.id), object_type="device")) == 8
    assert await events(backoffice_channel, admin, actor_id=str(owner.id), object_type="signal") == []
    assert await events(backoffice_channel, admin, actor_id=str(bystander.id), action="RegisterDevice") == []

    paged: list[pb.AuditEvent] = []
    token = ""
    while True:
        page = await stub(backoffice_channel).ListAuditEvents(
            pb.ListAuditEventsRequest(actor_id=str(owner.id), page_size=3, page_token=token), metadata=admin.metadata
        )
        assert len(page.audit_events) <= 3
        paged.extend(page.audit_events)
        token = page.next_page_token
        if not token:
            break
    assert [e.id for e in paged] == [e.id for e in mine]

    page = await stub(backoffice_channel).ListAuditEvents(
        pb.ListAuditEventsRequest(actor_id=str(owner.id), page_size=3), metadata=admin.metadata
    )
    changed = pb.ListAuditEventsRequest(actor_id=str(bystander.id), page_size=3, page_token=page.next_page_token)
    code, _, fields = await failure(stub(backoffice_channel).ListAuditEvents(changed, metadata=admin.metadata))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == {"page_token"}
    code, _, fields = await failure(
        stub(backoffice_channel).ListAuditEvents(pb.ListAuditEventsRequest(actor_id="someone"), metadata=admin.metadata)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == {"actor_id"}


async def test_only_admins_read_the_audit_log(backoffice_channel: grpc.aio.Channel, user: UserCredentials) -> None:
    code, reason, _ = await failure(
        stub(backoffice_channel).ListAuditEvents(pb.ListAuditEventsRequest(), metadata=user.metadata)
    )
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "ADMIN_ONLY")
    code, reason, _ = await failure(stub(backoffice_channel).ListAuditEvents(pb.ListAuditEventsRequest()))
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING")
