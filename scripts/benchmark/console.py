"""The web console with 1,000 positions: how long a signed-in trader waits for the positions list and for
the pending approvals, one request after another, as a browser on this machine asks for them.

Set-up: a fresh user with one device and a producer they follow MANUAL; 1,000 open positions written into
the database as ``positions`` writes them (each from a signal, approval and filled delivery of its own),
and 30 PENDING approvals from that producer's signed SubmitSignal calls, more than the approvals page's
first page (20). The console runs as a process of its own (``signalhub serve console``, its output in
bench/logs/console.log) against the run's back office. The bench signs in over HTTP with the user's API
token (the sign-in form's CSRF token, then the session cookie) and, on one kept-alive connection, asks for
each page ``WARMUP`` times, then ``SAMPLES`` times, each timed from the request to the last byte of the
page: the positions list (its first page of 25: one ListPositions and one ListDevices behind it) and the
pending approvals (20 approvals and their signals: ListPendingApprovals, ListDevices, a GetSignal each).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import http.client
import os
import re
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from backoffice import accounts, bootstrap
from backoffice import devices as device_domain
from backoffice.console.security import CSRF_FIELD
from backoffice.console.trader import PAGE_SIZE, PENDING_PAGE_SIZE
from backoffice.console.views import SESSION_COOKIE, SIGNIN_PATH
from backoffice.models import ActorType, Role
from backoffice.platform.auth import Caller
from backoffice.producer import ProducerClient
from signalhub.protocol.secret import Secret

from .meters import CpuMeter
from .options import REPO
from .positions import FAR, Positions
from .profile import profiled
from .report import ms, percentile
from .simdevice import INSTRUMENT
from .system import free_port, spawn_server, stop_process
from .world import Backoffice

if TYPE_CHECKING:
    from .scenarios import Run  # which imports this module

NAME = "console"
POSITIONS = 1000
PENDING_SIGNALS = 30
WARMUP = 20  # requests of each page before the timed ones: templates compiled, channel and statements warm
SAMPLES = 200  # timed requests of each page, one after another
GOAL_MS = 200.0  # a page answers within 200 ms p95 with 1,000 positions
START_SECONDS = 30.0  # a safety net for the console's start, no claim
LOG = REPO / "bench" / "logs" / "console.log"

# What a page shows of its content: a link to each position, a form to approve each pending signal.
POSITION_LINK = re.compile(r'href="/positions/([0-9a-f-]{36})"')
APPROVE_FORM = re.compile(r'action="/approvals/([0-9a-f-]{36})/approve"')


class ConsoleError(Exception):
    """The console did not start, or did not sign the trader in: one line, never a token or a cookie."""


# -- the browser -----------------------------------------------------------------------------------------


def hidden_field(page: str, name: str) -> str | None:
    """The value of the first hidden ``<input>`` named ``name`` in ``page`` (unescaped), as a browser
    would post it; None when there is none."""
    for tag in re.findall(r"<input\b[^>]*>", page):
        if re.search(rf'\bname="{re.escape(name)}"', tag) and re.search(r'\btype="hidden"', tag):
            value = re.search(r'\bvalue="([^"]*)"', tag)
            return html.unescape(value.group(1)) if value else ""
    return None


def kept_cookies(cookies: Mapping[str, str], set_cookie: Iterable[str]) -> dict[str, str]:
    """``cookies`` after a response's Set-Cookie headers: each one set replaces its namesake, and one
    deleted (an empty value or ``Max-Age=0``) is dropped. Paths and lifetimes are not kept: the bench's
    requests all go to one console within minutes."""
    kept = dict(cookies)
    for header in set_cookie:
        parsed: SimpleCookie = SimpleCookie()
        with contextlib.suppress(CookieError):
            parsed.load(header)
        for name, morsel in parsed.items():
            if not morsel.value or morsel["max-age"] == "0":
                kept.pop(name, None)
            else:
                kept[name] = morsel.value
    return kept


@dataclass(frozen=True)
class Answer:
    status: int
    location: str
    body: str


class Browser:
    """One person's browser as far as the bench needs it: one kept-alive HTTP/1.1 connection to the
    console and the cookies it was given. Blocking (http.client): the scenario runs it in a thread."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.connection = http.client.HTTPConnection(host, port, timeout=timeout)
        self.cookies: dict[str, str] = {}

    def close(self) -> None:
        self.connection.close()

    def request(self, method: str, path: str, form: Mapping[str, str] | None = None) -> Answer:
        """One request with the cookies, the form (if any) urlencoded as a browser posts it; redirects are
        not followed."""
        headers = {"Accept": "text/html"}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
        body = None
        if form is not None:
            body = urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            response, text = self._exchange(method, path, body, headers)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            self.connection.close()  # the console closed the connection while it was idle: once more
            response, text = self._exchange(method, path, body, headers)
        self.cookies = kept_cookies(self.cookies, response.headers.get_all("Set-Cookie") or [])
        return Answer(response.status, response.getheader("Location") or "", text)

    def _exchange(
        self, method: str, path: str, body: bytes | None, headers: Mapping[str, str]
    ) -> tuple[http.client.HTTPResponse, str]:
        self.connection.request(method, path, body=body, headers=dict(headers))
        response = self.connection.getresponse()
        return response, response.read().decode()

    def sign_in(self, token: Secret) -> None:
        """The sign-in form, then its POST with the API token and the form's CSRF token; the session cookie
        is kept. ConsoleError (naming only the step and the status) when either is refused."""
        form = self.request("GET", SIGNIN_PATH)
        csrf = hidden_field(form.body, CSRF_FIELD)
        if form.status != 200 or not csrf:
            raise ConsoleError(f"the sign-in form: HTTP {form.status}, CSRF token {'found' if csrf else 'missing'}")
        fields = {CSRF_FIELD: csrf, "next": "/", "token": token.reveal().decode()}
        answer = self.request("POST", SIGNIN_PATH, fields)
        if answer.status != 303 or SESSION_COOKIE not in self.cookies:
            raise ConsoleError(f"the console did not sign the trader in: HTTP {answer.status}")

    def timed(self, path: str, warmup: int, samples: int) -> Timings:
        """GET ``path`` ``warmup`` times, then ``samples`` times one after another, each timed from the
        request to the page's last byte; every answer but a 200 is a failure (a redirect to the sign-in
        form too)."""
        timings = Timings(path)
        for i in range(warmup + samples):
            began = time.perf_counter()
            answer = self.request("GET", path)
            took = time.perf_counter() - began
            if answer.status != 200:
                timings.failures.append(answer.status)
            elif i >= warmup:
                timings.latencies.append(took)
            timings.last = answer.body
        return timings


