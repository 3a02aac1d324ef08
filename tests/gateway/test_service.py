"""Opening a device stream: the signed open, the Hello that must come first, and the Welcome."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import grpc
from sqlalchemy import select, update

from backoffice.bootstrap import Resources
from backoffice.models import AuditEvent, Device, DeviceStatus, EventKind
from signalhub.v1 import gateway_pb2 as pb
from tests.conftest import GOLD_SPEC, KeyCredentials
from tests.gateway.support import HELLO, DeviceStream, events, gateway, row, signed, stream


async def _refused(channel: grpc.aio.Channel, device: KeyCredentials, metadata: tuple[tuple[str, str], ...]) -> str:
    opened = DeviceStream(channel, device, metadata=metadata)
    await opened.send(pb.DeviceFrame(frame_id="h1", hello=HELLO))
    failure = await opened.failure()
    assert failure.code == grpc.StatusCode.UNAUTHENTICATED
    assert failure.domain == "signalhub.v1"
    return failure.reason


async def _set_status(res: Resources, device: KeyCredentials, status: DeviceStatus) -> None:
    async with res.sessions.begin() as session:
        await session.execute(
            update(Device)
            .where(Device.id == device.id)
            .values(status=status, revoked_at=datetime.now(UTC) if status is DeviceStatus.REVOKED else None)
        )


async def test_signature_failures_give_the_contract_reasons(
    gateway_channel: grpc.aio.Channel, device: KeyCredentials
) -> None:
    assert await _refused(gateway_channel, device, ()) == "SIGNATURE_MISSING"
    assert await _refused(gateway_channel, device, signed(device, bytes(32))) == "SIGNATURE_INVALID"
    skewed = signed(device, timestamp=int(time.time()) + 301)
    assert await _refused(gateway_channel, device, skewed) == "TIMESTAMP_SKEW"


async def test_a_replayed_open_is_refused(gateway_channel: grpc.aio.Channel, device: KeyCredentials) -> None:
    metadata = signed(device)
    async with stream(gateway_channel, device, metadata=metadata) as first:
        assert first.welcome is not None
    assert await _refused(gateway_channel, device, metadata) == "NONCE_REPLAYED"


async def test_a_revoked_device_cannot_open(
    gateway_channel: grpc.aio.Channel, res: Resources, device: KeyCredentials
) -> None:
    await _set_status(res, device, DeviceStatus.REVOKED)
    assert await _refused(gateway_channel, device, signed(device)) == "KEY_REVOKED"


async def test_hello_is_stored_and_answered_with_a_welcome(
    gateway_channel: grpc.aio.Channel, res: Resources, device: KeyCredentials
) -> None:
    before = datetime.now(UTC)
    opened = DeviceStream(gateway_channel, device)
    try:
        welcome = await opened.hello(frame_id="hello-frame")
    finally:
        await opened.close()
    assert welcome.device_id == str(device.id)
    assert len(welcome.session_id) == 36
    assert welcome.heartbeat_seconds == res.settings.heartbeat_seconds
    assert abs(welcome.server_time.ToDatetime(tzinfo=UTC) - datetime.now(UTC)) < timedelta(seconds=5)
    stored = await row(res, Device, device.id)
    # Exactly the shape the back office's sizing reads.
    assert stored.last_hello == {
        "bridge_version": "test-1.0",
        "account_currency": "USD",
        "balance": "10000.00",
        "equity": "10050.50",
        "symbols": {"GOLD.m": GOLD_SPEC},
    }
    assert stored.last_hello_at >= before and stored.last_seen_at >= before
    [hello] = await events(res, device.id, kind=EventKind.HELLO)
    assert hello.frame_id == "hello-frame" and hello.body["balance"] == "10000.00"


async def test_an_inactive_device_is_reactivated(
    gateway_channel: grpc.aio.Channel, res: Resources, device: KeyCredentials
) -> None:
    await _set_status(res, device, DeviceStatus.INACTIVE)
    async with stream(gateway_channel, device):
        pass
    assert (await row(res, Device, device.id)).status is DeviceStatus.ACTIVE
    async with res.sessions() as session:
        actions = await session.scalars(select(AuditEvent.action).where(AuditEvent.object_id == device.id))
        assert "device.reactivate" in set(actions)


async def test_the_first_frame_must_be_a_hello(gateway_channel: grpc.aio.Channel, device: KeyCredentials) -> None:
    opened = DeviceStream(gateway_channel, device)
    await opened.send(opened.heartbeat())
    failure = await opened.failure()
    assert (failure.code, failure.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "HELLO_REQUIRED")


async def test_no_hello_in_time_ends_the_stream(res: Resources, device: KeyCredentials) -> None:
    async with gateway(res, hello_timeout_seconds=0.3) as (_, channel):
        opened = DeviceStream(channel, device)
        failure = await opened.failure()
    assert (failure.code, failure.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "HELLO_TIMEOUT")


async def test_a_malformed_hello_names_its_bad_fields(
    gateway_channel: grpc.aio.Channel, res: Resources, device: KeyCredentials
) -> None:
    bad = pb.Hello(account_currency="dollars", balance="lots", symbols=[pb.SymbolSpec(name="GOLD m", tick_size="-1")])
    opened = DeviceStream(gateway_channel, device)
    await opened.send(pb.DeviceFrame(frame_id="h1", hello=bad))
    failure = await opened.failure()
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert {"hello.account_currency", "hello.balance", "hello.symbols[0].name", "hello.symbols[0].tick_size"} <= set(
        failure.violations
    )
    assert (await row(res, Device, device.id)).last_hello is None


async def test_a_stream_takes_one_hello(
    gateway_channel: grpc.aio.Channel, res: Resources, device: KeyCredentials
) -> None:
    """A second Hello mid-stream is refused and changes nothing (each would rewrite the device's record);
    the first Hello's frame again is a DUPLICATE."""
    opened = DeviceStream(gateway_channel, device)
    try:
        first_id = "the-hello"
        await opened.hello(frame_id=first_id)
        richer = pb.Hello(bridge_version="x", account_currency="USD", balance="99999999", equity="99999999")
        second = await opened.receipt(pb.DeviceFrame(frame_id=opened.frame_id(), hello=richer))
        assert second.status == pb.RECEIPT_STATUS_REJECTED and "HELLO_ALREADY_SENT" in str(second.error)
        again = await opened.receipt(pb.DeviceFrame(frame_id=first_id, hello=HELLO))
        assert again.status == pb.RECEIPT_STATUS_DUPLICATE
    finally:
        await opened.close()
    stored = await row(res, Device, device.id)
    assert stored.last_hello is not None and stored.last_hello["balance"] == "10000.00"
    assert len(await events(res, device.id, kind=EventKind.HELLO)) == 1


async def test_a_hello_of_half_a_million_empty_symbols_is_refused_unread(
    gateway_channel: grpc.aio.Channel, res: Resources, device: KeyCredentials
) -> None:
    """About 1 MB of empty SymbolSpecs: refused by its count before any spec is read."""
    huge = pb.Hello(bridge_version="x", symbols=[pb.SymbolSpec()] * 500_000)
    opened = DeviceStream(gateway_channel, device)
    await opened.send(pb.DeviceFrame(frame_id="h1", hello=huge))
    failure = await opened.failure()
    assert (failure.code, failure.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "TOO_MANY_SYMBOLS")
    assert "hello.symbols" in failure.violations
    assert (await row(res, Device, device.id)).last_hello is None
