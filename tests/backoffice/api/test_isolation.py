"""Tenant isolation: every RPC that takes an object id, called by a second user with the first user's
ids, answers NOT_FOUND and changes nothing."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
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


Call = Callable[[grpc.aio.Channel, Victim, tuple[tuple[str, str], ...]], Awaitable[Any]]


def _new_id() -> str:
    return str(uuid.uuid4())


CASES: dict[str, Call] = {
    "GetSignal": lambda ch, v, md: rpc.SignalServiceStub(ch).GetSignal(
        pb.GetSignalRequest(id=v.pending_signal_id), metadata=md
    ),
    "ApproveSignal": lambda ch, v, md: rpc.ApprovalServiceStub(ch).ApproveSignal(
        pb.ApproveSignalRequest(signal_id=v.pending_signal_id, request_id=_new_id()), metadata=md
    ),
    "RejectSignal": lambda ch, v, md: rpc.ApprovalServiceStub(ch).RejectSignal(
        pb.RejectSignalRequest(signal_id=v.pending_signal_id, request_id=_new_id()), metadata=md
    ),
    "Unsubscribe": lambda ch, v, md: rpc.ApprovalServiceStub(ch).Unsubscribe(
        pb.UnsubscribeRequest(id=v.subscription_id), metadata=md
    ),
    "RevokeApiToken": lambda ch, v, md: rpc.AccountServiceStub(ch).RevokeApiToken(
        pb.RevokeApiTokenRequest(id=v.token_id), metadata=md
    ),
    "GetDevice": lambda ch, v, md: rpc.DeviceServiceStub(ch).GetDevice(
        pb.GetDeviceRequest(id=v.device_id), metadata=md
    ),
    "UpdateDevice": lambda ch, v, md: rpc.DeviceServiceStub(ch).UpdateDevice(
        pb.UpdateDeviceRequest(id=v.device_id, name="stolen"), metadata=md
    ),
    "RotateDeviceSecret": lambda ch, v, md: rpc.DeviceServiceStub(ch).RotateDeviceSecret(
        pb.RotateDeviceSecretRequest(id=v.device_id, request_id=_new_id()), metadata=md
    ),
    "RevokeDevice": lambda ch, v, md: rpc.DeviceServiceStub(ch).RevokeDevice(
        pb.RevokeDeviceRequest(id=v.device_id), metadata=md
    ),
    "GetSignalExecution": lambda ch, v, md: rpc.ExecutionServiceStub(ch).GetSignalExecution(
        pb.GetSignalExecutionRequest(signal_id=v.approved_signal_id), metadata=md
    ),
}

# List RPCs filtered by another user's object show nothing of it.
LIST_CASES: dict[str, Callable[[grpc.aio.Channel, Victim, tuple[tuple[str, str], ...]], Awaitable[int]]] = {}


async def _count_executions(ch: grpc.aio.Channel, v: Victim, md: tuple[tuple[str, str], ...]) -> int:
    response = await rpc.ExecutionServiceStub(ch).ListExecutions(
        pb.ListExecutionsRequest(device_id=v.device_id), metadata=md
    )
    return len(response.executions)


async def _count_approvals(ch: grpc.aio.Channel, v: Victim, md: tuple[tuple[str, str], ...]) -> int:
    response = await rpc.ApprovalServiceStub(ch).ListApprovals(
        pb.ListApprovalsRequest(signal_id=v.approved_signal_id), metadata=md
    )
    return len(response.approvals)


async def _count_signals(ch: grpc.aio.Channel, v: Victim, md: tuple[tuple[str, str], ...]) -> int:
    return len((await rpc.SignalServiceStub(ch).ListSignals(pb.ListSignalsRequest(), metadata=md)).signals)


async def _count_devices(ch: grpc.aio.Channel, v: Victim, md: tuple[tuple[str, str], ...]) -> int:
    return len((await rpc.DeviceServiceStub(ch).ListDevices(pb.ListDevicesRequest(), metadata=md)).devices)


async def _count_subscriptions(ch: grpc.aio.Channel, v: Victim, md: tuple[tuple[str, str], ...]) -> int:
    return len(
        (await rpc.ApprovalServiceStub(ch).ListSubscriptions(pb.ListSubscriptionsRequest(), metadata=md)).subscriptions
    )


LIST_CASES.update(
    {
        "ListExecutions": _count_executions,
        "ListApprovals": _count_approvals,
        "ListSignals": _count_signals,
        "ListDevices": _count_devices,
        "ListSubscriptions": _count_subscriptions,
    }
)


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
        await CASES[rpc_name](backoffice_channel, victim, intruder.metadata)
    failure = rpc_failure(info.value)
    assert failure.code == grpc.StatusCode.NOT_FOUND, failure
    assert await _snapshot(res, victim) == before
    # The same call by the owner works (the case is real, not NOT_FOUND for every caller).
    await CASES[rpc_name](backoffice_channel, victim, victim.user.metadata)


@pytest.mark.parametrize("rpc_name", sorted(LIST_CASES))
async def test_lists_show_nothing_of_another_user(
    backoffice_channel: grpc.aio.Channel, res: Resources, victim: Victim, rpc_name: str
) -> None:
    intruder = await make_user(res)
    assert await LIST_CASES[rpc_name](backoffice_channel, victim, intruder.metadata) == 0
    assert await LIST_CASES[rpc_name](backoffice_channel, victim, victim.user.metadata) > 0
