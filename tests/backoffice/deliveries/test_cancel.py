"""Cancelling a signal whose deliveries are on their way: nothing is sent again, and a fill that still
comes (the bridge had placed the order) is recorded; when the cancel asked for positions to be closed,
its position is closed at once with SIGNAL_CANCELLED, otherwise it stays open."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select, update

from backoffice import deliveries, signals
from backoffice.bootstrap import Resources
from backoffice.deliveries import ClaimRequest, DeviceReport, FillReport, Verdict
from backoffice.models import (
    ActorType,
    CloseCommand,
    CloseCommandStatus,
    CloseReason,
    Delivery,
    DeliveryState,
    Position,
    PositionStatus,
)
from backoffice.platform.auth import Caller
from signalhub.v1 import common_pb2
from signalhub.v1 import gateway_pb2 as pb
from tests.conftest import KeyCredentials, UserCredentials
from tests.gateway.support import Book, gateway, row, stream

ACK_TIMEOUT = timedelta(seconds=10)
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


@pytest.fixture
async def book(res: Resources, user: UserCredentials) -> Book:
    return await Book.open(res, user.id)


async def _sent_long_ago(res: Resources, book: Book, device: KeyCredentials, state: DeliveryState) -> uuid.UUID:
    """A delivery sent on an earlier stream, past its ack timeout: due to be sent again."""
    delivery_id = await book.delivery(device.id, state=state)
    async with res.sessions.begin() as session:
        await session.execute(
            update(Delivery).where(Delivery.id == delivery_id).values(sent_at=datetime.now(UTC) - timedelta(minutes=5))
        )
    return delivery_id


async def _cancel(res: Resources, book: Book, delivery_id: uuid.UUID, *, close_positions: bool = True) -> None:
    signal_id = (await row(res, Delivery, delivery_id)).signal_id
    producer = Caller(ActorType.PRODUCER, book.producer_id)
    async with res.sessions.begin() as session:
        await signals.cancel(
            session,
            producer,
            signal_id,
            reason="changed my mind",
            request_id=str(uuid.uuid4()),
            close_positions=close_positions,
        )


async def _claim(res: Resources, device: KeyCredentials) -> list[deliveries.Order]:
    claimed = await deliveries.claim(
        res.sessions, [ClaimRequest(device.id, 10, LONG_AGO)], datetime.now(UTC), ACK_TIMEOUT
    )
    return claimed.orders.get(device.id, [])


async def _fill(res: Resources, device: KeyCredentials, delivery_id: uuid.UUID) -> Verdict:
    report = FillReport(delivery_id, "T-9", Decimal("2034.30"), Decimal("0.10"), datetime.now(UTC))
    async with res.sessions.begin() as session:
        [outcome] = (
            await deliveries.record_reports(
                session, [DeviceReport(device.id, uuid.uuid4().hex, report)], datetime.now(UTC)
            )
        ).outcomes
    return outcome.verdict


async def _position_and_commands(res: Resources, delivery_id: uuid.UUID) -> tuple[Position, list[CloseCommand]]:
    async with res.sessions() as session:
        position = await session.scalar(select(Position).where(Position.delivery_id == delivery_id))
        assert position is not None
        commands = list(await session.scalars(select(CloseCommand).where(CloseCommand.position_id == position.id)))
    return position, commands


async def test_a_sent_delivery_is_not_sent_again_after_the_cancel(
    res: Resources, device: KeyCredentials, book: Book
) -> None:
    delivery_id = await _sent_long_ago(res, book, device, DeliveryState.SENT)
    await _cancel(res, book, delivery_id)
    assert await _claim(res, device) == []
    stored = await row(res, Delivery, delivery_id)
    assert (stored.state, stored.state_reason) == (DeliveryState.CANCELLED, "signal cancelled")
    async with res.sessions() as session:
        assert device.id not in await deliveries.due_devices(session, datetime.now(UTC), ACK_TIMEOUT)


@pytest.mark.parametrize("state", [DeliveryState.SENT, DeliveryState.RECEIVED, DeliveryState.PLACED])
async def test_a_late_fill_is_recorded_and_its_position_closed_with_signal_cancelled(
    res: Resources, device: KeyCredentials, book: Book, state: DeliveryState
) -> None:
    delivery_id = await _sent_long_ago(res, book, device, state)
    await _cancel(res, book, delivery_id)
    assert await _fill(res, device, delivery_id) is Verdict.ACCEPTED
    assert (await row(res, Delivery, delivery_id)).state is DeliveryState.FILLED
    position, [command] = await _position_and_commands(res, delivery_id)
    assert (position.status, position.volume, position.broker_ticket) == (
        PositionStatus.CLOSING,
        Decimal("0.10"),
        "T-9",
    )
    assert (command.reason, command.status, command.volume, command.device_id) == (
        CloseReason.SIGNAL_CANCELLED,
        CloseCommandStatus.PENDING,
        Decimal("0.10"),
        device.id,
    )
    [order] = await _claim(res, device)
    assert isinstance(order, deliveries.CloseOrder) and order.id == command.id and order.broker_ticket == "T-9"


async def test_without_close_positions_a_late_fill_stays_open_until_asked(
    res: Resources, device: KeyCredentials, book: Book
) -> None:
    """A cancel without close_positions leaves the trade alone; cancelling again with it closes it."""
    delivery_id = await _sent_long_ago(res, book, device, DeliveryState.PLACED)
    await _cancel(res, book, delivery_id, close_positions=False)
    assert await _fill(res, device, delivery_id) is Verdict.ACCEPTED
    position, commands = await _position_and_commands(res, delivery_id)
    assert (position.status, commands) == (PositionStatus.OPEN, [])
    await _cancel(res, book, delivery_id, close_positions=True)
    position, [command] = await _position_and_commands(res, delivery_id)
    assert (position.status, command.reason) == (PositionStatus.CLOSING, CloseReason.SIGNAL_CANCELLED)


async def test_a_delivery_cancelled_before_it_was_sent_still_refuses_a_fill(
    res: Resources, device: KeyCredentials, book: Book
) -> None:
    delivery_id = await book.delivery(device.id)  # PENDING, never sent
    await _cancel(res, book, delivery_id)
    assert await _fill(res, device, delivery_id) is Verdict.REJECTED
    assert (await row(res, Delivery, delivery_id)).state is DeliveryState.CANCELLED


async def test_through_the_gateway_no_resend_then_the_fill_brings_a_close_order(
    res: Resources, device: KeyCredentials, book: Book
) -> None:
    """The device got the delivery but its RECEIVED ack was lost; the producer cancels; the gateway does
    not send the delivery again after the ack timeout; the device's fill is ACCEPTED and the close order
    for the position it opened follows."""
    delivery_id = await book.delivery(device.id)
    fast = {"ack_timeout_seconds": 0.3, "sweep_interval_seconds": 0.1}
    async with gateway(res, **fast) as (_, channel), stream(channel, device) as device_stream:
        assert (await device_stream.delivery()).delivery_id == str(delivery_id)
        await _cancel(res, book, delivery_id)
        await device_stream.nothing(1.0)  # more than three ack timeouts
        receipt = await device_stream.receipt(device_stream.fill(delivery_id, ticket="T-42"))
        assert receipt.status == pb.RECEIPT_STATUS_ACCEPTED
        close = (await device_stream.instruction()).close
    assert close.broker_ticket == "T-42" and close.reason == common_pb2.CLOSE_REASON_SIGNAL_CANCELLED
    position, [command] = await _position_and_commands(res, delivery_id)
    assert position.status is PositionStatus.CLOSING and close.command_id == str(command.id)
    assert (await row(res, Delivery, delivery_id)).state is DeliveryState.FILLED
