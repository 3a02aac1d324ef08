"""Close commands on the device stream: re-sent until a CloseResult arrives, a bounded number of times;
then EXPIRED, the position CLOSED_ERROR with one alert; a result arriving later still closes it (and the
alert is resolved). A failure the device reports raises one alert too."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import grpc
import pytest
from sqlalchemy import select

from backoffice.bootstrap import Resources
from backoffice.models import (
    AlertKind,
    AuditEvent,
    CloseCommand,
    CloseCommandStatus,
    Position,
    PositionEventKind,
    PositionStatus,
)
from signalhub.v1 import backoffice_pb2 as bpb
from signalhub.v1 import backoffice_pb2_grpc as brpc
from signalhub.v1 import gateway_pb2 as pb
from tests.backoffice.monitor.support import position_events
from tests.conftest import KeyCredentials, UserCredentials
from tests.gateway.support import Book, eventually, gateway, row, stream


@pytest.fixture
async def book(res: Resources, user: UserCredentials) -> Book:
    return await Book.open(res, user.id)


@pytest.fixture
async def closing(
    backoffice_channel: grpc.aio.Channel, user: UserCredentials, device: KeyCredentials, book: Book
) -> tuple[uuid.UUID, str]:
    """A position of 0.30 lots its owner asked to close: its id and the close command's."""
    position_id = await book.position(device.id, volume="0.30")
    command = await brpc.PositionServiceStub(backoffice_channel).ClosePosition(
        bpb.ClosePositionRequest(id=str(position_id)), metadata=user.metadata
    )
    return position_id, command.id


async def _alerts(channel: grpc.aio.Channel, admin: UserCredentials, device_id: uuid.UUID) -> list[bpb.Alert]:
    listed = await brpc.AuditServiceStub(channel).ListAlerts(
        bpb.ListAlertsRequest(device_id=str(device_id), kind=bpb.ALERT_KIND_CLOSE_FAILED), metadata=admin.metadata
    )
    return list(listed.alerts)


async def test_a_close_order_is_sent_again_a_bounded_number_of_times_then_expires(
    res: Resources,
    backoffice_channel: grpc.aio.Channel,
    admin: UserCredentials,
    device: KeyCredentials,
    closing: tuple[uuid.UUID, str],
) -> None:
    """Unanswered, a close order is sent three times (the bound here); a device still on that stream after
    the time a bridge takes to leave a silent gateway (4 heartbeats and 5 s) received them, and answered
    nothing: the command is EXPIRED with the position CLOSED_ERROR, an event and an open alert (a device
    gone quiet has proved nothing, and waits). The device's late success still closes it and resolves the
    alert."""
    position_id, command_id = closing
    fast = {"ack_timeout_seconds": 0.3, "sweep_interval_seconds": 0.1, "close_max_attempts": 3, "heartbeat_seconds": 1}
    async with gateway(res, **fast) as (_, channel), stream(channel, device) as device_stream:
        sent = [(await device_stream.instruction()).close for _ in range(3)]  # no answer: sent again twice
        assert {c.command_id for c in sent} == {command_id}
        await asyncio.sleep(1.0)  # quiet for over three ack timeouts: the stream may be dead, so it waits
        assert await _status(res, command_id, CloseCommandStatus.SENT)

        async def alive_and_expired() -> bool:
            beat = device_stream.heartbeat()
            assert (await device_stream.receipt(beat)).status == pb.RECEIPT_STATUS_ACCEPTED
            return await _status(res, command_id, CloseCommandStatus.EXPIRED)

        await eventually(alive_and_expired, "the command to expire after 3 sends to a device heard from", 30)
        await device_stream.nothing(0.8)  # never a fourth send
        position = await row(res, Position, position_id)
        assert position.status is PositionStatus.CLOSED_ERROR
        [alert] = await _alerts(backoffice_channel, admin, device.id)
        assert (alert.status, alert.position_id, alert.close_command_id) == (
            bpb.ALERT_STATUS_OPEN,
            str(position_id),
            command_id,
        )
        [failed] = await position_events(res, position_id, PositionEventKind.CLOSE_FAILED)
        assert failed.detail == "no CloseResult after 3 sends"
        # The device answers at last: the broker did close it. Its word wins.
        late = device_stream.close_result(command_id, success=True, price="2040.25")
        assert (await device_stream.receipt(late)).status == pb.RECEIPT_STATUS_ACCEPTED
    position = await row(res, Position, position_id)
    assert (position.status, position.close_price, position.closed_volume) == (
        PositionStatus.CLOSED,
        Decimal("2040.25"),
        Decimal("0.30"),
    )
    assert position.profit == Decimal(180)  # (2040.25 - 2034.25) x 0.30 lots / 0.01 x 1 USD
    assert position.price_profit == Decimal("6.00")
    [alert] = await _alerts(backoffice_channel, admin, device.id)
    assert alert.status == bpb.ALERT_STATUS_RESOLVED and alert.HasField("resolve_time")


