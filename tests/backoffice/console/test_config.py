"""The console's settings: defaults that serve on loopback against the local back office, every
SIGNALHUB_CONSOLE_* variable read, and each bad value named in one error."""

from __future__ import annotations

from pathlib import Path

import pytest

from backoffice.console.config import ConsoleConfig
from backoffice.platform.config import ConfigError, Settings


def test_defaults_listen_on_loopback_and_reach_the_local_back_office() -> None:
    config = ConsoleConfig.from_env({})
    assert (config.host, config.port) == ("127.0.0.1", 8080)
    assert config.backoffice_target == Settings().backoffice_address
    assert config.gateway_address == Settings().gateway_address
    assert not config.tls and not config.cookies_secure and not config.backoffice_tls
    assert (config.session_idle_seconds, config.session_max_seconds) == (1800, 43200)


def test_every_variable_is_read(tmp_path: Path) -> None:
    cert, key, ca = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    for path in (cert, key, ca):
        path.write_text("pem")
    config = ConsoleConfig.from_env(
        {
            "SIGNALHUB_CONSOLE_ADDRESS": "[::1]:9443",
            "SIGNALHUB_BACKOFFICE_ADDRESS": "backoffice.internal:50051",
            "SIGNALHUB_GATEWAY_ADDRESS": "gateway.internal:50052",
            "SIGNALHUB_CONSOLE_GATEWAY_ADDRESS": "gw.example.com:443",
            "SIGNALHUB_CONSOLE_TLS_CERT": str(cert),
            "SIGNALHUB_CONSOLE_TLS_KEY": str(key),
            "SIGNALHUB_CONSOLE_BACKOFFICE_CA_FILE": str(ca),
            "SIGNALHUB_CONSOLE_SESSION_IDLE_SECONDS": "600",
            "SIGNALHUB_CONSOLE_SESSION_MAX_SECONDS": "3600",
            "SIGNALHUB_LOG_LEVEL": "warning",
        }
    )
    assert (config.host, config.port) == ("::1", 9443)
    assert config.backoffice_target == "backoffice.internal:50051"
    assert config.gateway_address == "gw.example.com:443"  # what a bridge dials, not the listen address
    assert config.tls and config.cookies_secure and (config.tls_cert, config.tls_key) == (cert, key)
    assert config.backoffice_tls and config.backoffice_ca_file == ca
    assert (config.session_idle_seconds, config.session_max_seconds, config.log_level) == (600, 3600, "WARNING")


def test_a_tls_proxy_in_front_makes_the_cookies_secure() -> None:
    config = ConsoleConfig.from_env({"SIGNALHUB_CONSOLE_SECURE_COOKIES": "true"})
    assert config.cookies_secure and not config.tls


def test_each_bad_value_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        ConsoleConfig.from_env(
            {
                "SIGNALHUB_CONSOLE_ADDRESS": "nowhere",
                "SIGNALHUB_BACKOFFICE_ADDRESS": "host:99999",
                "SIGNALHUB_CONSOLE_TLS_CERT": str(tmp_path / "missing.pem"),
                "SIGNALHUB_CONSOLE_SECURE_COOKIES": "maybe",
                "SIGNALHUB_CONSOLE_SESSION_IDLE_SECONDS": "ten",
                "SIGNALHUB_CONSOLE_SESSION_MAX_SECONDS": "30",
            }
        )
    problems = "\n".join(raised.value.problems)
    for name in (
        "CONSOLE_ADDRESS",
        "BACKOFFICE_ADDRESS",
        "CONSOLE_TLS_CERT: no file",
        "CONSOLE_TLS_CERT and SIGNALHUB_CONSOLE_TLS_KEY",
        "CONSOLE_SECURE_COOKIES",
        "CONSOLE_SESSION_IDLE_SECONDS",
        "CONSOLE_SESSION_MAX_SECONDS",
    ):
        assert f"SIGNALHUB_{name}" in problems, name


def test_an_idle_limit_beyond_the_lifetime_is_refused() -> None:
    with pytest.raises(ConfigError, match="IDLE_SECONDS: must not exceed"):
        ConsoleConfig.from_env(
            {"SIGNALHUB_CONSOLE_SESSION_IDLE_SECONDS": "7200", "SIGNALHUB_CONSOLE_SESSION_MAX_SECONDS": "3600"}
        )
