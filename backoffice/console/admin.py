"""The administrators' pages: alerts (live), payouts to approve, reject or mark paid, the audit trail with
its filters, producers (created, rotated, revoked) and users (created). Every handler is for admins only
(``signed_in(admin=True)``: anyone else gets 403 and the section is not in their navigation), and the back
office checks the role again on every call.

A producer's secret and a new user's API token are shown in the one response that made them, never kept
(but for the one-time download of a producer's credentials file, held in the session). Those forms are
sent by htmx, which swaps the page in place and replaces the address with the list's
(``HX-Replace-Url``): reloading then loads the list, instead of sending the form again, which the back
office, idempotent on its request_id, would answer with the same secret.

The alerts list polls like the trader's pending approvals (see ``trader``): 204 unless the list changed."""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import urlencode

from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct
from grpc import aio
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from backoffice.console.affiliate import PAYOUT_FILTERS
from backoffice.console.backoffice import Refused
from backoffice.console.views import (
    Page,
    Section,
    form_enum,
    form_refused,
    offer_file,
    one_time_download,
    shown_once,
    signed_in,
)
from signalhub.v1 import backoffice_pb2 as pb

PAGE_SIZE = 25
ALERT_STATUS_FILTERS = ("", "ALERT_STATUS_OPEN", "ALERT_STATUS_RESOLVED")
DEFAULT_ALERT_STATUS = "ALERT_STATUS_OPEN"  # what the alerts page shows until a filter says otherwise
AUDIT_FILTERS = ("actor_id", "object_type", "object_id", "action")  # every filter ListAuditEventsRequest has

section = Section(
    "Admin",
    (
        ("Alerts", "/admin/alerts"),
        ("Payouts", "/admin/payouts"),
        ("Audit", "/admin/audit"),
        ("Producers", "/admin/producers"),
        ("Users", "/admin/users"),
    ),
    admin_only=True,
)


def _digest(state: Any) -> str:
    """A short fingerprint of what a live list shows: a poll answers 204 while it is unchanged."""
    return hashlib.sha256(json.dumps(state).encode()).hexdigest()[:16]


@signed_in(admin=True)
async def to_alerts(page: Page) -> Response:
    return RedirectResponse("/admin/alerts", status_code=303)


# -- alerts ----------------------------------------------------------------------------------------------


def _alert_filters(page: Page) -> dict[str, str]:
    """The alerts page's filters from its query: the open ones unless a status is chosen ("" is any)."""
    status = page.query("status") if "status" in page.request.query_params else DEFAULT_ALERT_STATUS
    return {
        "status": status if status in ALERT_STATUS_FILTERS else DEFAULT_ALERT_STATUS,
        "kind": page.query("kind"),
        "device_id": page.query("device_id"),
    }


async def _alerts(page: Page, filters: dict[str, str]) -> dict[str, Any]:
    """One page of alerts as the filters choose, and the digest a poll compares."""
    page_token = page.query("page_token")
    listing = await page.call(
        page.bo.audit.ListAlerts,
        pb.ListAlertsRequest(
            page_size=PAGE_SIZE,
            page_token=page_token,
            status=form_enum(pb.AlertStatus, filters["status"]),
            kind=form_enum(pb.AlertKind, filters["kind"]),
            device_id=filters["device_id"],
        ),
    )
    state = [[(a.id, a.status) for a in listing.alerts], listing.next_page_token]
    return {
        "alerts": listing.alerts,
        "next_token": listing.next_page_token,
        "page_token": page_token,
        "filters": filters,
        "digest": _digest(state),
    }


@signed_in(admin=True)
async def alerts_page(page: Page) -> Response:
    filters = _alert_filters(page)
    try:
        found = await _alerts(page, filters)
    except Refused as refused:  # a filter the back office refuses: shown beside it
        return page.render(
            "admin_alerts.html",
            status=refused.http_status,
            title="Alerts",
            refused=refused,
            errors=refused.violations,
            values=filters,
            filters=filters,
            status_filters=ALERT_STATUS_FILTERS,
        )
    return page.render(
        "admin_alerts.html", title="Alerts", values=filters, status_filters=ALERT_STATUS_FILTERS, **found
    )


