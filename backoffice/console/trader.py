"""The trader's pages: pending approvals (live), signals and what each device made of them, positions and
their hidden levels, devices (with their credentials, shown once), subscriptions, and each device's risk
policy and stopouts. Every handler reads its form, makes one or a few back office calls with the signed-in
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
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from backoffice.console import charts
from backoffice.console.backoffice import Refused
from backoffice.console.views import Page, Section, error_page, form_enum, form_refused, signed_in
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import common_pb2

PAGE_SIZE = 25
PENDING_PAGE_SIZE = 20
MAX_DEVICES_LISTED = 500  # the back office's largest page: every device a trader may hold
# The gateway records a device's last_seen_time about every 30 s while its stream is open: a device not
# seen for three of those is shown offline.
ONLINE_WITHIN = timedelta(seconds=90)
LEVELS = ("stop_loss", "take_profit", "trailing_distance", "breakeven_trigger", "breakeven_offset")
LIMIT_FIELDS = ("period", "metric", "max_amount", "max_percent", "action")
POLICY_COUNTS = ("max_open_positions", "max_open_positions_per_instrument", "max_delay_seconds")
MAX_LIMIT_ROWS = 10  # RiskPolicy's limits: at most 10
SPARE_LIMIT_ROWS = 2  # empty rows offered for new limits

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


# -- devices ---------------------------------------------------------------------------------------------


def _online(device: pb.Device) -> bool:
    if not device.HasField("last_seen_time") or device.status == pb.DEVICE_STATUS_REVOKED:
        return False
    return datetime.now(UTC) - device.last_seen_time.ToDatetime(UTC) <= ONLINE_WITHIN


def _account(device: pb.Device) -> pb.DeviceAccountState:
    """The device's account as last reported: its newest AccountState, else what its last Hello said
    (dated by the Hello's arrival)."""
    if device.HasField("account_state"):
        return device.account_state
    return pb.DeviceAccountState(balance=device.balance, equity=device.equity, state_time=device.hello_time)


def _symbol_map(text: str) -> dict[str, str]:
    """``INSTRUMENT=SYMBOL`` lines (or separated by commas) as a map; the back office checks each name."""
    found: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in re.split(r"[\n,]", text))):
        instrument, sep, symbol = item.partition("=")
        if not sep or not instrument.strip() or not symbol.strip():
            raise form_refused({"symbol_map": f"{item!r} is not INSTRUMENT=SYMBOL"})
        found[instrument.strip()] = symbol.strip()
    return found


def _symbol_map_text(symbol_map: Any) -> str:
    return "\n".join(f"{instrument}={symbol}" for instrument, symbol in sorted(symbol_map.items()))


async def _devices_page(page: Page, status: int = 200, **context: Any) -> Response:
    listing = await page.call(
        page.bo.devices.ListDevices, pb.ListDevicesRequest(page_size=PAGE_SIZE, page_token=page.query("page_token"))
    )
    return page.render(
        "devices.html",
        status=status,
        title="Devices",
        devices=[(d, _online(d), _account(d)) for d in listing.devices],
        next_token=listing.next_page_token,
        **context,
    )


@signed_in
async def devices_page(page: Page) -> Response:
    return await _devices_page(page)


def offer_file(page: Page, filename: str, content: dict[str, str], path: str) -> str:
    """Hold ``content`` (a credentials file, JSON) for one download from this session: the link, ``path``
    and the download's id. Nothing else keeps what it holds."""
    download_id = page.session.offer_download(
        filename, (json.dumps(content, indent=2) + "\n").encode(), page.console.sessions.clock()
    )
    return f"{path}/{download_id}"


def shown_once(page: Page, template: str, address: str, **context: Any) -> Response:
    """A page with a secret on it, in answer to the form (htmx, boosted) that made the secret: the browser's
    address becomes ``address``, a page without it, so a reload loads that page rather than sending the
    form again (which the back office, idempotent on its request_id, would answer with the same secret)."""
    response = page.render(template, **context)
    response.headers["HX-Replace-Url"] = address
    return response


def _secret_page(page: Page, device: pb.Device, secret: str, *, rotated: bool) -> Response:
    """The device's secret, shown in this one response, and a link to download it once as the credentials
    file ``signalhub bridge --credentials FILE`` reads. Nothing is kept but that one-time download."""
    credentials = {"device_id": device.id, "device_secret": secret, "gateway": page.console.config.gateway_address}
    download_url = offer_file(page, f"signalhub-device-{device.id[:8]}.json", credentials, "/devices/credentials")
    return shown_once(
        page,
        "device_secret.html",
        f"/devices/{device.id}",
        title="Device credentials",
        device=device,
        secret=secret,
        rotated=rotated,
        download_url=download_url,
    )


