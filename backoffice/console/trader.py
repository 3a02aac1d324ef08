"""The trader's pages: pending approvals (live), signals and what each device made of them, positions and
their hidden levels, and subscriptions (the device pages, with their risk policy and stopouts, are in
``devices``). Every handler reads its form, makes one or a few back office calls with the signed-in
person's token, and renders; the back office decides what that person may see and do.

Live updates are htmx polling, not server-sent events: the back office has no push for approvals, so an
event stream would poll it just the same (once a second per open page), while holding a connection and a
task per page open and delaying the server's shutdown. A poll is an ordinary short request that the
session guard re-checks each time (an expired session stops it; a poll does not keep one from going idle),
and it answers 204 (htmx swaps nothing) unless the pending list changed, so a form being filled in is left
alone."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from typing import Any

from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from backoffice.console import charts
from backoffice.console.backoffice import Refused
from backoffice.console.views import Page, Section, form_enum, signed_in
from signalhub.v1 import backoffice_pb2 as pb

PAGE_SIZE = 25
PENDING_PAGE_SIZE = 20
MAX_DEVICES_LISTED = 500  # the back office's largest page: every device a trader may hold
LEVELS = ("stop_loss", "take_profit", "trailing_distance", "breakeven_trigger", "breakeven_offset")

section = Section(
    "Trading",
    (
        ("Approvals", "/approvals"),
        ("Signals", "/signals"),
        ("Positions", "/positions"),
        ("Devices", "/devices"),
        ("Subscriptions", "/subscriptions"),
    ),
)


async def _device_names(page: Page) -> dict[str, str]:
    listing = await page.call(page.bo.devices.ListDevices, pb.ListDevicesRequest(page_size=MAX_DEVICES_LISTED))
    return {device.id: device.name for device in listing.devices}


# -- pending approvals -----------------------------------------------------------------------------------


PendingState = tuple[pb.ListPendingApprovalsResponse, pb.ListDevicesResponse, str]


async def _pending_state(page: Page, page_token: str) -> PendingState:
    """One page of pending approvals, the devices they may go to, and a digest of both, which tells a
    poll whether anything changed (two calls, whatever the page holds)."""
    listing, devices = await asyncio.gather(
        page.call(
            page.bo.approvals.ListPendingApprovals,
            pb.ListPendingApprovalsRequest(page_size=PENDING_PAGE_SIZE, page_token=page_token),
        ),
        page.call(
            page.bo.devices.ListDevices,
            pb.ListDevicesRequest(status=pb.DEVICE_STATUS_ACTIVE, page_size=MAX_DEVICES_LISTED),
        ),
    )
    state = [
        [(a.id, a.status) for a in listing.approvals],
        [(d.id, d.name) for d in devices.devices],
        listing.next_page_token,
    ]
    return listing, devices, hashlib.sha256(json.dumps(state).encode()).hexdigest()[:16]


async def _pending(page: Page, page_token: str, state: PendingState | None = None) -> dict[str, Any]:
    """The pending list's context: each approval with its signal, the devices, the digest (``state``:
    what ``_pending_state`` read already, if it did); no call beyond those two."""
    listing, devices, digest = state or await _pending_state(page, page_token)
    # Each listed approval carries its signal (unset only if the caller may no longer see it: shown by id).
    found = [a.signal if a.HasField("signal") else None for a in listing.approvals]
    return {
        "items": list(zip(listing.approvals, found, strict=True)),
        "devices": list(devices.devices),
        "page_token": page_token,
        "next_token": listing.next_page_token,
        "digest": digest,
    }


@signed_in
async def approvals_page(page: Page) -> Response:
    pending = await _pending(page, page.query("page_token"))
    return page.render("approvals.html", title="Pending approvals", **pending)


@signed_in(background=True)
async def approvals_live(page: Page) -> Response:
    """The pending list again for a poll: 204 when it is what the page shows (``seen``, its digest), read
    with two calls; the signals only when something changed."""
    state = await _pending_state(page, page.query("page_token"))
    if state[2] == page.query("seen"):
        return Response(status_code=204)
    return page.render("_pending.html", **await _pending(page, page.query("page_token"), state))


async def _decided(page: Page, notice: str) -> Response:
    """After a decision: the list again, in place for htmx, else through a redirect."""
    if not page.htmx:
        return page.redirect("/approvals", notice)
    page.session.notify(notice)
    return page.render("_pending.html", **await _pending(page, page.field("page_token")))


async def _undecided(page: Page, refused: Refused, signal_id: str) -> Response:
    """A refused decision: the list with the reason beside the approval (or above the list, when the
    approval is no longer in it) and each bad field marked."""
    pending = await _pending(page, page.field("page_token"))
    shown = any(approval.signal_id == signal_id for approval, _ in pending["items"])
    return page.render(
        "_pending.html" if page.htmx else "approvals.html",
        status=refused.http_status,
        title="Pending approvals",
        refused=refused,
        errors=refused.violations,
        values=page.values,
        error_target=signal_id if shown else "",
        **pending,
    )


@signed_in
async def approve(page: Page) -> Response:
    signal_id = page.arg("signal_id")
    request = pb.ApproveSignalRequest(
        signal_id=signal_id,
        request_id=page.field("request_id"),
        volume=page.field("volume"),
        device_ids=page.fields("device_ids"),
    )
    try:
        approval = await page.call(page.bo.approvals.ApproveSignal, request)
    except Refused as refused:
        return await _undecided(page, refused, signal_id)
    sent = len(approval.device_ids)
    notice = f"Signal {signal_id[:8]} approved: {sent} device{'s' if sent != 1 else ''}."
    if approval.reason:
        notice += f" {approval.reason}"
    return await _decided(page, notice)


@signed_in
async def reject(page: Page) -> Response:
    signal_id = page.arg("signal_id")
    request = pb.RejectSignalRequest(
        signal_id=signal_id, request_id=page.field("request_id"), reason=page.field("reason")
    )
    try:
        await page.call(page.bo.approvals.RejectSignal, request)
    except Refused as refused:
        return await _undecided(page, refused, signal_id)
    return await _decided(page, f"Signal {signal_id[:8]} rejected.")


# -- signals ---------------------------------------------------------------------------------------------


@signed_in
async def signals_page(page: Page) -> Response:
    listing = await page.call(
        page.bo.signals.ListSignals, pb.ListSignalsRequest(page_size=PAGE_SIZE, page_token=page.query("page_token"))
    )
    return page.render("signals.html", title="Signals", signals=listing.signals, next_token=listing.next_page_token)


@signed_in
async def signal_page(page: Page) -> Response:
    """One signal: its levels, the caller's decision, and per device the delivery's state, slippage and
    stage timeline, with every event reported."""
    signal_id = page.arg("signal_id")
    signal = await page.call(page.bo.signals.GetSignal, pb.GetSignalRequest(id=signal_id))
    execution, approvals, positions, names = await asyncio.gather(
        page.call(page.bo.executions.GetSignalExecution, pb.GetSignalExecutionRequest(signal_id=signal_id)),
        page.call(page.bo.approvals.ListApprovals, pb.ListApprovalsRequest(signal_id=signal_id)),
        page.call(page.bo.positions.ListPositions, pb.ListPositionsRequest(signal_id=signal_id)),
        _device_names(page),
    )
    deliveries = [(d, names.get(d.device_id, d.device_id[:8]), charts.timeline(d)) for d in execution.devices]
    return page.render(
        "signal.html",
        title=f"Signal {signal.instrument}",
        signal=signal,
        approvals=approvals.approvals,
        deliveries=deliveries,
        positions=positions.positions,
        names=names,
    )


# -- positions -------------------------------------------------------------------------------------------

POSITION_FILTERS = ("", "POSITION_STATUS_OPEN", "POSITION_STATUS_CLOSING", "POSITION_STATUS_CLOSED",
                    "POSITION_STATUS_CLOSED_ERROR")  # fmt: skip


@signed_in
async def positions_page(page: Page) -> Response:
    state = page.query("status") if page.query("status") in POSITION_FILTERS else ""
    request = pb.ListPositionsRequest(
        page_size=PAGE_SIZE,
        page_token=page.query("page_token"),
        status=form_enum(pb.PositionStatus, state),
        device_id=page.query("device_id"),
    )
    listing, names = await asyncio.gather(page.call(page.bo.positions.ListPositions, request), _device_names(page))
    return page.render(
        "positions.html",
        title="Positions",
        positions=listing.positions,
        next_token=listing.next_page_token,
        state=state,
        filters=POSITION_FILTERS,
        device_id=page.query("device_id"),
        names=names,
    )


async def _position_page(page: Page, status: int = 200, **context: Any) -> Response:
    """One position with its events and close commands; ``context`` carries a refused form's errors."""
    position_id = page.arg("position_id")
    position = await page.call(page.bo.positions.GetPosition, pb.GetPositionRequest(id=position_id))
    commands, names = await asyncio.gather(
        page.call(page.bo.positions.ListCloseCommands, pb.ListCloseCommandsRequest(position_id=position_id)),
        _device_names(page),
    )
    levels = {name: getattr(position, name) for name in LEVELS}
    if context.get("error_form") != "protection":
        context["values"] = {**levels, **context.get("values", {})}
    return page.render(
        "position.html",
        status=status,
        title=f"Position {position.instrument}",
        position=position,
        commands=commands.close_commands,
        device_name=names.get(position.device_id, position.device_id[:8]),
        levels=levels,
        **context,
    )


