"""Devices' account states (AccountState frames, and the balance and equity of a Hello) on the real
Postgres: the newest per device kept in one row, an older one taken and changing nothing, a repeat of the
frame that set the row a DUPLICATE, a bad or future-dated one refused with its fields named and nothing
stored; what a batch stored comes back for what acts on it; a batch without states costs no statement
more."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from prometheus_client import REGISTRY
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncSession

from backoffice import deliveries
from backoffice.bootstrap import Resources
from backoffice.deliveries import AccountStateReport, AckReport, DeviceReport
from backoffice.devices.account_states import StoredAccountState
from backoffice.models import (
    AccountState,
    CloseCommand,
    DeliveryState,
    EventKind,
    RiskAction,
    RiskMetric,
    RiskPeriod,
    RiskPolicy,
    Stopout,
)
from backoffice.risk.policy import Limit
from signalhub.v1 import gateway_pb2 as pb
from tests.conftest import KeyCredentials, UserCredentials, make_device
from tests.gateway.support import HELLO, Book, events, eventually, gateway, stream

ACCEPTED, DUPLICATE, REJECTED = pb.RECEIPT_STATUS_ACCEPTED, pb.RECEIPT_STATUS_DUPLICATE, pb.RECEIPT_STATUS_REJECTED
QUIET = {"sweep_interval_seconds": 60.0, "ack_timeout_seconds": 60.0}


@pytest.fixture
async def channel(res: Resources) -> AsyncIterator[grpc.aio.Channel]:
    async with gateway(res, **QUIET) as (_, gateway_channel):
        yield gateway_channel


def state_frame(
    at: datetime,
    *,
    balance: str = "10000.00",
    equity: str = "9950.25",
    margin: str = "",
    free_margin: str = "",
    frame_id: str | None = None,
) -> pb.DeviceFrame:
    frame = pb.DeviceFrame(
        frame_id=frame_id or str(uuid.uuid4()),
        account_state=pb.AccountState(balance=balance, equity=equity, margin=margin, free_margin=free_margin),
    )
    frame.account_state.state_time.FromDatetime(at)
    return frame


async def stored_state(res: Resources, device_id: uuid.UUID) -> AccountState | None:
    async with res.sessions() as session:
        return await session.get(AccountState, device_id, populate_existing=True)


def violations_of(receipt: pb.Receipt) -> dict[str, str]:
    for detail in receipt.error.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return {v.field: v.description for v in bad.field_violations}
    return {}


def counted(outcome: str) -> float:
    return REGISTRY.get_sample_value("signalhub_gateway_account_states_total", {"outcome": outcome}) or 0.0


# ------------------------------------------------------------------------------------ through a stream


async def test_a_hello_with_balance_and_equity_is_the_first_account_state(
    res: Resources, channel: grpc.aio.Channel, device: KeyCredentials
) -> None:
    before = datetime.now(UTC)
    async with stream(channel, device):
        pass
    state = await stored_state(res, device.id)
    assert state is not None
    assert (state.balance, state.equity) == (Decimal(HELLO.balance), Decimal(HELLO.equity))
    assert (state.margin, state.free_margin, state.frame_id) == (None, None, None)
    assert before <= state.state_time <= datetime.now(UTC)  # the server dates a Hello's state


async def test_a_hello_without_equity_stores_no_state(
    res: Resources, channel: grpc.aio.Channel, device: KeyCredentials
) -> None:
    hello = pb.Hello()
    hello.CopyFrom(HELLO)
    hello.equity = ""
    async with stream(channel, device, hello=False) as device_stream:
        await device_stream.hello(hello)
    assert await stored_state(res, device.id) is None


async def test_the_newest_state_is_kept_in_one_row_per_device(
    res: Resources, channel: grpc.aio.Channel, device: KeyCredentials
) -> None:
    """A newer state overwrites the row, an older one is ACCEPTED and changes nothing, a repeat of the frame
    that set the row is a DUPLICATE; no execution event is written for any of them."""
    now = datetime.now(UTC).replace(microsecond=0)
    accepted_before = counted("ACCEPTED")
    async with stream(channel, device) as device_stream:
        # Dated before the Hello (a device's clock may lag the server's): it still replaces the Hello's state.
        first = state_frame(now - timedelta(seconds=30), equity="9990.00", margin="120.50", free_margin="-15.75")
        assert (await device_stream.receipt(first)).status == ACCEPTED
        state = await stored_state(res, device.id)
        assert state is not None
        assert (state.equity, state.margin, state.free_margin) == (
            Decimal("9990.00"),
            Decimal("120.50"),
            Decimal("-15.75"),
        )
        assert state.frame_id == first.frame_id

        newer = state_frame(now - timedelta(seconds=10), balance="10020.00", equity="10031.40")
        assert (await device_stream.receipt(newer)).status == ACCEPTED
        older = state_frame(now - timedelta(seconds=20), balance="1.00", equity="1.00")
        assert (await device_stream.receipt(older)).status == ACCEPTED
        assert (await device_stream.receipt(newer)).status == DUPLICATE
        assert (await device_stream.receipt(first)).status == ACCEPTED  # set the row once, no longer: older
    state = await stored_state(res, device.id)
    assert state is not None
    assert (state.balance, state.equity, state.margin, state.free_margin) == (
        Decimal("10020.00"),
        Decimal("10031.40"),
        None,
        None,
    )
    assert (state.state_time, state.frame_id) == (now - timedelta(seconds=10), newer.frame_id)
    assert [e.kind for e in await events(res, device.id)] == [EventKind.HELLO]
    assert counted("ACCEPTED") - accepted_before == 4


async def test_a_bad_state_is_refused_naming_each_field_and_changes_nothing(
    res: Resources, channel: grpc.aio.Channel, device: KeyCredentials
) -> None:
    rejected_before = counted("REJECTED")
    async with stream(channel, device) as device_stream:
        bad = state_frame(datetime.now(UTC), balance="-1", equity="1e5", margin="-0.01", free_margin="NaN")
        bad.account_state.ClearField("state_time")
        refused = await device_stream.receipt(bad)
        assert refused.status == REJECTED and refused.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert set(violations_of(refused)) == {
            "account_state.balance",
            "account_state.equity",
            "account_state.margin",
            "account_state.free_margin",
            "account_state.state_time",
        }
        missing = await device_stream.receipt(state_frame(datetime.now(UTC), balance=""))
        assert missing.status == REJECTED and set(violations_of(missing)) == {"account_state.balance"}
        assert (await device_stream.receipt(device_stream.heartbeat())).status == ACCEPTED  # the stream stays up
    state = await stored_state(res, device.id)
    assert state is not None and state.frame_id is None  # still the Hello's
    assert counted("REJECTED") - rejected_before == 2


async def test_a_state_dated_beyond_the_clock_tolerance_is_refused(
    res: Resources, channel: grpc.aio.Channel, device: KeyCredentials
) -> None:
    """Dated beyond the signature tolerance it would outrank every true state after it: REJECTED."""
    tolerance = timedelta(seconds=res.settings.signature_tolerance_seconds)
    async with stream(channel, device) as device_stream:
        ahead = await device_stream.receipt(state_frame(datetime.now(UTC) + tolerance + timedelta(seconds=60)))
        assert ahead.status == REJECTED and set(violations_of(ahead)) == {"account_state.state_time"}
        within = state_frame(datetime.now(UTC) + tolerance - timedelta(seconds=60), equity="5.00")
        assert (await device_stream.receipt(within)).status == ACCEPTED
    state = await stored_state(res, device.id)
    assert state is not None and state.frame_id == within.frame_id


# ------------------------------------------------------------------------------------ record_reports


def state_report(device_id: uuid.UUID, at: datetime, equity: str, frame_id: str | None = None) -> DeviceReport:
    report = AccountStateReport(Decimal("1000.00"), Decimal(equity), None, None, at)
    return DeviceReport(device_id, frame_id or str(uuid.uuid4()), report)


async def test_a_batch_returns_the_newest_state_it_stored_per_device(
    res: Resources, user: UserCredentials, device: KeyCredentials
) -> None:
    other = await make_device(res, user)
    now = datetime.now(UTC)
    batch = [
        state_report(device.id, now - timedelta(seconds=3), "990.00"),
        state_report(device.id, now - timedelta(seconds=1), "1010.00"),
        state_report(device.id, now - timedelta(seconds=2), "1000.00"),
        state_report(other.id, now - timedelta(seconds=5), "500.00"),
    ]
    async with res.sessions.begin() as session:
        recorded = await deliveries.record_reports(session, batch, now)
    assert recorded.outcomes == [deliveries.ACCEPTED] * 4
    assert sorted(recorded.account_states, key=lambda s: s.equity) == [
        StoredAccountState(other.id, Decimal("1000.00"), Decimal("500.00"), now - timedelta(seconds=5), now),
        StoredAccountState(device.id, Decimal("1000.00"), Decimal("1010.00"), now - timedelta(seconds=1), now),
    ]
    async with res.sessions.begin() as session:
        later = await deliveries.record_reports(
            session, [state_report(device.id, now - timedelta(seconds=4), "1.00")], now + timedelta(seconds=1)
        )
    assert later.outcomes == [deliveries.ACCEPTED] and later.account_states == []  # older: nothing stored


async def test_a_stored_state_dated_ahead_of_the_servers_clock_gives_way(
    res: Resources, device: KeyCredentials
) -> None:
    """A device's clock running fast must not hold the row: once the server's clock is behind a stored
    state's time, any state replaces it."""
    now = datetime.now(UTC)
    async with res.sessions.begin() as session:
        await deliveries.record_reports(session, [state_report(device.id, now + timedelta(seconds=120), "7.00")], now)
    async with res.sessions.begin() as session:
        recorded = await deliveries.record_reports(
            session, [state_report(device.id, now, "8.00")], now + timedelta(seconds=1)
        )
    assert [s.equity for s in recorded.account_states] == [Decimal("8.00")]
    state = await stored_state(res, device.id)
    assert state is not None and state.equity == Decimal("8.00")