@dataclass
class Timings:
    """What one page's requests found: the seconds each timed 200 took, the status of every other answer,
    and the last page received (to check what it showed)."""

    path: str
    latencies: list[float] = field(default_factory=list)
    failures: list[int] = field(default_factory=list)
    last: str = ""


def listed(page: str, pattern: re.Pattern[str]) -> int:
    """How many distinct objects ``page`` shows, each found by ``pattern`` (its id as the first group)."""
    return len(set(pattern.findall(page)))


# -- the set-up and the console process ------------------------------------------------------------------


@dataclass(frozen=True)
class Trader:
    """The fresh user of this scenario: their API token, their one device, and the producer they follow."""

    user_id: str
    token: Secret
    device_id: str
    producer_id: str
    producer_secret: Secret


async def make_trader(run: Run) -> Trader:
    """A user, a device of theirs and a producer, made with the domain functions an admin's tools use."""
    tag = uuid.uuid4().hex[:8]
    async with bootstrap.resources(run.stack.settings) as res, res.sessions.begin() as session:
        user, token = await accounts.create_user(session, email=f"bench-console-{tag}@bench.signalhub", role=Role.USER)
        producer, secret = await accounts.create_producer(session, res.vault, name=f"bench console {tag}")
        owner = Caller(ActorType.USER, user.id, Role.USER)
        device, _ = await device_domain.register_device(session, res.vault, owner=owner, name="bench console device")
        return Trader(str(user.id), Secret(token.encode()), str(device.id), str(producer.id), Secret(secret.encode()))


async def furnish(run: Run, trader: Trader) -> None:
    """The trader's MANUAL subscription and 1,000 open positions (levels far from any price), written as
    ``positions`` writes them; then the producer's signals, each a PENDING approval for the trader."""
    book = Positions(run, trader.user_id, trader.device_id, trader.producer_id)
    try:
        await book.open()
        await book.add(INSTRUMENT, [FAR[0]] * POSITIONS, FAR[1])
    finally:
        await book.close()
    secret = trader.producer_secret.reveal().decode()  # the shs_ form, as an admin was given it
    async with ProducerClient(run.stack.backoffice, trader.producer_id, secret, deadline_seconds=30) as producer:
        for _ in range(PENDING_SIGNALS):
            await Backoffice.signal(producer)


