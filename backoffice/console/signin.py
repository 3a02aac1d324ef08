"""Signing in and out. A person signs in with an API token (a form POST; never a URL), which the back office
checks with AccountService.GetCurrentUser; the console then keeps the token server side and hands the
browser only a session cookie (HttpOnly, SameSite=Strict, Path=/, Secure over HTTPS, Max-Age the session's
lifetime). The sign-in form carries a CSRF token of its own (a short-lived cookie echoed in a hidden field),
so no other site can sign a browser in as someone else."""

from __future__ import annotations

import logging
import secrets

import grpc
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from backoffice.console import security, views
from backoffice.console.backoffice import Refused
from backoffice.console.views import SESSION_COOKIE, SIGNIN_PATH, Page, console_of, local_path, render, signed_in
from signalhub.protocol.secret import Secret
from signalhub.v1 import backoffice_pb2 as pb

log = logging.getLogger("signalhub.console")

SIGNIN_COOKIE = "signalhub_signin"  # the sign-in form's own CSRF token, before any session exists
SIGNIN_FORM_SECONDS = 600
MAX_TOKEN_LENGTH = 200  # an API token is "sht_" and 43 characters; anything far longer is not one


def _signin_form(request: Request, *, status: int = 200, problem: str = "", notice: str = "") -> Response:
    """The sign-in form with a fresh CSRF token, set as a cookie only this form's POST receives."""
    config = console_of(request).config
    token = secrets.token_urlsafe(32)
    response = render(
        request,
        "signin.html",
        status=status,
        title="Sign in",
        signin_token=token,
        next_path=local_path(request.query_params.get("next", "/")),
        problem=problem,
        notice=notice,
    )
    response.set_cookie(
        SIGNIN_COOKIE,
        token,
        max_age=SIGNIN_FORM_SECONDS,
        path=SIGNIN_PATH,
        secure=config.cookies_secure,
        httponly=True,
        samesite="strict",
    )
    return response


async def signin_page(request: Request) -> Response:
    console = console_of(request)
    if console.sessions.get(request.cookies.get(SESSION_COOKIE)) is not None:
        return RedirectResponse(local_path(request.query_params.get("next", "/")), status_code=303)
    notice = ""
    if request.query_params.get("ended"):
        notice = "Your session has ended: sign in again."
    elif request.query_params.get("signed_out"):
        notice = "You are signed out."
    return _signin_form(request, notice=notice)


async def signin(request: Request) -> Response:
    """Exchange the posted API token for a session. A refused token is answered without repeating it (the
    form comes back empty), and the reason never says more than that it was not accepted."""
    console = console_of(request)
    form = await request.form(max_files=0, max_fields=10, max_part_size=4096)
    expected = request.cookies.get(SIGNIN_COOKIE, "")
    if not expected or not security.csrf_ok(request, form, expected):
        return _signin_form(request, status=403, problem="This form has expired: sign in again.")
    raw = form.get("token")
    text = raw.strip() if isinstance(raw, str) else ""
    if not text or len(text) > MAX_TOKEN_LENGTH:
        return _signin_form(request, status=401, problem="That API token was not accepted.")
    token = Secret(text.encode())
    try:
        user = await console.backoffice.call(
            console.backoffice.accounts.GetCurrentUser, pb.GetCurrentUserRequest(), token
        )
    except Refused as refused:
        if refused.code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT):
            log.info("sign-in refused")
            return _signin_form(request, status=401, problem="That API token was not accepted.")
        return _signin_form(request, status=refused.http_status, problem=refused.text)
    session_id, session = console.sessions.create(token, user)
    log.info("signed in", extra={"user_id": session.user_id})
    next_path = local_path(str(form.get("next") or "/"))
    response = RedirectResponse(next_path if next_path != SIGNIN_PATH else "/", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        max_age=console.sessions.remaining_seconds(session),
        path="/",
        secure=console.config.cookies_secure,
        httponly=True,
        samesite="strict",
    )
    response.delete_cookie(SIGNIN_COOKIE, path=SIGNIN_PATH)
    return response


@signed_in
async def signout(page: Page) -> Response:
    """End the session here (the server forgets it) and in the browser (the cookie is cleared)."""
    page.console.sessions.delete(page.request.cookies.get(SESSION_COOKIE))
    log.info("signed out", extra={"user_id": page.session.user_id})
    response = RedirectResponse(f"{SIGNIN_PATH}?signed_out=1", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", secure=page.console.config.cookies_secure, httponly=True)
    return response


@signed_in
async def home(page: Page) -> Response:
    return RedirectResponse("/approvals", status_code=303)


routes: list[BaseRoute] = [
    Route("/", home, methods=["GET"]),
    Route(SIGNIN_PATH, signin_page, methods=["GET"]),
    Route(SIGNIN_PATH, signin, methods=["POST"]),
    Route("/signout", signout, methods=["POST"]),
]
section: views.Section | None = None  # signing in has no place in the navigation
