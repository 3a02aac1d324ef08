"""``signalhub serve console``: the console under uvicorn, on SIGNALHUB_CONSOLE_ADDRESS (HTTPS with
SIGNALHUB_CONSOLE_TLS_CERT and _KEY), until SIGTERM or SIGINT, after which it finishes the requests under
way and exits 0."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator

import uvicorn
from starlette.applications import Starlette

from backoffice.console.app import create_app
from backoffice.console.config import ConsoleConfig
from signalhub.protocol import logs
from signalhub.protocol.wire import is_loopback

log = logging.getLogger("signalhub.console")

SHUTDOWN_GRACE_SECONDS = 5  # live pages poll, so no request lasts long


class ConsoleServer(uvicorn.Server):
    """uvicorn's server without its own signal handling: whoever runs it decides how it stops (``serve``
    on SIGTERM and SIGINT, a test by setting ``should_exit``), and a SIGTERM ends it with status 0 rather
    than being raised again once it stopped."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def server_for(config: ConsoleConfig, app: Starlette | None = None) -> ConsoleServer:
    """A server for ``config`` of ``app`` (default: the console made for ``config``), not yet started."""
    settings = uvicorn.Config(
        app or create_app(config),
        host=config.host,
        port=config.port,
        ssl_certfile=str(config.tls_cert) if config.tls_cert else None,
        ssl_keyfile=str(config.tls_key) if config.tls_key else None,
        log_config=None,  # the process's JSON lines (signalhub.protocol.logs)
        server_header=False,
        proxy_headers=False,
        lifespan="on",
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
    )
    return ConsoleServer(settings)


async def serve(config: ConsoleConfig) -> None:
    server = server_for(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.handle_exit, sig, None)
    if not config.tls and not is_loopback(f"{config.host}:{config.port}"):
        log.warning(
            "the console serves plain HTTP beyond loopback: put it behind a TLS proxy "
            "(and set SIGNALHUB_CONSOLE_SECURE_COOKIES=true) or give it SIGNALHUB_CONSOLE_TLS_CERT and _KEY",
            extra={"address": f"{config.host}:{config.port}"},
        )
    log.info(
        "console serving",
        extra={"address": f"{config.host}:{config.port}", "tls": config.tls, "backoffice": config.backoffice_target},
    )
    await server.serve()


def main() -> None:
    """Read the settings, then serve until stopped; a bad setting raises ConfigError (one line per
    problem, printed by the command line)."""
    config = ConsoleConfig.from_env()
    logs.configure(config.log_level)
    asyncio.run(serve(config))
