"""backoffice.positions: profit from the Hello's tick value, partial and full closes, failed closes, and
the rest of a whole close (volume a further fill added while its command was out) closed too."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import select

from backoffice import deliveries, positions
from backoffice.bootstrap import Resources
from backoffice.devices.hello import Hello
from backoffice.models import CloseCommand, CloseCommandStatus, CloseReason, Position, PositionStatus, Side
from tests.conftest import KeyCredentials, UserCredentials
from tests.gateway.support import Book, row

GOLD = Hello.from_json({"symbols": {"GOLD.m": {"tick_size": "0.01", "tick_value": "1"}}})
NOW = datetime(2030, 1, 1, tzinfo=UTC)


def _target(volume: str = "0.30", side: Side = Side.BUY) -> positions.CloseTarget:
    position = positions.PositionState(
        id=uuid.uuid4(),
        status=PositionStatus.OPEN,
        volume=Decimal(volume),
        entry_price=Decimal("2034.25"),
        side=side,
        instrument="GOLD.m",
        profit=None,
        close_price=None,
        closed_at=None,
    )
    return positions.CloseTarget(uuid.uuid4(), uuid.uuid4(), CloseCommandStatus.SENT, Decimal("0.10"), position)


def test_profit_follows_the_side_and_the_tick_value() -> None:
    up = Decimal("2040.25")
    assert positions.realised_profit(Side.BUY, Decimal("2034.25"), up, Decimal("0.10"), GOLD, "GOLD.m") == 60
    assert positions.realised_profit(Side.SELL, Decimal("2034.25"), up, Decimal("0.10"), GOLD, "GOLD.m") == -60
    assert positions.realised_profit(Side.BUY, Decimal("2034.25"), up, Decimal("0.10"), GOLD, "OTHER") is None
    assert positions.realised_profit(Side.BUY, Decimal("2034.25"), up, Decimal("0.10"), None, "GOLD.m") is None


def test_a_partial_close_reduces_then_a_full_one_closes() -> None:
    target = _target("0.30")
    positions.apply_close(
        target, success=True, close_price=Decimal("2040.25"), closed_volume=None, error="", account=GOLD, now=NOW
    )
    position = target.position
    assert (target.status, target.closed_volume) == (CloseCommandStatus.SUCCEEDED, Decimal("0.10"))
    assert (position.status, position.volume, position.profit) == (PositionStatus.OPEN, Decimal("0.20"), Decimal(60))
    rest = positions.CloseTarget(uuid.uuid4(), target.device_id, CloseCommandStatus.SENT, Decimal("0.20"), position)
    positions.apply_close(
        rest, success=True, close_price=Decimal("2035.25"), closed_volume=None, error="", account=GOLD, now=NOW
    )
    assert (position.status, position.close_price, position.closed_at) == (
        PositionStatus.CLOSED,
        Decimal("2035.25"),
        NOW,
    )
    assert position.profit == 80  # 60 + (2035.25 - 2034.25) * 0.20 / 0.01


def test_a_failed_close_is_kept_for_a_person() -> None:
    target = _target()
    positions.apply_close(target, success=False, close_price=None, closed_volume=None, error="", account=GOLD, now=NOW)
    assert target.status is CloseCommandStatus.FAILED and target.error
    assert target.position.status is PositionStatus.CLOSED_ERROR


@pytest.fixture
async def book(res: Resources, user: UserCredentials) -> Book:
    return await Book.open(res, user.id)


async def test_a_partial_close_result_is_written(res: Resources, device: KeyCredentials, book: Book) -> None:
    position_id = await book.position(device.id, volume="0.30")
    command_id = await book.close_command(device.id, position_id, volume="0.10", reason=CloseReason.MANUAL)
    report = deliveries.CloseReport(command_id, True, Decimal("2036.25"), None, "")
    async with res.sessions.begin() as session:
        [outcome] = (
            await deliveries.record_reports(
                session, [deliveries.DeviceReport(device.id, "close-1", report)], datetime.now(UTC)
            )
        ).outcomes
    assert outcome.verdict is deliveries.Verdict.ACCEPTED
    command = await row(res, CloseCommand, command_id)
    assert (command.status, command.closed_volume, command.reason) == (
        CloseCommandStatus.SUCCEEDED,
        Decimal("0.10"),
        CloseReason.MANUAL,
    )
    position = await row(res, Position, position_id)
    # No Hello from this device yet: the tick value is unknown, so is the profit.
    assert (position.status, position.volume, position.profit) == (PositionStatus.OPEN, Decimal("0.20"), None)


@pytest.mark.parametrize("reason", [CloseReason.STOP_LOSS, CloseReason.MANUAL])
async def test_the_rest_of_a_whole_close_gets_its_own_command(
    res: Resources, device: KeyCredentials, book: Book, reason: CloseReason
) -> None:
    """A close of the whole position (a stop-loss, or a person closing all of it) went out for 0.10; a
    further fill of the delivery added 0.20 meanwhile. The result closes the 0.10 and the 0.20 left gets a
    close command of its own, with the same reason. (A partial close's rest stays open: the test above.)"""
    position_id = await book.position(device.id, volume="0.30")
    command_id = await book.close_command(device.id, position_id, volume="0.10", reason=reason, whole=True)
    report = deliveries.CloseReport(command_id, True, Decimal("2030.25"), None, "")
    async with res.sessions.begin() as session:
        recorded = await deliveries.record_reports(
            session, [deliveries.DeviceReport(device.id, "close-1", report)], datetime.now(UTC)
        )
    assert recorded.woken == [device.id]  # the gateway pushes the new command at once
    async with res.sessions() as session:
        commands = (
            await session.scalars(
                select(CloseCommand).where(CloseCommand.position_id == position_id).order_by(CloseCommand.created_at)
            )
        ).all()
    assert [(c.id == command_id, c.status, c.volume, c.reason, c.whole) for c in commands] == [
        (True, CloseCommandStatus.SUCCEEDED, Decimal("0.10"), reason, True),
        (False, CloseCommandStatus.PENDING, Decimal("0.20"), reason, True),
    ]
    position = await row(res, Position, position_id)
    assert (position.status, position.volume) == (PositionStatus.CLOSING, Decimal("0.20"))