@asynccontextmanager
async def statements_of(session: AsyncSession) -> AsyncIterator[list[str]]:
    """Every statement ``session``'s connection sends while inside (each is one round trip)."""
    seen: list[str] = []
    connection = (await session.connection()).sync_connection
    assert connection is not None

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        seen.append(statement)

    event.listen(connection, "before_cursor_execute", capture)
    try:
        yield seen
    finally:
        event.remove(connection, "before_cursor_execute", capture)


async def test_a_batch_without_states_costs_no_statement_more(
    res: Resources, user: UserCredentials, device: KeyCredentials
) -> None:
    """An ack batch is one statement (``apply_delivery_reports``: the frames read, the deliveries locked,
    the events inserted, the deliveries updated), none for risk limits; account states add one whatever
    their number (``record_account_states``: the repeats found, the newest stored,
    the devices' limits measured)."""
    book = await Book.open(res, user.id)
    now = datetime.now(UTC)

    async def statements(batch: list[DeviceReport]) -> list[str]:
        async with res.sessions.begin() as session, statements_of(session) as seen:
            recorded = await deliveries.record_reports(session, batch, now)
        assert {o.verdict for o in recorded.outcomes} == {deliveries.Verdict.ACCEPTED}
        return seen

    def acks(delivery_ids: list[uuid.UUID]) -> list[DeviceReport]:
        return [
            DeviceReport(device.id, str(uuid.uuid4()), AckReport(d, DeliveryState.RECEIVED, "")) for d in delivery_ids
        ]

    sent = [await book.delivery(device.id, state=DeliveryState.SENT) for _ in range(4)]
    ack_only = await statements(acks(sent[:2]))
    assert (
        len(ack_only) == 1
        and "apply_delivery_reports(" in ack_only[0]
        and not any("account_states" in s or "risk_policies" in s for s in ack_only)
    )
    with_states = await statements(
        [*acks(sent[2:]), *(state_report(device.id, now - timedelta(seconds=n), "1.00") for n in range(3))]
    )
    added = [s for s in with_states if "account_states" in s]
    assert len(with_states) == len(ack_only) + 1 and len(added) == 1 and "record_account_states(" in added[0]