def console_env(backoffice: str, port: int) -> dict[str, str]:
    """What ``signalhub serve console`` reads: where it listens and the back office it calls; none of the
    caller's other SIGNALHUB_ settings (the console needs no database nor key), and warnings only (an
    access log line per request would be timed too)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("SIGNALHUB_")}
    env["SIGNALHUB_CONSOLE_ADDRESS"] = f"127.0.0.1:{port}"
    env["SIGNALHUB_BACKOFFICE_ADDRESS"] = backoffice
    env["SIGNALHUB_LOG_LEVEL"] = "WARNING"
    return env


@dataclass(frozen=True)
class RunningConsole:
    port: int
    pid: int


@contextlib.asynccontextmanager
async def console_process(backoffice: str, log: Path) -> AsyncIterator[RunningConsole]:
    """``signalhub serve console`` against ``backoffice`` on a free port, its output in ``log``, once its
    sign-in form answers; stopped on the way out (SIGTERM, as the other servers)."""
    port = free_port()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as log_file:
        process: subprocess.Popen[bytes] = spawn_server(NAME, console_env(backoffice, port), log_file)
        try:
            await wait_answering(process, port)
            yield RunningConsole(port, process.pid)
        finally:
            await stop_process(process)


async def wait_answering(process: subprocess.Popen[bytes], port: int) -> None:
    """Until the console's sign-in form answers 200; ConsoleError when it exits or is not up in time."""
    deadline = time.monotonic() + START_SECONDS
    while True:
        if process.poll() is not None:
            raise ConsoleError(f"the console exited with status {process.returncode} (see its log)")
        browser = Browser("127.0.0.1", port, timeout=2)
        try:
            if (await asyncio.to_thread(browser.request, "GET", SIGNIN_PATH)).status == 200:
                return
        except OSError:
            pass
        finally:
            browser.close()
        if time.monotonic() > deadline:
            raise ConsoleError(f"the console did not answer within {START_SECONDS:g} s")
        await asyncio.sleep(0.2)


# -- the scenario ----------------------------------------------------------------------------------------


def report_page(run: Run, page: str, timings: Timings, where: str) -> None:
    """A page's p50 and p95 (the goal on the p95) and a note for each thing it got wrong."""
    p95 = ms(percentile(timings.latencies, 95))
    run.report.add(f"console_{page}_page_p50_ms", ms(percentile(timings.latencies, 50)), "ms", where)
    run.report.add(f"console_{page}_page_p95_ms", p95, "ms", where, at_most=GOAL_MS)
    if timings.failures:
        run.report.note(
            f"console: {len(timings.failures)} answers of {timings.path} were not 200: {timings.failures[:5]}"
        )


async def measure(run: Run, browser: Browser, page: str, path: str, pids: Mapping[str, int | None]) -> Timings:
    """``browser.timed`` for one page, with the CPU each process spent per request beside it."""
    where = f"{POSITIONS:,} positions, {PENDING_SIGNALS} pending approvals; {SAMPLES} GET {path} one after another"
    meter = CpuMeter(pids)
    timings = await asyncio.to_thread(browser.timed, path, WARMUP, SAMPLES)
    used = meter.report(run.report, where)
    requests = WARMUP + SAMPLES
    for process in ("console", "backoffice"):
        if process in used:
            run.report.add(f"{process}_cpu_per_{page}_page", ms(used[process] / requests), "ms", where)
    report_page(run, page, timings, where)
    return timings


async def console_pages(run: Run) -> None:
    """The set-up, the console started, the trader signed in, then each page measured (see the module's
    docstring); the pages' content is checked: a full first page of positions and of approvals."""
    trader = await make_trader(run)
    await furnish(run, trader)
    async with console_process(run.stack.backoffice, LOG) as console:
        browser = Browser("127.0.0.1", console.port)
        pids = {"console": console.pid, **run.stack.pids}
        try:
            await asyncio.to_thread(browser.sign_in, trader.token)
            with profiled(NAME, {"console": console.pid}, run.options.profile):
                positions = await measure(run, browser, "positions", "/positions", pids)
                approvals = await measure(run, browser, "approvals", "/approvals", pids)
        finally:
            browser.close()
    failed = len(positions.failures) + len(approvals.failures)
    run.report.add("console_pages_failed", failed, "requests", f"{2 * (WARMUP + SAMPLES)} GETs", at_most=0)
    shown = listed(positions.last, POSITION_LINK), listed(approvals.last, APPROVE_FORM)
    if shown != (PAGE_SIZE, PENDING_PAGE_SIZE):
        run.report.note(
            f"console: the pages showed {shown[0]} positions and {shown[1]} approvals,"
            f" not {PAGE_SIZE} and {PENDING_PAGE_SIZE}"
        )
