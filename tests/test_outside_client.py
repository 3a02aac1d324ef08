"""The core path as an outside client written from the contract alone would walk it: generated stubs
only, no request_id where the contract makes it optional (AIP-155), a MANUAL subscription without
sizing, and a raw device stream."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import grpc
import pytest

from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import backoffice_pb2_grpc as rpc
from signalhub.v1 import common_pb2
from signalhub.v1 import gateway_pb2 as gw
from tests.conftest import KeyCredentials, UserCredentials, rpc_failure, signed_call
from tests.gateway.support import DeviceStream

SUBMIT = "/signalhub.v1.SignalService/SubmitSignal"


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def signal_request(instrument: str = "XAUUSD") -> pb.SubmitSignalRequest:
    request = pb.SubmitSignalRequest(instrument=instrument, side=common_pb2.SIDE_BUY, entry_price="2034.15")
    request.signal_time.FromDatetime(datetime.now(UTC))
    return request


async def test_core_path_without_request_ids_and_with_a_sizing_free_manual_subscription(
    backoffice_channel: grpc.aio.Channel, gateway_channel: grpc.aio.Channel, admin: UserCredentials
) -> None:
    accounts = rpc.AccountServiceStub(backoffice_channel)
    created = await accounts.CreateUser(
        pb.CreateUserRequest(email=f"{uuid.uuid4().hex}@outside.example", role=pb.ROLE_USER), metadata=admin.metadata
    )
    other = await accounts.CreateUser(
        pb.CreateUserRequest(email=f"{uuid.uuid4().hex}@outside.example", role=pb.ROLE_USER), metadata=admin.metadata
    )
    assert created.api_token and other.user.id != created.user.id  # no request_id: two calls, two users
    trader = bearer(created.api_token)

    devices = rpc.DeviceServiceStub(backoffice_channel)
    first = await devices.RegisterDevice(pb.RegisterDeviceRequest(name="vps-1"), metadata=trader)
    second = await devices.RegisterDevice(pb.RegisterDeviceRequest(name="vps-1"), metadata=trader)
    assert first.device.id != second.device.id and first.secret.startswith("shs_")

    made = await accounts.CreateProducer(pb.CreateProducerRequest(name="outside"), metadata=admin.metadata)
    producer = KeyCredentials(uuid.UUID(made.producer.id), made.secret)

    approvals = rpc.ApprovalServiceStub(backoffice_channel)
    subscription = await approvals.Subscribe(
        pb.SubscribeRequest(producer_id=made.producer.id, mode=pb.SUBSCRIPTION_MODE_MANUAL), metadata=trader
    )
    assert subscription.sizing == pb.SIZING_MODE_UNSPECIFIED and subscription.sizing_value == ""

    device = KeyCredentials(uuid.UUID(first.device.id), first.secret)
    bridge = DeviceStream(gateway_channel, device)
    try:
        await bridge.hello()
        signal = await signed_call(backoffice_channel, producer, SUBMIT, signal_request(), pb.Signal)
        again = await signed_call(backoffice_channel, producer, SUBMIT, signal_request(), pb.Signal)
        assert signal.id != again.id and signal.request_id == ""  # not idempotent without a request_id

        pending = await approvals.ListPendingApprovals(pb.ListPendingApprovalsRequest(), metadata=trader)
        assert {a.signal_id for a in pending.approvals} == {signal.id, again.id}

        # No sizing rule and no volume: refused, naming what is missing, and nothing changes.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await approvals.ApproveSignal(pb.ApproveSignalRequest(signal_id=signal.id), metadata=trader)
        failure = rpc_failure(refused.value)
        assert failure.code == grpc.StatusCode.FAILED_PRECONDITION and failure.reason == "VOLUME_REQUIRED"
        assert failure.metadata["field"] == "volume"
        still = await approvals.ListPendingApprovals(pb.ListPendingApprovalsRequest(), metadata=trader)
        assert signal.id in {a.signal_id for a in still.approvals}

        approval = await approvals.ApproveSignal(
            pb.ApproveSignalRequest(signal_id=signal.id, volume="0.20", device_ids=[first.device.id]), metadata=trader
        )
        assert approval.status == pb.APPROVAL_STATUS_APPROVED

        delivery = await bridge.delivery()
        assert delivery.signal_id == signal.id and delivery.volume == "0.20"
        for stage in (gw.ACK_STAGE_RECEIVED, gw.ACK_STAGE_PLACED):
            receipt = await bridge.receipt(bridge.ack(delivery.delivery_id, stage))
            assert receipt.status == gw.RECEIPT_STATUS_ACCEPTED
        receipt = await bridge.receipt(bridge.fill(delivery.delivery_id, price="2034.20", volume="0.20"))
        assert receipt.status == gw.RECEIPT_STATUS_ACCEPTED
    finally:
        await bridge.close()

    execution = await rpc.ExecutionServiceStub(backoffice_channel).GetSignalExecution(
        pb.GetSignalExecutionRequest(signal_id=signal.id), metadata=trader
    )
    assert [d.state for d in execution.devices] == [pb.DELIVERY_STATE_FILLED]


async def test_auto_subscription_without_sizing_trades_one_micro_lot(
    backoffice_channel: grpc.aio.Channel, user: UserCredentials, producer: KeyCredentials
) -> None:
    subscription = await rpc.ApprovalServiceStub(backoffice_channel).Subscribe(
        pb.SubscribeRequest(producer_id=str(producer.id), mode=pb.SUBSCRIPTION_MODE_AUTO), metadata=user.metadata
    )
    assert subscription.sizing == pb.SIZING_MODE_FIXED_VOLUME and subscription.sizing_value == "0.01"


@pytest.mark.parametrize(
    ("sizing", "value", "bad"),
    [(pb.SIZING_MODE_FIXED_VOLUME, "", "sizing_value"), (pb.SIZING_MODE_UNSPECIFIED, "0.10", "sizing")],
)
async def test_sizing_and_its_value_come_together(
    backoffice_channel: grpc.aio.Channel,
    user: UserCredentials,
    producer: KeyCredentials,
    sizing: pb.SizingMode.ValueType,
    value: str,
    bad: str,
) -> None:
    request = pb.SubscribeRequest(
        producer_id=str(producer.id), mode=pb.SUBSCRIPTION_MODE_MANUAL, sizing=sizing, sizing_value=value
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await rpc.ApprovalServiceStub(backoffice_channel).Subscribe(request, metadata=user.metadata)
    failure = rpc_failure(info.value)
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT and bad in failure.violations
