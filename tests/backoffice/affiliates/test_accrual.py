"""Accrual: a referred user's fill earns exactly one commission in the right tier, off the uplink's
transaction; duplicate fills, a fill queued twice and two workers at once still give one; the hold
period and its support.release."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import grpc
import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError

from backoffice import worker
from backoffice.affiliates import accrual
from backoffice.bootstrap import Resources
from backoffice.models import (
    AuditEvent,
    Commission,
    CommissionQueueItem,
    LedgerEntryKind,
    Position,
)
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import gateway_pb2 as gw
from tests.backoffice.affiliates import support
from tests.conftest import UserCredentials
from tests.gateway.support import Book, stream


async def queued(res: Resources, fill_event_ids: list[uuid.UUID]) -> int:
    async with res.sessions() as session:
        return int(
            await session.scalar(
                select(func.count())
                .select_from(CommissionQueueItem)
                .where(CommissionQueueItem.fill_event_id.in_(fill_event_ids))
            )
            or 0
        )


async def test_a_fill_through_the_gateway_earns_one_commission(
    backoffice_channel: grpc.aio.Channel,
    gateway_channel: grpc.aio.Channel,
    res: Resources,
    admin: UserCredentials,
) -> None:
    """A real device stream: one fill (its frame sent twice) is queued by the uplink, then accrued by the
    worker into one commission. (A second fill frame for the delivery is a partial fill of its own.)"""
    affiliate, trader = await support.affiliate_and_trader(backoffice_channel, res, admin)
    delivery_id = await (await Book.open(res, trader.user.id)).delivery(trader.device_id)
    async with stream(gateway_channel, trader.device) as device:
        assert (await device.delivery()).delivery_id == str(delivery_id)
        await device.receipt(device.ack(delivery_id, gw.ACK_STAGE_RECEIVED))
        fill = device.fill(delivery_id, volume="0.10")
        assert (await device.receipt(fill)).status == gw.RECEIPT_STATUS_ACCEPTED
        # The same frame again: nothing new is recorded.
        assert (await device.receipt(fill)).status == gw.RECEIPT_STATUS_DUPLICATE
    # The uplink only queued the fill: nothing is accrued until the worker runs.
    assert await support.commissions(backoffice_channel, affiliate.user) == []
    done = await worker.run_once(res)
    assert done["fills_accrued"] >= 1
    found = await support.commissions(backoffice_channel, affiliate.user)
    assert len(found) == 1
    commission = found[0]
    async with res.sessions() as session:
        position = (await session.scalars(select(Position).where(Position.delivery_id == delivery_id))).one()
    # The server's default program: 5.00 a lot below 100 lots this month.
    assert (commission.amount, commission.lots, commission.currency) == ("0.50", "0.10", "USD")
    assert commission.status == pb.COMMISSION_STATUS_PENDING and commission.position_id == str(position.id)
    assert commission.referred_user_id == str(trader.user.id) and commission.affiliate_id == affiliate.id
    assert commission.available_time.ToDatetime(UTC) - commission.create_time.ToDatetime(UTC) < timedelta(days=30)
    assert commission.available_time.ToDatetime(UTC) > datetime.now(UTC) + timedelta(days=29)
    assert await support.money(backoffice_channel, affiliate.user, "pending", "available", "lots") == (
        "0.50",
        "0.00",
        "0.10",
    )
    figures = await support.stats(backoffice_channel, affiliate.user)
    assert (figures.referral_count, figures.active_referral_count) == (1, 1)
    await worker.run_once(res)  # a second round finds nothing more to do for this fill
    assert len(await support.commissions(backoffice_channel, affiliate.user)) == 1


async def test_the_worker_accrues_a_fill_within_moments_of_the_gateway_recording_it(
    backoffice_channel: grpc.aio.Channel,
    gateway_channel: grpc.aio.Channel,
    res: Resources,
    admin: UserCredentials,
) -> None:
    """The gateway rings the commissions doorbell once a batch with fills commits; the worker's accrual
    loop, blocked on it, accrues at once: with its own sweep a minute away, the commission still shows
    within moments of the fill."""
    affiliate, trader = await support.affiliate_and_trader(backoffice_channel, res, admin)
    delivery_id = await (await Book.open(res, trader.user.id)).delivery(trader.device_id)
    stop = asyncio.Event()
    accruing = asyncio.create_task(worker.accrue_commissions(res, stop, sweep=60.0))
    try:
        await asyncio.sleep(0.5)  # its first drain (of anything queued before) is over: it waits for a ring
        async with stream(gateway_channel, trader.device) as device:
            assert (await device.delivery()).delivery_id == str(delivery_id)
            filled = await device.receipt(device.fill(delivery_id, volume="0.10"))
            assert filled.status == gw.RECEIPT_STATUS_ACCEPTED
            deadline = asyncio.get_running_loop().time() + 10
            while not await support.commissions(backoffice_channel, affiliate.user):
                assert asyncio.get_running_loop().time() < deadline, "no commission within 10 s of the fill"
                await asyncio.sleep(0.1)
        [commission] = await support.commissions(backoffice_channel, affiliate.user)
        assert commission.lots == "0.10"
    finally:
        stop.set()
        accruing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await accruing


async def test_tiers_by_the_months_lots_crossed_mid_month_and_restarted(
    backoffice_channel: grpc.aio.Channel, res: Resources, admin: UserCredentials
) -> None:
    """Each fill is priced from the month's lots of all referred users so far; a new month starts again."""
    affiliate, trader = await support.affiliate_and_trader(backoffice_channel, res, admin)
    other_trader = await support.make_trader(backoffice_channel, res, admin, affiliate)
    march = datetime(2031, 3, 10, 12, tzinfo=UTC)
    # 5.00 a lot up to 1 lot, 7.00 up to 2, then 10.00; the month's lots are all referred users' lots.
    await support.record_fills(res, trader, ["0.6"], now=march)
    await support.record_fills(res, other_trader, ["0.6"], now=march + timedelta(hours=1))
    await support.record_fills(res, trader, ["1.0"], now=march + timedelta(days=5))
    await support.record_fills(res, trader, ["0.3"], now=march + timedelta(days=21, hours=11))  # March 31st, 23:00
    await support.record_fills(res, trader, ["0.5"], now=datetime(2031, 4, 1, 0, 0, 5, tzinfo=UTC))
    await support.accrue(res)
    found = sorted(
        await support.commissions(backoffice_channel, affiliate.user), key=lambda c: c.available_time.ToDatetime()
    )
    assert [(c.lots, c.month_lots_before, c.amount) for c in found] == [
        ("0.6", "0", "3.00"),  # all of it in the first tier
        ("0.6", "0.6", "3.40"),  # 0.4 at 5.00 and 0.2 at 7.00: the boundary crossed mid-fill
        ("1.0", "1.2", "7.60"),  # 0.8 at 7.00 and 0.2 at 10.00
        ("0.3", "2.2", "3.00"),  # the top tier
        ("0.5", "0", "2.50"),  # April starts from nothing
    ]
    figures = await support.stats(backoffice_channel, affiliate.user)
    assert [(m.month, m.lots, m.commission_total, m.fill_count) for m in figures.months] == [
        ("2031-04", "0.5", "2.50", 1),
        ("2031-03", "2.5", "17.00", 4),
    ]
    assert (figures.lots, figures.commission_pending, figures.active_referral_count) == ("3.0", "19.50", 2)


