"""What protects every page: the response headers (a Content-Security-Policy without inline script or style,
no sniffing, no referrer, no framing, nothing cached but the static files) and the per-session CSRF token
that every state-changing request must send back, as a form field or, from htmx, as a header."""

from __future__ import annotations

import hmac

from starlette.datastructures import FormData, MutableHeaders
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}
HSTS = "max-age=31536000"
STATIC_PREFIX = "/static/"

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"


def apply_headers(headers: MutableHeaders, path: str, tls: bool) -> None:
    """Set the security headers on one response (those it set itself stay). Pages, authenticated or not, are
    never stored by a browser or a proxy: they hold a person's trades and, once, a device's secret."""
    for name, value in HEADERS.items():
        headers.setdefault(name, value)
    if tls:
        headers.setdefault("Strict-Transport-Security", HSTS)
    headers.setdefault("Cache-Control", "no-cache" if path.startswith(STATIC_PREFIX) else "no-store")


class SecurityHeaders:
    """ASGI middleware: ``apply_headers`` on every HTTP response."""

    def __init__(self, app: ASGIApp, *, tls: bool) -> None:
        self.app = app
        self.tls = tls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                apply_headers(MutableHeaders(scope=message), path, self.tls)
            await send(message)

        await self.app(scope, receive, with_headers)


def secure_response(response: Response, request: Request, tls: bool) -> Response:
    """``response`` with the security headers, for the few made outside the middleware (a server error)."""
    apply_headers(response.headers, request.url.path, tls)
    return response


def csrf_ok(request: Request, form: FormData, expected: str) -> bool:
    """Whether the request carries ``expected``: the ``X-CSRF-Token`` header (htmx) or the form's field."""
    sent = request.headers.get(CSRF_HEADER) or form.get(CSRF_FIELD)
    return isinstance(sent, str) and bool(sent) and hmac.compare_digest(sent.encode(), expected.encode())
