"""Fixtures of the console's tests: one Chromium for the whole session (the distribution's, never a
download), the console served by uvicorn in-process against the session's back office, browser contexts
signed in through the sign-in form, a trader whose paper bridge is connected to the gateway, and for the
Affiliate and Admin areas an affiliate with money to pay out and an alert raised as the worker raises it."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect
from starlette.routing import BaseRoute

from backoffice import alerts
from backoffice.bootstrap import Resources
from backoffice.console.app import create_app
from backoffice.console.config import ConsoleConfig
from backoffice.console.server import ConsoleServer, server_for
from backoffice.console.sessions import SessionStore
from backoffice.models import AlertKind
from backoffice.platform.serving import Server
from backoffice.producer import ProducerClient
from gateway.bridge import BridgeClient, BridgeConfig, PaperConfig, PaperExecutor
from signalhub.v1 import backoffice_pb2 as bpb
from signalhub.v1 import backoffice_pb2_grpc as brpc
from tests.backoffice.affiliates import support as affiliates
from tests.conftest import KeyCredentials, UserCredentials, free_port, make_device, make_producer, make_user, subscribe
from tests.gateway.support import eventually, running_bridge

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_INSTALLED = CHROMIUM.is_file()
# No network here: without these Chromium keeps dialling out (updates, sync, QUIC) to closed connections.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
WAIT_MS = 15_000  # a safety net for a loaded machine, never a performance claim
expect.set_options(timeout=WAIT_MS)


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    """One headless Chromium for every console test; missing, the tests are skipped, but never under CI."""
    if not CHROMIUM_INSTALLED:
        message = f"{CHROMIUM} not found: install Debian's chromium package (scripts/test does, as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@dataclass(frozen=True)
class RunningConsole:
    url: str
    config: ConsoleConfig
    sessions: SessionStore


@asynccontextmanager
async def serving_console(
    config: ConsoleConfig, scheme: str = "http", extra_routes: Sequence[BaseRoute] = ()
) -> AsyncIterator[RunningConsole]:
    """The console for ``config`` (with ``extra_routes``, which a test adds) under uvicorn in this event
    loop, stopped on the way out."""
    sessions = SessionStore(config.session_idle_seconds, config.session_max_seconds)
    app = create_app(config, sessions)
    app.router.routes.extend(extra_routes)
    server: ConsoleServer = server_for(config, app)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # raises what stopped it
            raise AssertionError("the console stopped before it started")
        await asyncio.sleep(0.02)
    try:
        yield RunningConsole(f"{scheme}://{config.host}:{config.port}", config, sessions)
    finally:
        server.should_exit = True
        await task


def console_config(backoffice: Server, gateway: Server, **overrides: object) -> ConsoleConfig:
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": free_port(),
        "backoffice_target": backoffice.bound_address,
        "gateway_address": gateway.bound_address,
    }
    return ConsoleConfig(**(values | overrides))  # type: ignore[arg-type]


@pytest.fixture(scope="session")
async def console(backoffice_server: Server, gateway_server: Server) -> AsyncIterator[RunningConsole]:
    async with serving_console(console_config(backoffice_server, gateway_server)) as running:
        yield running


class CspWatch:
    """The browser's complaints about the Content-Security-Policy: any means a page used inline script or
    style (or something from elsewhere)."""

    def __init__(self) -> None:
        self.violations: list[str] = []

    def watch(self, page: Page) -> None:
        page.on(
            "console",
            lambda message: (
                self.violations.append(message.text)
                if "Content Security Policy" in message.text or "Refused to" in message.text
                else None
            ),
        )


@asynccontextmanager
async def browsing(browser: Browser, **options: object) -> AsyncIterator[tuple[BrowserContext, Page]]:
    """A fresh browser context (its own cookies) and page; on the way out, no CSP violation may have
    happened in it."""
    context = await browser.new_context(viewport=DESKTOP, **options)  # type: ignore[arg-type]
    context.set_default_timeout(WAIT_MS)
    page = await context.new_page()
    csp = CspWatch()
    csp.watch(page)
    try:
        yield context, page
    finally:
        await context.close()
    assert csp.violations == [], csp.violations


async def sign_in(page: Page, console: RunningConsole, token: str) -> None:
    """Through the sign-in form, as a person would."""
    await page.goto(f"{console.url}/signin")
    await page.get_by_label("API token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{console.url}/approvals")


@asynccontextmanager
async def signed_in(
    browser: Browser, console: RunningConsole, user: UserCredentials, **options: object
) -> AsyncIterator[tuple[BrowserContext, Page]]:
    async with browsing(browser, **options) as (context, page):
        await sign_in(page, console, user.token)
        yield context, page


@dataclass(frozen=True)
class Trader:
    """A user with one device whose paper bridge is connected, following a producer MANUALLY (FIXED_VOLUME
    0.10): what a trade through the console needs."""

    user: UserCredentials
    device: KeyCredentials
    producer: KeyCredentials
    executor: PaperExecutor
    bridge: BridgeClient
    backoffice_address: str

    def producer_client(self) -> ProducerClient:
        return ProducerClient(self.backoffice_address, self.producer.id, self.producer.secret)


@pytest.fixture
async def trader(
    res: Resources,
    backoffice_server: Server,
    backoffice_channel: grpc.aio.Channel,
    gateway_server: Server,
    tmp_path: Path,
) -> AsyncIterator[Trader]:
    user = await make_user(res)
    device = await make_device(res, user)
    producer = await make_producer(res)
    await subscribe(backoffice_channel, user, producer, bpb.SUBSCRIPTION_MODE_MANUAL)
    executor = PaperExecutor(PaperConfig(seed=7, slippage_ticks=2))
    config = BridgeConfig(
        str(device.id), (gateway_server.bound_address,), tmp_path / f"ledger-{uuid.uuid4().hex[:8]}.db"
    )
    async with running_bridge(config, device, executor) as bridge:
        yield Trader(user, device, producer, executor, bridge, backoffice_server.bound_address)


async def reload_until(page: Page, url: str, selector: str, text: str, within: float = WAIT_MS / 1000) -> None:
    """Load ``url`` again until ``selector`` reads ``text`` (pages that are not live show a later state on
    the next load)."""
    deadline = time.monotonic() + within
    while True:
        await page.goto(url)
        if (await page.locator(selector).first.inner_text()).strip() == text:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{selector} never read {text!r} at {url}")
        await asyncio.sleep(0.2)


async def filled_position(trader: Trader, channel: grpc.aio.Channel) -> tuple[bpb.Signal, bpb.Position]:
    """A signal approved through the API and filled by the trader's paper bridge, and its position."""
    async with trader.producer_client() as producer:
        signal = await producer.submit_signal("XAUUSD", "buy", entry_price="2034.15")
    approvals = brpc.ApprovalServiceStub(channel)
    await approvals.ApproveSignal(
        bpb.ApproveSignalRequest(signal_id=signal.id, request_id=str(uuid.uuid4())),
        metadata=trader.user.metadata,
        timeout=10,
    )
    positions = brpc.PositionServiceStub(channel)
    found: list[bpb.Position] = []

    async def opened() -> bool:
        listing = await positions.ListPositions(
            bpb.ListPositionsRequest(signal_id=signal.id), metadata=trader.user.metadata, timeout=10
        )
        found[:] = listing.positions
        return len(found) == 1

    await eventually(opened, "the position to open")
    return signal, found[0]


async def earning_affiliate(
    channel: grpc.aio.Channel, res: Resources, admin: UserCredentials, lots: str = "10"
) -> affiliates.Affiliate:
    """An affiliate whose referred trader filled ``lots`` a month ago, accrued and past its hold: all of it
    available for a payout (10 lots earn 92.00 USD under the affiliate tests' program)."""
    affiliate, trader = await affiliates.affiliate_and_trader(channel, res, admin)
    await affiliates.record_fills(res, trader, [lots], now=datetime.now(UTC) - timedelta(days=31))
    await affiliates.accrue(res)
    await affiliates.release(res, datetime.now(UTC))
    return affiliate


async def raise_alert(res: Resources, device: KeyCredentials, message: str) -> uuid.UUID:
    """A DEVICE_DISCONNECTED alert about ``device``, raised as the worker's watch raises it."""
    async with res.sessions.begin() as session:
        [raised] = await alerts.raise_alerts(
            session, [alerts.Incident(AlertKind.DEVICE_DISCONNECTED, device.id, device.id, message)], datetime.now(UTC)
        )
    return raised.id