async def test_duplicate_queue_rows_and_two_workers_give_one_commission_per_fill(
    backoffice_channel: grpc.aio.Channel, res: Resources, admin: UserCredentials
) -> None:
    """Two workers drain 1,200 fills at once; re-queued fills earn nothing more; the unique key refuses a twin."""
    affiliate, trader = await support.affiliate_and_trader(backoffice_channel, res, admin)
    june = datetime(2031, 6, 15, tzinfo=UTC)
    fills = await support.record_fills(res, trader, ["0.01"] * 1200, now=june)
    assert await queued(res, fills) == 1200
    taken = await asyncio.gather(support.accrue(res), support.accrue(res))
    assert sum(taken) >= 1200 and all(taken)  # both workers took batches
    assert await queued(res, fills) == 0
    found = await support.commissions(backoffice_channel, affiliate.user)
    assert sorted(c.execution_event_id for c in found) == sorted(str(f) for f in fills)
    # The workers took turns on the affiliate, so the tiers still come out right: 100 fills at 0.05,
    # 100 at 0.07, 1,000 at 0.10.
    assert (
        sorted(Decimal(c.amount) for c in found)
        == [Decimal("0.05")] * 100 + [Decimal("0.07")] * 100 + [Decimal("0.10")] * 1000
    )
    assert (await support.stats(backoffice_channel, affiliate.user)).commission_pending == "112.00"
    # A fill queued again (reported twice) is taken and earns nothing more.
    async with res.sessions.begin() as session:
        await session.execute(
            insert(CommissionQueueItem),
            [
                {
                    "fill_event_id": fill,
                    "device_id": trader.device_id,
                    "delivery_id": uuid.uuid4(),
                    "lots": Decimal("0.01"),
                    "filled_at": june,
                }
                for fill in fills[:10]
            ],
        )
    await support.accrue(res)
    assert await queued(res, fills) == 0
    assert len(await support.commissions(backoffice_channel, affiliate.user)) == 1200
    # And the constraint itself refuses a second commission for a fill, whoever writes it.
    async with res.sessions() as session:
        first = (await session.scalars(select(Commission).where(Commission.fill_event_id == fills[0]))).one()
    twin = {c.key: getattr(first, c.key) for c in Commission.__table__.columns if c.key != "created_at"}
    with pytest.raises(IntegrityError, match="uq_commissions_fill_event_id"):
        async with res.sessions.begin() as session:
            await session.execute(insert(Commission).values({**twin, "id": uuid.uuid4()}))


