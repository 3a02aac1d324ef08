"""The trader's device pages: devices (registered with their credentials shown once and offered as a
one-time download, renamed, re-mapped, rotated, revoked, shown online or not with their last balance and
equity), and each device's risk policy and stopouts. Like the other pages, each handler reads its form,
makes one or a few back office calls with the signed-in person's token, and renders."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from backoffice.console.backoffice import Refused
from backoffice.console.trader import PAGE_SIZE
from backoffice.console.views import (
    Page,
    form_enum,
    form_refused,
    offer_file,
    one_time_download,
    shown_once,
    signed_in,
)
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import common_pb2

# The gateway records a device's last_seen_time about every 30 s while its stream is open: a device not
# seen for three of those is shown offline.
ONLINE_WITHIN = timedelta(seconds=90)
LIMIT_FIELDS = ("period", "metric", "max_amount", "max_percent", "action")
POLICY_COUNTS = ("max_open_positions", "max_open_positions_per_instrument", "max_delay_seconds")
MAX_LIMIT_ROWS = 10  # RiskPolicy's limits: at most 10
SPARE_LIMIT_ROWS = 2  # empty rows offered for new limits

section = None  # listed under the trader's heading ("Devices")


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
]