@signed_in
async def position_page(page: Page) -> Response:
    return await _position_page(page)


@signed_in
async def update_protection(page: Page) -> Response:
    """Set or remove hidden levels: only the fields changed from what the page showed (``was_*``) are sent,
    so an unchanged trailing stop is not restarted; "Remove all" clears every level."""
    position_id = page.arg("position_id")
    remove_all = page.field("action") == "remove"
    request = pb.UpdateProtectionRequest(id=position_id, request_id=page.field("request_id"))
    changed = []
    for name in LEVELS:
        value = "" if remove_all else page.field(name)
        if value != page.field(f"was_{name}"):
            setattr(request, name, value)
            changed.append(name)
    if not changed:
        return page.redirect(f"/positions/{position_id}", "Nothing to change.")
    try:
        await page.call(page.bo.positions.UpdateProtection, request)
    except Refused as refused:
        return await _position_page(
            page,
            refused.http_status,
            refused=refused,
            errors=refused.violations,
            values=page.values,
            error_form="protection",
        )
    return page.redirect(f"/positions/{position_id}", "Hidden levels updated.")


@signed_in
async def close_position(page: Page) -> Response:
    position_id = page.arg("position_id")
    volume = page.field("volume")
    request = pb.ClosePositionRequest(id=position_id, request_id=page.field("request_id"), volume=volume)
    try:
        await page.call(page.bo.positions.ClosePosition, request)
    except Refused as refused:
        return await _position_page(
            page,
            refused.http_status,
            refused=refused,
            errors=refused.violations,
            values=page.values,
            error_form="close",
        )
    what = f"{volume} lots" if volume else "the whole position"
    return page.redirect(f"/positions/{position_id}", f"Close requested for {what}: the device closes it next.")


