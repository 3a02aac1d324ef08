"""Payouts through the stubs: request (minimum, balance, whole cents, idempotent, method details sealed at
rest), approve, reject, mark paid, admin-only decisions, and the race of concurrent requests."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from sqlalchemy import select

from backoffice.bootstrap import Resources
from backoffice.models import AuditEvent, Payout
from signalhub.v1 import backoffice_pb2 as pb
from tests.backoffice.affiliates.support import (
    Affiliate,
    accrue,
    make_affiliate,
    make_trader,
    new_id,
    record_fills,
    release,
    stats,
    stub,
)
from tests.backoffice.affiliates.test_reversal import payout_request
from tests.conftest import RpcFailure, UserCredentials, rpc_failure

IBAN = "DE89370400440532013000"


async def failure_of(call: object) -> RpcFailure:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return rpc_failure(info.value)


async def earning(channel: grpc.aio.Channel, res: Resources, admin: UserCredentials, lots: str) -> Affiliate:
    """An affiliate whose referred trader filled ``lots`` a month ago: all of it available."""
    affiliate = await make_affiliate(channel, res)
    trader = await make_trader(channel, res, admin, affiliate)
    filled = datetime.now(UTC) - timedelta(days=31)
    await record_fills(res, trader, [lots], now=filled)
    await accrue(res, now=filled)
    await release(res, datetime.now(UTC))
    return affiliate


async def test_payout_lifecycle(backoffice_channel: grpc.aio.Channel, res: Resources, admin: UserCredentials) -> None:
    affiliate = await earning(backoffice_channel, res, admin, "10")  # 92.00
    api, me = stub(backoffice_channel), affiliate.user.metadata
    assert (await stats(backoffice_channel, affiliate.user)).commission_available == "92.00"
    request = payout_request("50.00")
    payout = await api.RequestPayout(request, metadata=me, timeout=10)
    assert (payout.status, payout.amount, payout.currency, payout.affiliate_id) == (
        pb.PAYOUT_STATUS_REQUESTED,
        "50.00",
        "USD",
        affiliate.id,
    )
    assert payout.method_details["iban"] == IBAN
    assert await api.RequestPayout(request, metadata=me, timeout=10) == payout  # idempotent on request_id
    changed = pb.RequestPayoutRequest()
    changed.CopyFrom(request)
    changed.amount = "51.00"
    assert (
        await failure_of(api.RequestPayout(changed, metadata=me, timeout=10))
    ).code == grpc.StatusCode.ALREADY_EXISTS
    async with res.sessions() as session:
        sealed = (await session.get_one(Payout, uuid.UUID(payout.id))).method_details_sealed
    assert sealed.startswith("sv1:") and IBAN not in sealed and "bank" not in sealed
    figures = await stats(backoffice_channel, affiliate.user)
    assert (figures.commission_available, figures.commission_reserved) == ("42.00", "50.00")
    # Decisions are for admins.
    approve = pb.ApprovePayoutRequest(id=payout.id, request_id=new_id())
    assert (await failure_of(api.ApprovePayout(approve, metadata=me, timeout=10))).code == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    unpaid = pb.MarkPayoutPaidRequest(id=payout.id, request_id=new_id(), payment_reference="SEPA-1")
    failure = await failure_of(api.MarkPayoutPaid(unpaid, metadata=admin.metadata, timeout=10))
    assert (failure.code, failure.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INVALID_TRANSITION")
    approved = await api.ApprovePayout(approve, metadata=admin.metadata, timeout=10)
    assert approved.status == pb.PAYOUT_STATUS_APPROVED and approved.HasField("decide_time")
    again = pb.ApprovePayoutRequest(id=payout.id, request_id=new_id())
    assert (await api.ApprovePayout(again, metadata=admin.metadata, timeout=10)).status == pb.PAYOUT_STATUS_APPROVED
    no_reference = pb.MarkPayoutPaidRequest(id=payout.id, request_id=new_id())
    failure = await failure_of(api.MarkPayoutPaid(no_reference, metadata=admin.metadata, timeout=10))
    assert (failure.code, set(failure.violations)) == (grpc.StatusCode.INVALID_ARGUMENT, {"payment_reference"})
    paid = await api.MarkPayoutPaid(unpaid, metadata=admin.metadata, timeout=10)
    assert (paid.status, paid.payment_reference) == (pb.PAYOUT_STATUS_PAID, "SEPA-1") and paid.HasField("pay_time")
    reject = pb.RejectPayoutRequest(id=payout.id, request_id=new_id(), reason="too late")
    failure = await failure_of(api.RejectPayout(reject, metadata=admin.metadata, timeout=10))
    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
    figures = await stats(backoffice_channel, affiliate.user)
    assert (figures.commission_available, figures.commission_reserved, figures.commission_paid) == (
        "42.00",
        "0.00",
        "50.00",
    )
    assert figures.commission_total == "92.00"
    mine = await api.ListPayouts(pb.ListPayoutsRequest(), metadata=me, timeout=10)
    assert [p.id for p in mine.payouts] == [payout.id] and mine.payouts[0].method_details["iban"] == IBAN
    everyone = await api.ListPayouts(pb.ListPayoutsRequest(status=pb.PAYOUT_STATUS_PAID), metadata=admin.metadata)
    assert payout.id in {p.id for p in everyone.payouts}
    async with res.sessions() as session:
        audit = (
            await session.scalars(
                select(AuditEvent).where(AuditEvent.object_id == uuid.UUID(payout.id)).order_by(AuditEvent.created_at)
            )
        ).all()
    assert [a.action for a in audit] == ["RequestPayout", "ApprovePayout", "MarkPayoutPaid"]
    assert all(IBAN not in str(a.details) for a in audit) and audit[0].details["amount"] == "50.00"


async def test_a_rejected_payout_returns_to_the_balance(
    backoffice_channel: grpc.aio.Channel, res: Resources, admin: UserCredentials
) -> None:
    affiliate = await earning(backoffice_channel, res, admin, "10")
    api = stub(backoffice_channel)
    payout = await api.RequestPayout(payout_request("92.00"), metadata=affiliate.user.metadata, timeout=10)
    assert (await stats(backoffice_channel, affiliate.user)).commission_available == "0.00"
    reject = pb.RejectPayoutRequest(id=payout.id, request_id=new_id())
    failure = await failure_of(api.RejectPayout(reject, metadata=admin.metadata, timeout=10))
    assert (failure.code, set(failure.violations)) == (grpc.StatusCode.INVALID_ARGUMENT, {"reason"})
    reject.reason = "the IBAN does not exist"
    rejected = await api.RejectPayout(reject, metadata=admin.metadata, timeout=10)
    assert (rejected.status, rejected.reason) == (pb.PAYOUT_STATUS_REJECTED, "the IBAN does not exist")
    assert await api.RejectPayout(reject, metadata=admin.metadata, timeout=10) == rejected
    approve = pb.ApprovePayoutRequest(id=payout.id, request_id=new_id())
    assert (await failure_of(api.ApprovePayout(approve, metadata=admin.metadata, timeout=10))).code == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    figures = await stats(backoffice_channel, affiliate.user)
    assert (figures.commission_available, figures.commission_reserved) == ("92.00", "0.00")
    missing = pb.ApprovePayoutRequest(id=str(uuid.uuid4()), request_id=new_id())
    assert (await failure_of(api.ApprovePayout(missing, metadata=admin.metadata, timeout=10))).code == (
        grpc.StatusCode.NOT_FOUND
    )


async def test_payout_requests_are_validated(
    backoffice_channel: grpc.aio.Channel, res: Resources, admin: UserCredentials, user: UserCredentials
) -> None:
    affiliate = await earning(backoffice_channel, res, admin, "10")
    api, me = stub(backoffice_channel), affiliate.user.metadata
    for amount, field in [("49.99", "amount"), ("60.001", "amount"), ("-60", "amount"), ("sixty", "amount")]:
        failure = await failure_of(api.RequestPayout(payout_request(amount), metadata=me, timeout=10))
        assert (failure.code, set(failure.violations)) == (grpc.StatusCode.INVALID_ARGUMENT, {field}), amount
    no_method = pb.RequestPayoutRequest(request_id=new_id(), amount="60.00")
    failure = await failure_of(api.RequestPayout(no_method, metadata=me, timeout=10))
    assert set(failure.violations) == {"method_details"}
    failure = await failure_of(api.RequestPayout(payout_request("92.01"), metadata=me, timeout=10))
    assert (failure.code, failure.reason, failure.metadata["available"]) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "INSUFFICIENT_BALANCE",
        "92.00",
    )
    # Someone who is no affiliate has nothing to request.
    failure = await failure_of(api.RequestPayout(payout_request("60.00"), metadata=user.metadata, timeout=10))
    assert failure.code == grpc.StatusCode.NOT_FOUND
    assert (await stats(backoffice_channel, affiliate.user)).commission_available == "92.00"


async def test_concurrent_requests_never_overdraw_the_balance(
    backoffice_channel: grpc.aio.Channel, res: Resources, admin: UserCredentials
) -> None:
    affiliate = await earning(backoffice_channel, res, admin, "10")  # 92.00: room for one payout of 60.00
    api = stub(backoffice_channel)
    for _ in range(3):
        calls = [
            api.RequestPayout(payout_request("60.00"), metadata=affiliate.user.metadata, timeout=20) for _ in range(2)
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        granted = [r for r in results if isinstance(r, pb.Payout)]
        refused = [rpc_failure(r) for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(granted) == 1 and len(refused) == 1, results
        assert (refused[0].code, refused[0].reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_BALANCE")
        figures = await stats(backoffice_channel, affiliate.user)
        assert (figures.commission_available, figures.commission_reserved) == ("32.00", "60.00")
        reject = pb.RejectPayoutRequest(id=granted[0].id, request_id=new_id(), reason="round again")
        await api.RejectPayout(reject, metadata=admin.metadata, timeout=10)
    many = [api.RequestPayout(payout_request("50.00"), metadata=affiliate.user.metadata, timeout=20) for _ in range(8)]
    results = await asyncio.gather(*many, return_exceptions=True)
    assert sum(isinstance(r, pb.Payout) for r in results) == 1
    figures = await stats(backoffice_channel, affiliate.user)
    assert (figures.commission_available, figures.commission_reserved) == ("42.00", "50.00")
