"""The affiliate's pages, for any signed-in person: becoming an affiliate, the referral link and figures,
the referred users, the commissions their trading earned, and payouts (requested here, decided by an admin
on the Admin pages). Every figure is the back office's (AffiliateService), read with the person's token.

Each list names the caller's own affiliate id: without it an admin's ListPayouts would list everyone's,
and the Affiliate pages are about the person's own affiliate account only (a user may name its own)."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.struct_pb2 import Struct
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from backoffice.console.backoffice import Refused
from backoffice.console.views import Page, Section, form_enum, form_refused, signed_in
from signalhub.v1 import backoffice_pb2 as pb

PAGE_SIZE = 25
COMMISSION_FILTERS = ("", "COMMISSION_STATUS_PENDING", "COMMISSION_STATUS_AVAILABLE", "COMMISSION_STATUS_VOIDED")
PAYOUT_FILTERS = ("", "PAYOUT_STATUS_REQUESTED", "PAYOUT_STATUS_APPROVED", "PAYOUT_STATUS_REJECTED",
                  "PAYOUT_STATUS_PAID")  # fmt: skip
METHOD_KEY = "method"  # method_details' key for the payment method; the form's other lines add their own

section = Section(
    "Affiliate",
    (
        ("Overview", "/affiliate/overview"),
        ("Commissions", "/affiliate/commissions"),
        ("Payouts", "/affiliate/payouts"),
    ),
)


async def _stats_or_none(page: Page) -> pb.GetAffiliateStatsResponse | None:
    """The caller's affiliate figures; None when the caller is not an affiliate (the back office answers
    NOT_FOUND)."""
    try:
        return await page.call(page.bo.affiliates.GetAffiliateStats, pb.GetAffiliateStatsRequest())
    except Refused as refused:
        if refused.code == grpc.StatusCode.NOT_FOUND:
            return None
        raise


def _join_page(page: Page) -> Response:
    return page.render("affiliate_join.html", title="Become an affiliate")


@signed_in
async def to_overview(page: Page) -> Response:
    return RedirectResponse("/affiliate/overview", status_code=303)


@signed_in
async def overview_page(page: Page) -> Response:
    """The referral link (to copy), the figures and the months, and the referred users."""
    stats = await _stats_or_none(page)
    if stats is None:
        return _join_page(page)
    link = await page.call(page.bo.affiliates.GetReferralLink, pb.GetReferralLinkRequest())
    referrals = await page.call(
        page.bo.affiliates.ListReferrals,
        pb.ListReferralsRequest(
            affiliate_id=stats.affiliate_id, page_size=PAGE_SIZE, page_token=page.query("page_token")
        ),
    )
    return page.render(
        "affiliate.html",
        title="Affiliate",
        stats=stats,
        link=link,
        referrals=referrals.referrals,
        next_token=referrals.next_page_token,
    )


@signed_in
async def register(page: Page) -> Response:
    await page.call(
        page.bo.affiliates.RegisterAffiliate, pb.RegisterAffiliateRequest(request_id=page.field("request_id"))
    )
    return page.redirect("/affiliate/overview", "You are an affiliate: share your referral link.")


@signed_in
async def commissions_page(page: Page) -> Response:
    state = page.query("status") if page.query("status") in COMMISSION_FILTERS else ""
    stats = await _stats_or_none(page)
    if stats is None:
        return _join_page(page)
    listing = await page.call(
        page.bo.affiliates.ListCommissions,
        pb.ListCommissionsRequest(
            affiliate_id=stats.affiliate_id,
            page_size=PAGE_SIZE,
            page_token=page.query("page_token"),
            status=form_enum(pb.CommissionStatus, state),
        ),
    )
    return page.render(
        "affiliate_commissions.html",
        title="Commissions",
        stats=stats,
        commissions=listing.commissions,
        next_token=listing.next_page_token,
        state=state,
        filters=COMMISSION_FILTERS,
    )


async def _payouts_page(page: Page, status: int = 200, **context: Any) -> Response:
    """The balances, the payout request form (``context`` carries a refused one's errors) and the caller's
    payouts."""
    state = page.query("status") if page.query("status") in PAYOUT_FILTERS else ""
    stats = await _stats_or_none(page)
    if stats is None:
        return _join_page(page)
    listing = await page.call(
        page.bo.affiliates.ListPayouts,
        pb.ListPayoutsRequest(
            affiliate_id=stats.affiliate_id,
            page_size=PAGE_SIZE,
            page_token=page.query("page_token"),
            status=form_enum(pb.PayoutStatus, state),
        ),
    )
    return page.render(
        "affiliate_payouts.html",
        status=status,
        title="Payouts",
        stats=stats,
        payouts=listing.payouts,
        next_token=listing.next_page_token,
        state=state,
        filters=PAYOUT_FILTERS,
        **context,
    )


@signed_in
async def payouts_page(page: Page) -> Response:
    return await _payouts_page(page)


def _method_details(method: str, lines: str) -> Struct:
    """How to pay, as RequestPayout takes it: the method, and one NAME=VALUE a line (a value may hold
    commas: an address). Empty when the form says nothing, which the back office refuses by field."""
    found: dict[str, str] = {METHOD_KEY: method} if method else {}
    for line in filter(None, (part.strip() for part in lines.splitlines())):
        name, sep, value = line.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise form_refused({"method_details": f"{line!r} is not NAME=VALUE"})
        found[name.strip()] = value.strip()
    details = Struct()
    details.update(found)
    return details


@signed_in
async def request_payout(page: Page) -> Response:
    """A payout of available commission. The refusal that names no field (more than is available) is shown
    beside the amount, which is what it is about."""
    try:
        request = pb.RequestPayoutRequest(
            request_id=page.field("request_id"),
            amount=page.field("amount"),
            method_details=_method_details(page.field("method"), page.field("method_details")),
        )
        payout = await page.call(page.bo.affiliates.RequestPayout, request)
    except Refused as refused:
        about_amount = refused.code == grpc.StatusCode.FAILED_PRECONDITION and not refused.violations
        errors = {"amount": refused.text} if about_amount else refused.violations
        return await _payouts_page(page, refused.http_status, refused=refused, errors=errors, values=page.values)
    return page.redirect(
        "/affiliate/payouts", f"Payout of {payout.amount} {payout.currency} requested: an administrator reviews it."
    )


routes: list[BaseRoute] = [
    Route("/affiliate", to_overview, methods=["GET"]),
    Route("/affiliate/overview", overview_page, methods=["GET"]),
    Route("/affiliate/register", register, methods=["POST"]),
    Route("/affiliate/commissions", commissions_page, methods=["GET"]),
    Route("/affiliate/payouts", payouts_page, methods=["GET"]),
    Route("/affiliate/payouts", request_payout, methods=["POST"]),
]
