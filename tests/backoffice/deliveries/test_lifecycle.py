"""backoffice.deliveries on the real database: what is claimed for sending, expiry, and how device
reports move deliveries (the transition table in the module's docstring)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select, update

from backoffice import deliveries
from backoffice.bootstrap import Resources
from backoffice.deliveries import AckReport, ClaimRequest, DeviceReport, FillReport, Verdict
from backoffice.devices.hello import Hello, SymbolSpec
from backoffice.models import CommissionQueueItem, Delivery, DeliveryState, Device, EventKind, Position
from tests.conftest import GOLD_SPEC, KeyCredentials, UserCredentials, make_device
from tests.gateway.support import Book, count_events, events, row

ACK_TIMEOUT = timedelta(seconds=10)
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


@pytest.fixture
async def book(res: Resources, user: UserCredentials) -> Book:
    return await Book.open(res, user.id)


async def _claim(res: Resources, *requests: ClaimRequest, now: datetime | None = None) -> deliveries.Claim:
    return await deliveries.claim(res.sessions, requests, now or datetime.now(UTC), ACK_TIMEOUT)


async def _record(res: Resources, *reports: DeviceReport) -> list[Verdict]:
    async with res.sessions.begin() as session:
        recorded = await deliveries.record_reports(session, reports, datetime.now(UTC))
    return [o.verdict for o in recorded.outcomes]


async def _set(res: Resources, delivery_id: uuid.UUID, **values: object) -> None:
    async with res.sessions.begin() as session:
        await session.execute(update(Delivery).where(Delivery.id == delivery_id).values(**values))


def _ack(device: KeyCredentials, delivery_id: uuid.UUID, stage: DeliveryState, frame_id: str = "") -> DeviceReport:
    return DeviceReport(device.id, frame_id or uuid.uuid4().hex, AckReport(delivery_id, stage, ""))


def _fill(device: KeyCredentials, delivery_id: uuid.UUID, volume: str = "0.10", ticket: str = "T-1") -> DeviceReport:
    report = FillReport(delivery_id, ticket, Decimal("2034.2"), Decimal(volume), datetime.now(UTC))
    return DeviceReport(device.id, uuid.uuid4().hex, report)


async def _said_hello(res: Resources, device: KeyCredentials) -> None:
    """The device's Hello gave GOLD.m's specs: volume step 0.01, at most 50 lots."""
    spec = SymbolSpec(**{name: Decimal(value) for name, value in GOLD_SPEC.items()})
    async with res.sessions.begin() as session:
        await session.execute(
            update(Device).where(Device.id == device.id).values(last_hello=Hello(symbols={"GOLD.m": spec}).to_json())
        )


async def _accrual_queue(res: Resources, delivery_id: uuid.UUID) -> list[Decimal]:
    async with res.sessions() as session:
        return list(
            await session.scalars(
                select(CommissionQueueItem.lots).where(CommissionQueueItem.delivery_id == delivery_id)
            )
        )


async def test_claim_takes_the_oldest_first_within_the_room(res: Resources, device: KeyCredentials, book: Book) -> None:
    base = datetime.now(UTC) - timedelta(minutes=1)
    ids = [await book.delivery(device.id, created_at=base + timedelta(seconds=i)) for i in range(3)]
    claimed = await _claim(res, ClaimRequest(device.id, 2, LONG_AGO))
    assert [o.id for o in claimed.orders[device.id]] == ids[:2]
    assert [o.attempt for o in claimed.orders[device.id]] == [1, 1]
    assert device.id in claimed.more  # the third did not fit
    rest = await _claim(res, ClaimRequest(device.id, 2, LONG_AGO))
    assert [o.id for o in rest.orders[device.id]] == ids[2:]
    assert rest.more == frozenset()
    assert await _claim(res, ClaimRequest(device.id, 2, LONG_AGO)) == deliveries.Claim({}, frozenset())


async def test_one_claim_serves_many_devices_each_within_its_own_room(
    res: Resources, user: UserCredentials, device: KeyCredentials, book: Book
) -> None:
    """Deliveries and close commands of one device interleave oldest first; another device's room is its
    own; what was sent carries its attempt and a SENT event, and the close order its position's ticket."""
    other = await make_device(res, user)
    base = datetime.now(UTC) - timedelta(minutes=1)
    position_id = await book.position(device.id)
    first = await book.delivery(device.id, created_at=base)
    command = await book.close_command(device.id, position_id, created_at=base + timedelta(seconds=1))
    third = await book.delivery(device.id, created_at=base + timedelta(seconds=2))
    theirs = await book.delivery(other.id, created_at=base + timedelta(seconds=3))
    claimed = await _claim(res, ClaimRequest(device.id, 2, LONG_AGO), ClaimRequest(other.id, 5, LONG_AGO))
    mine = claimed.orders[device.id]
    assert [o.id for o in mine] == [first, command] and [o.id for o in claimed.orders[other.id]] == [theirs]
    close = mine[1]
    assert isinstance(close, deliveries.CloseOrder)
    assert (close.position_id, close.broker_ticket, close.attempt) == (position_id, "T-77", 1)
    assert claimed.more == frozenset({device.id})
    sent = await events(res, device.id, kind=EventKind.SENT)
    assert {(e.delivery_id, e.close_command_id, e.body["attempt"]) for e in sent} == {
        (first, None, 1),
        (None, command, 1),
    }
    assert [o.id for o in (await _claim(res, ClaimRequest(device.id, 2, LONG_AGO))).orders[device.id]] == [third]


