"""The console as a process: it loads no database or Redis client, `signalhub serve console` serves its
pages until SIGTERM, then exits 0, and an unexpected error is a plain page that tells nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.error
import urllib.request

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backoffice.console.security import CSP
from backoffice.platform.serving import Server
from tests.backoffice.console.conftest import console_config, serving_console
from tests.conftest import ROOT_DIR, free_port, packages_imported_by, run_module


def test_the_console_loads_no_database_or_redis_client() -> None:
    loaded = packages_imported_by("backoffice.console.server")  # the app, and uvicorn that serves it
    assert {"starlette", "jinja2", "uvicorn", "grpc"} <= loaded  # it did load the console
    assert not loaded & {"sqlalchemy", "asyncpg", "redis", "alembic"}


def _fetch_body(url: str) -> tuple[int, dict[str, str], str]:
    """A GET's status, headers (lower-case names) and body; status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 - a local http URL
            return answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, {k.lower(): v for k, v in refused.headers.items()}, refused.read().decode()
    except OSError:
        return 0, {}, ""


def _fetch(url: str) -> tuple[int, dict[str, str]]:
    status, headers, _ = _fetch_body(url)
    return status, headers


async def test_signalhub_serve_console_serves_until_sigterm(backoffice_server: Server) -> None:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT_DIR}{os.pathsep}{ROOT_DIR / 'proto'}",
        "SIGNALHUB_CONSOLE_ADDRESS": f"127.0.0.1:{port}",
        "SIGNALHUB_BACKOFFICE_ADDRESS": backoffice_server.bound_address,
        "SIGNALHUB_LOG_LEVEL": "WARNING",
    }
    env.pop("SIGNALHUB_DATABASE_URL", None)  # the console needs neither a database nor a master key
    env.pop("SIGNALHUB_MASTER_KEY", None)
    process = run_module("backoffice.cli", "serve", "console", env=env, cwd=ROOT_DIR)
    try:
        deadline = asyncio.get_running_loop().time() + 30  # a safety net, no claim
        while (answer := await asyncio.to_thread(_fetch, f"http://127.0.0.1:{port}/signin"))[0] != 200:
            assert process.poll() is None, process.communicate()
            assert asyncio.get_running_loop().time() < deadline, "the console did not answer"
            await asyncio.sleep(0.1)
        assert answer[1]["content-security-policy"].startswith("default-src 'self'")
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.to_thread(process.communicate, timeout=15)
        assert process.returncode == 0, err
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_bad_setting_ends_the_command_with_one_line_naming_it() -> None:
    env = {**os.environ, "PYTHONPATH": f"{ROOT_DIR}{os.pathsep}{ROOT_DIR / 'proto'}"}
    env["SIGNALHUB_CONSOLE_ADDRESS"] = "nowhere"
    process = run_module("backoffice.cli", "serve", "console", env=env, cwd=ROOT_DIR)
    _, err = process.communicate(timeout=60)
    assert process.returncode != 0
    assert "SIGNALHUB_CONSOLE_ADDRESS: expected host:port" in err and "Traceback" not in err


async def test_an_unexpected_error_is_a_plain_page_without_details(
    backoffice_server: Server, gateway_server: Server
) -> None:
    async def broken(request: Request) -> Response:
        raise RuntimeError("internal detail sht_secret_looking_thing")

    config = console_config(backoffice_server, gateway_server)
    async with serving_console(config, extra_routes=[Route("/broken", broken)]) as console:
        status, headers, body = await asyncio.to_thread(_fetch_body, f"{console.url}/broken")
    assert status == 500
    assert "Something went wrong" in body
    assert "internal detail" not in body and "Traceback" not in body and "RuntimeError" not in body
    assert headers["content-security-policy"] == CSP and headers["cache-control"] == "no-store"