# -- subscriptions ---------------------------------------------------------------------------------------


async def _subscriptions_page(page: Page, status: int = 200, **context: Any) -> Response:
    listing = await page.call(
        page.bo.approvals.ListSubscriptions,
        pb.ListSubscriptionsRequest(page_size=PAGE_SIZE, page_token=page.query("page_token")),
    )
    context.setdefault("values", {"mode": "SUBSCRIPTION_MODE_MANUAL"})
    return page.render(
        "subscriptions.html",
        status=status,
        title="Subscriptions",
        subscriptions=listing.subscriptions,
        next_token=listing.next_page_token,
        **context,
    )


@signed_in
async def subscriptions_page(page: Page) -> Response:
    return await _subscriptions_page(page)


@signed_in
async def subscribe(page: Page) -> Response:
    request = pb.SubscribeRequest(
        request_id=page.field("request_id"),
        producer_id=page.field("producer_id"),
        mode=form_enum(pb.SubscriptionMode, page.field("mode")),
        sizing=form_enum(pb.SizingMode, page.field("sizing")),
        sizing_value=page.field("sizing_value"),
        max_volume=page.field("max_volume"),
        instruments=[i for i in re.split(r"[\s,]+", page.field("instruments")) if i],
    )
    try:
        subscription = await page.call(page.bo.approvals.Subscribe, request)
    except Refused as refused:
        return await _subscriptions_page(
            page, refused.http_status, refused=refused, errors=refused.violations, values=page.values
        )
    return page.redirect("/subscriptions", f"Subscribed to producer {subscription.producer_id[:8]}.")


@signed_in
async def unsubscribe(page: Page) -> Response:
    subscription = await page.call(page.bo.approvals.Unsubscribe, pb.UnsubscribeRequest(id=page.arg("subscription_id")))
    return page.redirect("/subscriptions", f"Unsubscribed from producer {subscription.producer_id[:8]}.")


routes: list[BaseRoute] = [
    Route("/approvals", approvals_page, methods=["GET"]),
    Route("/approvals/live", approvals_live, methods=["GET"]),
    Route("/approvals/{signal_id}/approve", approve, methods=["POST"]),
    Route("/approvals/{signal_id}/reject", reject, methods=["POST"]),
    Route("/signals", signals_page, methods=["GET"]),
    Route("/signals/{signal_id}", signal_page, methods=["GET"]),
    Route("/positions", positions_page, methods=["GET"]),
    Route("/positions/{position_id}", position_page, methods=["GET"]),
    Route("/positions/{position_id}/protection", update_protection, methods=["POST"]),
    Route("/positions/{position_id}/close", close_position, methods=["POST"]),
    Route("/subscriptions", subscriptions_page, methods=["GET"]),
    Route("/subscriptions", subscribe, methods=["POST"]),
    Route("/subscriptions/{subscription_id}/unsubscribe", unsubscribe, methods=["POST"]),
]
