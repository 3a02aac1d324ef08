"""The one settings object, read from ``SIGNALHUB_*`` environment variables and validated at start."""

from __future__ import annotations

import base64
import binascii
import itertools
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

from signalhub.protocol.secret import Secret

ENV_PREFIX = "SIGNALHUB_"

_NumberT = TypeVar("_NumberT", int, float, Decimal)

_KEY_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


class ConfigError(ValueError):
    """One or more settings are invalid; the message lists one line per bad value."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class MasterKey:
    """An AES-256 key for secrets at rest, named by ``key_id`` (stored beside every ciphertext)."""

    key_id: str
    key: Secret


@dataclass(frozen=True)
class ServerTls:
    """How one server serves TLS, from ``SIGNALHUB_<SERVER>_TLS_CERT`` / ``_TLS_KEY`` / ``_REQUIRE_TLS``: the
    paths of a PEM certificate chain and of its private key, read only when the server starts (their
    contents are never held here), and whether it refuses to start without them rather than serve
    plaintext."""

    server: str  # BACKOFFICE or GATEWAY: names the variables in errors
    certificate_chain: Path | None = None
    private_key: Path | None = None
    required: bool = False

    @property
    def enabled(self) -> bool:
        return self.certificate_chain is not None and self.private_key is not None

    def variable(self, suffix: str) -> str:
        """The environment variable behind one of these settings, e.g. ``SIGNALHUB_GATEWAY_TLS_KEY``."""
        return f"{ENV_PREFIX}{self.server}_{suffix}"


@dataclass(frozen=True, repr=False)
class Settings:
    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/signalhub"
    redis_url: str = "redis://127.0.0.1:6379/0"
    master_key: MasterKey | None = None
    # Keys that may still open old ciphertexts until `signalhub admin rotate-master-key` re-seals them.
    previous_master_keys: tuple[MasterKey, ...] = ()
    backoffice_address: str = "127.0.0.1:50051"
    gateway_address: str = "127.0.0.1:50052"
    # Plaintext without a certificate and key: right on loopback, or behind a proxy that terminates TLS.
    backoffice_tls: ServerTls = ServerTls("BACKOFFICE")
    gateway_tls: ServerTls = ServerTls("GATEWAY")
    metrics_address: str = "127.0.0.1:9108"
    signature_tolerance_seconds: int = 300
    nonce_ttl_seconds: int = 600
    secret_grace_seconds: int = 24 * 3600
    max_message_bytes: int = 1024 * 1024
    max_concurrent_rpcs: int = 1000
    # One caller's share of those (a user, whichever of its tokens it calls with, or a producer): beyond it,
    # RESOURCE_EXHAUSTED, so one busy caller cannot hold every slot.
    max_concurrent_rpcs_per_caller: int = 50
    # What one user may hold at once; one more is RESOURCE_EXHAUSTED (revoke or unsubscribe to make room).
    max_devices_per_user: int = 20  # devices not REVOKED
    max_api_tokens_per_user: int = 20  # tokens not revoked
    max_subscriptions_per_user: int = 50  # ACTIVE subscriptions
    max_streams: int = 20000
    heartbeat_seconds: int = 15
    shutdown_grace_seconds: int = 10
    # A dependency (Postgres; Redis for the gateway) unreachable this long: the services' health NOT_SERVING.
    readiness_grace_seconds: float = 3.0
    log_level: str = "INFO"
    event_loop: str = "auto"  # uvloop where installed (the server extra does, on Linux and macOS), else asyncio
    public_url: str = "https://signalhub.example"
    # Affiliates: per-lot rates by the referred users' lots this calendar month, as (from lots, rate) pairs.
    affiliate_tiers: tuple[tuple[Decimal, Decimal], ...] = (
        (Decimal(0), Decimal("5.00")),
        (Decimal(100), Decimal("7.00")),
        (Decimal(500), Decimal("10.00")),
    )
    affiliate_hold_days: int = 30  # a commission is PENDING this long before it may be paid out
    affiliate_payout_minimum: Decimal = Decimal("50.00")
    affiliate_currency: str = "USD"
    # The device gateway.
    # Processes of `serve gateway` sharing its address (SO_REUSEPORT), each holding its own streams; 0: one per
    # core this process may run on. A process started by such a gateway has ``gateway_reuse_port`` set.
    gateway_processes: int = 0
    gateway_reuse_port: bool = False
    ack_timeout_seconds: float = 10.0  # a delivery with no RECEIVED ack is re-sent after this
    hello_timeout_seconds: float = 10.0  # a stream whose first frame is not a Hello by then is ended
    max_hello_symbols: int = 2000  # broker symbols one Hello may describe; more is refused unread
    device_frame_rate: int = 200  # frames/s a device may send (token bucket) ...
    device_frame_burst: int = 400  # ... with this burst; beyond it the stream ends RESOURCE_EXHAUSTED
    session_queue_size: int = 256  # outgoing frames buffered per stream; when full, Postgres is re-read later
    sweep_interval_seconds: float = 1.0  # how often the gateway re-reads what is pending (lost hints)
    close_max_attempts: int = 5  # sends of a close command on one stream without a CloseResult before it EXPIRES
    # The monitor (in the worker).
    quote_max_age_seconds: float = 30.0  # an older quote (by its source's clock) is stale: it triggers nothing
    monitor_sweep_seconds: float = 2.0  # how often it re-reads changed positions and stored quotes (lost hints)
    # A quote whose mid moves more than this share from its feed's last fresh quote triggers nothing until a
    # second quote confirms the new level.
    quote_jump_share: Decimal = Decimal("0.05")
    quote_retention_seconds: int = 24 * 3600  # stored quotes not renewed for this long are purged by the worker
    device_silent_alert_seconds: int = 48 * 3600  # an open position's device not heard from this long: alert
    disconnected_alert_seconds: int = 600  # a device with open positions disconnected this long: alert
    worker_interval_seconds: float = 30.0  # how often the worker runs its housekeeping round

    def __repr__(self) -> str:
        # URLs may carry a password; master keys mask themselves.
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        shown["database_url"] = mask_url(self.database_url)
        shown["redis_url"] = mask_url(self.redis_url)
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    @property
    def all_master_keys(self) -> tuple[MasterKey, ...]:
        return ((self.master_key,) if self.master_key else ()) + self.previous_master_keys

    def require_master_key(self) -> MasterKey:
        if self.master_key is None:
            raise ConfigError([f"{ENV_PREFIX}MASTER_KEY is required (base64 of 32 random bytes)"])
        return self.master_key

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every ``SIGNALHUB_*`` variable; raise ConfigError naming each bad one."""
        env = os.environ if environ is None else environ
        problems: list[str] = []
        values: dict[str, object] = {}
        defaults = cls()

        def text(name: str, default: str) -> str:
            return env.get(ENV_PREFIX + name, default).strip() or default

        def bounded(
            name: str, default: _NumberT, low: _NumberT, high: _NumberT, parse: Callable[[str], _NumberT], expected: str
        ) -> _NumberT:
            raw = env.get(ENV_PREFIX + name)
            if raw is None or raw.strip() == "":
                return default
            try:
                value = parse(raw)
            except ValueError:
                problems.append(f"{ENV_PREFIX}{name}: expected {expected}, got {raw!r}")
                return default
            if not low <= value <= high:  # also refuses NaN
                problems.append(f"{ENV_PREFIX}{name}: must be between {low} and {high}, got {raw.strip()}")
            return value

        def number(name: str, default: int, low: int, high: int) -> int:
            return bounded(name, default, low, high, int, "an integer")

        def seconds(name: str, default: float, low: float, high: float) -> float:
            return bounded(name, default, low, high, float, "a number of seconds")

        def share(name: str, default: Decimal) -> Decimal:
            return bounded(name, default, Decimal("0.0001"), Decimal(1), _decimal, "a share such as 0.05")

        def address(name: str, default: str) -> str:
            value = text(name, default)
            host, sep, port = value.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
                problems.append(f"{ENV_PREFIX}{name}: expected host:port, got {value!r}")
            return value

        database_url = text("DATABASE_URL", defaults.database_url)
        if not database_url.startswith(("postgresql+asyncpg://", "postgresql://", "postgres://")):
            problems.append(f"{ENV_PREFIX}DATABASE_URL: expected a postgresql:// URL")
        values["database_url"] = normalise_database_url(database_url)
        redis_url = text("REDIS_URL", defaults.redis_url)
        if not redis_url.startswith(("redis://", "rediss://", "unix://")):
            problems.append(f"{ENV_PREFIX}REDIS_URL: expected a redis:// URL")
        values["redis_url"] = redis_url

        raw_key = env.get(ENV_PREFIX + "MASTER_KEY", "").strip()
        key_id = text("MASTER_KEY_ID", "k1")
        if not _KEY_ID_RE.match(key_id):
            problems.append(f"{ENV_PREFIX}MASTER_KEY_ID: 1-32 characters of [A-Za-z0-9_.-]")
        if raw_key:
            key = _decode_key(raw_key)
            if key is None:
                problems.append(f"{ENV_PREFIX}MASTER_KEY: expected base64 of exactly 32 bytes")
            else:
                values["master_key"] = MasterKey(key_id, Secret(key))
        previous: list[MasterKey] = []
        for item in filter(None, (s.strip() for s in env.get(ENV_PREFIX + "PREVIOUS_MASTER_KEYS", "").split(","))):
            old_id, sep, old_raw = item.partition(":")
            old_key = _decode_key(old_raw) if sep else None
            if old_key is None or not _KEY_ID_RE.match(old_id):
                problems.append(f"{ENV_PREFIX}PREVIOUS_MASTER_KEYS: expected key_id:base64 pairs separated by commas")
                continue
            previous.append(MasterKey(old_id, Secret(old_key)))
        values["previous_master_keys"] = tuple(previous)

        values["backoffice_address"] = address("BACKOFFICE_ADDRESS", defaults.backoffice_address)
        values["gateway_address"] = address("GATEWAY_ADDRESS", defaults.gateway_address)
        values["metrics_address"] = address("METRICS_ADDRESS", defaults.metrics_address)

        def flag(name: str) -> bool:
            raw = env.get(ENV_PREFIX + name, "").strip().lower()
            if raw not in {"", "0", "false", "no", "off", "1", "true", "yes", "on"}:
                problems.append(f"{ENV_PREFIX}{name}: expected true or false, got {raw!r}")
            return raw in {"1", "true", "yes", "on"}

        def server_tls(server: str) -> ServerTls:
            required = flag(f"{server}_REQUIRE_TLS")
            certificate_chain = text(f"{server}_TLS_CERT", "")
            private_key = text(f"{server}_TLS_KEY", "")
            if bool(certificate_chain) != bool(private_key):
                problems.append(f"{ENV_PREFIX}{server}_TLS_CERT and {ENV_PREFIX}{server}_TLS_KEY: give both or neither")
            if not (certificate_chain and private_key):
                return ServerTls(server, required=required)
            return ServerTls(server, Path(certificate_chain), Path(private_key), required)

        values["backoffice_tls"] = server_tls("BACKOFFICE")
        values["gateway_tls"] = server_tls("GATEWAY")
        values["signature_tolerance_seconds"] = number(
            "SIGNATURE_TOLERANCE_SECONDS", defaults.signature_tolerance_seconds, 1, 3600
        )
        values["nonce_ttl_seconds"] = number("NONCE_TTL_SECONDS", defaults.nonce_ttl_seconds, 1, 86400)
        values["secret_grace_seconds"] = number("SECRET_GRACE_SECONDS", defaults.secret_grace_seconds, 0, 30 * 86400)
        values["max_message_bytes"] = number("MAX_MESSAGE_BYTES", defaults.max_message_bytes, 4096, 64 * 1024 * 1024)
        values["max_concurrent_rpcs"] = number("MAX_CONCURRENT_RPCS", defaults.max_concurrent_rpcs, 1, 1_000_000)
        values["max_concurrent_rpcs_per_caller"] = number(
            "MAX_CONCURRENT_RPCS_PER_CALLER", defaults.max_concurrent_rpcs_per_caller, 1, 1_000_000
        )
        values["max_devices_per_user"] = number("MAX_DEVICES_PER_USER", defaults.max_devices_per_user, 1, 100_000)
        values["max_api_tokens_per_user"] = number(
            "MAX_API_TOKENS_PER_USER", defaults.max_api_tokens_per_user, 1, 100_000
        )
        values["max_subscriptions_per_user"] = number(
            "MAX_SUBSCRIPTIONS_PER_USER", defaults.max_subscriptions_per_user, 1, 100_000
        )
        values["max_streams"] = number("MAX_STREAMS", defaults.max_streams, 1, 1_000_000)
        values["heartbeat_seconds"] = number("HEARTBEAT_SECONDS", defaults.heartbeat_seconds, 1, 300)
        values["shutdown_grace_seconds"] = number("SHUTDOWN_GRACE_SECONDS", 10, 0, 600)
        values["readiness_grace_seconds"] = seconds(
            "READINESS_GRACE_SECONDS", defaults.readiness_grace_seconds, 0, 3600
        )
        values["gateway_processes"] = number("GATEWAY_PROCESSES", defaults.gateway_processes, 0, 256)
        values["gateway_reuse_port"] = flag("GATEWAY_REUSE_PORT")
        values["ack_timeout_seconds"] = seconds("ACK_TIMEOUT_SECONDS", defaults.ack_timeout_seconds, 0.1, 3600)
        values["hello_timeout_seconds"] = seconds("HELLO_TIMEOUT_SECONDS", defaults.hello_timeout_seconds, 0.1, 600)
        values["max_hello_symbols"] = number("MAX_HELLO_SYMBOLS", defaults.max_hello_symbols, 1, 100_000)
        values["device_frame_rate"] = number("DEVICE_FRAME_RATE", defaults.device_frame_rate, 1, 100_000)
        values["device_frame_burst"] = number("DEVICE_FRAME_BURST", defaults.device_frame_burst, 1, 1_000_000)
        values["session_queue_size"] = number("SESSION_QUEUE_SIZE", defaults.session_queue_size, 8, 65_536)
        values["sweep_interval_seconds"] = seconds("SWEEP_INTERVAL_SECONDS", defaults.sweep_interval_seconds, 0.05, 300)
        values["close_max_attempts"] = number("CLOSE_MAX_ATTEMPTS", defaults.close_max_attempts, 1, 100)
        values["quote_max_age_seconds"] = seconds("QUOTE_MAX_AGE_SECONDS", defaults.quote_max_age_seconds, 0.1, 86400)
        values["monitor_sweep_seconds"] = seconds("MONITOR_SWEEP_SECONDS", defaults.monitor_sweep_seconds, 0.05, 300)
        values["quote_jump_share"] = share("QUOTE_JUMP_SHARE", defaults.quote_jump_share)
        values["quote_retention_seconds"] = number(
            "QUOTE_RETENTION_SECONDS", defaults.quote_retention_seconds, 60, 365 * 86400
        )
        values["device_silent_alert_seconds"] = number(
            "DEVICE_SILENT_ALERT_SECONDS", defaults.device_silent_alert_seconds, 60, 30 * 86400
        )
        values["disconnected_alert_seconds"] = number(
            "DISCONNECTED_ALERT_SECONDS", defaults.disconnected_alert_seconds, 60, 7 * 86400
        )
        values["worker_interval_seconds"] = seconds(
            "WORKER_INTERVAL_SECONDS", defaults.worker_interval_seconds, 0.1, 3600
        )
        level = text("LOG_LEVEL", defaults.log_level).upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            problems.append(f"{ENV_PREFIX}LOG_LEVEL: one of DEBUG, INFO, WARNING, ERROR")
        values["log_level"] = level
        loop = text("EVENT_LOOP", defaults.event_loop).lower()
        if loop not in {"auto", "asyncio", "uvloop"}:
            problems.append(f"{ENV_PREFIX}EVENT_LOOP: auto, asyncio or uvloop")
        values["event_loop"] = loop
        values["public_url"] = text("PUBLIC_URL", defaults.public_url).rstrip("/")

        def parsed(name: str, default: object, parse: Callable[[str], object]) -> object:
            raw = env.get(ENV_PREFIX + name, "").strip()
            try:
                return parse(raw) if raw else default
            except ValueError as exc:
                problems.append(f"{ENV_PREFIX}{name}: {exc}")
                return default

        values["affiliate_tiers"] = parsed("AFFILIATE_TIERS", defaults.affiliate_tiers, parse_tiers)
        values["affiliate_hold_days"] = number("AFFILIATE_HOLD_DAYS", defaults.affiliate_hold_days, 0, 365)
        values["affiliate_payout_minimum"] = parsed(
            "AFFILIATE_PAYOUT_MINIMUM", defaults.affiliate_payout_minimum, parse_money
        )
        values["affiliate_currency"] = text("AFFILIATE_CURRENCY", defaults.affiliate_currency).upper()
        if not re.fullmatch(r"[A-Z]{3}", str(values["affiliate_currency"])):
            problems.append(f"{ENV_PREFIX}AFFILIATE_CURRENCY: an ISO 4217 code such as USD")
        if values["signature_tolerance_seconds"] and values["nonce_ttl_seconds"]:
            tolerance = values["signature_tolerance_seconds"]
            ttl = values["nonce_ttl_seconds"]
            assert isinstance(tolerance, int) and isinstance(ttl, int)
            if ttl < 2 * tolerance:
                # A nonce must be remembered for as long as its timestamp could still be accepted.
                problems.append(f"{ENV_PREFIX}NONCE_TTL_SECONDS: must be at least twice the signature tolerance")
        if problems:
            raise ConfigError(problems)
        return cls(**values)  # type: ignore[arg-type]


