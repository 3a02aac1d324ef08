"""The console scenario of the benchmark (scripts/benchmark/console.py): the parts of its browser read the
console's own pages and cookies, and against a real back office it starts ``signalhub serve console``,
signs a trader in over HTTP and times a page, without the token ever reaching an error or the log."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from starlette.responses import Response

from backoffice.console.security import CSRF_FIELD
from backoffice.console.views import SESSION_COOKIE
from backoffice.platform.serving import Server
from scripts.benchmark.console import (
    APPROVE_FORM,
    POSITION_LINK,
    Browser,
    ConsoleError,
    console_env,
    console_process,
    hidden_field,
    kept_cookies,
    listed,
)
from signalhub.protocol.secret import Secret
from tests.conftest import UserCredentials

ID = "0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9"
OTHER = "1b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9"


def test_a_hidden_field_is_read_as_a_browser_posts_it() -> None:
    page = (
        '<input name="csrf_token" value="visible-one">'  # not hidden: not the one
        f'<form><input type="hidden" name="{CSRF_FIELD}" value="a&amp;b"><input type="hidden" name="next" value="/">'
    )
    assert hidden_field(page, CSRF_FIELD) == "a&b"
    assert hidden_field(page, "next") == "/"
    assert hidden_field(page, "missing") is None


def _set_cookie_headers(response: Response) -> list[str]:
    return [value.decode() for name, value in response.raw_headers if name == b"set-cookie"]


def test_cookies_follow_what_the_console_sets_and_deletes() -> None:
    """Set-Cookie headers as Starlette writes them for the console: set, replaced, deleted."""
    signed_in = Response()
    signed_in.set_cookie(SESSION_COOKIE, "first", max_age=600, path="/", httponly=True, samesite="strict")
    signed_in.delete_cookie("signalhub_signin", path="/signin")
    cookies = kept_cookies({"signalhub_signin": "form-token"}, _set_cookie_headers(signed_in))
    assert cookies == {SESSION_COOKIE: "first"}
    again = Response()
    again.set_cookie(SESSION_COOKIE, "second", path="/")
    assert kept_cookies(cookies, _set_cookie_headers(again)) == {SESSION_COOKIE: "second"}
    signed_out = Response()
    signed_out.delete_cookie(SESSION_COOKIE, path="/")
    assert kept_cookies(cookies, _set_cookie_headers(signed_out)) == {}
    assert kept_cookies(cookies, ["not a cookie at all; ;="]) == cookies


def test_listed_counts_each_object_once() -> None:
    page = f'<a href="/positions/{ID}">a</a><a href="/positions/{ID}">b</a><a href="/positions/{OTHER}">c</a>'
    assert listed(page, POSITION_LINK) == 2
    assert listed(page, APPROVE_FORM) == 0
    assert listed(f'<form action="/approvals/{ID}/approve">', APPROVE_FORM) == 1


def test_the_console_gets_only_its_own_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGNALHUB_DATABASE_URL", "postgresql://elsewhere/db")
    monkeypatch.setenv("SIGNALHUB_CONSOLE_TLS_CERT", "/nowhere.pem")
    env = console_env("127.0.0.1:5", 8081)
    assert env["SIGNALHUB_CONSOLE_ADDRESS"] == "127.0.0.1:8081"
    assert env["SIGNALHUB_BACKOFFICE_ADDRESS"] == "127.0.0.1:5"
    assert "SIGNALHUB_DATABASE_URL" not in env and "SIGNALHUB_CONSOLE_TLS_CERT" not in env


async def test_a_trader_signs_in_and_a_page_is_timed(
    backoffice_server: Server, user: UserCredentials, tmp_path: Path
) -> None:
    log = tmp_path / "console.log"
    async with console_process(backoffice_server.bound_address, log) as console:
        browser = Browser("127.0.0.1", console.port)
        stranger = Browser("127.0.0.1", console.port)
        try:
            await asyncio.to_thread(browser.sign_in, Secret(user.token.encode()))
            timings = await asyncio.to_thread(browser.timed, "/positions", 1, 3)
            not_accepted = "sht_" + "x" * 43
            with pytest.raises(ConsoleError) as refused:
                await asyncio.to_thread(stranger.sign_in, Secret(not_accepted.encode()))
            never_signed_in = await asyncio.to_thread(stranger.timed, "/positions", 0, 2)
        finally:
            browser.close()
            stranger.close()
    assert len(timings.latencies) == 3 and not timings.failures
    assert all(0 < took < 10 for took in timings.latencies)
    assert "<h1>Positions</h1>" in timings.last and "No position." in timings.last
    assert "HTTP 401" in str(refused.value) and not_accepted not in str(refused.value)
    assert never_signed_in.failures == [303, 303] and not never_signed_in.latencies  # to the sign-in form
    assert user.token not in log.read_text()