@signed_in(admin=True, background=True)
async def alerts_live(page: Page) -> Response:
    """The alerts again for a poll: 204 while they are what the page shows (``seen``, their digest)."""
    found = await _alerts(page, _alert_filters(page))
    if found["digest"] == page.query("seen"):
        return Response(status_code=204)
    return page.render("_admin_alerts.html", **found)


# -- payouts ---------------------------------------------------------------------------------------------


def _payout_filters(page: Page, *, from_form: bool = False) -> dict[str, str]:
    """The payouts list's filters and page: from the query, or after a decision from the form's hidden
    fields (``from_form``), which carry them back to the same list."""
    read = page.field if from_form else page.query
    status = read("status")
    return {
        "status": status if status in PAYOUT_FILTERS else "",
        "affiliate_id": read("affiliate_id"),
        "page_token": read("page_token"),
    }


async def _payouts_page(page: Page, filters: dict[str, str], status: int = 200, **context: Any) -> Response:
    """Everyone's payouts (or one affiliate's), newest first, each with the decisions its state allows;
    ``context`` carries a refused decision (``error_target``: the payout it is about)."""
    try:
        listing = await page.call(
            page.bo.affiliates.ListPayouts,
            pb.ListPayoutsRequest(
                page_size=PAGE_SIZE,
                page_token=filters["page_token"],
                affiliate_id=filters["affiliate_id"],
                status=form_enum(pb.PayoutStatus, filters["status"]),
            ),
        )
    except Refused as refused:  # a filter the back office refuses: shown beside it
        return page.render(
            "admin_payouts.html",
            status=refused.http_status,
            title="Payouts",
            payouts=[],
            next_token="",
            filters=filters,
            status_filters=PAYOUT_FILTERS,
            refused=refused,
            errors=refused.violations,
        )
    return page.render(
        "admin_payouts.html",
        status=status,
        title="Payouts",
        payouts=listing.payouts,
        next_token=listing.next_page_token,
        filters=filters,
        status_filters=PAYOUT_FILTERS,
        **context,
    )


@signed_in(admin=True)
async def payouts_page(page: Page) -> Response:
    return await _payouts_page(page, _payout_filters(page))


PayoutDecision = pb.ApprovePayoutRequest | pb.RejectPayoutRequest | pb.MarkPayoutPaidRequest


async def _decide_payout(
    page: Page, method: aio.UnaryUnaryMultiCallable[Any, pb.Payout], request: PayoutDecision, notice: str
) -> Response:
    """One decision on a payout (``method(request)``), then back to the list it was made from; a refusal
    is shown on that payout, each bad field beside it."""
    filters = _payout_filters(page, from_form=True)
    try:
        payout = await page.call(method, request)
    except Refused as refused:
        return await _payouts_page(
            page,
            filters,
            refused.http_status,
            refused=refused,
            errors=refused.violations,
            values=page.values,
            error_target=request.id,
        )
    query = urlencode({k: v for k, v in filters.items() if v})
    return page.redirect(
        f"/admin/payouts{'?' + query if query else ''}", f"Payout of {payout.amount} {payout.currency} {notice}."
    )


@signed_in(admin=True)
async def approve_payout(page: Page) -> Response:
    request = pb.ApprovePayoutRequest(id=page.arg("payout_id"), request_id=page.field("request_id"))
    return await _decide_payout(page, page.bo.affiliates.ApprovePayout, request, "approved: pay it, then mark it paid")


@signed_in(admin=True)
async def reject_payout(page: Page) -> Response:
    request = pb.RejectPayoutRequest(
        id=page.arg("payout_id"), request_id=page.field("request_id"), reason=page.field("reason")
    )
    return await _decide_payout(page, page.bo.affiliates.RejectPayout, request, "rejected: back to the balance")


