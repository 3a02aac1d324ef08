"""Screenshots of the trader's main pages with live data (a pending approval, a filled signal, its open
position): taken on every run, which checks that each page renders at both widths; copied to docs/console/
when SIGNALHUB_CONSOLE_SCREENSHOTS=1, which is how the committed ones are made:

    SIGNALHUB_CONSOLE_SCREENSHOTS=1 scripts/test tests/backoffice/console/test_screenshots.py

No page with a secret on it is ever captured."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import grpc
from playwright.async_api import Browser, expect

from signalhub.v1 import backoffice_pb2 as bpb
from signalhub.v1 import backoffice_pb2_grpc as brpc
from tests.backoffice.console.conftest import DESKTOP, PHONE, RunningConsole, Trader, filled_position, signed_in
from tests.conftest import ROOT_DIR

DOCS = ROOT_DIR / "docs" / "console"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


async def test_screenshots_of_the_main_pages(
    browser: Browser, console: RunningConsole, trader: Trader, backoffice_channel: grpc.aio.Channel, tmp_path: Path
) -> None:
    signal, position = await filled_position(trader, backoffice_channel)
    async with trader.producer_client() as producer:
        pending = await producer.submit_signal(
            "XAUUSD", "sell", entry_price="2036.40", stop_loss="2041", take_profit="2026"
        )
    limit = bpb.RiskLimit(
        period=bpb.RISK_PERIOD_DAY, metric=bpb.RISK_METRIC_LOSS, max_amount="250", action=bpb.RISK_ACTION_CLOSE_ALL
    )
    policy = bpb.RiskPolicy(device_id=str(trader.device.id), limits=[limit], max_open_positions=5)
    await brpc.RiskServiceStub(backoffice_channel).UpdateRiskPolicy(
        bpb.UpdateRiskPolicyRequest(policy=policy), metadata=trader.user.metadata, timeout=10
    )
    shots: list[Path] = []
    async with signed_in(browser, console, trader.user) as (_, page):

        async def shoot(name: str, path: str, ready: str) -> None:
            await page.goto(f"{console.url}{path}")
            await expect(page.locator(ready).first).to_be_visible()
            shots.append(tmp_path / f"{name}.png")
            await page.screenshot(path=shots[-1], full_page=True, animations="disabled")

        await shoot("approvals-desktop", "/approvals", f"#approval-{pending.id}")
        await shoot("signal", f"/signals/{signal.id}", ".delivery svg.timeline")
        await shoot("positions", "/positions", f'a[href="/positions/{position.id}"]')
        await shoot("position", f"/positions/{position.id}", "#position-state")
        await shoot("devices", "/devices", "table.list")
        await shoot("risk", f"/devices/{trader.device.id}/risk", "#limit-0-period")
        await shoot("subscriptions", "/subscriptions", "table.list")
        await page.set_viewport_size(PHONE)
        await shoot("approvals-phone", "/approvals", f"#approval-{pending.id}")
        await page.set_viewport_size(DESKTOP)

    for shot in shots:
        assert shot.read_bytes().startswith(PNG_MAGIC), shot.name
    if os.environ.get("SIGNALHUB_CONSOLE_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        for shot in shots:
            shutil.copyfile(shot, DOCS / shot.name)