async def test_two_replicas_receiving_the_same_devices_frames_record_one_stopout(
    res: Resources, device: KeyCredentials
) -> None:
    """The device moves to a second gateway replica while the first still applies its frame: the same
    crossing state reaches both, each measures the limit in its own transaction; one stopout is recorded."""
    now = datetime.now(UTC)
    limit = Limit.of(RiskPeriod.DAY, RiskMetric.LOSS, None, Decimal(5), RiskAction.STOP_OPENING, now)
    async with res.sessions.begin() as session:
        session.add(RiskPolicy(device_id=device.id, limits=[limit.to_json()]))
    async with gateway(res, **QUIET) as (_, first), gateway(res, **QUIET) as (_, second):
        async with stream(first, device) as early:
            baseline = state_frame(now - timedelta(seconds=2), balance="10000", equity="10000")
            assert (await early.receipt(baseline)).status == ACCEPTED
        # Two states under the limit, the second newer: each replica stores and measures the one it got.
        crossing = [state_frame(now - timedelta(seconds=n), balance="10000", equity="9000") for n in (1, 0)]
        async with stream(first, device) as one:
            await one.send(crossing[0])
            async with stream(second, device) as other:  # takes the device over
                assert (await other.receipt(crossing[1])).status == ACCEPTED

                async def stopouts() -> list[Stopout]:
                    async with res.sessions() as session:
                        return list(await session.scalars(select(Stopout).where(Stopout.device_id == device.id)))

                await eventually(lambda: _one(stopouts()), "the crossing state to be measured")
                await asyncio.sleep(0.5)  # the first replica's transaction has long committed by now
                assert len(await stopouts()) == 1


