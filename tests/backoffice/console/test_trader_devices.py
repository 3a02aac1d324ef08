"""The trader's devices in a real browser: the newest account state a device reported (balance, equity,
margin, with its time), unknown for a device that never reported; and a new device's secret shown once,
a reload showing the device instead."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from playwright.async_api import Browser, expect

from backoffice.bootstrap import Resources
from backoffice.devices import account_states
from tests.backoffice.console.conftest import RunningConsole, signed_in
from tests.conftest import KNOWN_SECRETS, UserCredentials, make_device


async def test_devices_show_the_newest_account_state_they_reported(
    browser: Browser, console: RunningConsole, user: UserCredentials, res: Resources
) -> None:
    reported = await make_device(res, user)
    silent = await make_device(res, user)
    state_time = (datetime.now(UTC) - timedelta(minutes=3)).replace(microsecond=0)
    state = account_states.AccountStateIn(
        reported.id, Decimal("10250.40"), Decimal("10198.15"), Decimal("512.00"), Decimal("9686.15"), state_time, "f-1"
    )
    async with res.sessions.begin() as session:
        assert len(await account_states.store_latest(session, [state], datetime.now(UTC))) == 1
    shown_time = state_time.strftime("%Y-%m-%d %H:%M:%S UTC")

    async with signed_in(browser, console, user) as (_, page):
        await page.goto(f"{console.url}/devices")
        row = page.locator("tr", has=page.locator(f'a[href="/devices/{reported.id}"]'))
        await expect(row.locator(".balance")).to_have_text("10250.40")
        await expect(row.locator(".equity")).to_have_text("10198.15")
        await expect(row.locator(".reported")).to_have_text(shown_time)
        never = page.locator("tr", has=page.locator(f'a[href="/devices/{silent.id}"]'))
        await expect(never.locator(".balance")).to_have_text("unknown")
        await expect(never.locator(".reported")).to_have_text("never")

        await page.goto(f"{console.url}/devices/{reported.id}")
        await expect(page.locator("#account-balance")).to_have_text("10250.40")
        await expect(page.locator("#account-equity")).to_have_text("10198.15")
        await expect(page.locator("#account-time")).to_have_text(shown_time)
        await expect(page.locator("#account-margin")).to_have_text("512.00")
        await expect(page.locator("#account-free-margin")).to_have_text("9686.15")


async def test_a_new_devices_secret_is_not_shown_again_on_reload(
    browser: Browser, console: RunningConsole, user: UserCredentials
) -> None:
    async with signed_in(browser, console, user) as (_, page):
        await page.goto(f"{console.url}/devices")
        await page.get_by_label("Name", exact=True).fill("desk terminal")
        await page.get_by_role("button", name="Register").click()
        secret = await page.locator("#device-secret").inner_text()
        KNOWN_SECRETS.add(secret)
        device_id = await page.locator("#device-id").inner_text()
        assert page.url == f"{console.url}/devices/{device_id}"  # the device's own page, not the form's

        await page.reload()  # loads the device: the form is not sent again, the secret not shown again
        await expect(page.get_by_role("heading", name="desk terminal")).to_be_visible()
        await expect(page.locator("#device-secret")).to_have_count(0)
        assert secret not in await page.content()