async def test_sends_into_streams_that_die_never_use_up_a_close_orders_budget(
    res: Resources, device: KeyCredentials, closing: tuple[uuid.UUID, str]
) -> None:
    """The bound counts sends on one stream: a close order sent on streams that die before answering is
    sent again on the next one, never EXPIRED while the device is away, and closes when it is answered."""
    position_id, command_id = closing
    fast = {"ack_timeout_seconds": 0.3, "sweep_interval_seconds": 0.1, "close_max_attempts": 2}
    async with gateway(res, **fast) as (_, channel):
        for _ in range(4):  # twice the bound, each on a stream that dies unanswered
            async with stream(channel, device) as dying:
                assert (await dying.instruction()).close.command_id == command_id
            command = await row(res, CloseCommand, uuid.UUID(command_id))
            assert (command.status, command.attempt) == (CloseCommandStatus.SENT, 1)
        await asyncio.sleep(1.0)  # offline for over three ack timeouts: nothing to expire it
        assert await _status(res, command_id, CloseCommandStatus.SENT)
        async with stream(channel, device) as device_stream:
            assert (await device_stream.instruction()).close.command_id == command_id
            done = device_stream.close_result(command_id, success=True, price="2040.25")
            assert (await device_stream.receipt(done)).status == pb.RECEIPT_STATUS_ACCEPTED
    assert (await row(res, Position, position_id)).status is PositionStatus.CLOSED


async def _status(res: Resources, command_id: str, status: CloseCommandStatus) -> bool:
    return (await row(res, CloseCommand, uuid.UUID(command_id))).status is status


async def test_a_failed_close_raises_one_alert(
    res: Resources,
    backoffice_channel: grpc.aio.Channel,
    admin: UserCredentials,
    device: KeyCredentials,
    closing: tuple[uuid.UUID, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failure from the device makes the position CLOSED_ERROR and raises one alert (with its audit
    event and one log line), however often the same result is reported."""
    position_id, command_id = closing
    async with gateway(res) as (_, channel), stream(channel, device) as device_stream:
        await device_stream.instruction()
        failed = device_stream.close_result(command_id, success=False)
        assert (await device_stream.receipt(failed)).status == pb.RECEIPT_STATUS_ACCEPTED
        again = pb.DeviceFrame(frame_id=device_stream.frame_id(), close_result=failed.close_result)
        assert (await device_stream.receipt(again)).status == pb.RECEIPT_STATUS_DUPLICATE
    assert (await row(res, Position, position_id)).status is PositionStatus.CLOSED_ERROR
    [alert] = await _alerts(backoffice_channel, admin, device.id)
    assert alert.kind == bpb.ALERT_KIND_CLOSE_FAILED and "market closed" in alert.message
    async with res.sessions() as session:
        audited = list(
            await session.scalars(
                select(AuditEvent).where(
                    AuditEvent.action == "alert.raise", AuditEvent.object_id == uuid.UUID(alert.id)
                )
            )
        )
    assert [a.details["kind"] for a in audited] == [AlertKind.CLOSE_FAILED.value]
    logged = [r for r in caplog.records if r.getMessage() == "alert raised" and r.__dict__.get("alert_id") == alert.id]
    assert len(logged) == 1
