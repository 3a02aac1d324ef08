"""Tenant isolation: every RPC that takes an object id, called by a second user with the first user's
ids, answers NOT_FOUND and changes nothing."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from sqlalchemy import text

from backoffice.bootstrap import Resources
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import backoffice_pb2_grpc as rpc
from tests.backoffice.api.test_approvals import device_with, subscribe, subscribe_request
from tests.backoffice.api.test_signals import signal_request, submit
from tests.conftest import UserCredentials, make_producer, make_user, rpc_failure


@dataclass(frozen=True)
class Victim:
    user: UserCredentials
    device_id: str
    subscription_id: str
    pending_signal_id: str  # awaiting the victim's decision
    approved_signal_id: str  # approved, with a delivery to the victim's device
    token_id: str


@pytest.fixture
async def victim(backoffice_channel: grpc.aio.Channel, res: Resources) -> Victim:
    user = await make_user(res)
    producer = await make_producer(res)
    device = await device_with(res, user)
    subscription = await subscribe(
        backoffice_channel, user, subscribe_request(producer, mode=pb.SUBSCRIPTION_MODE_MANUAL)
    )
    pending = await submit(backoffice_channel, producer, signal_request())
    approved = await submit(backoffice_channel, producer, signal_request())
    await rpc.ApprovalServiceStub(backoffice_channel).ApproveSignal(
        pb.ApproveSignalRequest(signal_id=approved.id, request_id=str(uuid.uuid4())), metadata=user.metadata, timeout=5
    )
    token = await rpc.AccountServiceStub(backoffice_channel).CreateApiToken(
        pb.CreateApiTokenRequest(request_id=str(uuid.uuid4()), name="victim's"), metadata=user.metadata, timeout=5
    )
    return Victim(user, str(device), subscription.id, pending.id, approved.id, token.token.id)


Metadata = tuple[tuple[str, str], ...]
Stub = Callable[[grpc.aio.Channel], Any]


def _new_id() -> str:
    return str(uuid.uuid4())


# RPC -> (its service's stub, the request naming one of the victim's objects)
CASES: dict[str, tuple[Stub, Callable[[Victim], Any]]] = {
    "GetSignal": (rpc.SignalServiceStub, lambda v: pb.GetSignalRequest(id=v.pending_signal_id)),
    "ApproveSignal": (
        rpc.ApprovalServiceStub,
        lambda v: pb.ApproveSignalRequest(signal_id=v.pending_signal_id, request_id=_new_id()),
    ),
    "RejectSignal": (
        rpc.ApprovalServiceStub,
        lambda v: pb.RejectSignalRequest(signal_id=v.pending_signal_id, request_id=_new_id()),
    ),
    "Unsubscribe": (rpc.ApprovalServiceStub, lambda v: pb.UnsubscribeRequest(id=v.subscription_id)),
    "RevokeApiToken": (rpc.AccountServiceStub, lambda v: pb.RevokeApiTokenRequest(id=v.token_id)),
    "GetDevice": (rpc.DeviceServiceStub, lambda v: pb.GetDeviceRequest(id=v.device_id)),
    "UpdateDevice": (rpc.DeviceServiceStub, lambda v: pb.UpdateDeviceRequest(id=v.device_id, name="stolen")),
    "RotateDeviceSecret": (
        rpc.DeviceServiceStub,
        lambda v: pb.RotateDeviceSecretRequest(id=v.device_id, request_id=_new_id()),
    ),
    "RevokeDevice": (rpc.DeviceServiceStub, lambda v: pb.RevokeDeviceRequest(id=v.device_id)),
    "GetSignalExecution": (
        rpc.ExecutionServiceStub,
        lambda v: pb.GetSignalExecutionRequest(signal_id=v.approved_signal_id),
    ),
}

# List RPCs filtered by another user's object show nothing of it: RPC -> (stub, request, the response's list).
LIST_CASES: dict[str, tuple[Stub, Callable[[Victim], Any], str]] = {
    "ListExecutions": (
        rpc.ExecutionServiceStub,
        lambda v: pb.ListExecutionsRequest(device_id=v.device_id),
        "executions",
    ),
    "ListApprovals": (
        rpc.ApprovalServiceStub,
        lambda v: pb.ListApprovalsRequest(signal_id=v.approved_signal_id),
        "approvals",
    ),
    "ListSignals": (rpc.SignalServiceStub, lambda v: pb.ListSignalsRequest(), "signals"),
    "ListDevices": (rpc.DeviceServiceStub, lambda v: pb.ListDevicesRequest(), "devices"),
    "ListSubscriptions": (rpc.ApprovalServiceStub, lambda v: pb.ListSubscriptionsRequest(), "subscriptions"),
}


async def _call(channel: grpc.aio.Channel, rpc_name: str, victim: Victim, metadata: Metadata) -> Any:
    """``rpc_name`` of CASES on the victim's object, as the caller of ``metadata``."""
    stub, request = CASES[rpc_name]
    return await getattr(stub(channel), rpc_name)(request(victim), metadata=metadata)


async def _count(channel: grpc.aio.Channel, rpc_name: str, victim: Victim, metadata: Metadata) -> int:
    """How many items ``rpc_name`` of LIST_CASES lists, filtered by the victim's object, to the caller."""
    stub, request, items = LIST_CASES[rpc_name]
    response = await getattr(stub(channel), rpc_name)(request(victim), metadata=metadata)
    return len(getattr(response, items))


async def _snapshot(res: Resources, victim: Victim) -> list[str]:
    """Every row that belongs to the victim, as text."""
    queries = [
        ("devices", "user_id"),
        ("subscriptions", "user_id"),
        ("approvals", "user_id"),
        ("api_tokens", "user_id"),
    ]
    rows: list[str] = []
    async with res.sessions() as session:
        for table, column in queries:
            found = await session.scalars(
                text(f"SELECT t::text FROM {table} t WHERE {column} = :u ORDER BY id"), {"u": victim.user.id}
            )
            rows.extend(found.all())
        deliveries = await session.scalars(
            text("SELECT t::text FROM deliveries t WHERE device_id = :d ORDER BY id"),
            {"d": uuid.UUID(victim.device_id)},
        )
        rows.extend(deliveries.all())
    return rows


@pytest.mark.parametrize("rpc_name", sorted(CASES))
async def test_other_users_object_is_not_found_and_unchanged(
    backoffice_channel: grpc.aio.Channel, res: Resources, victim: Victim, rpc_name: str
) -> None:
    intruder = await make_user(res)
    before = await _snapshot(res, victim)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _call(backoffice_channel, rpc_name, victim, intruder.metadata)
    failure = rpc_failure(info.value)
    assert failure.code == grpc.StatusCode.NOT_FOUND, failure
    assert await _snapshot(res, victim) == before
    # The same call by the owner works (the case is real, not NOT_FOUND for every caller).
    await _call(backoffice_channel, rpc_name, victim, victim.user.metadata)


@pytest.mark.parametrize("rpc_name", sorted(LIST_CASES))
async def test_lists_show_nothing_of_another_user(
    backoffice_channel: grpc.aio.Channel, res: Resources, victim: Victim, rpc_name: str
) -> None:
    intruder = await make_user(res)
    assert await _count(backoffice_channel, rpc_name, victim, intruder.metadata) == 0
    assert await _count(backoffice_channel, rpc_name, victim, victim.user.metadata) > 0
