"""What devices send: each frame persisted (as an immutable execution event, with its state change)
before its Receipt; duplicates change nothing; frames about other devices' objects, unknown ids or
impossible transitions are refused while the stream stays up; too many frames end the stream."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from sqlalchemy import select

from backoffice import deliveries
from backoffice.bootstrap import Resources
from backoffice.deliveries import AckReport, DeviceReport
from backoffice.models import (
    ActorType,
    CloseCommand,
    CloseCommandStatus,
    Delivery,
    DeliveryState,
    EventKind,
    Position,
    PositionStatus,
    Quote,
)
from gateway.uplink import UplinkWriter
from signalhub.v1 import common_pb2
from signalhub.v1 import gateway_pb2 as pb
from tests.conftest import GOLD_SPEC, KeyCredentials, UserCredentials, make_device
from tests.gateway.support import HELLO, Book, DeviceStream, count_events, events, gateway, row, stream

ACCEPTED, DUPLICATE, REJECTED = pb.RECEIPT_STATUS_ACCEPTED, pb.RECEIPT_STATUS_DUPLICATE, pb.RECEIPT_STATUS_REJECTED
QUIET = {"sweep_interval_seconds": 60.0, "ack_timeout_seconds": 60.0}


@pytest.fixture
async def book(res: Resources, user: UserCredentials) -> Book:
    return await Book.open(res, user.id)


@pytest.fixture
async def channel(res: Resources) -> AsyncIterator[grpc.aio.Channel]:
    async with gateway(res, **QUIET) as (_, gateway_channel):
        yield gateway_channel


@contextlib.asynccontextmanager
async def delivered(
    channel: grpc.aio.Channel, device: KeyCredentials, book: Book, **delivery: Any
) -> AsyncIterator[tuple[uuid.UUID, DeviceStream]]:
    """A delivery booked for ``device`` (``delivery``: Book.delivery's options), and the device's stream
    on which it has arrived."""
    delivery_id = await book.delivery(device.id, **delivery)
    async with stream(channel, device) as device_stream:
        await device_stream.delivery()
        yield delivery_id, device_stream


def reason_of(receipt: pb.Receipt) -> str:
    for detail in receipt.error.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    raise AssertionError(f"no ErrorInfo in {receipt}")


async def test_acks_and_a_fill_are_persisted_before_their_receipts(
    res: Resources, channel: grpc.aio.Channel, device: KeyCredentials, book: Book
) -> None:
    levels = {"stop_loss": "2030.55", "take_profit": "2040.77"}  # hidden: the Position keeps them
    async with delivered(channel, device, book, **levels) as (delivery_id, device_stream):
        received = device_stream.ack(delivery_id, pb.ACK_STAGE_RECEIVED)
        assert (await device_stream.receipt(received)).status == ACCEPTED
        # The receipt came after the commit: the state is already visible to anyone.
        assert (await row(res, Delivery, delivery_id)).state is DeliveryState.RECEIVED
        assert (await device_stream.receipt(device_stream.ack(delivery_id, pb.ACK_STAGE_PLACED))).status == ACCEPTED
        assert (await row(res, Delivery, delivery_id)).state is DeliveryState.PLACED
        fill = device_stream.fill(delivery_id, price="2034.35", volume="0.10", ticket="T-9")
        assert (await device_stream.receipt(fill)).status == ACCEPTED
        assert (await row(res, Delivery, delivery_id)).state is DeliveryState.FILLED
    acks = await events(res, device.id, kind=EventKind.ACK, delivery_id=delivery_id)
    assert [(e.stage, e.frame_id) for e in acks] == [("RECEIVED", received.frame_id), ("PLACED", acks[1].frame_id)]
    assert acks[0].body == {"attempt": 1}
    [filled] = await events(res, device.id, kind=EventKind.FILL)
    assert filled.stage == "FILLED" and filled.frame_id == fill.frame_id
    assert filled.body == {"price": "2034.35", "volume": "0.10", "broker_ticket": "T-9", "attempt": 1}
    assert filled.event_time == fill.fill.fill_time.ToDatetime(tzinfo=UTC)
    async with res.sessions() as session:
        position = await session.scalar(select(Position).where(Position.delivery_id == delivery_id))
    assert position is not None
    assert position.status is PositionStatus.OPEN
    assert (position.entry_price, position.volume, position.broker_ticket) == (
        Decimal("2034.35"),
        Decimal("0.10"),
        "T-9",
    )
    # The hidden levels come from the signal and stay on the server.
    assert (position.stop_loss, position.take_profit) == (Decimal("2030.55"), Decimal("2040.77"))


async def test_a_rejection_is_recorded_with_its_reason(
    res: Resources, channel: grpc.aio.Channel, device: KeyCredentials, book: Book
) -> None:
    async with delivered(channel, device, book) as (delivery_id, device_stream):
        frame = device_stream.ack(delivery_id, pb.ACK_STAGE_REJECTED, reason="max_deviation")
        assert (await device_stream.receipt(frame)).status == ACCEPTED
        # A fill after a rejection is a conflict: refused, and the stream stays up.
        refused = await device_stream.receipt(device_stream.fill(delivery_id))
        assert refused.status == REJECTED and reason_of(refused) == "INVALID_TRANSITION"
        assert refused.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert (await device_stream.receipt(device_stream.heartbeat())).status == ACCEPTED
    stored = await row(res, Delivery, delivery_id)
    assert (stored.state, stored.state_reason) == (DeliveryState.REJECTED, "max_deviation")
    [event] = await events(res, device.id, kind=EventKind.ACK)
    assert (event.stage, event.body["reason"]) == ("REJECTED", "max_deviation")
    assert await events(res, device.id, kind=EventKind.FILL) == []


async def test_a_close_result_closes_the_position(
    res: Resources, channel: grpc.aio.Channel, device: KeyCredentials, book: Book
) -> None:
    position_id = await book.position(device.id, volume="0.10")
    command_id = await book.close_command(device.id, position_id)
    async with stream(channel, device) as device_stream:
        assert (await device_stream.instruction()).close.command_id == str(command_id)
        frame = device_stream.close_result(command_id, price="2040.25")
        assert (await device_stream.receipt(frame)).status == ACCEPTED
    command = await row(res, CloseCommand, command_id)
    assert (command.status, command.close_price, command.closed_volume) == (
        CloseCommandStatus.SUCCEEDED,
        Decimal("2040.25"),
        Decimal("0.10"),
    )
    position = await row(res, Position, position_id)
    assert (position.status, position.close_price) == (PositionStatus.CLOSED, Decimal("2040.25"))
    assert position.closed_at is not None
    # (2040.25 - 2034.25) * 0.10 lots / tick 0.01 * tick value 1 (from the Hello)
    assert position.profit == Decimal("60")
    [event] = await events(res, device.id, kind=EventKind.CLOSE_RESULT)
    assert (event.close_command_id, event.stage, event.body) == (
        command_id,
        "SUCCEEDED",
        {"price": "2040.25", "volume": "0.10"},
    )


async def test_a_failed_close_marks_the_position_closed_error(
    res: Resources, channel: grpc.aio.Channel, device: KeyCredentials, book: Book
) -> None:
    position_id = await book.position(device.id)
    command_id = await book.close_command(device.id, position_id)
    async with stream(channel, device) as device_stream:
        await device_stream.instruction()
        assert (await device_stream.receipt(device_stream.close_result(command_id, success=False))).status == ACCEPTED
        # The opposite outcome afterwards is a conflict; the same one again a duplicate.
        refused = await device_stream.receipt(device_stream.close_result(command_id, success=True))
        assert refused.status == REJECTED and reason_of(refused) == "INVALID_TRANSITION"
        again = await device_stream.receipt(device_stream.close_result(command_id, success=False))
        assert again.status == DUPLICATE
    command = await row(res, CloseCommand, command_id)
    assert (command.status, command.error) == (CloseCommandStatus.FAILED, "market closed")
    assert (await row(res, Position, position_id)).status is PositionStatus.CLOSED_ERROR


async def test_repeats_are_duplicates_and_change_nothing(
    res: Resources, channel: grpc.aio.Channel, device: KeyCredentials, book: Book
) -> None:
    async with delivered(channel, device, book) as (delivery_id, device_stream):
        first = device_stream.ack(delivery_id, pb.ACK_STAGE_RECEIVED, frame_id="ack-1")
        assert (await device_stream.receipt(first)).status == ACCEPTED
        before = await count_events(res, device.id)
        # The same frame_id again, even saying something else: DUPLICATE.
        same_id = device_stream.ack(delivery_id, pb.ACK_STAGE_REJECTED, frame_id="ack-1")
        assert (await device_stream.receipt(same_id)).status == DUPLICATE
        # The same stage again under a new frame_id: DUPLICATE.
        same_stage = device_stream.ack(delivery_id, pb.ACK_STAGE_RECEIVED)
        assert (await device_stream.receipt(same_stage)).status == DUPLICATE
        # A stage already passed (RECEIVED after FILLED) is a duplicate too.
        filled = device_stream.fill(delivery_id)
        await device_stream.receipt(filled)
        fills = await count_events(res, device.id)
        late = device_stream.ack(delivery_id, pb.ACK_STAGE_PLACED)
        assert (await device_stream.receipt(late)).status == DUPLICATE
        # The same fill reported again under a new frame_id (not a further, partial fill): DUPLICATE.
        again = pb.DeviceFrame(frame_id=device_stream.frame_id(), fill=filled.fill)
        assert (await device_stream.receipt(again)).status == DUPLICATE
        assert await count_events(res, device.id) == fills == before + 1
    stored = await row(res, Delivery, delivery_id)
    assert stored.state is DeliveryState.FILLED


async def test_a_flood_of_duplicates_changes_nothing(res: Resources, device: KeyCredentials, book: Book) -> None:
    delivery_id = await book.delivery(device.id)
    settings = {"device_frame_rate": 2000, "device_frame_burst": 2000, **QUIET}
    async with gateway(res, **settings) as (_, channel), stream(channel, device) as device_stream:
        await device_stream.delivery()
        frame = device_stream.ack(delivery_id, pb.ACK_STAGE_RECEIVED, frame_id="once")
        assert (await device_stream.receipt(frame)).status == ACCEPTED
        before = await count_events(res, device.id)
        flood = [frame] * 300 + [device_stream.ack(delivery_id, pb.ACK_STAGE_RECEIVED) for _ in range(100)]
        for each in flood:
            await device_stream.send(each)
        statuses = [(await device_stream.next()).receipt.status for _ in flood]
    assert set(statuses) == {DUPLICATE}
    assert await count_events(res, device.id) == before
    assert (await row(res, Delivery, delivery_id)).state is DeliveryState.RECEIVED


async def test_another_devices_objects_and_unknown_ids_are_refused(
    res: Resources, channel: grpc.aio.Channel, device: KeyCredentials, user: UserCredentials, book: Book
) -> None:
    other = await make_device(res, user)
    theirs = await book.delivery(other.id)
    their_position = await book.position(other.id)
    their_command = await book.close_command(other.id, their_position)
    async with stream(channel, device) as device_stream:
        for frame in (
            device_stream.ack(theirs, pb.ACK_STAGE_RECEIVED),
            device_stream.fill(theirs),
            device_stream.close_result(their_command),
            device_stream.ack(uuid.uuid4(), pb.ACK_STAGE_RECEIVED),
            device_stream.fill(uuid.uuid4()),
            device_stream.close_result(uuid.uuid4()),
        ):
            receipt = await device_stream.receipt(frame)
            # Another device's object is indistinguishable from one that does not exist.
            assert (receipt.status, reason_of(receipt)) == (REJECTED, "NOT_FOUND"), frame
            assert receipt.error.code == grpc.StatusCode.NOT_FOUND.value[0]
        assert (await device_stream.receipt(device_stream.heartbeat())).status == ACCEPTED  # still up
    assert (await row(res, Delivery, theirs)).state is DeliveryState.PENDING
    assert (await row(res, CloseCommand, their_command)).status is CloseCommandStatus.PENDING
    assert (await row(res, Position, their_position)).status is PositionStatus.OPEN
    assert await count_events(res, other.id) == 0
    # A heartbeat is presence (devices.last_seen_at), not a record of what a trade did.
    assert [e.kind for e in await events(res, device.id)] == [EventKind.HELLO]


async def test_malformed_frames_are_refused_with_the_bad_fields(
    channel: grpc.aio.Channel, device: KeyCredentials
) -> None:
    async with stream(channel, device) as device_stream:
        bad_ack = pb.DeviceFrame(frame_id=device_stream.frame_id(), ack=pb.Ack(delivery_id="nope"))
        receipt = await device_stream.receipt(bad_ack)
        assert receipt.status == REJECTED and reason_of(receipt) == "INVALID_ARGUMENT"
        fields = set()
        for detail in receipt.error.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                fields = {v.field for v in bad.field_violations}
        assert fields == {"ack.delivery_id", "ack.stage"}
        empty = await device_stream.receipt(pb.DeviceFrame(frame_id=device_stream.frame_id()))
        assert empty.status == REJECTED
        assert (await device_stream.receipt(device_stream.heartbeat())).status == ACCEPTED


async def test_quotes_keep_the_latest_per_instrument(
    res: Resources, channel: grpc.aio.Channel, device: KeyCredentials
) -> None:
    """Quotes are market data: the newest per symbol and device is kept, no execution event per frame;
    an older one is taken and changes nothing, a repeat of the frame that set the stored one is a
    DUPLICATE."""
    instrument = f"T{uuid.uuid4().hex[:8]}.m"

    start = int(datetime.now(UTC).timestamp()) - 60

    def quote(bid: str, ask: str, seconds: int) -> pb.DeviceFrame:
        frame = pb.DeviceFrame(
            frame_id=str(uuid.uuid4()), quote=common_pb2.Quote(instrument=instrument, bid=bid, ask=ask)
        )
        frame.quote.quote_time.FromSeconds(start + seconds)
        return frame

    async with stream(channel, device, hello=False) as device_stream:
        await device_stream.hello(hello_with(instrument))
        current = quote("1.10", "1.20", 10)
        assert (await device_stream.receipt(current)).status == ACCEPTED
        assert (await device_stream.receipt(quote("0.90", "1.00", 5))).status == ACCEPTED  # older: not current
        assert (await device_stream.receipt(current)).status == DUPLICATE
        crossed = await device_stream.receipt(quote("2.00", "1.00", 20))
        assert crossed.status == REJECTED
    stored = await row(res, Quote, (instrument, ActorType.DEVICE, device.id))
    assert (stored.bid, stored.ask, stored.frame_id) == (Decimal("1.10"), Decimal("1.20"), current.frame_id)
    assert await events(res, device.id, kind=EventKind.QUOTE) == []


def hello_with(*symbols: str) -> pb.Hello:
    """The test Hello, its symbols also ``symbols`` (a device's quotes are taken only for its symbols)."""
    hello = pb.Hello()
    hello.CopyFrom(HELLO)
    hello.symbols.extend(pb.SymbolSpec(name=name, **GOLD_SPEC) for name in symbols)
    return hello


async def test_quotes_of_symbols_the_device_neither_declared_nor_holds_store_nothing(
    res: Resources, channel: grpc.aio.Channel, device: KeyCredentials, book: Book
) -> None:
    """A device's quote is taken for a symbol of its Hello, of a position it holds or of a delivery pushed
    to it; one for any other symbol is REJECTED (SYMBOL_NOT_HELD) and stores nothing."""
    held = f"H{uuid.uuid4().hex[:8]}.m"
    await book.position(device.id, instrument=held)
    now = datetime.now(UTC)

    def quote(instrument: str) -> pb.DeviceFrame:
        frame = pb.DeviceFrame(
            frame_id=str(uuid.uuid4()), quote=common_pb2.Quote(instrument=instrument, bid="1", ask="2")
        )
        frame.quote.quote_time.FromDatetime(now)
        return frame

    unknown = f"U{uuid.uuid4().hex[:8]}.m"
    async with delivered(channel, device, book) as (_, device_stream):
        for instrument in ("GOLD.m", held):
            assert (await device_stream.receipt(quote(instrument))).status == ACCEPTED
        refused = await device_stream.receipt(quote(unknown))
        assert refused.status == REJECTED and reason_of(refused) == "SYMBOL_NOT_HELD"
    async with res.sessions() as session:
        stored = set(await session.scalars(select(Quote.instrument).where(Quote.source_id == device.id)))
    assert stored == {"GOLD.m", held}


async def test_a_quote_dated_ahead_of_the_clock_tolerance_is_refused(
    res: Resources, channel: grpc.aio.Channel, device: KeyCredentials
) -> None:
    """Dated beyond the signature tolerance (300 s) it would count as fresh for ever: REJECTED, nothing stored."""
    ahead = pb.DeviceFrame(frame_id="ahead", quote=common_pb2.Quote(instrument="GOLD.m", bid="1", ask="2"))
    ahead.quote.quote_time.FromDatetime(
        datetime.now(UTC) + timedelta(seconds=res.settings.signature_tolerance_seconds + 60)
    )
    async with stream(channel, device) as device_stream:
        refused = await device_stream.receipt(ahead)
    assert refused.status == REJECTED and "quote.quote_time" in str(refused.error)
    async with res.sessions() as session:
        assert await session.scalar(select(Quote.instrument).where(Quote.source_id == device.id)) is None


async def test_too_many_frames_end_the_stream(res: Resources, device: KeyCredentials) -> None:
    async with gateway(res, device_frame_rate=1, device_frame_burst=10, **QUIET) as (_, channel):
        device_stream = DeviceStream(channel, device)
        await device_stream.hello()  # frame 1
        # Frames 2 to 11 exhaust the burst. No more are written: a client write racing the end of the
        # stream makes grpc report its own INTERNAL error instead of the server's status.
        for _ in range(10):
            await device_stream.send(device_stream.heartbeat())
        failure = await device_stream.failure()
    assert (failure.code, failure.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "FRAME_RATE_EXCEEDED")


async def test_the_same_frame_committed_meanwhile_by_another_stream_is_a_duplicate(
    res: Resources, device: KeyCredentials, book: Book
) -> None:
    """Two streams of one device (a takeover in flight) apply the same frame at the same time: the
    second transaction waits for the first (the delivery is locked), then answers DUPLICATE."""
    delivery_id = await book.delivery(device.id, state=DeliveryState.SENT)
    report = DeviceReport(device.id, "raced", AckReport(delivery_id, DeliveryState.RECEIVED, ""))
    writer = UplinkWriter(res.sessions, workers=1)
    writer.start()
    try:
        async with res.sessions.begin() as holder:
            recorded = await deliveries.record_reports(holder, [report], datetime.now(UTC))
            assert recorded.outcomes == [deliveries.ACCEPTED]
            racing = asyncio.create_task(writer.submit([report]))
            await asyncio.sleep(0.3)
            assert not racing.done()  # blocked on the uncommitted row with the same key
        assert await asyncio.wait_for(racing, 5) == [deliveries.DUPLICATE]
    finally:
        await writer.stop()
    assert await count_events(res, device.id) == 1
