"""Pushing deliveries and close orders: what is pending on connect (oldest first), what a hint or the
sweep wakes up, re-sends after the ack timeout and after a reconnect, nothing after expire_time, and the
sealed instruction itself."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from backoffice.bootstrap import Resources
from backoffice.models import CloseCommand, CloseCommandStatus, Delivery, DeliveryState, EventKind
from backoffice.platform import hints
from signalhub.protocol import signing
from signalhub.protocol.sealing import InstructionSealer, SealError
from signalhub.v1 import common_pb2
from signalhub.v1 import gateway_pb2 as pb
from tests.conftest import KeyCredentials, UserCredentials, make_device
from tests.gateway.support import Book, events, eventually, gateway, row, stream

# Long enough that only the thing under test (a hint, a reconnect) can cause a send.
SLOW = {"sweep_interval_seconds": 60.0, "ack_timeout_seconds": 60.0}


@pytest.fixture
async def book(res: Resources, user: UserCredentials) -> Book:
    return await Book.open(res, user.id)


async def test_everything_pending_goes_out_on_connect_oldest_first(
    res: Resources, device: KeyCredentials, book: Book
) -> None:
    base = datetime.now(UTC) - timedelta(seconds=30)
    newest = await book.delivery(device.id, created_at=base + timedelta(seconds=3))
    oldest = await book.delivery(device.id, created_at=base)
    position = await book.position(device.id)
    command = await book.close_command(device.id, position, created_at=base + timedelta(seconds=2))
    middle = await book.delivery(device.id, created_at=base + timedelta(seconds=1))
    async with gateway(res, **SLOW) as (_, channel), stream(channel, device) as device_stream:
        received = [await device_stream.instruction() for _ in range(4)]
    kinds = [(i.WhichOneof("body"), i.delivery.delivery_id or i.close.command_id) for i in received]
    assert kinds == [
        ("delivery", str(oldest)),
        ("delivery", str(middle)),
        ("close", str(command)),
        ("delivery", str(newest)),
    ]
    assert all(i.delivery.attempt == 1 for i in received if i.WhichOneof("body") == "delivery")
    sent = await row(res, Delivery, oldest)
    assert (sent.state, sent.attempt) == (DeliveryState.SENT, 1) and sent.sent_at is not None
    assert (await row(res, CloseCommand, command)).status is CloseCommandStatus.SENT
    [event] = await events(res, device.id, kind=EventKind.SENT, delivery_id=oldest)
    assert event.frame_id is None and event.body == {"attempt": 1} and event.stage == "SENT"


async def test_a_delivery_has_what_the_row_says_and_nothing_hidden(
    res: Resources, device: KeyCredentials, user: UserCredentials, book: Book
) -> None:
    delivery_id = await book.delivery(device.id, stop_loss="2031.9876", take_profit="2047.1234")
    async with gateway(res, **SLOW) as (_, channel), stream(channel, device) as device_stream:
        frame = await device_stream.next()
    sealed = frame.instruction
    plain = InstructionSealer(signing.parse_secret(device.secret), str(device.id)).open(sealed.nonce, sealed.ciphertext)
    delivery = pb.Instruction.FromString(plain).delivery
    stored = await row(res, Delivery, delivery_id)
    assert delivery.delivery_id == str(delivery_id)
    assert delivery.signal_id == str(stored.signal_id)
    assert delivery.instrument == "GOLD.m"
    assert delivery.side == common_pb2.SIDE_BUY
    assert (delivery.volume, delivery.entry_price, delivery.max_deviation) == ("0.10", "2034.15", "0.50")
    assert delivery.expire_time.ToDatetime(tzinfo=UTC) == stored.expire_time
    assert delivery.attempt == 1
    # Hidden levels and the strategy payload never leave the back office.
    for secret in (b"2031.9876", b"2047.1234", b"secret-sauce-42"):
        assert secret not in plain
    # It opens only with the secret that signed this stream's open, for this device.
    other = await make_device(res, user)
    with pytest.raises(SealError):
        InstructionSealer(signing.parse_secret(other.secret), str(device.id)).open(sealed.nonce, sealed.ciphertext)
    with pytest.raises(SealError):
        InstructionSealer(signing.parse_secret(device.secret), str(other.id)).open(sealed.nonce, sealed.ciphertext)


async def test_a_close_order_names_the_position_and_ticket(res: Resources, device: KeyCredentials, book: Book) -> None:
    position = await book.position(device.id, volume="0.30")
    command = await book.close_command(device.id, position, volume="0.10")
    async with gateway(res, **SLOW) as (_, channel), stream(channel, device) as device_stream:
        close = (await device_stream.instruction()).close
    assert close == pb.CloseOrder(
        command_id=str(command),
        position_id=str(position),
        broker_ticket="T-77",
        volume="0.10",
        reason=common_pb2.CLOSE_REASON_TAKE_PROFIT,
    )


async def test_a_wake_hint_pushes_a_new_delivery(res: Resources, device: KeyCredentials, book: Book) -> None:
    async with gateway(res, **SLOW) as (_, channel), stream(channel, device) as device_stream:
        await device_stream.nothing(0.2)
        delivery_id = await book.delivery(device.id)
        await hints.publish(res.redis, [device.id])
        assert (await device_stream.delivery(2.0)).delivery_id == str(delivery_id)


async def test_a_wake_hint_reaches_the_replica_holding_the_device_and_no_other(
    res: Resources, device: KeyCredentials, book: Book
) -> None:
    async with (
        gateway(res, **SLOW) as (one, _),
        gateway(res, **SLOW) as (two, channel),
        stream(channel, device) as device_stream,
        res.redis.pubsub() as pubsub,
    ):
        assert await res.redis.get(hints.session_key(device.id)) == (
            hints.session_value(device_stream.welcome.session_id, two.registry.route).encode()
        )
        await pubsub.subscribe(hints.route_channel(one.registry.route), hints.route_channel(two.registry.route))
        for _ in range(2):
            assert await pubsub.get_message(timeout=2.0) is not None  # subscribed
        await device_stream.nothing(0.2)
        delivery_id = await book.delivery(device.id)
        await hints.publish(res.redis, [device.id])
        assert (await device_stream.delivery(2.0)).delivery_id == str(delivery_id)
        heard = [await pubsub.get_message(timeout=0.5) for _ in range(2)]
        assert [(m["channel"].decode(), hints.woken(m["data"])) for m in heard if m is not None] == [
            (hints.route_channel(two.registry.route), [device.id])
        ]


async def test_the_sweep_finds_what_a_lost_hint_would_have_announced(
    res: Resources, device: KeyCredentials, book: Book
) -> None:
    settings = {"sweep_interval_seconds": 0.2, "ack_timeout_seconds": 60}
    async with gateway(res, **settings) as (_, channel), stream(channel, device) as device_stream:
        await device_stream.nothing(0.1)
        delivery_id = await book.delivery(device.id)  # no hint published
        assert (await device_stream.delivery()).delivery_id == str(delivery_id)


async def test_an_unacknowledged_delivery_is_sent_again_after_the_ack_timeout(
    res: Resources, device: KeyCredentials, book: Book
) -> None:
    delivery_id = await book.delivery(device.id)
    async with gateway(res) as (_, channel), stream(channel, device) as device_stream:
        assert (await device_stream.delivery()).attempt == 1
        again = await device_stream.delivery()
        assert (again.delivery_id, again.attempt) == (str(delivery_id), 2)
        receipt = await device_stream.receipt(device_stream.ack(delivery_id, pb.ACK_STAGE_RECEIVED))
        assert receipt.status == pb.RECEIPT_STATUS_ACCEPTED
        await device_stream.nothing(1.2)  # more than two ack timeouts: RECEIVED stops the re-sends
    stored = await row(res, Delivery, delivery_id)
    assert (stored.state, stored.attempt) == (DeliveryState.RECEIVED, 2)
    assert [e.body["attempt"] for e in await events(res, device.id, kind=EventKind.SENT)] == [1, 2]


async def test_a_reconnect_sends_again_what_was_not_received(
    res: Resources, device: KeyCredentials, book: Book
) -> None:
    delivery_id = await book.delivery(device.id)
    position = await book.position(device.id)
    command = await book.close_command(device.id, position)
    async with gateway(res, **SLOW) as (_, channel):
        async with stream(channel, device) as first:
            assert (await first.delivery()).attempt == 1
            assert (await first.instruction()).close.command_id == str(command)
        async with stream(channel, device) as second:
            again = await second.delivery()
            assert (again.delivery_id, again.attempt) == (str(delivery_id), 2)
            assert (await second.instruction()).close.command_id == str(command)
            await second.receipt(second.ack(delivery_id, pb.ACK_STAGE_RECEIVED))
        async with stream(channel, device) as third:
            # Received now: a new stream re-sends the close order (it has no ack of its own), nothing else.
            assert (await third.instruction()).close.command_id == str(command)
            await third.nothing(0.3)


async def test_nothing_is_sent_after_expire_time(res: Resources, device: KeyCredentials, book: Book) -> None:
    late = await book.delivery(device.id, expire_in=-1)
    soon = await book.delivery(device.id, expire_in=1.5)
    async with gateway(res, ack_timeout_seconds=0.3) as (_, channel), stream(channel, device) as device_stream:
        first = await device_stream.delivery()
        assert first.delivery_id == str(soon)  # the expired one never went out
        # Unacknowledged, it is re-sent until its expire_time, and never after.
        while True:
            try:
                again = await device_stream.delivery(1.0)
            except TimeoutError:
                break
            assert again.delivery_id == str(soon)
            assert datetime.now(UTC) < again.expire_time.ToDatetime(tzinfo=UTC) + timedelta(seconds=0.2)

        async def expired() -> bool:
            return (await row(res, Delivery, soon)).state is DeliveryState.EXPIRED

        await eventually(expired, "the delivery to expire")
    assert (await row(res, Delivery, late)).state is DeliveryState.EXPIRED
    assert (await row(res, Delivery, late)).attempt == 0
    [event] = await events(res, device.id, kind=EventKind.EXPIRED, delivery_id=late)
    assert event.stage == "EXPIRED" and event.frame_id is None


async def test_a_full_outbox_reads_postgres_again_when_it_drains(
    res: Resources, device: KeyCredentials, book: Book
) -> None:
    base = datetime.now(UTC) - timedelta(seconds=60)
    ids = [await book.delivery(device.id, created_at=base + timedelta(seconds=i)) for i in range(20)]
    async with gateway(res, session_queue_size=8, **SLOW) as (_, channel), stream(channel, device) as device_stream:
        received = [(await device_stream.delivery()).delivery_id for _ in ids]
    assert received == [str(i) for i in ids]


async def test_a_delivery_cancelled_before_it_was_sent_is_not_sent(
    res: Resources, device: KeyCredentials, book: Book
) -> None:
    delivery_id = await book.delivery(device.id)
    async with res.sessions.begin() as session:
        await session.execute(update(Delivery).where(Delivery.id == delivery_id).values(state=DeliveryState.CANCELLED))
    async with gateway(res, **SLOW) as (_, channel), stream(channel, device) as device_stream:
        await device_stream.nothing(0.3)
    assert (await row(res, Delivery, delivery_id)).attempt == 0


def test_no_gateway_message_can_carry_hidden_levels() -> None:
    """Belt and braces for the sealed plaintext: none of the device-facing messages has such a field."""
    for message in (pb.Instruction, pb.Delivery, pb.CloseOrder, pb.GatewayFrame):
        names = {f.name for f in message.DESCRIPTOR.fields}
        assert not names & {"stop_loss", "take_profit", "payload"}, message
