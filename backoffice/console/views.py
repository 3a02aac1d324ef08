"""What every page shares: the templates (Jinja2, autoescaped) and their filters, the ``Page`` a handler
gets (its session, its form, back office calls made with the session's token, rendering), and
``signed_in``, the guard around each handler: signed in, the CSRF token on every POST, admins only where
asked, a refusal from the back office shown as its one-line reason."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, overload
from urllib.parse import urlencode, urlsplit

import grpc
import jinja2
from grpc import aio
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from backoffice.console import formats, security
from backoffice.console.backoffice import BackOffice, Refused
from backoffice.console.config import ConsoleConfig
from backoffice.console.sessions import Session, SessionStore
from signalhub.v1 import backoffice_pb2, common_pb2

log = logging.getLogger("signalhub.console")

TEMPLATES = Path(__file__).with_name("templates")
SESSION_COOKIE = "signalhub_session"
SIGNIN_PATH = "/signin"
MAX_FORM_FIELDS = 200
MAX_FIELD_BYTES = 64 * 1024

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")


@dataclass(frozen=True)
class Section:
    """A heading of the navigation and its links (label, path); ``admin_only`` hides it from the others
    (the back office refuses them anyway)."""

    title: str
    links: tuple[tuple[str, str], ...]
    admin_only: bool = False

    def visible_to(self, session: Session) -> bool:
        return session.is_admin or not self.admin_only


@dataclass(frozen=True)
class Console:
    """The process-wide parts every request reaches through ``request.app.state.console``."""

    config: ConsoleConfig
    sessions: SessionStore
    backoffice: BackOffice
    templates: jinja2.Environment
    sections: tuple[Section, ...]


def console_of(request: Request) -> Console:
    found: Console = request.app.state.console
    return found


# -- templates -------------------------------------------------------------------------------------------


def template_environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        label=formats.label,
        css=formats.css,
        when=formats.when,
        iso=formats.iso,
        ms=formats.milliseconds,
        short=formats.short,
        for_field=formats.for_field,
    )
    env.globals.update(
        pb=backoffice_pb2,
        common=common_pb2,
        new_request_id=new_request_id,
        enum_options=formats.enum_options,
    )
    return env


def new_request_id() -> str:
    """A fresh idempotency key for a form: the same form sent twice (a double click, a re-sent POST) acts
    once."""
    return str(uuid.uuid4())


def render(
    request: Request,
    template: str,
    *,
    session: Session | None = None,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    """``template`` with the page's context: who is signed in, the navigation they may see, their CSRF
    token, the notices waiting for them, and ``context``."""
    console = console_of(request)
    visible = tuple(s for s in console.sections if session is not None and s.visible_to(session))
    html = console.templates.get_template(template).render(
        request=request,
        path=request.url.path,
        session=session,
        nav=visible,
        csrf_token=session.csrf_token if session else "",
        notices=session.take_notices() if session else [],
        **{"errors": {}, "values": {}, "refused": None, "error_target": "", "error_form": ""} | context,
    )
    return HTMLResponse(html, status_code=status)


def error_page(request: Request, text: str, status: int, session: Session | None = None) -> Response:
    """One line for people, never a trace: a whole page, or for an htmx request a fragment swapped into the
    layout's alert region."""
    if request.headers.get("HX-Request") == "true":
        fragment = console_of(request).templates.get_template("_alert.html").render(text=text)
        return HTMLResponse(fragment, status_code=status, headers={"HX-Retarget": "#alerts", "HX-Reswap": "innerHTML"})
    title = {403: "Not allowed", 404: "Not found"}.get(status, "Problem")
    return render(request, "error.html", session=session, status=status, text=text, title=title)


# -- the page a handler gets ---------------------------------------------------------------------------


class Page:
    """One request of a signed-in person: its session, its form (POST), the back office called with the
    session's token, and the responses a handler returns."""

    def __init__(self, request: Request, session: Session, form: FormData | None) -> None:
        self.request = request
        self.session = session
        self.console = console_of(request)
        self.bo = self.console.backoffice
        self.form = form if form is not None else FormData()

    async def call(self, method: aio.UnaryUnaryMultiCallable[RequestT, ResponseT], message: RequestT) -> ResponseT:
        return await self.bo.call(method, message, self.session.token)

    def arg(self, name: str) -> str:
        """A path parameter."""
        return str(self.request.path_params[name])

    def query(self, name: str) -> str:
        return self.request.query_params.get(name, "").strip()

    def field(self, name: str) -> str:
        value = self.form.get(name)
        return value.strip() if isinstance(value, str) else ""

    def fields(self, name: str) -> list[str]:
        return [v.strip() for v in self.form.getlist(name) if isinstance(v, str) and v.strip()]

    @property
    def values(self) -> dict[str, str]:
        """The form as it was sent, to fill it in again beside its errors (a field sent more than once,
        ticked checkboxes, as its values separated by spaces)."""
        return {
            name: " ".join(v for v in self.form.getlist(name) if isinstance(v, str))
            for name in self.form
            if name != security.CSRF_FIELD
        }

    @property
    def htmx(self) -> bool:
        return self.request.headers.get("HX-Request") == "true"

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        return render(self.request, template, session=self.session, status=status, **context)

    def redirect(self, path: str, notice: str | None = None) -> Response:
        """After a change, back to a page to GET (so a reload never repeats the change), with a notice."""
        if notice:
            self.session.notify(notice)
        return RedirectResponse(path, status_code=303)