def mask_url(url: str) -> str:
    """The URL with any password replaced, for logs and reprs."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


def normalise_database_url(url: str) -> str:
    """SQLAlchemy needs the asyncpg driver named; accept the plain forms people paste."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+asyncpg://" + url[len(plain) :]
    return url


def _decode_key(raw: str) -> bytes | None:
    try:
        key = base64.urlsafe_b64decode(raw.replace("+", "-").replace("/", "_") + "=" * (-len(raw) % 4))
    except (binascii.Error, ValueError):
        return None
    return key if len(key) == 32 else None


# Money and lots in settings: plain decimal notation only (never a float, no exponent).
_PLAIN_DECIMAL = re.compile(r"^[0-9]{1,12}(\.[0-9]{1,6})?$")


def parse_money(raw: str) -> Decimal:
    """A positive amount in whole cents, e.g. ``50.00``."""
    if not _PLAIN_DECIMAL.match(raw) or Decimal(raw) <= 0 or Decimal(raw) != Decimal(raw).quantize(Decimal("0.01")):
        raise ValueError(f"expected a positive amount with at most 2 decimals, got {raw!r}")
    return Decimal(raw)


def parse_tiers(raw: str) -> tuple[tuple[Decimal, Decimal], ...]:
    """``from_lots:rate,...`` (e.g. ``0:5.00,100:7.00,500:10.00``): the first tier starts at 0 lots, each
    later one at more lots than the one before; rates are per lot, at most 6 decimals."""
    tiers: list[tuple[Decimal, Decimal]] = []
    for item in raw.split(","):
        start, sep, rate = (part.strip() for part in item.partition(":"))
        if not sep or not _PLAIN_DECIMAL.match(start) or not _PLAIN_DECIMAL.match(rate):
            raise ValueError(f"expected from_lots:rate pairs separated by commas, got {item.strip()!r}")
        tiers.append((Decimal(start), Decimal(rate)))
    if tiers[0][0] != 0:
        raise ValueError("the first tier must start at 0 lots")
    if any(later[0] <= earlier[0] for earlier, later in itertools.pairwise(tiers)):
        raise ValueError("each tier must start at more lots than the one before")
    return tuple(tiers)


def _decimal(raw: str) -> Decimal:
    """A decimal setting; ValueError (as ``int`` and ``float`` raise) for anything else, NaN included."""
    try:
        value = Decimal(raw.strip())
    except ArithmeticError:
        raise ValueError(raw) from None
    if not value.is_finite():
        raise ValueError(raw)
    return value