@signed_in
async def register_device(page: Page) -> Response:
    try:
        request = pb.RegisterDeviceRequest(
            request_id=page.field("request_id"),
            name=page.field("name"),
            mac_address=page.field("mac_address"),
            symbol_map=_symbol_map(page.field("symbol_map")),
        )
        response = await page.call(page.bo.devices.RegisterDevice, request)
    except Refused as refused:
        return await _devices_page(
            page, refused.http_status, refused=refused, errors=refused.violations, values=page.values
        )
    return _secret_page(page, response.device, response.secret, rotated=False)


def one_time_download(page: Page, gone: str) -> Response:
    """The file the session holds behind the path's ``download_id``, once: the link dies as it is used (and
    after a few minutes unused); ``gone`` says what to do then."""
    found = page.session.take_download(page.arg("download_id"), page.console.sessions.clock())
    if found is None:
        return error_page(page.request, gone, 404, page.session)
    headers = {"Content-Disposition": f'attachment; filename="{found.filename}"', "Cache-Control": "no-store"}
    return Response(found.content.reveal(), media_type="application/json", headers=headers)


@signed_in
async def download_credentials(page: Page) -> Response:
    return one_time_download(
        page, "This credentials file was already downloaded or has expired: rotate the device's secret for a new one."
    )


async def _device_page(page: Page, status: int = 200, **context: Any) -> Response:
    device = await page.call(page.bo.devices.GetDevice, pb.GetDeviceRequest(id=page.arg("device_id")))
    if context.get("error_form") != "update":
        context["values"] = {"name": device.name, "symbol_map": _symbol_map_text(device.symbol_map)}
    return page.render(
        "device.html",
        status=status,
        title=f"Device {device.name}",
        device=device,
        online=_online(device),
        account=_account(device),
        **context,
    )


@signed_in
async def device_page(page: Page) -> Response:
    return await _device_page(page)


@signed_in
async def update_device(page: Page) -> Response:
    device_id = page.arg("device_id")
    try:
        request = pb.UpdateDeviceRequest(
            id=device_id, name=page.field("name"), symbol_map=_symbol_map(page.field("symbol_map"))
        )
        request.update_mask.paths.extend(["name", "symbol_map"])
        await page.call(page.bo.devices.UpdateDevice, request)
    except Refused as refused:
        return await _device_page(
            page,
            refused.http_status,
            refused=refused,
            errors=refused.violations,
            values=page.values,
            error_form="update",
        )
    return page.redirect(f"/devices/{device_id}", "Device updated.")


@signed_in
async def rotate_device(page: Page) -> Response:
    request = pb.RotateDeviceSecretRequest(id=page.arg("device_id"), request_id=page.field("request_id"))
    try:
        response = await page.call(page.bo.devices.RotateDeviceSecret, request)
    except Refused as refused:
        return await _device_page(page, refused.http_status, refused=refused, error_form="rotate")
    return _secret_page(page, response.device, response.secret, rotated=True)


@signed_in
async def revoke_device(page: Page) -> Response:
    device_id = page.arg("device_id")
    try:
        if page.field("confirm") != "yes":
            raise form_refused({"confirm": "tick the box to revoke this device for good"})
        device = await page.call(page.bo.devices.RevokeDevice, pb.RevokeDeviceRequest(id=device_id))
    except Refused as refused:
        return await _device_page(
            page, refused.http_status, refused=refused, errors=refused.violations, error_form="revoke"
        )
    return page.redirect(f"/devices/{device_id}", f"Device {device.name} revoked: it can no longer connect.")


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


# -- risk ------------------------------------------------------------------------------------------------


def _policy_values(policy: pb.RiskPolicy) -> dict[str, str]:
    """A policy as the risk form's fields (the form a refused update fills in again the same way)."""
    values = {name: str(getattr(policy, name) or "") for name in POLICY_COUNTS}
    values.update(max_volume=policy.max_volume, max_deviation=policy.max_deviation)
    for row, limit in enumerate(policy.limits):
        values[f"limit-{row}-period"] = pb.RiskPeriod.Name(limit.period)
        values[f"limit-{row}-metric"] = pb.RiskMetric.Name(limit.metric)
        values[f"limit-{row}-action"] = pb.RiskAction.Name(limit.action)
        values[f"limit-{row}-max_amount"] = limit.max_amount
        values[f"limit-{row}-max_percent"] = limit.max_percent
    for side in policy.allowed_sides:
        values[f"side-{common_pb2.Side.Name(side)}"] = "on"
    values["limit_rows"] = str(min(MAX_LIMIT_ROWS, len(policy.limits) + SPARE_LIMIT_ROWS))
    return values


def _limit_rows(text: str) -> int:
    """How many limit rows the form has (as its hidden ``limit_rows`` says), at most MAX_LIMIT_ROWS."""
    return min(MAX_LIMIT_ROWS, int(text)) if text.isascii() and text.isdigit() else 0


