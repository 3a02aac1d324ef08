"""The ledger: append-only and gapless in the database, the check that recomputes every balance (and
catches a tampered one), and 10,000 small fills whose support.commissions sum exactly to the balances."""

from __future__ import annotations

import decimal
import uuid
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

import grpc
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from backoffice.affiliates import ledger
from backoffice.bootstrap import Resources
from backoffice.models import AffiliateLedgerEntry
from signalhub.v1 import backoffice_pb2 as pb
from tests.backoffice.affiliates import support
from tests.conftest import UserCredentials


def expected_amounts(lots: list[Decimal]) -> list[Decimal]:
    """The program's rule, written out again as the test's oracle: the month's lots so far decide how
    much of each fill falls in each tier; the exact sum is rounded once, to the cent, half to even."""
    bounds = [(tier.from_lots, tier.rate) for tier in support.PROGRAM.tiers]
    amounts, volume = [], Decimal(0)
    for fill in lots:
        exact = Decimal(0)
        for index, (start, rate) in enumerate(bounds):
            end = bounds[index + 1][0] if index + 1 < len(bounds) else None
            low, high = max(volume, start), volume + fill if end is None else min(volume + fill, end)
            if high > low:
                exact += (high - low) * rate
        amounts.append(exact.quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN))
        volume += fill
    return amounts


async def test_ten_thousand_small_fills_sum_exactly(
    backoffice_channel: grpc.aio.Channel, res: Resources, admin: UserCredentials
) -> None:
    """Every commission is what the rule says, and their sum is exactly the balance, released and paid out."""
    affiliate, trader = await support.affiliate_and_trader(backoffice_channel, res, admin)
    # Sizes whose products end in half a cent, so the rounding rule shows (0.015 x 5.00 = 0.075).
    sizes = ["0.01", "0.015", "0.003", "0.025", "0.007"]
    lots = [sizes[i % len(sizes)] for i in range(10_000)]
    filled = datetime(2031, 11, 3, tzinfo=UTC)
    fills = await support.record_fills(res, trader, lots, now=filled)
    await support.accrue(res)
    found = await support.commissions(backoffice_channel, affiliate.user)
    assert len(found) == 10_000 and {c.execution_event_id for c in found} == {str(f) for f in fills}
    # Priced in the order received: the same server time for all, so by the fill's event id.
    in_order = sorted(found, key=lambda c: uuid.UUID(c.execution_event_id))
    assert [Decimal(c.amount) for c in in_order] == expected_amounts([Decimal(c.lots) for c in in_order])
    total = sum((Decimal(c.amount) for c in found), Decimal(0))
    with decimal.localcontext() as exact:
        exact.traps[decimal.Inexact] = True
        unrounded = sum(Decimal(c.lots) for c in found)
    assert unrounded == Decimal("120.00")
    figures = await support.stats(backoffice_channel, affiliate.user)
    assert Decimal(figures.commission_pending) == total == Decimal(figures.commission_total)
    assert figures.lots == "120.000" and figures.months[0].fill_count == 10_000
    await support.release(res, filled + timedelta(days=30))
    assert await support.money(backoffice_channel, affiliate.user, "pending", "available") == ("0.00", str(total))
    payout = await support.stub(backoffice_channel).RequestPayout(
        support.payout_request(str(total)), metadata=affiliate.user.metadata, timeout=10
    )
    assert Decimal(payout.amount) == total
    assert await support.money(backoffice_channel, affiliate.user, "available", "reserved") == ("0.00", str(total))


async def test_the_ledger_is_append_only_and_gapless(
    backoffice_channel: grpc.aio.Channel, res: Resources, admin: UserCredentials
) -> None:
    affiliate, trader = await support.affiliate_and_trader(backoffice_channel, res, admin)
    await support.record_fills(res, trader, ["0.5"])
    await support.accrue(res)
    affiliate_id = uuid.UUID(affiliate.id)
    for statement in ("UPDATE affiliate_ledger SET pending = 0", "DELETE FROM affiliate_ledger"):
        with pytest.raises(DBAPIError, match="append-only"):
            async with res.sessions.begin() as session:
                await session.execute(text(statement + " WHERE affiliate_id = :a"), {"a": affiliate_id})
    async with res.sessions() as session:
        last = (
            await session.scalars(select(AffiliateLedgerEntry).where(AffiliateLedgerEntry.affiliate_id == affiliate_id))
        ).one()
    gap = {c.key: getattr(last, c.key) for c in AffiliateLedgerEntry.__table__.columns if c.key != "created_at"}
    with pytest.raises(DBAPIError, match="does not follow"):
        async with res.sessions.begin() as session:
            await session.execute(
                AffiliateLedgerEntry.__table__.insert().values({**gap, "id": uuid.uuid4(), "entry_no": 3})
            )
    negative = {**gap, "id": uuid.uuid4(), "entry_no": 2, "available": Decimal("-0.01")}
    with pytest.raises(DBAPIError, match="not_negative"):
        async with res.sessions.begin() as session:
            await session.execute(AffiliateLedgerEntry.__table__.insert().values(negative))


async def test_the_check_recomputes_every_balance_and_finds_a_tampered_one(
    backoffice_channel: grpc.aio.Channel, res: Resources, admin: UserCredentials
) -> None:
    affiliate, trader = await support.affiliate_and_trader(backoffice_channel, res, admin)
    await support.record_fills(res, trader, ["0.5", "0.7"])
    await support.accrue(res)
    async with res.sessions() as session:
        clean = await ledger.check(session)
    assert clean.problems == () and clean.entries >= 2 and clean.affiliates >= 1
    tampered = await check_after(res, "UPDATE affiliate_ledger SET pending = pending + 1 WHERE entry_no = 1", affiliate)
    assert any(f"affiliate {affiliate.id} entry 1" in problem for problem in tampered), tampered
    tampered = await check_after(res, "UPDATE commissions SET amount = amount + 0.01 WHERE true", affiliate)
    assert any(f"affiliate {affiliate.id}: pending" in problem for problem in tampered), tampered
    assert (await support.commissions(backoffice_channel, affiliate.user))[0].status == pb.COMMISSION_STATUS_PENDING


async def check_after(res: Resources, statement: str, affiliate: support.Affiliate) -> tuple[str, ...]:
    """The check's problems once ``statement`` (its WHERE narrowed to the affiliate) changed rows behind the
    ledger's back, in a transaction then rolled back (triggers off for it alone: the database owner may)."""
    async with res.sessions.begin() as session:
        await session.execute(text("SET LOCAL session_replication_role = replica"))
        await session.execute(text(f"{statement} AND affiliate_id = :a"), {"a": uuid.UUID(affiliate.id)})
        problems = (await ledger.check(session, [uuid.UUID(affiliate.id)])).problems
        await session.rollback()
    return problems
