"""Every back-office RPC, hunted by hypothesis: random and hostile messages and raw bytes, with no
credentials, bad ones and good ones (bearer tokens of a user and an admin; producer signatures over the
exact bytes sent, and with a hostile x-sh-timestamp). Whatever comes back is a proper status with an
ErrorInfo, never UNKNOWN, INTERNAL or UNAVAILABLE, and the server keeps SERVING."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given
from hypothesis import strategies as st

from backoffice.bootstrap import METHOD_AUTH, SERVICES, Resources
from backoffice.platform import paging
from backoffice.platform.interceptors import Auth
from signalhub.protocol import signing
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import backoffice_pb2_grpc as rpc
from tests.backoffice.risk.support import add_stopouts, stopout_row
from tests.conftest import KeyCredentials, UserCredentials, make_device, rpc_failure
from tests.hostile import (
    HUNT,
    NESTED_JSON,
    assert_proper_status,
    encode_page_token,
    messages,
    raw_bytes,
    timestamp_headers,
    unset_filters,
)

METHODS = [method for service in SERVICES for method in service.methods]
LIST_METHODS = [method for method in METHODS if "page_token" in method.input_type.fields_by_name]
AUTHS = ["none", "garbage", "user", "admin", "signed", "badly-signed", "signed-odd-timestamp"]
FOREIGN_SECRET = signing.parse_secret("shs_" + "A" * 43)


def path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


@pytest.fixture
async def world(res: Resources, user: UserCredentials, admin: UserCredentials, producer: KeyCredentials) -> Any:
    """Real objects whose ids the fuzzer may use, so calls reach the code behind the first NOT_FOUND."""
    device = await make_device(res, user)
    [stopout_id] = await add_stopouts(res, stopout_row(device.id, datetime.now(UTC) - timedelta(minutes=1)))
    return {
        "user": user,
        "admin": admin,
        "producer": producer,
        "device": device,
        "known": [str(user.id), str(admin.id), str(producer.id), str(device.id), str(stopout_id)],
    }


def metadata_for(
    auth: str, world: dict[str, Any], method: str, body: bytes, timestamp: str = ""
) -> tuple[tuple[str, str], ...]:
    """The metadata of one ``auth`` kind; ``timestamp`` replaces the signed x-sh-timestamp of a
    signed-odd-timestamp call."""
    producer: KeyCredentials = world["producer"]
    if auth == "garbage":
        return (("authorization", "Bearer sht_not-a-token"), ("x-sh-signature", "v1=???"), ("x-sh-key-id", "x"))
    if auth in ("user", "admin"):
        return world[auth].metadata  # type: ignore[no-any-return]
    if auth == "signed":
        return signing.signed_metadata(signing.parse_secret(producer.secret), method, str(producer.id), body)
    if auth == "badly-signed":
        return signing.signed_metadata(FOREIGN_SECRET, method, str(producer.id), body)
    if auth == "signed-odd-timestamp":
        signed = signing.signed_metadata(signing.parse_secret(producer.secret), method, str(producer.id), body)
        return tuple((key, timestamp if key == signing.HEADER_TIMESTAMP else value) for key, value in signed)
    return ()


async def call(channel: grpc.aio.Channel, method: str, body: bytes, metadata: Any) -> None:
    try:
        await channel.unary_unary(method)(body, metadata=metadata, timeout=30)
    except grpc.aio.AioRpcError as error:
        assert_proper_status(error)


def auths_for(method: str) -> st.SearchStrategy[str]:
    signed = METHOD_AUTH.get(method, Auth.BEARER) is not Auth.BEARER
    return st.sampled_from(AUTHS if signed else [a for a in AUTHS if "signed" not in a])


def every_method_hunted(test: Callable[..., Awaitable[None]]) -> Any:
    """``test`` for each method of the back office, with Hypothesis drawing its input (``data``)."""
    return pytest.mark.parametrize("method", METHODS, ids=path)(HUNT(given(data=st.data())(test)))


@every_method_hunted
async def test_hostile_messages_get_a_proper_status(
    method: MethodDescriptor, backoffice_channel: grpc.aio.Channel, world: dict[str, Any], data: st.DataObject
) -> None:
    name = path(method)
    body = data.draw(messages(method.input_type, world["known"])).SerializeToString()
    auth = data.draw(auths_for(name))
    timestamp = data.draw(timestamp_headers(sendable=True)) if auth == "signed-odd-timestamp" else ""
    await call(backoffice_channel, name, body, metadata_for(auth, world, name, body, timestamp))


@every_method_hunted
async def test_bytes_that_are_not_a_message_get_a_proper_status(
    method: MethodDescriptor, backoffice_channel: grpc.aio.Channel, world: dict[str, Any], data: st.DataObject
) -> None:
    name = path(method)
    good = "signed" if METHOD_AUTH.get(name, Auth.BEARER) is not Auth.BEARER else "admin"
    body = data.draw(raw_bytes(method.input_type))
    await call(backoffice_channel, name, body, metadata_for(good, world, name, body))


@HUNT
@given(data=st.data())
async def test_hostile_risk_policies_for_the_owners_device_are_refused_or_stored_whole(
    backoffice_channel: grpc.aio.Channel, world: dict[str, Any], data: st.DataObject
) -> None:
    """A policy with hostile values, sent by the device's owner, so that it gets past NOT_FOUND: refused with
    a proper status, or stored as a whole and read back as answered (the largest decimals and counts too)."""
    policy = data.draw(messages(pb.RiskPolicy.DESCRIPTOR, world["known"]))
    policy.device_id = str(world["device"].id)
    risks = rpc.RiskServiceStub(backoffice_channel)
    try:
        stored = await risks.UpdateRiskPolicy(
            pb.UpdateRiskPolicyRequest(policy=policy), metadata=world["user"].metadata, timeout=30
        )
    except grpc.aio.AioRpcError as error:
        assert_proper_status(error)
    else:
        read = await risks.GetRiskPolicy(
            pb.GetRiskPolicyRequest(device_id=policy.device_id), metadata=world["user"].metadata
        )
        assert read == stored


# Cursor times that overflow when converted to UTC, or lie outside any row's range.
BAD_CURSOR_TIMES = [
    "0001-01-01T00:00:00+05:00",
    "0001-01-01T00:00:00+00:00:01",
    "9999-12-31T23:59:59-05:00",
    "9999-12-31T23:59:59.999999-00:00:01",
    "0001-01-01T00:00:00",
    "1969-12-31T23:59:59+00:00",
]


def forged_page_tokens(method: MethodDescriptor) -> list[str]:
    """Tokens of every hostile shape, those with a cursor carrying the fingerprint of the method's unset
    filters, so that they reach the query when nothing else stops them."""
    fingerprint = paging._fingerprint(unset_filters(method.input_type))
    good_time, good_id = "2026-01-01T00:00:00+00:00", str(uuid.uuid4())
    cursors: list[object] = [{"t": moment, "i": good_id, "f": fingerprint} for moment in BAD_CURSOR_TIMES]
    cursors += [
        {"t": good_time, "i": 5, "f": fingerprint},
        {"t": good_time, "i": [], "f": fingerprint},
        {"t": 1.5, "i": good_id, "f": fingerprint},
        {"t": good_time, "i": good_id, "f": fingerprint, "x": None},
        [good_time, good_id, fingerprint],
        None,
    ]
    return [encode_page_token(body) for body in [*NESTED_JSON, *cursors]]


def paging_body(token: str) -> str:
    """A token's JSON, cut short, for a failure message."""
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))[:80].decode()


