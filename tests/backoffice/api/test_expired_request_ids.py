"""A retry whose idempotency record the worker has purged: the unique request_id of the object it made
still refuses a second one, and the client hears ALREADY_EXISTS (never INTERNAL)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from sqlalchemy import func, select, update

from backoffice import worker
from backoffice.bootstrap import Resources
from backoffice.models import Device, IdempotencyRecord, Signal
from signalhub.protocol import signing
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import backoffice_pb2_grpc as rpc
from tests.backoffice.api.test_signals import signal_request
from tests.conftest import KeyCredentials, UserCredentials, rpc_failure

SUBMIT_SIGNAL = "/signalhub.v1.SignalService/SubmitSignal"


async def purge_record(res: Resources, request_id: str) -> None:
    """Age the request's idempotency record past retention and let the worker purge it."""
    async with res.sessions.begin() as session:
        await session.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.request_id == uuid.UUID(request_id))
            .values(created_at=datetime.now(UTC) - worker.IDEMPOTENCY_RETENTION - timedelta(minutes=1))
        )
    await worker.run_once(res)
    async with res.sessions() as session:
        left = await session.scalar(select(func.count()).where(IdempotencyRecord.request_id == uuid.UUID(request_id)))
    assert left == 0


def assert_request_id_reused(error: grpc.aio.AioRpcError) -> None:
    failure = rpc_failure(error)
    assert failure.code == grpc.StatusCode.ALREADY_EXISTS
    assert (failure.reason, failure.domain) == ("REQUEST_ID_REUSED", "signalhub.v1")
    assert "expired" in (error.details() or "")


async def test_submit_signal_retried_after_its_record_expired(
    backoffice_channel: grpc.aio.Channel, res: Resources, producer: KeyCredentials
) -> None:
    stub = rpc.SignalServiceStub(backoffice_channel)
    request = signal_request()

    def signed() -> tuple[tuple[str, str], ...]:
        body = request.SerializeToString()
        return signing.signed_metadata(signing.parse_secret(producer.secret), SUBMIT_SIGNAL, str(producer.id), body)

    await stub.SubmitSignal(request, metadata=signed(), timeout=10)
    await purge_record(res, request.request_id)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SubmitSignal(request, metadata=signed(), timeout=10)
    assert_request_id_reused(info.value)
    async with res.sessions() as session:
        assert await session.scalar(select(func.count()).where(Signal.producer_id == producer.id)) == 1


async def test_register_device_retried_after_its_record_expired(
    backoffice_channel: grpc.aio.Channel, res: Resources, user: UserCredentials
) -> None:
    stub = rpc.DeviceServiceStub(backoffice_channel)
    request = pb.RegisterDeviceRequest(request_id=str(uuid.uuid4()), name="terminal")
    await stub.RegisterDevice(request, metadata=user.metadata, timeout=10)
    await purge_record(res, request.request_id)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.RegisterDevice(request, metadata=user.metadata, timeout=10)
    assert_request_id_reused(info.value)
    async with res.sessions() as session:
        assert await session.scalar(select(func.count()).where(Device.user_id == user.id)) == 1