async def _one(found: Any) -> bool:
    return len(await found) == 1


async def test_states_alone_are_one_statement_unless_a_limit_is_reached(
    res: Resources, user: UserCredentials, device: KeyCredentials
) -> None:
    """A batch of nothing but account states commits as one statement, repeats found in the batch and in
    the table; one that would reach a limit changes nothing and says so, and the transaction that applies
    it instead records the stopout with what it sets off (here CLOSE_ALL's close commands)."""
    book = await Book.open(res, user.id)
    held = [await book.position(device.id) for _ in range(2)]
    now = datetime.now(UTC)
    limit = Limit.of(RiskPeriod.DAY, RiskMetric.LOSS, None, Decimal(5), RiskAction.CLOSE_ALL, now)
    async with res.sessions.begin() as session:
        session.add(RiskPolicy(device_id=device.id, limits=[limit.to_json()]))
    first = state_report(device.id, now - timedelta(seconds=3), "1000.00", frame_id="s-1")
    alone = await deliveries.record_alone(res.sessions, [first, first], now)
    assert alone is not None and alone.outcomes == [deliveries.ACCEPTED, deliveries.DUPLICATE]
    assert [s.equity for s in alone.account_states] == [Decimal("1000.00")]
    again = await deliveries.record_alone(res.sessions, [first], now)
    assert again is not None and again.outcomes == [deliveries.DUPLICATE] and again.account_states == []

    crossing = state_report(device.id, now - timedelta(seconds=1), "900.00", frame_id="s-2")
    assert await deliveries.record_alone(res.sessions, [crossing], now) is None
    state = await stored_state(res, device.id)
    assert state is not None and (state.frame_id, state.equity) == ("s-1", Decimal("1000.00"))  # unchanged

    async with res.sessions.begin() as session:
        recorded = await deliveries.record_reports(session, [crossing], now)
    assert recorded.outcomes == [deliveries.ACCEPTED] and sorted(recorded.position_ids) == sorted(held)
    async with res.sessions() as session:
        (stopout,) = await session.scalars(select(Stopout).where(Stopout.device_id == device.id))
        commands = list(await session.scalars(select(CloseCommand).where(CloseCommand.device_id == device.id)))
    assert (stopout.reference, stopout.value) == (Decimal("1000.00"), Decimal("100.00"))
    assert sorted(c.position_id for c in commands) == sorted(held)
