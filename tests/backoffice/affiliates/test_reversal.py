"""Reversing a fill (ReverseFill, admin, with a reason): a PENDING commission is voided; one already
AVAILABLE is clawed back from the available balance, the rest set against future earnings, never a
negative payout."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import grpc
from sqlalchemy import select

from backoffice.bootstrap import Resources
from backoffice.models import AuditEvent, LedgerEntryKind
from signalhub.v1 import backoffice_pb2 as pb
from tests.backoffice.affiliates import support
from tests.backoffice.affiliates.support import money, reverse
from tests.backoffice.api.test_accounts import expect_failure
from tests.conftest import UserCredentials

K = LedgerEntryKind


async def test_a_fill_reversed_in_its_hold_voids_its_commission(
    backoffice_channel: grpc.aio.Channel, res: Resources, admin: UserCredentials
) -> None:
    """VOID: out of pending, not released later, its lots out of the month's tier volume, audited."""
    affiliate, trader = await support.affiliate_and_trader(backoffice_channel, res, admin)
    filled = datetime(2031, 9, 2, tzinfo=UTC)
    kept, reversed_fill = await support.record_fills(res, trader, ["0.4", "0.4"], now=filled)
    await support.accrue(res)
    voided = await reverse(backoffice_channel, admin, reversed_fill)
    assert (voided.status, voided.clawed_back, voided.reverse_reason, voided.execution_event_id) == (
        pb.COMMISSION_STATUS_VOIDED,
        False,
        "broker cancelled",
        str(reversed_fill),
    )
    assert voided.HasField("reverse_time")
    assert await reverse(backoffice_channel, admin, reversed_fill, "again") == voided  # reversing twice: no change
    assert await money(backoffice_channel, affiliate.user, "pending", "total", "lots") == ("2.00", "2.00", "0.4")
    # The release that follows leaves the voided commission alone.
    await support.release(res, filled + timedelta(days=31))
    states = {c.execution_event_id: c.status for c in await support.commissions(backoffice_channel, affiliate.user)}
    assert states == {str(kept): pb.COMMISSION_STATUS_AVAILABLE, str(reversed_fill): pb.COMMISSION_STATUS_VOIDED}
    assert await money(backoffice_channel, affiliate.user, "available") == ("2.00",)
    assert await support.ledger_kinds(res, affiliate.id) == [K.ACCRUAL, K.ACCRUAL, K.VOID, K.HOLD_RELEASE]
    # Voided lots no longer count towards the month's tier.
    (later,) = await support.record_fills(res, trader, ["0.6"], now=filled + timedelta(days=1))
    await support.accrue(res)
    found = {c.execution_event_id: c for c in await support.commissions(backoffice_channel, affiliate.user)}
    assert (found[str(later)].month_lots_before, found[str(later)].amount) == ("0.4", "3.00")
    async with res.sessions() as session:
        reversal = select(AuditEvent).where(AuditEvent.object_id == uuid.UUID(voided.id))
        audit = (await session.scalars(reversal.where(AuditEvent.action == "ReverseFill"))).one()
    assert audit.actor_id == admin.id and audit.details["reason"] == "broker cancelled"


async def test_a_fill_reversed_after_release_is_clawed_back_against_future_earnings(
    backoffice_channel: grpc.aio.Channel, res: Resources, admin: UserCredentials
) -> None:
    """CLAWBACK: taken from available, the rest owed and paid off by later earnings and a rejected payout."""
    affiliate, trader = await support.affiliate_and_trader(backoffice_channel, res, admin)
    api, me = support.stub(backoffice_channel), affiliate.user
    filled = datetime(2031, 10, 1, tzinfo=UTC)
    (big,) = await support.record_fills(res, trader, ["10"], now=filled)  # 1 x 5.00 + 1 x 7.00 + 8 x 10.00
    await support.accrue(res)
    await support.release(res, filled + timedelta(days=30))
    assert await money(backoffice_channel, me, "available") == ("92.00",)
    payout = await api.RequestPayout(support.payout_request("60.00"), metadata=me.metadata, timeout=10)
    clawed = await reverse(backoffice_channel, admin, big, "chargeback")
    assert (clawed.status, clawed.clawed_back) == (pb.COMMISSION_STATUS_VOIDED, True)
    # 32.00 was available and is taken; the 60.00 already on its way to be paid stays reserved and the
    # affiliate owes it: a negative adjustment, never a negative payout.
    figures = ("available", "reserved", "clawback_due", "total")
    assert await money(backoffice_channel, me, *figures) == ("0.00", "60.00", "60.00", "0.00")
    failure = await expect_failure(api.RequestPayout(support.payout_request("50.00"), metadata=me.metadata))
    assert (failure.code, failure.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_BALANCE")  # type: ignore[attr-defined]
    # New earnings pay off what is owed before any of them is available.
    await support.record_fills(res, trader, ["1"], now=filled + timedelta(days=2))
    await support.accrue(res)
    await support.release(res, filled + timedelta(days=32))
    assert await money(backoffice_channel, me, *figures) == ("0.00", "60.00", "55.00", "5.00")
    # A rejected payout returns to the balance, and pays off the rest of the debt first.
    reject = pb.RejectPayoutRequest(id=payout.id, request_id=support.new_id(), reason="clawed back")
    assert (await api.RejectPayout(reject, metadata=admin.metadata)).status == pb.PAYOUT_STATUS_REJECTED
    assert await money(backoffice_channel, me, *figures) == ("5.00", "0.00", "0.00", "5.00")
    assert await support.ledger_kinds(res, affiliate.id) == [
        K.ACCRUAL,
        K.HOLD_RELEASE,
        K.PAYOUT_REQUESTED,
        K.CLAWBACK,
        K.ACCRUAL,
        K.HOLD_RELEASE,
        K.PAYOUT_REJECTED,
    ]


async def test_reversal_is_admin_only_needs_a_reason_and_a_commission(
    backoffice_channel: grpc.aio.Channel, res: Resources, admin: UserCredentials
) -> None:
    affiliate, trader = await support.affiliate_and_trader(backoffice_channel, res, admin)
    stranger = await support.make_trader(backoffice_channel, res, admin, None)
    (fill,) = await support.record_fills(res, trader, ["0.2"])
    (unreferred,) = await support.record_fills(res, stranger, ["0.2"])
    denied = await expect_failure(reverse(backoffice_channel, affiliate.user, fill))
    assert denied.code == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    no_reason = await expect_failure(reverse(backoffice_channel, admin, fill, reason="  "))
    assert (no_reason.code, set(no_reason.violations)) == (grpc.StatusCode.INVALID_ARGUMENT, {"reason"})  # type: ignore[attr-defined]
    for unknown in (unreferred, uuid.uuid4()):
        missing = await expect_failure(reverse(backoffice_channel, admin, unknown))
        assert missing.code == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    # A fill the worker has not reached yet is accrued, then reversed.
    voided = await reverse(backoffice_channel, admin, fill)
    assert (voided.status, voided.amount, voided.affiliate_id) == (pb.COMMISSION_STATUS_VOIDED, "1.00", affiliate.id)