@signed_in(admin=True)
async def mark_payout_paid(page: Page) -> Response:
    request = pb.MarkPayoutPaidRequest(
        id=page.arg("payout_id"), request_id=page.field("request_id"), payment_reference=page.field("payment_reference")
    )
    return await _decide_payout(page, page.bo.affiliates.MarkPayoutPaid, request, "marked paid")


# -- audit -----------------------------------------------------------------------------------------------


def _details_text(details: Struct) -> str:
    """An audit event's details on one line, as JSON; whole numbers read as such (a Struct holds every
    number as a float: a ledger entry is 5, not 5.0)."""

    def plain(value: Any) -> Any:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, list):
            return [plain(item) for item in value]
        return value

    return json.dumps(plain(json_format.MessageToDict(details)), sort_keys=True) if details.fields else ""


@signed_in(admin=True)
async def audit_page(page: Page) -> Response:
    """The audit trail, newest first, filtered by every filter ListAuditEvents takes; a filter the back
    office refuses (an id that is not one) is shown beside its field."""
    filters = {name: page.query(name) for name in AUDIT_FILTERS}
    context: dict[str, Any] = {"values": filters, "filters": filters}
    try:
        listing = await page.call(
            page.bo.audit.ListAuditEvents,
            pb.ListAuditEventsRequest(page_size=PAGE_SIZE, page_token=page.query("page_token"), **filters),
        )
    except Refused as refused:
        return page.render(
            "admin_audit.html",
            status=refused.http_status,
            title="Audit trail",
            events=[],
            next_token="",
            refused=refused,
            errors=refused.violations,
            **context,
        )
    events = [(event, _details_text(event.details)) for event in listing.audit_events]
    return page.render(
        "admin_audit.html", title="Audit trail", events=events, next_token=listing.next_page_token, **context
    )


# -- producers and users: what is shown once -------------------------------------------------------------


@signed_in(admin=True)
async def download_credentials(page: Page) -> Response:
    return one_time_download(
        page, "This credentials file was already downloaded or has expired: rotate the producer's secret for a new one."
    )


def _producer_secret_page(page: Page, producer: pb.Producer, secret: str, *, rotated: bool) -> Response:
    """The producer's secret, shown in this one response, and a one-time download of the credentials file
    ``signalhub producer --credentials FILE`` reads."""
    credentials = {
        "producer_id": producer.id,
        "producer_secret": secret,
        "backoffice": page.console.config.backoffice_target,
    }
    download_url = offer_file(page, f"signalhub-producer-{producer.id[:8]}.json", credentials, "/admin/credentials")
    return shown_once(
        page,
        "producer_secret.html",
        "/admin/producers",
        title="Producer credentials",
        producer=producer,
        secret=secret,
        rotated=rotated,
        download_url=download_url,
    )


async def _producers_page(page: Page, status: int = 200, **context: Any) -> Response:
    """Every producer, newest first, with its rotate and revoke forms, and the form to create one
    (``context`` carries a refused form's errors; ``error_target``: the producer a refusal is about)."""
    listing = await page.call(
        page.bo.accounts.ListProducers,
        pb.ListProducersRequest(page_size=PAGE_SIZE, page_token=page.query("page_token")),
    )
    return page.render(
        "admin_producers.html",
        status=status,
        title="Producers",
        producers=listing.producers,
        next_token=listing.next_page_token,
        **context,
    )


@signed_in(admin=True)
async def producers_page(page: Page) -> Response:
    return await _producers_page(page)


@signed_in(admin=True)
async def create_producer(page: Page) -> Response:
    request = pb.CreateProducerRequest(request_id=page.field("request_id"), name=page.field("name"))
    try:
        response = await page.call(page.bo.accounts.CreateProducer, request)
    except Refused as refused:
        return await _producers_page(
            page, refused.http_status, refused=refused, errors=refused.violations, values=page.values
        )
    return _producer_secret_page(page, response.producer, response.secret, rotated=False)