async def test_sent_deliveries_go_again_to_a_new_stream_or_after_the_ack_timeout(
    res: Resources, device: KeyCredentials, book: Book
) -> None:
    delivery_id = await book.delivery(device.id)
    connected = datetime.now(UTC)
    await _claim(res, ClaimRequest(device.id, 10, connected))
    # The same stream, within the ack timeout: nothing.
    assert await _claim(res, ClaimRequest(device.id, 10, connected)) == deliveries.Claim({}, frozenset())
    # After the ack timeout: again.
    later = datetime.now(UTC) + ACK_TIMEOUT + timedelta(seconds=1)
    again = await _claim(res, ClaimRequest(device.id, 10, connected), now=later)
    assert [(o.id, o.attempt) for o in again.orders[device.id]] == [(delivery_id, 2)]
    # A stream opened after it was sent: again, at once.
    reconnect = later + timedelta(seconds=1)
    reconnected = await _claim(res, ClaimRequest(device.id, 10, reconnect), now=reconnect + timedelta(seconds=1))
    assert [(o.id, o.attempt) for o in reconnected.orders[device.id]] == [(delivery_id, 3)]
    assert [e.body["attempt"] for e in await events(res, device.id, kind=EventKind.SENT)] == [1, 2, 3]


async def test_a_delivery_being_changed_elsewhere_is_skipped_not_waited_for(
    res: Resources, device: KeyCredentials, book: Book
) -> None:
    delivery_id = await book.delivery(device.id)
    async with res.sessions.begin() as holder:
        await holder.get(Delivery, delivery_id, with_for_update=True)
        claimed = await asyncio.wait_for(_claim(res, ClaimRequest(device.id, 10, LONG_AGO)), 5)
        assert claimed.orders == {}
    assert (await _claim(res, ClaimRequest(device.id, 10, LONG_AGO))).orders[device.id][0].id == delivery_id


async def test_expiry_covers_what_was_not_received(res: Resources, device: KeyCredentials, book: Book) -> None:
    pending = await book.delivery(device.id, expire_in=-1)
    sent = await book.delivery(device.id, expire_in=-1, state=DeliveryState.SENT)
    received = await book.delivery(device.id, expire_in=-1, state=DeliveryState.RECEIVED)
    fresh = await book.delivery(device.id, expire_in=60)
    assert await _claim(res, ClaimRequest(device.id, 10, LONG_AGO)) != deliveries.Claim({}, frozenset())
    async with res.sessions.begin() as session:
        expired = await deliveries.expire_due(session, datetime.now(UTC), device_ids=[device.id])
    # A gateway's sweep elsewhere in the suite expires for every device and may get there first: what this
    # call returns is then a subset, but each delivery is expired exactly once, by one of them.
    assert set(expired) <= {(pending, device.id), (sent, device.id)}
    for delivery_id in (pending, sent):
        assert (await row(res, Delivery, delivery_id)).state is DeliveryState.EXPIRED
        assert len(await events(res, device.id, kind=EventKind.EXPIRED, delivery_id=delivery_id)) == 1
    assert (await row(res, Delivery, received)).state is DeliveryState.RECEIVED
    assert (await row(res, Delivery, fresh)).state is DeliveryState.SENT
    [event] = await events(res, device.id, kind=EventKind.EXPIRED, delivery_id=pending)
    assert event.stage == "EXPIRED" and event.body["reason"] == deliveries.EXPIRED_REASON


async def test_due_devices_names_who_has_something_to_send(
    res: Resources, device: KeyCredentials, user: UserCredentials, book: Book
) -> None:
    other = await make_device(res, user)
    await book.delivery(device.id)
    sent = await book.delivery(other.id, state=DeliveryState.SENT)
    await _set(res, sent, sent_at=datetime.now(UTC))
    now = datetime.now(UTC)
    async with res.sessions() as session:
        due = await deliveries.due_devices(session, now, ACK_TIMEOUT)
        assert device.id in due and other.id not in due
        assert other.id in await deliveries.due_devices(session, now + ACK_TIMEOUT, ACK_TIMEOUT)


