"""The console as an ASGI application: each page module's routes, the static files, the security headers on
every response, a plain page for every error, and the back office channel opened for the app's lifetime."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Protocol

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from backoffice.console import admin, affiliate, devices, security, signin, trader
from backoffice.console.backoffice import BackOffice
from backoffice.console.config import ConsoleConfig
from backoffice.console.sessions import SessionStore
from backoffice.console.views import SESSION_COOKIE, Console, Section, console_of, error_page, template_environment

log = logging.getLogger("signalhub.console")

STATIC = Path(__file__).with_name("static")
MAX_BODY_BYTES = 256 * 1024  # the largest form (a risk policy) is a few KiB
SERVER_ERROR_PAGE = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8">'
    '<meta name="viewport" content="width=device-width, initial-scale=1"><title>Error · signalhub console</title>'
    '<link rel="stylesheet" href="/static/console.css"></head><body><main id="main">'
    "<h1>Something went wrong</h1><p>Something went wrong on our side; try again.</p>"
    '<p><a href="/">Back to the console</a></p></main></body></html>'
)


class PageModule(Protocol):
    """What a module of pages exposes: its routes, and its heading in the navigation (None: not listed)."""

    @property
    def routes(self) -> list[BaseRoute]: ...

    @property
    def section(self) -> Section | None: ...


# Every module of pages, in the navigation's order. A new area adds its module here (see the package's
# docstring).
PAGE_MODULES: tuple[PageModule, ...] = (signin, trader, devices, affiliate, admin)


def create_app(config: ConsoleConfig, sessions: SessionStore | None = None) -> Starlette:
    """The console for ``config``; ``sessions`` lets a test share or inspect the session store."""
    sections = tuple(module.section for module in PAGE_MODULES if module.section is not None)
    store = sessions if sessions is not None else SessionStore(config.session_idle_seconds, config.session_max_seconds)
    templates = template_environment()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        backoffice = BackOffice(config)  # a grpc.aio channel belongs to the running loop: made here
        app.state.console = Console(config, store, backoffice, templates, sections)
        try:
            yield
        finally:
            await backoffice.close()

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        text = {404: "There is no such page.", 405: "This page does not take that request."}.get(
            status, "That request could not be handled."
        )
        session = console_of(request).sessions.get(request.cookies.get(SESSION_COOKIE))
        return error_page(request, text, status, session)

    async def server_error(request: Request, exc: Exception) -> Response:
        # Sent from outside the middleware, so the headers are set here; a fixed page, which no broken
        # template can break in turn. The trace goes to the log only.
        log.error("unexpected error", exc_info=exc, extra={"path": request.url.path})
        return security.secure_response(HTMLResponse(SERVER_ERROR_PAGE, status_code=500), request, config.tls)

    routes: list[BaseRoute] = [route for module in PAGE_MODULES for route in module.routes]
    routes.append(Mount("/static", StaticFiles(directory=STATIC), name="static"))
    return Starlette(
        routes=routes,
        middleware=[Middleware(security.SecurityHeaders, tls=config.tls)],
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
        max_body_size=MAX_BODY_BYTES,
    )
