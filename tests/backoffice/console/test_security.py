"""What guards every page: the security headers (a CSP without inline script or style, which the pages
honour: the browser reports no violation), and the CSRF token without which no POST changes anything."""

from __future__ import annotations

import grpc
from playwright.async_api import Browser, expect

from backoffice.console.security import CSP
from signalhub.v1 import backoffice_pb2 as bpb
from signalhub.v1 import backoffice_pb2_grpc as brpc
from tests.backoffice.console.conftest import RunningConsole, browsing, signed_in
from tests.conftest import UserCredentials

EXPECTED_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


async def test_every_page_carries_the_security_headers(
    browser: Browser, console: RunningConsole, user: UserCredentials
) -> None:
    assert CSP == EXPECTED_CSP
    async with browsing(browser) as (_, page):
        for path, status in (("/signin", 200), ("/no-such-page", 404)):
            answer = await page.goto(f"{console.url}{path}")
            assert answer is not None and answer.status == status
            assert answer.headers["content-security-policy"] == EXPECTED_CSP, path
            assert answer.headers["x-content-type-options"] == "nosniff"
            assert answer.headers["referrer-policy"] == "no-referrer"
    async with signed_in(browser, console, user) as (_, page):
        for path in ("/approvals", "/signals", "/positions", "/devices", "/subscriptions"):
            answer = await page.goto(f"{console.url}{path}")
            assert answer is not None and answer.status == 200, path
            headers = answer.headers
            assert headers["content-security-policy"] == EXPECTED_CSP
            assert headers["x-content-type-options"] == "nosniff"
            assert headers["referrer-policy"] == "no-referrer"
            assert headers["cache-control"] == "no-store"
            assert headers["x-frame-options"] == "DENY"
            assert "<script>" not in await page.content() and " style=" not in await page.content()
        # htmx is configured not to inject a <style> of its own (the CSP would refuse it, and say so).
        config = await page.locator('meta[name="htmx-config"]').get_attribute("content")
        assert config is not None and '"includeIndicatorStyles": false' in config


async def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(
    browser: Browser, console: RunningConsole, user: UserCredentials, backoffice_channel: grpc.aio.Channel
) -> None:
    devices = brpc.DeviceServiceStub(backoffice_channel)

    async def device_names() -> list[str]:
        listing = await devices.ListDevices(bpb.ListDevicesRequest(), metadata=user.metadata, timeout=10)
        return [device.name for device in listing.devices]

    async with signed_in(browser, console, user) as (_, page):
        # The session cookie goes along (same browser context): only the token is missing, or wrong.
        for headers in ({}, {"X-CSRF-Token": "not-the-token"}):
            answer = await page.request.post(
                f"{console.url}/devices", form={"name": "forged"}, headers=headers, max_redirects=0
            )
            assert answer.status == 403
            assert "This form has expired" in await answer.text()
        answer = await page.request.post(
            f"{console.url}/devices", form={"name": "forged", "csrf_token": "not-the-token"}, max_redirects=0
        )
        assert answer.status == 403
        refused_signout = await page.request.post(f"{console.url}/signout", max_redirects=0)
        assert refused_signout.status == 403
        assert await device_names() == []
        # The session survived the forged sign-out, and the same form sent from the page goes through.
        await page.goto(f"{console.url}/devices")
        await page.get_by_label("Name", exact=True).fill("real")
        await page.get_by_role("button", name="Register").click()
        await expect(page.locator("#device-secret")).to_be_visible()
    assert await device_names() == ["real"]