# (state before, what the device reports) -> (verdict, state after)
TRANSITIONS = [
    (DeliveryState.SENT, DeliveryState.RECEIVED, Verdict.ACCEPTED, DeliveryState.RECEIVED),
    (DeliveryState.SENT, DeliveryState.PLACED, Verdict.ACCEPTED, DeliveryState.PLACED),
    (DeliveryState.SENT, DeliveryState.FILLED, Verdict.ACCEPTED, DeliveryState.FILLED),
    (DeliveryState.EXPIRED, DeliveryState.RECEIVED, Verdict.ACCEPTED, DeliveryState.RECEIVED),
    (DeliveryState.RECEIVED, DeliveryState.RECEIVED, Verdict.DUPLICATE, DeliveryState.RECEIVED),
    (DeliveryState.PLACED, DeliveryState.RECEIVED, Verdict.DUPLICATE, DeliveryState.PLACED),
    (DeliveryState.FILLED, DeliveryState.PLACED, Verdict.DUPLICATE, DeliveryState.FILLED),
    # A further fill of a FILLED delivery is a partial fill (a repeat of a recorded one is a DUPLICATE).
    (DeliveryState.FILLED, DeliveryState.FILLED, Verdict.ACCEPTED, DeliveryState.FILLED),
    (DeliveryState.FILLED, DeliveryState.REJECTED, Verdict.REJECTED, DeliveryState.FILLED),
    (DeliveryState.PLACED, DeliveryState.REJECTED, Verdict.ACCEPTED, DeliveryState.REJECTED),
    (DeliveryState.REJECTED, DeliveryState.REJECTED, Verdict.DUPLICATE, DeliveryState.REJECTED),
    (DeliveryState.REJECTED, DeliveryState.RECEIVED, Verdict.DUPLICATE, DeliveryState.REJECTED),
    (DeliveryState.REJECTED, DeliveryState.FILLED, Verdict.REJECTED, DeliveryState.REJECTED),
    (DeliveryState.CANCELLED, DeliveryState.RECEIVED, Verdict.REJECTED, DeliveryState.CANCELLED),
    (DeliveryState.SKIPPED, DeliveryState.FILLED, Verdict.REJECTED, DeliveryState.SKIPPED),
]


@pytest.mark.parametrize(("before", "reported", "verdict", "after"), TRANSITIONS)
async def test_transitions(
    res: Resources,
    device: KeyCredentials,
    book: Book,
    before: DeliveryState,
    reported: DeliveryState,
    verdict: Verdict,
    after: DeliveryState,
) -> None:
    delivery_id = await book.delivery(device.id, state=before)
    report = _fill(device, delivery_id) if reported is DeliveryState.FILLED else _ack(device, delivery_id, reported)
    events_before = await count_events(res, device.id)
    assert await _record(res, report) == [verdict]
    assert (await row(res, Delivery, delivery_id)).state is after
    # Only what is accepted leaves a trace.
    assert await count_events(res, device.id) == events_before + (verdict is Verdict.ACCEPTED)


A, R = Verdict.ACCEPTED, Verdict.REJECTED


@pytest.mark.parametrize(
    ("volumes", "verdicts"),
    [
        (["0.10", "0.10"], [A, R]),  # a second whole fill
        (["0.05", "0.05", "0.01"], [A, A, R]),  # a third fill after two partial ones made it whole
        (["0.04", "0.06"], [A, A]),
        (["0.015"], [R]),  # not a multiple of the volume step
        (["99999999999999999999"], [R]),
        (["0"], [R]),
    ],
)
async def test_fills_together_never_exceed_their_delivery(
    res: Resources, device: KeyCredentials, book: Book, volumes: list[str], verdicts: list[Verdict]
) -> None:
    """A fill beyond the 0.10 lots asked for, or off the symbol's step, is REJECTED and changes nothing:
    no position volume, no commission queued."""
    await _said_hello(res, device)
    delivery_id = await book.delivery(device.id, state=DeliveryState.SENT)
    got = [(await _record(res, _fill(device, delivery_id, v, f"T-{n}")))[0] for n, v in enumerate(volumes)]
    assert got == verdicts
    accepted = [Decimal(v) for v, verdict in zip(volumes, verdicts, strict=True) if verdict is A]
    assert sorted(await _accrual_queue(res, delivery_id)) == sorted(accepted)
    async with res.sessions() as session:
        held = await session.scalar(select(Position.volume).where(Position.delivery_id == delivery_id))
    assert held == (sum(accepted) if accepted else None)


