"""The trader's pages in a real browser against the real back office, gateway and a paper bridge: a MANUAL
signal appearing live and approved to a bridge that fills it, a position closed from its page, a device
registered with its credentials file (which a bridge then connects with), another user's objects answering
not found, and the back office's field errors shown beside their fields."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from pathlib import Path

import grpc
from playwright.async_api import Browser, expect

from backoffice.bootstrap import Resources
from backoffice.platform.serving import Server
from backoffice.producer import ProducerClient
from gateway.bridge import BridgeConfig, PaperConfig, PaperExecutor
from gateway.bridge import cli as bridge_cli
from signalhub.v1 import backoffice_pb2 as bpb
from signalhub.v1 import backoffice_pb2_grpc as brpc
from tests.backoffice.console.conftest import RunningConsole, Trader, filled_position, reload_until, signed_in
from tests.conftest import KeyCredentials, UserCredentials, make_device, make_producer, make_user
from tests.gateway.support import Book, eventually, running_bridge


async def test_a_manual_signal_appears_live_and_is_approved_to_a_bridge_that_fills_it(
    browser: Browser, console: RunningConsole, trader: Trader, backoffice_channel: grpc.aio.Channel
) -> None:
    async with signed_in(browser, console, trader.user) as (_, page):
        await expect(page.locator("#pending .empty")).to_have_text("No signal awaits your decision.")
        await page.evaluate("window.loadedOnce = true")  # gone if the page were loaded again
        async with trader.producer_client() as producer:
            signal = await producer.submit_signal("XAUUSD", "buy", entry_price="2034.15", stop_loss="2020")

        article = page.locator(f"#approval-{signal.id}")
        await expect(article).to_be_visible()  # by the page's own polling: nobody reloads it
        assert await page.evaluate("window.loadedOnce") is True
        await expect(article.locator("h2")).to_contain_text("XAUUSD")
        await article.get_by_label("test device").check()
        await article.get_by_role("button", name="Approve").click()
        await expect(page.locator("#pending .notice")).to_have_text(f"Signal {signal.id[:8]} approved: 1 device.")
        await expect(article).to_have_count(0)
        assert await page.evaluate("window.loadedOnce") is True  # the decision went through htmx, in place

        await eventually(lambda: len(trader.executor.fills) == 1, "the paper fill")
        signal_url = f"{console.url}/signals/{signal.id}"
        await reload_until(page, signal_url, ".delivery .state", "Filled")
        executions = brpc.ExecutionServiceStub(backoffice_channel)
        (execution,) = (
            await executions.GetSignalExecution(
                bpb.GetSignalExecutionRequest(signal_id=signal.id), metadata=trader.user.metadata, timeout=10
            )
        ).devices
        assert execution.slippage  # two ticks of paper slippage
        await expect(page.locator(".delivery .slippage")).to_have_text(execution.slippage)
        chart = page.locator(".delivery svg.timeline")
        await expect(chart.locator("text.stage")).to_contain_text(["Sent", "Received", "Placed", "Filled"])
        await expect(page.get_by_text("Approved", exact=False).first).to_be_visible()


async def test_a_position_is_closed_from_its_page(
    browser: Browser, console: RunningConsole, trader: Trader, backoffice_channel: grpc.aio.Channel
) -> None:
    _, position = await filled_position(trader, backoffice_channel)
    url = f"{console.url}/positions/{position.id}"
    async with signed_in(browser, console, trader.user) as (_, page):
        await page.goto(f"{console.url}/positions")
        await page.locator(f'a[href="/positions/{position.id}"]').click()
        await expect(page.locator("#position-state")).to_have_text("Open")

        # More than the open volume: the back office's reason, and the violation beside the volume field.
        await page.get_by_label("Volume to close (lots)").fill("5")
        async with page.expect_response(lambda r: r.request.method == "POST") as answer:
            await page.get_by_role("button", name="Close position").click()
        assert (await answer.value).status == 400
        await expect(page.locator("#volume-error")).to_contain_text("must not exceed the open volume")
        await expect(page.get_by_label("Volume to close (lots)")).to_have_attribute("aria-invalid", "true")
        await expect(page.locator("#position-state")).to_have_text("Open")

        await page.get_by_label("Volume to close (lots)").fill("")
        await page.get_by_role("button", name="Close position").click()
        await expect(page.locator(".notice")).to_contain_text("Close requested for the whole position")
        await eventually(lambda: len(trader.executor.closes) == 1, "the paper close")
        await reload_until(page, url, "#position-state", "Closed")
        await expect(page.locator("table").first).to_contain_text("Manual")


async def test_hidden_levels_are_set_and_removed_from_the_position_page(
    browser: Browser, console: RunningConsole, trader: Trader, backoffice_channel: grpc.aio.Channel
) -> None:
    _, position = await filled_position(trader, backoffice_channel)
    positions = brpc.PositionServiceStub(backoffice_channel)

    async def current() -> bpb.Position:
        request = bpb.GetPositionRequest(id=position.id)
        return await positions.GetPosition(request, metadata=trader.user.metadata, timeout=10)

    async with signed_in(browser, console, trader.user) as (_, page):
        await page.goto(f"{console.url}/positions/{position.id}")
        entry = Decimal(position.entry_price)
        await page.get_by_label("Stop loss").fill(str(entry - 10))
        await page.get_by_label("Take profit").fill(str(entry + 10))
        await page.get_by_role("button", name="Save levels").click()
        await expect(page.locator(".notice")).to_have_text("Hidden levels updated.")
        levels = await current()
        assert (Decimal(levels.stop_loss), Decimal(levels.take_profit)) == (entry - 10, entry + 10)

        await page.get_by_role("button", name="Remove all levels").click()
        await expect(page.locator(".notice")).to_have_text("Hidden levels updated.")
        levels = await current()
        assert (levels.stop_loss, levels.take_profit) == ("", "")


async def test_a_device_is_registered_and_its_credentials_file_downloaded_once(
    browser: Browser, console: RunningConsole, user: UserCredentials, tmp_path: Path
) -> None:
    async with signed_in(browser, console, user) as (_, page):
        await page.goto(f"{console.url}/devices")
        await page.get_by_label("Name", exact=True).fill("phone bridge")
        await page.get_by_label("Symbol map (optional)").fill("XAUUSD=GOLD.m")
        await page.get_by_role("button", name="Register").click()
        device_id = await page.locator("#device-id").inner_text()
        shown_secret = await page.locator("#device-secret").inner_text()
        assert shown_secret.startswith("shs_")
        link = page.get_by_role("link", name="Download the credentials file")
        download_url = f"{console.url}{await link.get_attribute('href')}"
        async with page.expect_download() as downloading:
            await link.click()
        path = tmp_path / "credentials.json"
        await (await downloading.value).save_as(path)
        path.chmod(0o600)
        assert json.loads(path.read_text()) == {
            "device_id": device_id,
            "device_secret": shown_secret,
            "gateway": console.config.gateway_address,
        }
        again = await page.request.get(download_url, max_redirects=0)  # once: the link is spent
        assert again.status == 404

        # Rotating shows a new secret the same way; its file comes as an attachment nobody may store.
        await page.goto(f"{console.url}/devices/{device_id}")
        await page.get_by_role("button", name="Rotate secret").click()
        rotated_secret = await page.locator("#device-secret").inner_text()
        assert rotated_secret.startswith("shs_") and rotated_secret != shown_secret
        href = await page.get_by_role("link", name="Download the credentials file").get_attribute("href")
        answer = await page.request.get(f"{console.url}{href}", max_redirects=0)
        assert answer.status == 200
        assert answer.headers["cache-control"] == "no-store"
        assert answer.headers["content-disposition"] == f'attachment; filename="signalhub-device-{device_id[:8]}.json"'
        assert json.loads(await answer.text())["device_secret"] == rotated_secret

    credentials = bridge_cli.load_credentials(path, None, None, {})
    assert (credentials.device_id, credentials.gateways) == (device_id, (console.config.gateway_address,))
    # And a bridge connects with the downloaded file (the first secret stays valid for the grace period).
    config = BridgeConfig(credentials.device_id, credentials.gateways, tmp_path / "ledger.db")
    device = KeyCredentials(uuid.UUID(device_id), shown_secret)
    async with running_bridge(config, device, PaperExecutor(PaperConfig(seed=1))) as bridge:
        assert bridge.connected.is_set()


async def test_another_users_objects_are_not_found(
    browser: Browser,
    console: RunningConsole,
    user: UserCredentials,
    res: Resources,
    backoffice_server: Server,
    backoffice_channel: grpc.aio.Channel,
) -> None:
    other = await make_user(res)
    other_device = await make_device(res, other)
    other_position = await (await Book.open(res, other.id)).position(other_device.id)
    stranger = await make_producer(res)  # nobody of ours follows it
    async with ProducerClient(backoffice_server.bound_address, stranger.id, stranger.secret) as producer:
        signal = await producer.submit_signal("XAUUSD", "sell", entry_price="2034.15")
    async with signed_in(browser, console, user) as (_, page):
        for path in (
            f"/devices/{other_device.id}",
            f"/devices/{other_device.id}/risk",
            f"/positions/{other_position}",
            f"/signals/{signal.id}",
        ):
            answer = await page.goto(f"{console.url}{path}")
            assert answer is not None and answer.status == 404, path
            await expect(page.locator(".form-error")).to_contain_text("not found")
            assert "test device" not in await page.content()
        # Nor can a form reach it: the close is refused and the position stays open.
        csrf = await page.locator('input[name="csrf_token"]').first.get_attribute("value")
        answer = await page.request.post(
            f"{console.url}/positions/{other_position}/close", form={"csrf_token": csrf or ""}, max_redirects=0
        )
        assert answer.status == 404
    positions = brpc.PositionServiceStub(backoffice_channel)
    still = await positions.GetPosition(
        bpb.GetPositionRequest(id=str(other_position)), metadata=other.metadata, timeout=10
    )
    assert still.status == bpb.POSITION_STATUS_OPEN


async def test_field_errors_are_shown_beside_their_fields(
    browser: Browser,
    console: RunningConsole,
    user: UserCredentials,
    res: Resources,
) -> None:
    producer = await make_producer(res)
    device = await make_device(res, user)
    async with signed_in(browser, console, user) as (_, page):
        await page.goto(f"{console.url}/subscriptions")
        await page.get_by_label("Producer id").fill(str(producer.id))
        await page.get_by_label("Sizing", exact=True).select_option("SIZING_MODE_FIXED_VOLUME")
        await page.get_by_label("Sizing value").fill("-1")
        async with page.expect_response(lambda r: r.request.method == "POST") as answer:
            await page.get_by_role("button", name="Subscribe").click()
        assert (await answer.value).status == 400
        await expect(page.locator("#sizing_value-error")).to_have_text("must be greater than zero")
        await expect(page.get_by_label("Sizing value")).to_have_attribute("aria-invalid", "true")
        await expect(page.get_by_label("Sizing value")).to_have_value("-1")  # the form comes back as sent
        await expect(page.locator(".form-error")).to_contain_text("sizing_value")
        await expect(page.locator("#producer_id-error")).to_have_count(0)

        # A violation deep in a request (policy.limits[0].max_percent) lands beside its row's field.
        await page.goto(f"{console.url}/devices/{device.id}/risk")
        await page.locator("#limit-0-period").select_option("RISK_PERIOD_DAY")
        await page.locator("#limit-0-metric").select_option("RISK_METRIC_LOSS")
        await page.locator("#limit-0-max_percent").fill("150")
        await page.locator("#limit-0-action").select_option("RISK_ACTION_STOP_OPENING")
        await page.get_by_role("button", name="Save policy").click()
        await expect(page.locator("#limit-0-max_percent-error")).to_be_visible()
        await expect(page.locator("#limit-0-max_percent")).to_have_value("150")

        await page.locator("#limit-0-max_percent").fill("5")
        await page.get_by_role("button", name="Save policy").click()
        await expect(page.locator(".notice")).to_have_text("Risk policy saved.")
        await expect(page.locator("#limit-0-max_percent")).to_have_value("5")
