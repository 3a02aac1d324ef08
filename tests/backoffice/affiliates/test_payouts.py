"""Payouts through the stubs: request (minimum, balance, whole cents, idempotent, method details sealed at
rest), approve, reject, mark paid, admin-only decisions, and the race of concurrent requests."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import grpc
from sqlalchemy import select

from backoffice.bootstrap import Resources
from backoffice.models import AuditEvent, Payout
from signalhub.v1 import backoffice_pb2 as pb
from tests.backoffice.affiliates import support
from tests.backoffice.affiliates.support import IBAN, money, payout_request
from tests.backoffice.api.test_accounts import expect_failure
from tests.conftest import UserCredentials, rpc_failure

Code = grpc.StatusCode


async def earning(channel: grpc.aio.Channel, res: Resources, admin: UserCredentials, lots: str) -> support.Affiliate:
    """An affiliate whose referred trader filled ``lots`` a month ago: all of it available."""
    affiliate, trader = await support.affiliate_and_trader(channel, res, admin)
    filled = datetime.now(UTC) - timedelta(days=31)
    await support.record_fills(res, trader, [lots], now=filled)
    await support.accrue(res)
    await support.release(res, datetime.now(UTC))
    return affiliate


async def code_of(call: object) -> grpc.StatusCode:
    return (await expect_failure(call)).code  # type: ignore[attr-defined, no-any-return]


async def test_payout_lifecycle(backoffice_channel: grpc.aio.Channel, res: Resources, admin: UserCredentials) -> None:
    """REQUESTED, APPROVED, PAID: balances, idempotency, sealing, admin-only decisions and the audit trail."""
    affiliate = await earning(backoffice_channel, res, admin, "10")  # 92.00
    api, me, boss = support.stub(backoffice_channel), affiliate.user.metadata, admin.metadata
    request = payout_request("50.00")
    payout = await api.RequestPayout(request, metadata=me)
    assert (payout.status, payout.amount, payout.currency, payout.affiliate_id) == (
        pb.PAYOUT_STATUS_REQUESTED,
        "50.00",
        "USD",
        affiliate.id,
    )
    assert payout.method_details["iban"] == IBAN
    assert await api.RequestPayout(request, metadata=me) == payout  # idempotent on request_id
    changed = pb.RequestPayoutRequest()
    changed.CopyFrom(request)
    changed.amount = "51.00"
    assert await code_of(api.RequestPayout(changed, metadata=me)) == Code.ALREADY_EXISTS
    async with res.sessions() as session:
        sealed = (await session.get_one(Payout, uuid.UUID(payout.id))).method_details_sealed
    assert sealed.startswith("sv1:") and IBAN not in sealed and "bank" not in sealed
    assert await money(backoffice_channel, affiliate.user, "available", "reserved") == ("42.00", "50.00")
    # Decisions are for admins, in order.
    approve = pb.ApprovePayoutRequest(id=payout.id, request_id=support.new_id())
    assert await code_of(api.ApprovePayout(approve, metadata=me)) == Code.PERMISSION_DENIED
    paid = pb.MarkPayoutPaidRequest(id=payout.id, request_id=support.new_id(), payment_reference="SEPA-1")
    failure = await expect_failure(api.MarkPayoutPaid(paid, metadata=boss))
    assert (failure.code, failure.reason) == (Code.FAILED_PRECONDITION, "INVALID_TRANSITION")  # type: ignore[attr-defined]
    approved = await api.ApprovePayout(approve, metadata=boss)
    assert approved.status == pb.PAYOUT_STATUS_APPROVED and approved.HasField("decide_time")
    again = pb.ApprovePayoutRequest(id=payout.id, request_id=support.new_id())
    assert (await api.ApprovePayout(again, metadata=boss)).status == pb.PAYOUT_STATUS_APPROVED
    no_reference = pb.MarkPayoutPaidRequest(id=payout.id, request_id=support.new_id())
    assert set((await expect_failure(api.MarkPayoutPaid(no_reference, metadata=boss))).violations) == {  # type: ignore[attr-defined]
        "payment_reference"
    }
    done = await api.MarkPayoutPaid(paid, metadata=boss)
    assert (done.status, done.payment_reference, done.HasField("pay_time")) == (pb.PAYOUT_STATUS_PAID, "SEPA-1", True)
    reject = pb.RejectPayoutRequest(id=payout.id, request_id=support.new_id(), reason="too late")
    assert await code_of(api.RejectPayout(reject, metadata=boss)) == Code.FAILED_PRECONDITION
    figures = ("available", "reserved", "paid", "total")
    assert await money(backoffice_channel, affiliate.user, *figures) == ("42.00", "0.00", "50.00", "92.00")
    mine = await api.ListPayouts(pb.ListPayoutsRequest(), metadata=me)
    assert [p.id for p in mine.payouts] == [payout.id] and mine.payouts[0].method_details["iban"] == IBAN
    everyone = await api.ListPayouts(pb.ListPayoutsRequest(status=pb.PAYOUT_STATUS_PAID), metadata=boss)
    assert payout.id in {p.id for p in everyone.payouts}
    async with res.sessions() as session:
        events = select(AuditEvent).where(AuditEvent.object_id == uuid.UUID(payout.id))
        audit = (await session.scalars(events.order_by(AuditEvent.created_at))).all()
    assert [a.action for a in audit] == ["RequestPayout", "ApprovePayout", "MarkPayoutPaid"]
    assert all(IBAN not in str(a.details) for a in audit) and audit[0].details["amount"] == "50.00"


async def test_a_rejected_payout_returns_to_the_balance(
    backoffice_channel: grpc.aio.Channel, res: Resources, admin: UserCredentials
) -> None:
    affiliate = await earning(backoffice_channel, res, admin, "10")
    api, boss = support.stub(backoffice_channel), admin.metadata
    payout = await api.RequestPayout(payout_request("92.00"), metadata=affiliate.user.metadata)
    assert await money(backoffice_channel, affiliate.user, "available") == ("0.00",)
    reject = pb.RejectPayoutRequest(id=payout.id, request_id=support.new_id())
    assert set((await expect_failure(api.RejectPayout(reject, metadata=boss))).violations) == {"reason"}  # type: ignore[attr-defined]
    reject.reason = "the account does not exist"
    rejected = await api.RejectPayout(reject, metadata=boss)
    assert (rejected.status, rejected.reason) == (pb.PAYOUT_STATUS_REJECTED, "the account does not exist")
    assert await api.RejectPayout(reject, metadata=boss) == rejected
    approve = pb.ApprovePayoutRequest(id=payout.id, request_id=support.new_id())
    assert await code_of(api.ApprovePayout(approve, metadata=boss)) == Code.FAILED_PRECONDITION
    assert await money(backoffice_channel, affiliate.user, "available", "reserved") == ("92.00", "0.00")
    missing = pb.ApprovePayoutRequest(id=str(uuid.uuid4()), request_id=support.new_id())
    assert await code_of(api.ApprovePayout(missing, metadata=boss)) == Code.NOT_FOUND


async def test_payout_requests_are_validated(
    backoffice_channel: grpc.aio.Channel, res: Resources, admin: UserCredentials, user: UserCredentials
) -> None:
    affiliate = await earning(backoffice_channel, res, admin, "10")
    api, me = support.stub(backoffice_channel), affiliate.user.metadata
    for amount in ("49.99", "60.001", "-60", "sixty"):  # below the minimum, not whole cents, not positive
        failure = await expect_failure(api.RequestPayout(payout_request(amount), metadata=me))
        assert (failure.code, set(failure.violations)) == (Code.INVALID_ARGUMENT, {"amount"}), amount  # type: ignore[attr-defined]
    no_method = pb.RequestPayoutRequest(request_id=support.new_id(), amount="60.00")
    assert set((await expect_failure(api.RequestPayout(no_method, metadata=me))).violations) == {"method_details"}  # type: ignore[attr-defined]
    failure = await expect_failure(api.RequestPayout(payout_request("92.01"), metadata=me))
    assert (failure.code, failure.reason, failure.metadata["available"]) == (  # type: ignore[attr-defined]
        Code.FAILED_PRECONDITION,
        "INSUFFICIENT_BALANCE",
        "92.00",
    )
    # Someone who is no affiliate has nothing to request.
    assert await code_of(api.RequestPayout(payout_request("60.00"), metadata=user.metadata)) == Code.NOT_FOUND
    assert await money(backoffice_channel, affiliate.user, "available") == ("92.00",)


async def test_concurrent_requests_never_overdraw_the_balance(
    backoffice_channel: grpc.aio.Channel, res: Resources, admin: UserCredentials
) -> None:
    affiliate = await earning(backoffice_channel, res, admin, "10")  # 92.00: room for one payout of 60.00
    api, me = support.stub(backoffice_channel), affiliate.user.metadata
    for _ in range(3):
        calls = [api.RequestPayout(payout_request("60.00"), metadata=me, timeout=20) for _ in range(2)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        granted = [r for r in results if isinstance(r, pb.Payout)]
        refused = [rpc_failure(r) for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(granted) == 1 and len(refused) == 1, results
        assert (refused[0].code, refused[0].reason) == (Code.FAILED_PRECONDITION, "INSUFFICIENT_BALANCE")
        assert await money(backoffice_channel, affiliate.user, "available", "reserved") == ("32.00", "60.00")
        reject = pb.RejectPayoutRequest(id=granted[0].id, request_id=support.new_id(), reason="round again")
        await api.RejectPayout(reject, metadata=admin.metadata)
    many = [api.RequestPayout(payout_request("50.00"), metadata=me, timeout=20) for _ in range(8)]
    results = await asyncio.gather(*many, return_exceptions=True)
    assert sum(isinstance(r, pb.Payout) for r in results) == 1
    assert await money(backoffice_channel, affiliate.user, "available", "reserved") == ("42.00", "50.00")