async def test_a_thousand_extra_fills_mint_nothing(res: Resources, device: KeyCredentials, book: Book) -> None:
    """The attack: a referred user's own bridge reports fill after fill with new tickets on a filled
    delivery, hoping each is a partial fill earning commission. One batch of a thousand: all refused."""
    await _said_hello(res, device)
    delivery_id = await book.delivery(device.id, state=DeliveryState.SENT)
    assert await _record(res, _fill(device, delivery_id)) == [A]
    extra = [_fill(device, delivery_id, "0.01", f"T-extra-{n}") for n in range(1000)]
    assert set(await _record(res, *extra)) == {R}
    assert await _accrual_queue(res, delivery_id) == [Decimal("0.10")]
    async with res.sessions() as session:
        assert await session.scalar(select(Position.volume).where(Position.delivery_id == delivery_id)) == Decimal(
            "0.10"
        )


async def test_one_batch_applies_in_order_and_sees_its_own_frames(
    res: Resources, device: KeyCredentials, user: UserCredentials, book: Book
) -> None:
    other = await make_device(res, user)
    mine = await book.delivery(device.id, state=DeliveryState.SENT)
    theirs = await book.delivery(other.id, state=DeliveryState.SENT)
    verdicts = await _record(
        res,
        _ack(device, mine, DeliveryState.RECEIVED, frame_id="a"),
        _ack(device, mine, DeliveryState.RECEIVED, frame_id="a"),  # the same frame again
        _ack(device, mine, DeliveryState.RECEIVED),  # the same stage again
        _ack(other, theirs, DeliveryState.PLACED, frame_id="a"),  # frame ids are per device
        _ack(device, theirs, DeliveryState.PLACED),  # not this device's
        _fill(device, mine),
    )
    assert verdicts == [
        Verdict.ACCEPTED,
        Verdict.DUPLICATE,
        Verdict.DUPLICATE,
        Verdict.ACCEPTED,
        Verdict.REJECTED,
        Verdict.ACCEPTED,
    ]
    assert (await row(res, Delivery, mine)).state is DeliveryState.FILLED
    assert (await row(res, Delivery, theirs)).state is DeliveryState.PLACED


async def test_acks_alone_commit_as_one_statement_and_anything_else_takes_a_transaction(
    res: Resources, device: KeyCredentials, user: UserCredentials, book: Book
) -> None:
    """``record_alone`` applies a batch of acks with the same rules and outcomes as ``record_reports``; a
    batch with a fill is not its to take; a frame another transaction is recording meanwhile is waited for
    (the delivery's lock comes before the frames are read) and found a DUPLICATE."""
    other = await make_device(res, user)
    mine = await book.delivery(device.id, state=DeliveryState.SENT)
    theirs = await book.delivery(other.id, state=DeliveryState.SENT)
    acks = [
        _ack(device, mine, DeliveryState.RECEIVED, frame_id="a"),
        _ack(device, mine, DeliveryState.RECEIVED, frame_id="a"),
        _ack(device, mine, DeliveryState.PLACED),
        _ack(device, theirs, DeliveryState.PLACED),  # not this device's
        _ack(device, mine, DeliveryState.REJECTED),  # placed, then rejected by the broker: taken
    ]
    recorded = await deliveries.record_alone(res.sessions, acks, datetime.now(UTC))
    assert recorded is not None
    assert [o.verdict for o in recorded.outcomes] == [
        Verdict.ACCEPTED,
        Verdict.DUPLICATE,
        Verdict.ACCEPTED,
        Verdict.REJECTED,
        Verdict.ACCEPTED,
    ]
    assert (await row(res, Delivery, mine)).state is DeliveryState.REJECTED
    assert (await row(res, Delivery, theirs)).state is DeliveryState.SENT
    assert await count_events(res, device.id) == 3

    fresh = await book.delivery(device.id, state=DeliveryState.SENT)
    assert (
        await deliveries.record_alone(
            res.sessions, [_ack(device, fresh, DeliveryState.PLACED), _fill(device, fresh)], datetime.now(UTC)
        )
        is None
    )
    assert (await row(res, Delivery, fresh)).state is DeliveryState.SENT

    frame = _ack(device, fresh, DeliveryState.RECEIVED, frame_id="raced")
    async with res.sessions.begin() as session:
        await deliveries.record_reports(session, [frame], datetime.now(UTC))
        racing = asyncio.create_task(deliveries.record_alone(res.sessions, [frame], datetime.now(UTC)))
        await asyncio.sleep(0.3)
        assert not racing.done()  # waiting on the delivery's lock
    raced = await racing
    assert raced is not None and [o.verdict for o in raced.outcomes] == [Verdict.DUPLICATE]
    assert await count_events(res, device.id) == 4
