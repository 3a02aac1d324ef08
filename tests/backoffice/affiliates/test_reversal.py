"""Reversing a fill (ReverseFill, admin, with a reason): a PENDING commission is voided; one already
AVAILABLE is clawed back from the available balance, the rest set against future earnings, never a
negative payout."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct
from sqlalchemy import select

from backoffice.bootstrap import Resources
from backoffice.models import AffiliateLedgerEntry, AuditEvent, LedgerEntryKind
from signalhub.v1 import backoffice_pb2 as pb
from tests.backoffice.affiliates.support import (
    accrue,
    commissions,
    make_affiliate,
    make_trader,
    new_id,
    record_fills,
    release,
    stats,
    stub,
)
from tests.conftest import UserCredentials, rpc_failure


async def reverse(channel: grpc.aio.Channel, who: UserCredentials, fill: uuid.UUID, reason: str = "broker cancelled"):  # type: ignore[no-untyped-def]
    request = pb.ReverseFillRequest(request_id=new_id(), execution_event_id=str(fill), reason=reason)
    return await stub(channel).ReverseFill(request, metadata=who.metadata, timeout=10)


def payout_request(amount: str) -> pb.RequestPayoutRequest:
    details = Struct()
    details.update({"method": "bank", "iban": "DE89370400440532013000"})
    return pb.RequestPayoutRequest(request_id=new_id(), amount=amount, method_details=details)


async def ledger_kinds(res: Resources, affiliate_id: str) -> list[LedgerEntryKind]:
    async with res.sessions() as session:
        return list(
            (
                await session.scalars(
                    select(AffiliateLedgerEntry.kind)
                    .where(AffiliateLedgerEntry.affiliate_id == uuid.UUID(affiliate_id))
                    .order_by(AffiliateLedgerEntry.entry_no)
                )
            ).all()
        )


async def test_a_fill_reversed_in_its_hold_voids_its_commission(
    backoffice_channel: grpc.aio.Channel, res: Resources, admin: UserCredentials
) -> None:
    affiliate = await make_affiliate(backoffice_channel, res)
    trader = await make_trader(backoffice_channel, res, admin, affiliate)
    filled = datetime(2031, 9, 2, tzinfo=UTC)
    kept, reversed_fill = await record_fills(res, trader, ["0.4", "0.4"], now=filled)
    await accrue(res, now=filled)
    voided = await reverse(backoffice_channel, admin, reversed_fill)
    assert (voided.status, voided.clawed_back, voided.reverse_reason) == (
        pb.COMMISSION_STATUS_VOIDED,
        False,
        "broker cancelled",
    )
    assert voided.execution_event_id == str(reversed_fill) and voided.HasField("reverse_time")
    assert await reverse(backoffice_channel, admin, reversed_fill, "again") == voided  # reversing twice: no change
    figures = await stats(backoffice_channel, affiliate.user)
    assert (figures.commission_pending, figures.commission_total, figures.lots) == ("2.00", "2.00", "0.4")
    # The release that follows leaves the voided commission alone.
    await release(res, filled + timedelta(days=31))
    states = {c.execution_event_id: c.status for c in await commissions(backoffice_channel, affiliate.user)}
    assert states == {str(kept): pb.COMMISSION_STATUS_AVAILABLE, str(reversed_fill): pb.COMMISSION_STATUS_VOIDED}
    assert (await stats(backoffice_channel, affiliate.user)).commission_available == "2.00"
    assert await ledger_kinds(res, affiliate.id) == [
        LedgerEntryKind.ACCRUAL,
        LedgerEntryKind.ACCRUAL,
        LedgerEntryKind.VOID,
        LedgerEntryKind.HOLD_RELEASE,
    ]
    # Voided lots no longer count towards the month's tier.
    (later,) = await record_fills(res, trader, ["0.6"], now=filled + timedelta(days=1))
    await accrue(res)
    found = {c.execution_event_id: c for c in await commissions(backoffice_channel, affiliate.user)}
    assert (found[str(later)].month_lots_before, found[str(later)].amount) == ("0.4", "3.00")
    async with res.sessions() as session:
        audit = (
            await session.scalars(
                select(AuditEvent).where(
                    AuditEvent.object_id == uuid.UUID(voided.id), AuditEvent.action == "ReverseFill"
                )
            )
        ).one()
    assert audit.actor_id == admin.id and audit.details["reason"] == "broker cancelled"


async def test_a_fill_reversed_after_release_is_clawed_back_against_future_earnings(
    backoffice_channel: grpc.aio.Channel, res: Resources, admin: UserCredentials
) -> None:
    affiliate = await make_affiliate(backoffice_channel, res)
    trader = await make_trader(backoffice_channel, res, admin, affiliate)
    filled = datetime(2031, 10, 1, tzinfo=UTC)
    (big,) = await record_fills(res, trader, ["10"], now=filled)  # 1 x 5.00 + 1 x 7.00 + 8 x 10.00
    await accrue(res, now=filled)
    await release(res, filled + timedelta(days=30))
    assert (await stats(backoffice_channel, affiliate.user)).commission_available == "92.00"
    payout = await stub(backoffice_channel).RequestPayout(
        payout_request("60.00"), metadata=affiliate.user.metadata, timeout=10
    )
    clawed = await reverse(backoffice_channel, admin, big, "chargeback")
    assert (clawed.status, clawed.clawed_back) == (pb.COMMISSION_STATUS_VOIDED, True)
    figures = await stats(backoffice_channel, affiliate.user)
    # 32.00 was available and is taken; the 60.00 already on its way to be paid stays reserved and the
    # affiliate owes it: a negative adjustment, never a negative payout.
    assert (figures.commission_available, figures.commission_reserved, figures.commission_clawback_due) == (
        "0.00",
        "60.00",
        "60.00",
    )
    assert figures.commission_total == "0.00"
    failure = rpc_failure(
        await _failed(
            stub(backoffice_channel).RequestPayout(
                payout_request("50.00"), metadata=affiliate.user.metadata, timeout=10
            )
        )
    )
    assert (failure.code, failure.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_BALANCE")
    # New earnings pay off what is owed before any of them is available.
    await record_fills(res, trader, ["1"], now=filled + timedelta(days=2))
    await accrue(res, now=filled + timedelta(days=2))
    await release(res, filled + timedelta(days=32))
    figures = await stats(backoffice_channel, affiliate.user)
    assert (figures.commission_available, figures.commission_clawback_due) == ("0.00", "55.00")
    # A rejected payout returns to the balance, and pays off the rest of the debt first.
    rejected = await stub(backoffice_channel).RejectPayout(
        pb.RejectPayoutRequest(id=payout.id, request_id=new_id(), reason="clawed back"),
        metadata=admin.metadata,
        timeout=10,
    )
    assert rejected.status == pb.PAYOUT_STATUS_REJECTED
    figures = await stats(backoffice_channel, affiliate.user)
    assert (figures.commission_available, figures.commission_reserved, figures.commission_clawback_due) == (
        "5.00",
        "0.00",
        "0.00",
    )
    assert figures.commission_total == "5.00"
    assert await ledger_kinds(res, affiliate.id) == [
        LedgerEntryKind.ACCRUAL,
        LedgerEntryKind.HOLD_RELEASE,
        LedgerEntryKind.PAYOUT_REQUESTED,
        LedgerEntryKind.CLAWBACK,
        LedgerEntryKind.ACCRUAL,
        LedgerEntryKind.HOLD_RELEASE,
        LedgerEntryKind.PAYOUT_REJECTED,
    ]


async def test_reversal_is_admin_only_needs_a_reason_and_a_commission(
    backoffice_channel: grpc.aio.Channel, res: Resources, admin: UserCredentials
) -> None:
    affiliate = await make_affiliate(backoffice_channel, res)
    trader = await make_trader(backoffice_channel, res, admin, affiliate)
    stranger = await make_trader(backoffice_channel, res, admin, None)
    (fill,) = await record_fills(res, trader, ["0.2"])
    (unreferred,) = await record_fills(res, stranger, ["0.2"])
    denied = rpc_failure(await _failed(reverse(backoffice_channel, affiliate.user, fill)))
    assert denied.code == grpc.StatusCode.PERMISSION_DENIED
    no_reason = rpc_failure(await _failed(reverse(backoffice_channel, admin, fill, reason="  ")))
    assert (no_reason.code, set(no_reason.violations)) == (grpc.StatusCode.INVALID_ARGUMENT, {"reason"})
    for unknown in (unreferred, uuid.uuid4()):
        missing = rpc_failure(await _failed(reverse(backoffice_channel, admin, unknown)))
        assert missing.code == grpc.StatusCode.NOT_FOUND
    # A fill the worker has not reached yet is accrued, then reversed.
    voided = await reverse(backoffice_channel, admin, fill)
    assert (voided.status, voided.amount, voided.affiliate_id) == (pb.COMMISSION_STATUS_VOIDED, "1.00", affiliate.id)


async def _failed(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value
