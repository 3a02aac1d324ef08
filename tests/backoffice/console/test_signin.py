"""Signing in and out of the console in a real browser: the token exchanged for a session cookie (its
flags, HTTP and HTTPS), a bad token refused without being repeated, sign-out ending the session on the
server, and a forged sign-in form refused."""

from __future__ import annotations

import time
from pathlib import Path

from playwright.async_api import Browser, Page, expect

from backoffice.console.views import SESSION_COOKIE
from backoffice.platform.serving import Server
from tests.backoffice.console.conftest import (
    RunningConsole,
    browsing,
    console_config,
    serving_console,
    sign_in,
    signed_in,
)
from tests.conftest import UserCredentials
from tests.tls import make_server_identity


async def test_signing_in_exchanges_the_token_for_a_strict_http_only_session_cookie(
    browser: Browser, console: RunningConsole, user: UserCredentials
) -> None:
    async with browsing(browser) as (context, page):
        await page.goto(f"{console.url}/positions")
        assert page.url.startswith(f"{console.url}/signin?next=")  # not signed in: to the form, and back after
        await page.get_by_label("API token").fill(user.token)
        async with page.expect_response(lambda r: r.request.method == "POST") as answer:
            await page.get_by_role("button", name="Sign in").click()
        set_cookie = await (await answer.value).header_value("set-cookie") or ""
        await page.wait_for_url(f"{console.url}/positions")
        await expect(page.get_by_role("heading", name="Positions")).to_be_visible()
        await expect(page.locator(".who")).to_contain_text("@test.signalhub")

        (cookie,) = [c for c in await context.cookies() if c["name"] == SESSION_COOKIE]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
        assert not cookie["secure"]  # plain HTTP here; see the HTTPS test
        lifetime = console.config.session_max_seconds
        assert time.time() + lifetime - 60 < cookie["expires"] <= time.time() + lifetime + 1
        assert user.token not in cookie["value"] and len(cookie["value"]) >= 40
        session_line = next(line for line in set_cookie.splitlines() if line.startswith(f"{SESSION_COOKIE}="))
        assert f"Max-Age={lifetime}" in session_line and "HttpOnly" in session_line
        assert "SameSite=strict" in session_line and "Path=/" in session_line
        # The token is nowhere in what the browser holds or shows.
        assert user.token not in page.url and user.token not in await page.content()


async def test_a_bad_token_is_refused_without_being_repeated(browser: Browser, console: RunningConsole) -> None:
    bad = "sht_" + "Q" * 43  # shaped like a token, so a log line repeating it would fail the leak scan
    async with browsing(browser) as (context, page):
        await page.goto(f"{console.url}/signin")
        await page.get_by_label("API token").fill(bad)
        async with page.expect_response(lambda r: r.request.method == "POST") as answer:
            await page.get_by_role("button", name="Sign in").click()
        assert (await answer.value).status == 401
        await expect(page.locator("#token-error")).to_have_text("That API token was not accepted.")
        assert bad not in await page.content() and bad not in page.url
        assert await page.get_by_label("API token").input_value() == ""
        assert not [c for c in await context.cookies() if c["name"] == SESSION_COOKIE]


async def sign_in_here(page: Page, user: UserCredentials) -> None:
    await page.get_by_label("API token").fill(user.token)
    await page.get_by_role("button", name="Sign in").click()


async def test_signing_out_ends_the_session_on_the_server(
    browser: Browser, console: RunningConsole, user: UserCredentials
) -> None:
    async with signed_in(browser, console, user) as (context, page):
        (cookie,) = [c for c in await context.cookies() if c["name"] == SESSION_COOKIE]
        sessions_before = len(console.sessions)
        await page.get_by_role("button", name="Sign out").click()
        await page.wait_for_url(f"{console.url}/signin?signed_out=1")
        await expect(page.locator(".notice")).to_have_text("You are signed out.")
        assert not [c for c in await context.cookies() if c["name"] == SESSION_COOKIE]
        assert len(console.sessions) == sessions_before - 1
    # The old cookie, replayed from elsewhere, opens nothing.
    async with browsing(browser) as (context, page):
        await context.add_cookies([cookie])
        await page.goto(f"{console.url}/approvals")
        assert page.url.startswith(f"{console.url}/signin")


async def test_a_sign_in_without_the_form_token_is_refused(
    browser: Browser, console: RunningConsole, user: UserCredentials
) -> None:
    """Another site cannot sign a browser in (as anyone): the sign-in POST needs the form's own token."""
    async with browsing(browser) as (context, page):
        answer = await page.request.post(f"{console.url}/signin", form={"token": user.token}, max_redirects=0)
        assert answer.status == 403
        assert not [c for c in await context.cookies() if c["name"] == SESSION_COOKIE]


async def test_over_https_the_cookie_is_secure(
    browser: Browser, backoffice_server: Server, gateway_server: Server, user: UserCredentials, tmp_path: Path
) -> None:
    identity = make_server_identity(tmp_path, "console")
    config = console_config(
        backoffice_server, gateway_server, tls_cert=identity.certificate_chain, tls_key=identity.private_key
    )
    async with (
        serving_console(config, scheme="https") as secure,
        browsing(browser, ignore_https_errors=True) as (context, page),
    ):
        await sign_in(page, secure, user.token)
        (cookie,) = [c for c in await context.cookies() if c["name"] == SESSION_COOKIE]
        assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        answer = await page.goto(f"{secure.url}/approvals")
        assert answer is not None
        assert answer.headers["strict-transport-security"].startswith("max-age=")


async def test_a_live_page_whose_session_ended_goes_to_the_sign_in_form(
    browser: Browser, console: RunningConsole, user: UserCredentials
) -> None:
    async with signed_in(browser, console, user) as (context, page):
        (cookie,) = [c for c in await context.cookies() if c["name"] == SESSION_COOKIE]
        console.sessions.delete(cookie["value"])  # as idle expiry or a restart would
        await page.wait_for_url(f"{console.url}/signin?**")  # the pending list's next poll
        await expect(page.locator(".notice")).to_have_text("Your session has ended: sign in again.")
        await sign_in_here(page, user)
        await page.wait_for_url(f"{console.url}/approvals")  # back where the person was
