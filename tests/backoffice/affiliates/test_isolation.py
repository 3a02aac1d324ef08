"""Isolation between affiliates: each sees only its own referrals, commissions, payouts and figures
(another's are NOT_FOUND, like ones that do not exist); admins see any; lists page."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from backoffice.bootstrap import Resources
from signalhub.v1 import backoffice_pb2 as pb
from tests.backoffice.affiliates import support
from tests.conftest import UserCredentials, rpc_failure


async def busy_affiliate(channel: grpc.aio.Channel, res: Resources, admin: UserCredentials) -> support.Affiliate:
    """An affiliate with two referred traders, three fills a month ago (released) and a payout."""
    affiliate = await support.make_affiliate(channel, res)
    filled = datetime.now(UTC) - timedelta(days=40)
    for minutes, lots in enumerate((["6"], ["2", "3"])):
        trader = await support.make_trader(channel, res, admin, affiliate)
        await support.record_fills(res, trader, lots, now=filled + timedelta(minutes=minutes))
    await support.accrue(res)
    await support.release(res, datetime.now(UTC))
    await support.stub(channel).RequestPayout(
        support.payout_request("50.00"), metadata=affiliate.user.metadata, timeout=10
    )
    return affiliate


async def test_affiliates_see_only_their_own(
    backoffice_channel: grpc.aio.Channel, res: Resources, admin: UserCredentials, user: UserCredentials
) -> None:
    """Another affiliate's figures and lists are NOT_FOUND; its payouts' decisions are for admins only."""
    one = await busy_affiliate(backoffice_channel, res, admin)
    other = await busy_affiliate(backoffice_channel, res, admin)
    api = support.stub(backoffice_channel)
    for me, them in ((one, other), (other, one)):
        own = await support.commissions(backoffice_channel, me.user)
        assert len(own) == 3 and {c.affiliate_id for c in own} == {me.id}
        referrals = await api.ListReferrals(pb.ListReferralsRequest(), metadata=me.user.metadata, timeout=10)
        assert len(referrals.referrals) == 2 and {r.affiliate_id for r in referrals.referrals} == {me.id}
        payouts = await api.ListPayouts(pb.ListPayoutsRequest(), metadata=me.user.metadata, timeout=10)
        assert [p.affiliate_id for p in payouts.payouts] == [me.id]
        assert (await support.stats(backoffice_channel, me.user, me.id)).affiliate_id == me.id  # naming oneself is fine
        calls = {
            "GetAffiliateStats": api.GetAffiliateStats(
                pb.GetAffiliateStatsRequest(affiliate_id=them.id), metadata=me.user.metadata
            ),
            "ListCommissions": api.ListCommissions(
                pb.ListCommissionsRequest(affiliate_id=them.id), metadata=me.user.metadata
            ),
            "ListReferrals": api.ListReferrals(
                pb.ListReferralsRequest(affiliate_id=them.id), metadata=me.user.metadata
            ),
            "ListPayouts": api.ListPayouts(pb.ListPayoutsRequest(affiliate_id=them.id), metadata=me.user.metadata),
        }
        for name, call in calls.items():
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert rpc_failure(info.value).code == grpc.StatusCode.NOT_FOUND, name
        them_payout = (
            await api.ListPayouts(pb.ListPayoutsRequest(affiliate_id=them.id), metadata=admin.metadata)
        ).payouts[0]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await api.ApprovePayout(pb.ApprovePayoutRequest(id=them_payout.id), metadata=me.user.metadata)
        assert rpc_failure(info.value).code == grpc.StatusCode.PERMISSION_DENIED
    # Admins name any affiliate; without one, payouts are everyone's.
    assert {c.affiliate_id for c in await support.commissions(backoffice_channel, admin, other.id)} == {other.id}
    assert (await support.stats(backoffice_channel, admin, one.id)).commission_reserved == "50.00"
    everyone = await api.ListPayouts(pb.ListPayoutsRequest(page_size=500), metadata=admin.metadata)
    assert {one.id, other.id} <= {p.affiliate_id for p in everyone.payouts}
    # A user who is no affiliate has no figures, and an unknown affiliate is unknown to admins too.
    for who, affiliate_id in ((user, ""), (admin, str(uuid.uuid4()))):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await api.GetAffiliateStats(pb.GetAffiliateStatsRequest(affiliate_id=affiliate_id), metadata=who.metadata)
        assert rpc_failure(info.value).code == grpc.StatusCode.NOT_FOUND


async def test_figures_and_paging(backoffice_channel: grpc.aio.Channel, res: Resources, admin: UserCredentials) -> None:
    """GetAffiliateStats adds up, month by month; ListCommissions pages; ListReferrals totals per user."""
    affiliate = await busy_affiliate(backoffice_channel, res, admin)
    figures = await support.stats(backoffice_channel, affiliate.user)
    # 6 lots: 1 x 5.00 + 1 x 7.00 + 4 x 10.00 = 52.00; 2 and 3 more lots at 10.00 = 50.00.
    assert (figures.referral_count, figures.active_referral_count, figures.lots) == (2, 2, "11")
    assert (figures.commission_total, figures.commission_available, figures.commission_reserved) == (
        "102.00",
        "52.00",
        "50.00",
    )
    assert (figures.commission_pending, figures.commission_paid, figures.currency) == ("0.00", "0.00", "USD")
    month = (datetime.now(UTC) - timedelta(days=40)).strftime("%Y-%m")
    assert [(m.month, m.lots, m.commission_total, m.fill_count) for m in figures.months] == [(month, "11", "102.00", 3)]
    api, me = support.stub(backoffice_channel), affiliate.user.metadata
    first = await api.ListCommissions(pb.ListCommissionsRequest(page_size=2), metadata=me)
    second = await api.ListCommissions(
        pb.ListCommissionsRequest(page_size=2, page_token=first.next_page_token), metadata=me
    )
    assert len(first.commissions) == 2 and len(second.commissions) == 1 and second.next_page_token == ""
    assert {c.id for c in first.commissions} | {c.id for c in second.commissions} == {
        c.id for c in await support.commissions(backoffice_channel, affiliate.user)
    }
    pending = await api.ListCommissions(pb.ListCommissionsRequest(status=pb.COMMISSION_STATUS_PENDING), metadata=me)
    assert pending.commissions == []
    referrals = await api.ListReferrals(pb.ListReferralsRequest(), metadata=me)
    assert sorted(r.commission_total for r in referrals.referrals) == ["50.00", "52.00"]