async def test_fills_of_users_nobody_referred_earn_nothing(
    backoffice_channel: grpc.aio.Channel, res: Resources, admin: UserCredentials
) -> None:
    affiliate = await support.make_affiliate(backoffice_channel, res)
    stranger = await support.make_trader(backoffice_channel, res, admin, None)
    fills = await support.record_fills(res, stranger, ["1.0", "2.0"])
    await support.accrue(res)
    assert await queued(res, fills) == 0
    async with res.sessions() as session:
        assert await session.scalar(select(func.count()).where(Commission.fill_event_id.in_(fills))) == 0
    assert (await support.stats(backoffice_channel, affiliate.user)).commission_total == "0.00"


async def test_pending_for_the_hold_period_then_available(
    backoffice_channel: grpc.aio.Channel, res: Resources, admin: UserCredentials
) -> None:
    """PENDING until its fill time plus the hold, then AVAILABLE once, with its ledger entries and audit events."""
    affiliate, trader = await support.affiliate_and_trader(backoffice_channel, res, admin)
    filled = datetime(2031, 7, 1, 12, tzinfo=UTC)
    await support.record_fills(res, trader, ["2.5"], now=filled)  # 1 at 5.00, 1 at 7.00, 0.5 at 10.00
    await support.accrue(res)
    (commission,) = await support.commissions(backoffice_channel, affiliate.user)
    assert (commission.amount, commission.status) == ("17.00", pb.COMMISSION_STATUS_PENDING)
    assert commission.available_time.ToDatetime(UTC) == filled + timedelta(days=30)
    await support.release(res, filled + timedelta(days=30) - timedelta(seconds=1))
    (commission,) = await support.commissions(backoffice_channel, affiliate.user)
    assert commission.status == pb.COMMISSION_STATUS_PENDING
    assert await support.money(backoffice_channel, affiliate.user, "pending", "available") == ("17.00", "0.00")
    assert await support.release(res, filled + timedelta(days=30)) >= 1
    (commission,) = await support.commissions(backoffice_channel, affiliate.user)
    assert commission.status == pb.COMMISSION_STATUS_AVAILABLE
    figures = ("pending", "available", "total")
    assert await support.money(backoffice_channel, affiliate.user, *figures) == ("0.00", "17.00", "17.00")
    await support.release(res, filled + timedelta(days=40))  # released once only
    kinds = await support.ledger_kinds(res, affiliate.id)
    assert kinds == [LedgerEntryKind.ACCRUAL, LedgerEntryKind.HOLD_RELEASE]
    async with res.sessions() as session:
        audited = (
            await session.scalars(
                select(AuditEvent.action)
                .where(AuditEvent.object_id == uuid.UUID(commission.id))
                .order_by(AuditEvent.created_at)
            )
        ).all()
    assert audited == ["AccrueCommission", "ReleaseCommission"]


async def test_the_uplink_only_queues(
    res: Resources, backoffice_channel: grpc.aio.Channel, admin: UserCredentials
) -> None:
    """What the hot transaction writes for a fill is one queue row naming the device: no commission, no
    ledger entry, no lookup of who referred whom."""
    _, trader = await support.affiliate_and_trader(backoffice_channel, res, admin)
    (fill,) = await support.record_fills(res, trader, ["1.5"])
    async with res.sessions() as session:
        item = await session.get_one(CommissionQueueItem, fill)
        assert await session.scalar(select(func.count()).where(Commission.fill_event_id == fill)) == 0
    assert (item.device_id, item.lots) == (trader.device_id, Decimal("1.5"))
    assert await accrual.drain(res.sessions, support.PROGRAM) >= 1