@pytest.mark.parametrize("method", LIST_METHODS, ids=path)
async def test_forged_page_tokens_are_invalid_argument_naming_page_token(
    method: MethodDescriptor, backoffice_channel: grpc.aio.Channel, world: dict[str, Any]
) -> None:
    request: Any = GetMessageClass(method.input_type)
    rpc: Any = backoffice_channel.unary_unary(path(method))
    tokenless: grpc.StatusCode | None = None
    try:
        await rpc(request().SerializeToString(), metadata=world["admin"].metadata, timeout=10)
    except grpc.aio.AioRpcError as error:
        # Refused before paging (an admin who is no affiliate): no token can get further.
        tokenless = rpc_failure(error).code
    wrong: dict[str, object] = {}  # each token answered otherwise, decoded, with its answer
    for token in forged_page_tokens(method):
        try:
            await rpc(request(page_token=token).SerializeToString(), metadata=world["admin"].metadata, timeout=10)
        except grpc.aio.AioRpcError as error:
            failure = rpc_failure(error)
            named = failure.code == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in failure.violations
            if named if tokenless is None else failure.code == tokenless:
                continue
            wrong[paging_body(token)] = failure.code
        else:
            wrong[paging_body(token)] = "OK"
    assert not wrong


async def test_garbage_bytes_are_invalid_argument_only_after_authentication(
    backoffice_channel: grpc.aio.Channel, world: dict[str, Any]
) -> None:
    name = "/signalhub.v1.DeviceService/ListDevices"
    garbage = b"\xff\xff\xff"
    for metadata, code, reason in [
        ((), grpc.StatusCode.UNAUTHENTICATED, None),
        (world["user"].metadata, grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_MESSAGE"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await backoffice_channel.unary_unary(name)(garbage, metadata=metadata, timeout=10)
        assert info.value.code() == code
        if reason:
            assert assert_proper_status(info.value) == reason


async def test_a_message_over_the_size_limit_is_invalid_argument(
    backoffice_channel: grpc.aio.Channel, res: Resources, world: dict[str, Any]
) -> None:
    request = pb.RegisterDeviceRequest(name="x" * (res.settings.max_message_bytes + 1))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await backoffice_channel.unary_unary("/signalhub.v1.DeviceService/RegisterDevice")(
            request.SerializeToString(), metadata=world["user"].metadata, timeout=10
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert assert_proper_status(info.value) == "MESSAGE_TOO_LARGE"


@pytest.mark.parametrize(
    ("method", "request_message", "field"),
    [
        ("/signalhub.v1.DeviceService/RegisterDevice", pb.RegisterDeviceRequest(name="vps\x00"), "name"),
        (
            "/signalhub.v1.DeviceService/RegisterDevice",
            pb.RegisterDeviceRequest(name="vps", symbol_map={"XAUUSD": "GOLD\x00"}),
            "symbol_map['XAUUSD']",
        ),
        ("/signalhub.v1.SignalService/ListSignals", pb.ListSignalsRequest(page_token="\x00"), "page_token"),
        ("/signalhub.v1.ApprovalService/ListApprovals", pb.ListApprovalsRequest(page_token="a\x00"), "page_token"),
    ],
)
async def test_a_nul_character_anywhere_is_invalid_argument_naming_the_field(
    backoffice_channel: grpc.aio.Channel,
    res: Resources,
    world: dict[str, Any],
    method: str,
    request_message: Any,
    field: str,
) -> None:
    from tests.conftest import rpc_failure

    before = await _device_count(res)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await backoffice_channel.unary_unary(method)(
            request_message.SerializeToString(), metadata=world["user"].metadata, timeout=10
        )
    failure = rpc_failure(info.value)
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT and field in failure.violations
    assert await _device_count(res) == before  # nothing changed


async def test_a_nul_in_a_signed_signal_payload_is_invalid_argument(
    backoffice_channel: grpc.aio.Channel, world: dict[str, Any]
) -> None:
    from tests.conftest import rpc_failure, signed_call

    request = pb.SubmitSignalRequest(request_id=str(uuid.uuid4()), instrument="XAUUSD", side=1)
    request.payload.update({"note\x00": "x", "nested": {"k": "v\x00"}})
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await signed_call(
            backoffice_channel, world["producer"], "/signalhub.v1.SignalService/SubmitSignal", request, pb.Signal
        )
    failure = rpc_failure(info.value)
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(failure.violations) == {
        "payload.fields['note\\x00']",
        "payload.fields['nested'].struct_value.fields['k'].string_value",
    }


async def test_the_server_keeps_serving(backoffice_channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(backoffice_channel)
    answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def _device_count(res: Resources) -> int:
    from sqlalchemy import func, select

    from backoffice.models import Device

    async with res.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(Device)) or 0)