Handler = Callable[[Page], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


@overload
def signed_in(handler: Handler) -> Endpoint: ...


@overload
def signed_in(*, admin: bool = False, background: bool = False) -> Callable[[Handler], Endpoint]: ...


def signed_in(
    handler: Handler | None = None, *, admin: bool = False, background: bool = False
) -> Endpoint | Callable[[Handler], Endpoint]:
    """Guard ``handler``: a signed-in session (else to the sign-in page, and back after it), the session's
    CSRF token on every POST (else 403 and nothing done), an admin where ``admin`` (else 403), and a
    back office refusal shown as its one-line reason with the matching status. A ``background`` handler
    (what a page polls by itself) does not keep the session from going idle. Use as ``@signed_in``,
    ``@signed_in(admin=True)`` or ``@signed_in(background=True)``."""

    def wrap(handler: Handler) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            console = console_of(request)
            cookie = request.cookies.get(SESSION_COOKIE)
            session = console.sessions.get(cookie, touch=not background)
            if session is None:
                return signin_redirect(request)
            form = None
            if request.method == "POST":
                form = await request.form(max_files=0, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_FIELD_BYTES)
                if not security.csrf_ok(request, form, session.csrf_token):
                    log.warning("csrf token refused", extra={"path": request.url.path, "user_id": session.user_id})
                    return error_page(request, "This form has expired: reload the page and try again.", 403, session)
            if admin and not session.is_admin:
                return error_page(request, "Only administrators may open this page.", 403, session)
            try:
                return await handler(Page(request, session, form))
            except Refused as refused:
                if refused.code == grpc.StatusCode.UNAUTHENTICATED:  # the token was revoked: the session ends
                    console.sessions.delete(cookie)
                    return signin_redirect(request, ended=True)
                return error_page(request, refused.text, refused.http_status, session)

        return endpoint

    return wrap(handler) if handler is not None else wrap


def signin_redirect(request: Request, *, ended: bool = False) -> Response:
    """To the sign-in page, which comes back here afterwards (for a GET). An htmx request (a live region
    polling) comes from a page whose session ended: the whole page goes to the sign-in form, which says so,
    and comes back to that page afterwards."""
    htmx = request.headers.get("HX-Request") == "true"
    params = {"ended": "1"} if ended or htmx else {}
    if htmx:
        shown = urlsplit(request.headers.get("HX-Current-URL", ""))
        params["next"] = local_path(shown.path + (f"?{shown.query}" if shown.query else ""))
    elif request.method == "GET":
        params["next"] = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    target = f"{SIGNIN_PATH}?{urlencode(params)}" if params else SIGNIN_PATH
    if htmx:
        return Response(status_code=204, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)


def local_path(target: str) -> str:
    """``target`` when it is a path of this site, else the home page: a sign-in link never sends anyone
    elsewhere."""
    # Browsers drop tabs and newlines from URLs and read a backslash as a slash: "/\t/evil.example" and
    # "/\\evil.example" lead off the site as surely as "//evil.example".
    if target.startswith("/") and target.isprintable() and not any(c.isspace() or c == "\\" for c in target):
        return target if not target.startswith("//") else "/"
    return "/"


def form_enum(enum: Any, name: str) -> Any:
    """The value of an enum named in a form (0, which the back office refuses by field, when unknown). Typed
    Any: each generated enum has its own ValueType."""
    try:
        return enum.Value(name)
    except ValueError:
        return 0


def form_refused(violations: dict[str, str]) -> Refused:
    """A form the console itself cannot turn into a request, told like the back office's refusals."""
    return Refused(grpc.StatusCode.INVALID_ARGUMENT, f"Invalid request: {', '.join(violations)}", violations)


# -- secrets shown once (a device's, a producer's) ------------------------------------------------------


def offer_file(page: Page, filename: str, content: dict[str, str], path: str) -> str:
    """Hold ``content`` (a credentials file, JSON) for one download from this session: the link, ``path``
    and the download's id. Nothing else keeps what it holds."""
    download_id = page.session.offer_download(
        filename, (json.dumps(content, indent=2) + "\n").encode(), page.console.sessions.clock()
    )
    return f"{path}/{download_id}"


def shown_once(page: Page, template: str, address: str, **context: Any) -> Response:
    """A page with a secret on it, in answer to the form (htmx, boosted) that made the secret: the browser's
    address becomes ``address``, a page without it, so a reload loads that page rather than sending the
    form again (which the back office, idempotent on its request_id, would answer with the same secret)."""
    response = page.render(template, **context)
    response.headers["HX-Replace-Url"] = address
    return response


def one_time_download(page: Page, gone: str) -> Response:
    """The file the session holds behind the path's ``download_id``, once: the link dies as it is used (and
    after a few minutes unused); ``gone`` says what to do then."""
    found = page.session.take_download(page.arg("download_id"), page.console.sessions.clock())
    if found is None:
        return error_page(page.request, gone, 404, page.session)
    headers = {"Content-Disposition": f'attachment; filename="{found.filename}"', "Cache-Control": "no-store"}
    return Response(found.content.reveal(), media_type="application/json", headers=headers)
