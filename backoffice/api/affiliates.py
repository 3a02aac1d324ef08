"""AffiliateService."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backoffice import models
from backoffice.affiliates import commissions, ledger, payouts, referrals, stats
from backoffice.affiliates.payouts import Decision
from backoffice.affiliates.program import Program
from backoffice.models import CommissionStatus, PayoutStatus
from backoffice.platform.auth import require_admin
from backoffice.platform.interceptors import current_caller
from backoffice.platform.mutations import Mutations, Wake
from backoffice.platform.vault import Vault
from signalhub.protocol import wire
from signalhub.protocol.wire import decimal_text, parse_decimal, parse_id, parse_optional_id
from signalhub.v1 import backoffice_pb2 as pb


def encode_affiliate(affiliate: models.Affiliate) -> pb.Affiliate:
    return pb.Affiliate(
        id=str(affiliate.id),
        user_id=str(affiliate.user_id),
        referral_code=affiliate.referral_code,
        create_time=wire.timestamp(affiliate.created_at),
    )


def encode_commission(commission: models.Commission) -> pb.Commission:
    return pb.Commission(
        id=str(commission.id),
        affiliate_id=str(commission.affiliate_id),
        referred_user_id=str(commission.referred_user_id),
        amount=decimal_text(commission.amount),
        status=wire.enum_to_wire(pb.CommissionStatus, "COMMISSION_STATUS", commission.status),
        currency=commission.currency,
        position_id=str(commission.position_id or ""),
        create_time=wire.timestamp(commission.created_at),
        execution_event_id=str(commission.fill_event_id),
        lots=decimal_text(commission.lots),
        available_time=wire.timestamp(commission.available_at),
        reverse_time=wire.timestamp(commission.reversed_at),
        reverse_reason=commission.reverse_reason or "",
        clawed_back=commission.clawed_back,
        month_lots_before=str(commission.pricing.get("month_lots_before", "")),
    )


class AffiliateServicer:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], vault: Vault, program: Program) -> None:
        self._sessions = sessions
        self._vault = vault
        self._program = program
        self._mutations = Mutations(sessions, vault)

    def encode_payout(self, payout: models.Payout) -> pb.Payout:
        return pb.Payout(
            id=str(payout.id),
            affiliate_id=str(payout.affiliate_id),
            amount=decimal_text(payout.amount),
            status=wire.enum_to_wire(pb.PayoutStatus, "PAYOUT_STATUS", payout.status),
            currency=payout.currency,
            method_details=wire.dict_to_struct(payouts.method_details(self._vault, payout)),
            reason=payout.reason or "",
            payment_reference=payout.payment_reference or "",
            create_time=wire.timestamp(payout.created_at),
            decide_time=wire.timestamp(payout.decided_at),
            pay_time=wire.timestamp(payout.paid_at),
        )

    async def RegisterAffiliate(self, request: pb.RegisterAffiliateRequest, context: Any) -> pb.Affiliate:
        caller = current_caller()

        async def register(session: AsyncSession, wake: Wake) -> pb.Affiliate:
            return encode_affiliate(await referrals.register(session, caller, request_id=request.request_id))

        return await self._mutations.run(caller.id, request, pb.Affiliate, register)

    async def GetReferralLink(self, request: pb.GetReferralLinkRequest, context: Any) -> pb.GetReferralLinkResponse:
        caller = current_caller()
        async with self._sessions() as session:
            affiliate = await referrals.affiliate_of(session, caller)
        code = affiliate.referral_code
        return pb.GetReferralLinkResponse(url=self._program.referral_link(code), referral_code=code)

    async def GetAffiliateStats(
        self, request: pb.GetAffiliateStatsRequest, context: Any
    ) -> pb.GetAffiliateStatsResponse:
        """The affiliate's figures: counts and lots, the ledger's balances (one wire field each), by month."""
        caller = current_caller()
        affiliate_id = parse_optional_id(request.affiliate_id, "affiliate_id")
        async with self._sessions() as session:
            found = await stats.affiliate_stats(session, caller, affiliate_id)
        response = pb.GetAffiliateStatsResponse(
            affiliate_id=str(found.affiliate_id),
            referral_count=found.referrals,
            active_referral_count=found.active_referrals,
            lots=decimal_text(found.lots),
            commission_total=decimal_text(found.balances.earned),
            currency=self._program.currency,
            months=[
                pb.AffiliateMonthStats(
                    month=month.month.strftime("%Y-%m"),
                    lots=decimal_text(month.lots),
                    commission_total=decimal_text(month.commission),
                    fill_count=month.fills,
                )
                for month in found.months
            ],
        )
        for name in ledger.BALANCES:  # commission_pending, commission_available, ...: the ledger's balances
            setattr(response, f"commission_{name}", decimal_text(getattr(found.balances, name)))
        return response

    async def ListReferrals(self, request: pb.ListReferralsRequest, context: Any) -> pb.ListReferralsResponse:
        caller, page = current_caller(), _page(request)
        async with self._sessions() as session:
            rows, token = await referrals.list_referrals(session, caller, page)
        return pb.ListReferralsResponse(
            referrals=[
                pb.Referral(
                    id=str(view.referral.id),
                    affiliate_id=str(view.referral.affiliate_id),
                    referred_user_id=str(view.referral.referred_user_id),
                    create_time=wire.timestamp(view.referral.created_at),
                    commission_total=decimal_text(view.commission_total),
                )
                for view in rows
            ],
            next_page_token=token,
        )

    async def ListCommissions(self, request: pb.ListCommissionsRequest, context: Any) -> pb.ListCommissionsResponse:
        caller, page = current_caller(), _page(request)
        status = wire.optional_enum_from_wire(
            pb.CommissionStatus, "COMMISSION_STATUS", request.status, CommissionStatus, "status"
        )
        async with self._sessions() as session:
            rows, token = await commissions.list_commissions(session, caller, page, status)
        return pb.ListCommissionsResponse(commissions=[encode_commission(c) for c in rows], next_page_token=token)

    async def RequestPayout(self, request: pb.RequestPayoutRequest, context: Any) -> pb.Payout:
        caller = current_caller()
        amount = parse_decimal(request.amount, "amount")
        method_details = wire.struct_to_dict(request.method_details, "method_details")

        async def request_payout(session: AsyncSession, wake: Wake) -> pb.Payout:
            payout = await payouts.request_payout(
                session,
                self._vault,
                caller,
                self._program,
                amount=amount,
                method_details=method_details,
                request_id=request.request_id,
            )
            return self.encode_payout(payout)

        return await self._mutations.run(caller.id, request, pb.Payout, request_payout)

    async def ListPayouts(self, request: pb.ListPayoutsRequest, context: Any) -> pb.ListPayoutsResponse:
        caller, page = current_caller(), _page(request)
        status = wire.optional_enum_from_wire(pb.PayoutStatus, "PAYOUT_STATUS", request.status, PayoutStatus, "status")
        async with self._sessions() as session:
            rows, token = await payouts.list_payouts(session, caller, page, status)
        return pb.ListPayoutsResponse(payouts=[self.encode_payout(p) for p in rows], next_page_token=token)

    async def ApprovePayout(self, request: pb.ApprovePayoutRequest, context: Any) -> pb.Payout:
        return await self._decide(request, Decision.APPROVE, "")

    async def RejectPayout(self, request: pb.RejectPayoutRequest, context: Any) -> pb.Payout:
        return await self._decide(request, Decision.REJECT, request.reason)

    async def MarkPayoutPaid(self, request: pb.MarkPayoutPaidRequest, context: Any) -> pb.Payout:
        return await self._decide(request, Decision.MARK_PAID, request.payment_reference)

    async def _decide(
        self,
        request: pb.ApprovePayoutRequest | pb.RejectPayoutRequest | pb.MarkPayoutPaidRequest,
        decision: Decision,
        note: str,
    ) -> pb.Payout:
        caller = current_caller()
        require_admin(caller)  # before the request is read: a user learns nothing from it
        payout_id = parse_id(request.id, "id")

        async def decide(session: AsyncSession, wake: Wake) -> pb.Payout:
            payout = await payouts.decide(
                session, caller, payout_id, decision, note=note, request_id=request.request_id
            )
            return self.encode_payout(payout)

        return await self._mutations.run(caller.id, request, pb.Payout, decide)

    async def ReverseFill(self, request: pb.ReverseFillRequest, context: Any) -> pb.Commission:
        caller = current_caller()
        require_admin(caller)
        fill_event_id = parse_id(request.execution_event_id, "execution_event_id")

        async def reverse(session: AsyncSession, wake: Wake) -> pb.Commission:
            commission = await commissions.reverse_fill(
                session,
                caller,
                self._program,
                fill_event_id,
                reason=request.reason,
                request_id=request.request_id,
                now=datetime.now(UTC),
            )
            return encode_commission(commission)

        return await self._mutations.run(caller.id, request, pb.Commission, reverse)


def _page(request: pb.ListReferralsRequest | pb.ListCommissionsRequest | pb.ListPayoutsRequest) -> referrals.Page:
    return referrals.Page(
        parse_optional_id(request.affiliate_id, "affiliate_id"), request.page_size, request.page_token
    )
