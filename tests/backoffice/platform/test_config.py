"""Settings from SIGNALHUB_* variables: defaults, one clear line per bad value, secrets masked."""

from __future__ import annotations

import base64
from decimal import Decimal
from pathlib import Path

import pytest

from backoffice.platform.config import ConfigError, ServerTls, Settings

KEY = base64.b64encode(b"k" * 32).decode()


def test_defaults_follow_the_contract() -> None:
    settings = Settings.from_env({"SIGNALHUB_MASTER_KEY": KEY})
    assert settings.backoffice_address == "127.0.0.1:50051"
    assert settings.gateway_address == "127.0.0.1:50052"
    assert settings.metrics_address == "127.0.0.1:9108"
    assert settings.signature_tolerance_seconds == 300
    assert settings.nonce_ttl_seconds == 600
    assert settings.secret_grace_seconds == 24 * 3600
    assert settings.require_master_key().key.reveal() == b"k" * 32


def test_plain_postgres_url_gets_the_async_driver() -> None:
    settings = Settings.from_env({"SIGNALHUB_DATABASE_URL": "postgresql://u@h/db"})
    assert settings.database_url == "postgresql+asyncpg://u@h/db"


def test_every_bad_value_is_named_once() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(
            {
                "SIGNALHUB_DATABASE_URL": "mysql://x",
                "SIGNALHUB_REDIS_URL": "http://x",
                "SIGNALHUB_MASTER_KEY": "too-short",
                "SIGNALHUB_BACKOFFICE_ADDRESS": "nowhere",
                "SIGNALHUB_SIGNATURE_TOLERANCE_SECONDS": "ten",
                "SIGNALHUB_LOG_LEVEL": "LOUD",
                "SIGNALHUB_EVENT_LOOP": "tokio",
            }
        )
    problems = info.value.problems
    for name in (
        "DATABASE_URL",
        "REDIS_URL",
        "MASTER_KEY",
        "BACKOFFICE_ADDRESS",
        "SIGNATURE_TOLERANCE_SECONDS",
        "LOG_LEVEL",
        "EVENT_LOOP",
    ):
        assert sum(f"SIGNALHUB_{name}:" in p for p in problems) == 1, name
    assert "too-short" not in str(info.value)


def test_nonce_ttl_must_cover_the_signature_window() -> None:
    with pytest.raises(ConfigError, match="NONCE_TTL_SECONDS"):
        Settings.from_env({"SIGNALHUB_NONCE_TTL_SECONDS": "300"})


def test_master_keys_are_masked_in_repr() -> None:
    old = base64.b64encode(b"o" * 32).decode()
    settings = Settings.from_env({"SIGNALHUB_MASTER_KEY": KEY, "SIGNALHUB_PREVIOUS_MASTER_KEYS": f"old:{old}"})
    text = repr(settings) + str(settings)
    assert KEY not in text and old not in text and "kkkk" not in text
    assert [k.key_id for k in settings.all_master_keys] == ["k1", "old"]


def test_missing_master_key_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="SIGNALHUB_MASTER_KEY is required"):
        Settings.from_env({}).require_master_key()


def test_settings_are_frozen() -> None:
    settings = Settings.from_env({})
    with pytest.raises(AttributeError):
        settings.database_url = "x"  # type: ignore[misc]


def test_url_passwords_are_masked_in_repr() -> None:
    settings = Settings.from_env(
        {"SIGNALHUB_DATABASE_URL": "postgresql://app:hunter2@db/sh", "SIGNALHUB_REDIS_URL": "redis://:sesame@r:6379/0"}
    )
    text = repr(settings)
    assert "hunter2" not in text and "sesame" not in text
    assert "postgresql+asyncpg://app:***@db/sh" in text and "redis://:***@r:6379/0" in text
    assert settings.database_url.endswith("app:hunter2@db/sh")  # the value itself is intact


def test_servers_are_plaintext_unless_given_a_certificate_and_key() -> None:
    settings = Settings.from_env({})
    assert settings.gateway_tls == ServerTls("GATEWAY") and not settings.gateway_tls.enabled
    assert settings.backoffice_tls == ServerTls("BACKOFFICE") and not settings.backoffice_tls.enabled


def test_tls_settings_name_files_and_whether_tls_is_required(tmp_path: Path) -> None:
    key = tmp_path / "gateway.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49\n-----END PRIVATE KEY-----\n")
    settings = Settings.from_env(
        {
            "SIGNALHUB_GATEWAY_TLS_CERT": " /etc/signalhub/gateway.pem ",
            "SIGNALHUB_GATEWAY_TLS_KEY": str(key),
            "SIGNALHUB_GATEWAY_REQUIRE_TLS": "true",
            "SIGNALHUB_BACKOFFICE_TLS_CERT": "/etc/signalhub/backoffice.pem",
            "SIGNALHUB_BACKOFFICE_TLS_KEY": "/etc/signalhub/backoffice.key",
        }
    )
    assert settings.gateway_tls == ServerTls("GATEWAY", Path("/etc/signalhub/gateway.pem"), key, required=True)
    assert settings.gateway_tls.enabled
    assert settings.backoffice_tls == ServerTls(
        "BACKOFFICE", Path("/etc/signalhub/backoffice.pem"), Path("/etc/signalhub/backoffice.key"), required=False
    )
    # Only the paths: a key's contents are read when the server starts, never kept or shown here.
    assert str(key) in repr(settings) and "MIGHAgEAMBMGByqGSM49" not in repr(settings)
    for required, expected in (("1", True), ("yes", True), ("ON", True), ("0", False), ("false", False), ("", False)):
        assert Settings.from_env({"SIGNALHUB_GATEWAY_REQUIRE_TLS": required}).gateway_tls.required is expected


def test_bad_tls_settings_are_named() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(
            {
                "SIGNALHUB_GATEWAY_TLS_CERT": "/etc/signalhub/gateway.pem",
                "SIGNALHUB_BACKOFFICE_TLS_KEY": "/etc/signalhub/backoffice.key",
                "SIGNALHUB_GATEWAY_REQUIRE_TLS": "sure",
            }
        )
    assert info.value.problems == [
        "SIGNALHUB_BACKOFFICE_TLS_CERT and SIGNALHUB_BACKOFFICE_TLS_KEY: give both or neither",
        "SIGNALHUB_GATEWAY_REQUIRE_TLS: expected true or false, got 'sure'",
        "SIGNALHUB_GATEWAY_TLS_CERT and SIGNALHUB_GATEWAY_TLS_KEY: give both or neither",
    ]


def test_the_quote_jump_share_is_a_decimal_share() -> None:
    assert Settings.from_env({"SIGNALHUB_QUOTE_JUMP_SHARE": "0.1"}).quote_jump_share == Decimal("0.1")
    assert Settings.from_env({}).quote_jump_share == Decimal("0.05")
    for bad in ("NaN", "x", "2", "0"):
        with pytest.raises(ConfigError) as info:
            Settings.from_env({"SIGNALHUB_QUOTE_JUMP_SHARE": bad})
        assert any("SIGNALHUB_QUOTE_JUMP_SHARE:" in p for p in info.value.problems), bad