async def _risk_page(page: Page, status: int = 200, **context: Any) -> Response:
    """A device's policy as a form, and its stopouts (each active one with a reset button)."""
    device_id = page.arg("device_id")
    device = await page.call(page.bo.devices.GetDevice, pb.GetDeviceRequest(id=device_id))
    policy, stopouts = await asyncio.gather(
        page.call(page.bo.risk.GetRiskPolicy, pb.GetRiskPolicyRequest(device_id=device_id)),
        page.call(
            page.bo.risk.ListStopouts,
            pb.ListStopoutsRequest(device_id=device_id, page_size=PAGE_SIZE, page_token=page.query("page_token")),
        ),
    )
    values = context.pop("values", None) or _policy_values(policy)
    rows = max(1, _limit_rows(values.get("limit_rows", "")))
    return page.render(
        "risk.html",
        status=status,
        title=f"Risk: {device.name}",
        device=device,
        stopouts=stopouts.stopouts,
        next_token=stopouts.next_page_token,
        values=values,
        limit_rows=range(rows),
        **context,
    )


@signed_in
async def risk_page(page: Page) -> Response:
    return await _risk_page(page)


def _policy_from_form(page: Page) -> tuple[pb.RiskPolicy, dict[str, str]]:
    """The policy the form states (rows without a period are left out), and how the request's field paths
    map back to the form's fields, so each violation lands beside the field it names."""
    policy = pb.RiskPolicy(device_id=page.arg("device_id"), max_volume=page.field("max_volume"))
    policy.max_deviation = page.field("max_deviation")
    paths = {f"policy.{name}": name for name in ("max_volume", "max_deviation", "allowed_sides", *POLICY_COUNTS)}
    problems: dict[str, str] = {}
    for name in POLICY_COUNTS:
        text = page.field(name) or "0"
        try:
            setattr(policy, name, int(text))
        except ValueError:
            problems[name] = "a whole number (0: no limit)"
    rows = _limit_rows(page.field("limit_rows"))
    for row in range(rows):
        if not page.field(f"limit-{row}-period"):
            continue
        paths[f"policy.limits[{len(policy.limits)}]"] = f"limit-{row}"
        for name in LIMIT_FIELDS:
            paths[f"policy.limits[{len(policy.limits)}].{name}"] = f"limit-{row}-{name}"
        policy.limits.append(
            pb.RiskLimit(
                period=form_enum(pb.RiskPeriod, page.field(f"limit-{row}-period")),
                metric=form_enum(pb.RiskMetric, page.field(f"limit-{row}-metric")),
                max_amount=page.field(f"limit-{row}-max_amount"),
                max_percent=page.field(f"limit-{row}-max_percent"),
                action=form_enum(pb.RiskAction, page.field(f"limit-{row}-action")),
            )
        )
    policy.allowed_sides.extend(
        side for side in (common_pb2.SIDE_BUY, common_pb2.SIDE_SELL) if page.field(f"side-{common_pb2.Side.Name(side)}")
    )
    if problems:
        raise form_refused(problems)
    return policy, paths


@signed_in
async def update_risk(page: Page) -> Response:
    device_id = page.arg("device_id")
    paths: dict[str, str] = {}
    try:
        policy, paths = _policy_from_form(page)
        await page.call(
            page.bo.risk.UpdateRiskPolicy,
            pb.UpdateRiskPolicyRequest(request_id=page.field("request_id"), policy=policy),
        )
    except Refused as refused:
        named = refused.renamed(paths)
        return await _risk_page(page, named.http_status, refused=named, errors=named.violations, values=page.values)
    return page.redirect(f"/devices/{device_id}/risk", "Risk policy saved.")


@signed_in
async def reset_stopout(page: Page) -> Response:
    device_id = page.arg("device_id")
    request = pb.ResetStopoutRequest(id=page.arg("stopout_id"), request_id=page.field("request_id"))
    await page.call(page.bo.risk.ResetStopout, request)
    return page.redirect(f"/devices/{device_id}/risk", "Stopout reset: the limit measures afresh.")


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
    Route("/devices", devices_page, methods=["GET"]),
    Route("/devices", register_device, methods=["POST"]),
    Route("/devices/credentials/{download_id}", download_credentials, methods=["GET"]),
    Route("/devices/{device_id}", device_page, methods=["GET"]),
    Route("/devices/{device_id}", update_device, methods=["POST"]),
    Route("/devices/{device_id}/rotate", rotate_device, methods=["POST"]),
    Route("/devices/{device_id}/revoke", revoke_device, methods=["POST"]),
    Route("/devices/{device_id}/risk", risk_page, methods=["GET"]),
    Route("/devices/{device_id}/risk", update_risk, methods=["POST"]),
    Route("/devices/{device_id}/stopouts/{stopout_id}/reset", reset_stopout, methods=["POST"]),
    Route("/subscriptions", subscriptions_page, methods=["GET"]),
    Route("/subscriptions", subscribe, methods=["POST"]),
    Route("/subscriptions/{subscription_id}/unsubscribe", unsubscribe, methods=["POST"]),
]
