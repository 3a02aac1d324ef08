"""The console's settings, from ``SIGNALHUB_CONSOLE_*`` variables (and the back office's and gateway's
addresses, which the console shares with the servers' own settings)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from backoffice.platform.config import ENV_PREFIX, ConfigError, Settings

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


@dataclass(frozen=True)
class ConsoleConfig:
    """Where the console listens, how it reaches the back office, and how long a session lives."""

    host: str = "127.0.0.1"
    port: int = 8080
    # The back office's address (SIGNALHUB_BACKOFFICE_ADDRESS, the one its own process listens on), reached
    # over TLS when backoffice_tls is set: the system's roots, or backoffice_ca_file's.
    backoffice_target: str = Settings.backoffice_address
    backoffice_tls: bool = False
    backoffice_ca_file: Path | None = None
    # What a device's credentials file names as its gateway (SIGNALHUB_CONSOLE_GATEWAY_ADDRESS, else
    # SIGNALHUB_GATEWAY_ADDRESS): the address a bridge dials, so the public one in production.
    gateway_address: str = Settings.gateway_address
    # HTTPS: both or neither. Cookies are Secure over HTTPS, or with secure_cookies behind a TLS proxy.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    secure_cookies: bool = False
    session_idle_seconds: int = 30 * 60  # a session unused this long ends
    session_max_seconds: int = 12 * 3600  # and every session ends this long after sign-in
    call_timeout_seconds: float = 10.0  # the deadline of each back office call
    log_level: str = "INFO"

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None and self.tls_key is not None

    @property
    def cookies_secure(self) -> bool:
        return self.tls or self.secure_cookies

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ConsoleConfig:
        """Read the console's variables; raise ConfigError naming each bad one."""
        env = os.environ if environ is None else environ
        problems: list[str] = []

        def text(name: str, default: str = "") -> str:
            return env.get(ENV_PREFIX + name, "").strip() or default

        def address(name: str, default: str, *, listen: bool = False) -> str:
            """host:port; one to listen on may name port 0 (any free port: `signalhub up` in tests)."""
            value = text(name, default)
            host, sep, port = value.rpartition(":")
            lowest = 0 if listen else 1
            if not sep or not host or not (port.isascii() and port.isdigit()) or not lowest <= int(port) < 65536:
                problems.append(f"{ENV_PREFIX}{name}: expected host:port, got {value!r}")
            return value

        def flag(name: str) -> bool:
            raw = text(name).lower()
            if raw not in _TRUE | _FALSE:
                problems.append(f"{ENV_PREFIX}{name}: expected true or false, got {raw!r}")
            return raw in _TRUE

        def number(name: str, default: int, low: int, high: int) -> int:
            raw = text(name)
            if not raw:
                return default
            if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
                problems.append(f"{ENV_PREFIX}{name}: a whole number of seconds from {low} to {high}, got {raw!r}")
                return default
            return int(raw)

        def path(name: str) -> Path | None:
            raw = text(name)
            if raw and not Path(raw).is_file():
                problems.append(f"{ENV_PREFIX}{name}: no file at {raw}")
            return Path(raw) if raw else None

        host, _, port = address("CONSOLE_ADDRESS", f"{cls.host}:{cls.port}", listen=True).rpartition(":")
        backoffice = address("BACKOFFICE_ADDRESS", cls.backoffice_target)
        gateway = text("CONSOLE_GATEWAY_ADDRESS") or text("GATEWAY_ADDRESS", cls.gateway_address)
        tls_cert, tls_key = path("CONSOLE_TLS_CERT"), path("CONSOLE_TLS_KEY")
        if (tls_cert is None) != (tls_key is None):
            problems.append(f"{ENV_PREFIX}CONSOLE_TLS_CERT and {ENV_PREFIX}CONSOLE_TLS_KEY: give both or neither")
        ca_file = path("CONSOLE_BACKOFFICE_CA_FILE")
        idle = number("CONSOLE_SESSION_IDLE_SECONDS", cls.session_idle_seconds, 60, 7 * 86400)
        lifetime = number("CONSOLE_SESSION_MAX_SECONDS", cls.session_max_seconds, 60, 30 * 86400)
        if idle > lifetime:
            problems.append(f"{ENV_PREFIX}CONSOLE_SESSION_IDLE_SECONDS: must not exceed CONSOLE_SESSION_MAX_SECONDS")
        log_level = text("LOG_LEVEL", cls.log_level).upper()
        if log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            problems.append(f"{ENV_PREFIX}LOG_LEVEL: one of DEBUG, INFO, WARNING, ERROR")
        backoffice_tls = flag("CONSOLE_BACKOFFICE_TLS") or ca_file is not None
        secure_cookies = flag("CONSOLE_SECURE_COOKIES")
        if problems:
            raise ConfigError(problems)
        return cls(
            host=host.strip("[]"),
            port=int(port),
            backoffice_target=backoffice,
            backoffice_tls=backoffice_tls,
            backoffice_ca_file=ca_file,
            gateway_address=gateway,
            tls_cert=tls_cert,
            tls_key=tls_key,
            secure_cookies=secure_cookies,
            session_idle_seconds=idle,
            session_max_seconds=lifetime,
            log_level=log_level,
        )
