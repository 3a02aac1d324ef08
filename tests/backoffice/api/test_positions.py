"""PositionService through the generated stubs on real Postgres: listing and filtering, a position's
events, full and partial closes (idempotent, refused when not OPEN or CLOSED_ERROR, partial ones on the
symbol's volume step and leaving nothing or at least its minimum), moving the hidden levels (refused
when a level would fire at once against the latest fresh quote), and another user's positions NOT_FOUND
everywhere."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import grpc
import pytest
from sqlalchemy import update

from backoffice.bootstrap import Resources
from backoffice.devices.hello import Hello, SymbolSpec
from backoffice.models import CloseCommand, Device, Position, PositionStatus, Side
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import backoffice_pb2_grpc as rpc
from signalhub.v1 import common_pb2
from tests.backoffice.api.test_signals import signal_request, submit
from tests.backoffice.monitor.support import instrument, quote
from tests.backoffice.monitor.support import submit as submit_quotes
from tests.conftest import KeyCredentials, RpcFailure, UserCredentials, make_device, make_user, rpc_failure
from tests.gateway.support import Book, row


@pytest.fixture
async def book(res: Resources, user: UserCredentials) -> Book:
    return await Book.open(res, user.id)


def stub(channel: grpc.aio.Channel) -> rpc.PositionServiceStub:
    return rpc.PositionServiceStub(channel)


async def failure(call: object) -> RpcFailure:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return rpc_failure(info.value)


async def test_users_list_and_get_their_positions(
    res: Resources, backoffice_channel: grpc.aio.Channel, user: UserCredentials, device: KeyCredentials, book: Book
) -> None:
    """A user lists their positions newest first (filtered by instrument, either name, device and status)
    and gets one with its hidden levels; listing leaves the events out."""
    symbol = instrument()
    other_device = await make_device(res, user)
    first = await book.position(device.id, signal_instrument=symbol, instrument=f"{symbol}.b")
    second = await book.position(other_device.id, signal_instrument=symbol, side=Side.SELL, stop_loss="2040")
    positions = stub(backoffice_channel)
    listed = await positions.ListPositions(pb.ListPositionsRequest(instrument=symbol), metadata=user.metadata)
    assert [p.id for p in listed.positions] == [str(second), str(first)]  # newest first
    assert all(p.events == [] for p in listed.positions)  # events only come with GetPosition
    by_symbol = await positions.ListPositions(pb.ListPositionsRequest(instrument=f"{symbol}.b"), metadata=user.metadata)
    assert [p.id for p in by_symbol.positions] == [str(first)]
    by_device = await positions.ListPositions(
        pb.ListPositionsRequest(device_id=str(other_device.id), status=pb.POSITION_STATUS_OPEN), metadata=user.metadata
    )
    assert [p.id for p in by_device.positions] == [str(second)]
    closed = await positions.ListPositions(
        pb.ListPositionsRequest(instrument=symbol, status=pb.POSITION_STATUS_CLOSED), metadata=user.metadata
    )
    assert list(closed.positions) == []
    got = await positions.GetPosition(pb.GetPositionRequest(id=str(first)), metadata=user.metadata)
    assert (got.user_id, got.device_id, got.signal_instrument, got.instrument) == (
        str(user.id),
        str(device.id),
        symbol,
        f"{symbol}.b",
    )
    assert (got.entry_price, got.stop_loss, got.take_profit, got.status) == (
        "2034.25",
        "2030.55",
        "2040.77",
        pb.POSITION_STATUS_OPEN,
    )


async def test_a_partial_close_is_idempotent_and_leaves_the_position_closing(
    res: Resources, backoffice_channel: grpc.aio.Channel, user: UserCredentials, device: KeyCredentials, book: Book
) -> None:
    """A partial close is a MANUAL command for that volume, the same request_id gives it back, and a
    position with a command out is not OPEN (FAILED_PRECONDITION); the command and its event are listed."""
    position_id = await book.position(device.id, volume="0.30")
    positions = stub(backoffice_channel)
    request = pb.ClosePositionRequest(id=str(position_id), volume="0.10", request_id=str(uuid.uuid4()))
    command = await positions.ClosePosition(request, metadata=user.metadata)
    assert (command.volume, command.reason, command.status, command.device_id) == (
        "0.10",
        common_pb2.CLOSE_REASON_MANUAL,
        pb.CLOSE_COMMAND_STATUS_PENDING,
        str(device.id),
    )
    assert await positions.ClosePosition(request, metadata=user.metadata) == command  # idempotent
    assert not (await row(res, CloseCommand, uuid.UUID(command.id))).whole  # part of it: the rest stays open
    assert (await row(res, Position, position_id)).status is PositionStatus.CLOSING
    again = await failure(positions.ClosePosition(pb.ClosePositionRequest(id=str(position_id)), metadata=user.metadata))
    assert (again.code, again.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "POSITION_NOT_OPEN")
    listed = await positions.ListCloseCommands(
        pb.ListCloseCommandsRequest(position_id=str(position_id)), metadata=user.metadata
    )
    assert [c.id for c in listed.close_commands] == [command.id]
    [event] = [
        e
        for e in (
            await positions.GetPosition(pb.GetPositionRequest(id=str(position_id)), metadata=user.metadata)
        ).events
        if e.type == pb.POSITION_EVENT_TYPE_CLOSE_REQUESTED
    ]
    assert (event.volume, event.close_command_id, event.actor_id) == ("0.10", command.id, str(user.id))


@pytest.mark.parametrize(("volume", "problem"), [("0.31", "must not exceed"), ("-1", "greater than zero"), ("x", "")])
async def test_a_close_volume_must_fit(
    backoffice_channel: grpc.aio.Channel,
    user: UserCredentials,
    device: KeyCredentials,
    book: Book,
    volume: str,
    problem: str,
) -> None:
    position_id = await book.position(device.id, volume="0.30")
    refused = await failure(
        stub(backoffice_channel).ClosePosition(
            pb.ClosePositionRequest(id=str(position_id), volume=volume), metadata=user.metadata
        )
    )
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT and problem in refused.violations["volume"]


@pytest.mark.parametrize(
    ("volume", "problem"),
    [("0.105", "must be a multiple of GOLD.m's volume step 0.01"), ("0.25", "would leave 0.05 lots, under")],
)
async def test_a_partial_close_is_one_the_broker_can_make(
    res: Resources,
    backoffice_channel: grpc.aio.Channel,
    user: UserCredentials,
    device: KeyCredentials,
    book: Book,
    volume: str,
    problem: str,
) -> None:
    """On the symbol's volume step (from the device's Hello), and leaving nothing or at least the symbol's
    minimum: 0.001 of 0.10 would leave 0.099, a volume no broker holds."""
    spec = SymbolSpec(volume_min=Decimal("0.10"), volume_step=Decimal("0.01"), volume_max=Decimal(100))
    async with res.sessions.begin() as session:
        hello = Hello(account_currency="USD", symbols={"GOLD.m": spec}).to_json()
        await session.execute(update(Device).where(Device.id == device.id).values(last_hello=hello))
    position_id = await book.position(device.id, volume="0.30")
    positions = stub(backoffice_channel)
    refused = await failure(
        positions.ClosePosition(pb.ClosePositionRequest(id=str(position_id), volume=volume), metadata=user.metadata)
    )
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT and problem in refused.violations["volume"]
    assert (await row(res, Position, position_id)).status is PositionStatus.OPEN  # nothing changed
    command = await positions.ClosePosition(
        pb.ClosePositionRequest(id=str(position_id), volume="0.20"), metadata=user.metadata
    )
    assert command.volume == "0.20"


async def test_a_position_whose_close_failed_may_be_closed_again(
    res: Resources, backoffice_channel: grpc.aio.Channel, user: UserCredentials, device: KeyCredentials, book: Book
) -> None:
    """CLOSED_ERROR (the device could not close it, or never answered) waits for a person: its owner may
    send a new close command; a CLOSED position may not."""
    failed, closed = await book.position(device.id), await book.position(device.id)
    async with res.sessions.begin() as session:
        await session.execute(update(Position).where(Position.id == failed).values(status=PositionStatus.CLOSED_ERROR))
        await session.execute(update(Position).where(Position.id == closed).values(status=PositionStatus.CLOSED))
    positions = stub(backoffice_channel)
    command = await positions.ClosePosition(pb.ClosePositionRequest(id=str(failed)), metadata=user.metadata)
    assert (command.status, command.volume) == (pb.CLOSE_COMMAND_STATUS_PENDING, "0.10")
    assert (await row(res, Position, failed)).status is PositionStatus.CLOSING
    refused = await failure(positions.ClosePosition(pb.ClosePositionRequest(id=str(closed)), metadata=user.metadata))
    assert (refused.code, refused.reason, refused.metadata["status"]) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "POSITION_NOT_OPEN",
        "CLOSED",
    )


async def test_an_admin_closes_anyones_position_as_admin(
    res: Resources, backoffice_channel: grpc.aio.Channel, admin: UserCredentials, device: KeyCredentials, book: Book
) -> None:
    position_id = await book.position(device.id)
    command = await stub(backoffice_channel).ClosePosition(
        pb.ClosePositionRequest(id=str(position_id)), metadata=admin.metadata
    )
    assert command.reason == common_pb2.CLOSE_REASON_ADMIN and command.volume == "0.10"
    assert (await row(res, CloseCommand, uuid.UUID(command.id))).whole  # all of it, whatever is added meanwhile


async def test_update_protection_moves_and_removes_levels(
    backoffice_channel: grpc.aio.Channel, user: UserCredentials, device: KeyCredentials, book: Book
) -> None:
    """Levels are set, moved and removed (a trailing stop starts at the entry without a fresh quote, and
    never loosens a tighter stop); each change is a PROTECTION_UPDATED event."""
    position_id = await book.position(device.id, signal_instrument=instrument(), entry="100", stop_loss="95")
    positions = stub(backoffice_channel)
    request = pb.UpdateProtectionRequest(
        id=str(position_id),
        request_id=str(uuid.uuid4()),
        stop_loss="97",
        take_profit="",
        trailing_distance="4",
        breakeven_trigger="3",
        breakeven_offset="0.5",
    )
    updated = await positions.UpdateProtection(request, metadata=user.metadata)
    # The trailing stop starts at the entry (no fresh quote): 100 - 4 = 96, looser than 97: 97 stays.
    assert (updated.stop_loss, updated.take_profit, updated.trailing_distance, updated.best_price) == (
        "97",
        "",
        "4",
        "100",
    )
    assert (updated.breakeven_trigger, updated.breakeven_offset, updated.breakeven_done) == ("3", "0.5", False)
    assert await positions.UpdateProtection(request, metadata=user.metadata) == updated  # idempotent
    [event] = [e for e in updated.events if e.type == pb.POSITION_EVENT_TYPE_PROTECTION_UPDATED]
    assert (event.stop_loss, event.take_profit, event.actor_id) == ("97", "", str(user.id))
    removed = await positions.UpdateProtection(
        pb.UpdateProtectionRequest(id=str(position_id), trailing_distance="", breakeven_trigger=""),
        metadata=user.metadata,
    )
    assert (removed.stop_loss, removed.trailing_distance, removed.best_price, removed.breakeven_trigger) == (
        "97",
        "",
        "",
        "",
    )


async def test_levels_that_would_fire_at_once_are_invalid_argument(
    backoffice_channel: grpc.aio.Channel,
    user: UserCredentials,
    device: KeyCredentials,
    book: Book,
) -> None:
    """Against the latest fresh quote (bid 101): a BUY's stop at or above it, its target at or below it,
    a trailing stop whose first level would; a stale quote is no reference."""
    symbol = instrument()
    position_id = await book.position(
        device.id, signal_instrument=symbol, entry="105", stop_loss=None, take_profit=None
    )
    positions = stub(backoffice_channel)

    async def refused(**fields: str) -> RpcFailure:
        request = pb.UpdateProtectionRequest(id=str(position_id), **fields)
        return await failure(positions.UpdateProtection(request, metadata=user.metadata))

    await submit_quotes(backoffice_channel, book.producer, quote(symbol, "101", "101.02"))
    assert set((await refused(stop_loss="101")).violations) == {"stop_loss"}
    assert set((await refused(stop_loss="102", take_profit="101")).violations) == {"stop_loss", "take_profit"}
    assert set((await refused(trailing_distance="3")).violations) == {"trailing_distance"}  # 105 - 3 >= 101
    assert set((await refused(breakeven_trigger="1", breakeven_offset="1")).violations) == {"breakeven_offset"}
    assert set((await refused(stop_loss="x")).violations) == {"stop_loss"}
    fine = await positions.UpdateProtection(
        pb.UpdateProtectionRequest(id=str(position_id), stop_loss="100.5", take_profit="101.5", trailing_distance="5"),
        metadata=user.metadata,
    )
    assert (fine.stop_loss, fine.take_profit, fine.best_price) == ("100.5", "101.5", "105")
    stale = datetime.now(UTC) - timedelta(seconds=600)
    await submit_quotes(backoffice_channel, book.producer, quote(symbol, "50", at=stale))  # older: not even stored
    other = await book.position(device.id, signal_instrument=instrument(), entry="105", stop_loss=None)
    moved = await positions.UpdateProtection(
        pb.UpdateProtectionRequest(id=str(other), stop_loss="104"), metadata=user.metadata
    )
    assert moved.stop_loss == "104"  # no fresh quote for that instrument: nothing to fire against
    wrong_order = await failure(
        positions.UpdateProtection(pb.UpdateProtectionRequest(id=str(other), take_profit="103"), metadata=user.metadata)
    )
    assert set(wrong_order.violations) == {"stop_loss"}  # a BUY's stop must stay below its target


async def test_only_open_positions_take_new_levels(
    res: Resources, backoffice_channel: grpc.aio.Channel, user: UserCredentials, device: KeyCredentials, book: Book
) -> None:
    position_id = await book.position(device.id)
    positions = stub(backoffice_channel)
    await positions.ClosePosition(pb.ClosePositionRequest(id=str(position_id)), metadata=user.metadata)
    refused = await failure(
        positions.UpdateProtection(
            pb.UpdateProtectionRequest(id=str(position_id), stop_loss="1"), metadata=user.metadata
        )
    )
    assert (refused.code, refused.reason, refused.metadata["status"]) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "POSITION_NOT_OPEN",
        "CLOSING",
    )


async def test_another_users_position_is_not_found_everywhere(
    res: Resources, backoffice_channel: grpc.aio.Channel, user: UserCredentials, device: KeyCredentials, book: Book
) -> None:
    """Get, close and protect answer NOT_FOUND for another user's position, lists show nothing of it,
    and nothing changes."""
    position_id = await book.position(device.id)
    await book.close_command(device.id, position_id)
    stranger = await make_user(res)
    positions = stub(backoffice_channel)
    for call in (
        positions.GetPosition(pb.GetPositionRequest(id=str(position_id)), metadata=stranger.metadata),
        positions.ClosePosition(
            pb.ClosePositionRequest(id=str(position_id), request_id=str(uuid.uuid4())), metadata=stranger.metadata
        ),
        positions.UpdateProtection(
            pb.UpdateProtectionRequest(id=str(position_id), stop_loss="1"), metadata=stranger.metadata
        ),
    ):
        refused = await failure(call)
        assert (refused.code, refused.metadata["kind"]) == (grpc.StatusCode.NOT_FOUND, "position")
    for request in (pb.ListPositionsRequest(device_id=str(device.id)), pb.ListPositionsRequest()):
        assert list((await positions.ListPositions(request, metadata=stranger.metadata)).positions) == []
    for listing in (
        pb.ListCloseCommandsRequest(position_id=str(position_id)),
        pb.ListCloseCommandsRequest(device_id=str(device.id)),
    ):
        assert list((await positions.ListCloseCommands(listing, metadata=stranger.metadata)).close_commands) == []
    position = await row(res, Position, position_id)
    assert (position.status, position.stop_loss) == (PositionStatus.OPEN, Decimal("2030.55"))  # nothing changed
    async with res.sessions() as session:
        assert await session.get(CloseCommand, uuid.uuid4()) is None


async def test_a_signal_carries_hidden_trailing_and_breakeven(
    backoffice_channel: grpc.aio.Channel, producer: KeyCredentials
) -> None:
    signal = await submit(
        backoffice_channel,
        producer,
        signal_request(trailing_distance="5.5", breakeven_trigger="10", breakeven_offset="1"),
    )
    assert (signal.trailing_distance, signal.breakeven_trigger, signal.breakeven_offset) == ("5.5", "10", "1")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await submit(
            backoffice_channel,
            producer,
            signal_request(trailing_distance="0", breakeven_trigger="1", breakeven_offset="2"),
        )
    refused = rpc_failure(info.value)
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(refused.violations) == {"trailing_distance", "breakeven_offset"}
