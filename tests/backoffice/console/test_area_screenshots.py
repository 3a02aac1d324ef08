"""Screenshots of the Affiliate and Admin areas' main pages with live data (an affiliate with a referred
trader's commissions and a payout requested, an alert open), taken on every run, which checks that each
page renders; copied to docs/console/ when SIGNALHUB_CONSOLE_SCREENSHOTS=1, as test_screenshots does for
the trader's pages:

    SIGNALHUB_CONSOLE_SCREENSHOTS=1 scripts/test tests/backoffice/console/test_area_screenshots.py

No page with a secret on it is captured (not a producer's secret, not a new user's token)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import grpc
from playwright.async_api import Browser, Page, expect

from backoffice.bootstrap import Resources
from tests.backoffice.affiliates import support as affiliates
from tests.backoffice.console.conftest import RunningConsole, earning_affiliate, raise_alert, signed_in
from tests.backoffice.console.test_screenshots import DOCS, PNG_MAGIC
from tests.conftest import UserCredentials, make_device


async def test_screenshots_of_the_affiliate_and_admin_pages(
    browser: Browser,
    console: RunningConsole,
    admin: UserCredentials,
    res: Resources,
    backoffice_channel: grpc.aio.Channel,
    tmp_path: Path,
) -> None:
    affiliate = await earning_affiliate(backoffice_channel, res, admin)  # 10 lots a month ago: available
    second = await affiliates.make_trader(backoffice_channel, res, admin, affiliate)
    await affiliates.record_fills(res, second, ["0.50", "1.20"])  # this month's: pending
    await affiliates.accrue(res)
    payout = await affiliates.stub(backoffice_channel).RequestPayout(
        affiliates.payout_request("60.00"), metadata=affiliate.user.metadata, timeout=10
    )
    alert_id = await raise_alert(
        res, await make_device(res, second.user), "disconnected for 6 minutes, 1 open position"
    )
    shots: list[Path] = []

    async def shoot(page: Page, name: str, path: str, ready: str) -> None:
        await page.goto(f"{console.url}{path}")
        await expect(page.locator(ready).first).to_be_visible()
        shots.append(tmp_path / f"{name}.png")
        await page.screenshot(path=shots[-1], full_page=True, animations="disabled")

    async with signed_in(browser, console, affiliate.user) as (_, page):
        await shoot(page, "affiliate", "/affiliate/overview", f"#referral-{second.user.id}")
        await shoot(page, "affiliate-commissions", "/affiliate/commissions", "table.list")
        await shoot(page, "affiliate-payouts", "/affiliate/payouts", f"#payout-{payout.id}")
    async with signed_in(browser, console, admin) as (_, page):
        await shoot(page, "admin-alerts", "/admin/alerts", f"#alert-{alert_id}")
        await shoot(page, "admin-payouts", "/admin/payouts?status=PAYOUT_STATUS_REQUESTED", f"#payout-{payout.id}")
        await shoot(page, "admin-audit", "/admin/audit?object_type=payout", "table.list")
        await shoot(page, "admin-producers", "/admin/producers", "table.list")
        await shoot(page, "admin-users", "/admin/users", "table.list")

    for shot in shots:
        assert shot.read_bytes().startswith(PNG_MAGIC), shot.name
    if os.environ.get("SIGNALHUB_CONSOLE_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        for shot in shots:
            shutil.copyfile(shot, DOCS / shot.name)