@signed_in(admin=True)
async def rotate_producer(page: Page) -> Response:
    producer_id = page.arg("producer_id")
    request = pb.RotateProducerSecretRequest(id=producer_id, request_id=page.field("request_id"))
    try:
        response = await page.call(page.bo.accounts.RotateProducerSecret, request)
    except Refused as refused:
        return await _producers_page(page, refused.http_status, refused=refused, error_target=producer_id)
    return _producer_secret_page(page, response.producer, response.secret, rotated=True)


@signed_in(admin=True)
async def revoke_producer(page: Page) -> Response:
    producer_id = page.arg("producer_id")
    try:
        if page.field("confirm") != "yes":
            raise form_refused({"confirm": "tick the box to revoke this producer for good"})
        producer = await page.call(page.bo.accounts.RevokeProducer, pb.RevokeProducerRequest(id=producer_id))
    except Refused as refused:
        return await _producers_page(
            page, refused.http_status, refused=refused, errors=refused.violations, error_target=producer_id
        )
    return page.redirect(
        "/admin/producers", f"Producer {producer.name} revoked: its signatures are refused from now on."
    )


async def _users_page(page: Page, status: int = 200, **context: Any) -> Response:
    """The users, newest first (or the one with the email filtered on), and the form to create one
    (``context`` carries a refused form's errors)."""
    email = page.query("email")
    listing = await page.call(
        page.bo.accounts.ListUsers,
        pb.ListUsersRequest(page_size=PAGE_SIZE, page_token=page.query("page_token"), email=email),
    )
    context.setdefault("values", {"role": "ROLE_USER"})
    return page.render(
        "admin_users.html",
        status=status,
        title="Users",
        users=listing.users,
        next_token=listing.next_page_token,
        email=email,
        **context,
    )


@signed_in(admin=True)
async def users_page(page: Page) -> Response:
    return await _users_page(page)


@signed_in(admin=True)
async def create_user(page: Page) -> Response:
    """A user and its first API token, shown once; an optional referral code attributes the user to its
    affiliate for good (an unknown code is refused beside its field)."""
    request = pb.CreateUserRequest(
        request_id=page.field("request_id"),
        email=page.field("email"),
        role=form_enum(pb.Role, page.field("role")),
        referral_code=page.field("referral_code"),
    )
    try:
        response = await page.call(page.bo.accounts.CreateUser, request)
    except Refused as refused:
        return await _users_page(
            page, refused.http_status, refused=refused, errors=refused.violations, values=page.values
        )
    return shown_once(
        page, "user_token.html", "/admin/users", title="New user", user=response.user, token=response.api_token
    )


routes: list[BaseRoute] = [
    Route("/admin", to_alerts, methods=["GET"]),
    Route("/admin/alerts", alerts_page, methods=["GET"]),
    Route("/admin/alerts/live", alerts_live, methods=["GET"]),
    Route("/admin/payouts", payouts_page, methods=["GET"]),
    Route("/admin/payouts/{payout_id}/approve", approve_payout, methods=["POST"]),
    Route("/admin/payouts/{payout_id}/reject", reject_payout, methods=["POST"]),
    Route("/admin/payouts/{payout_id}/paid", mark_payout_paid, methods=["POST"]),
    Route("/admin/audit", audit_page, methods=["GET"]),
    Route("/admin/producers", producers_page, methods=["GET"]),
    Route("/admin/producers", create_producer, methods=["POST"]),
    Route("/admin/producers/{producer_id}/rotate", rotate_producer, methods=["POST"]),
    Route("/admin/producers/{producer_id}/revoke", revoke_producer, methods=["POST"]),
    Route("/admin/credentials/{download_id}", download_credentials, methods=["GET"]),
    Route("/admin/users", users_page, methods=["GET"]),
    Route("/admin/users", create_user, methods=["POST"]),
]
