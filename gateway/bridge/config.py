"""How a bridge is set up (``BridgeConfig``, its channel options) and what it counts (``BridgeStats``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from signalhub.protocol.client import device_channel_options
from signalhub.protocol.wire import is_loopback

# The bridge's channels, part of its public API.
channel_options = device_channel_options

BRIDGE_VERSION = "signalhub-bridge/0.1.0"


class PlaintextRefused(ValueError):
    """A plaintext channel to a gateway beyond loopback, not explicitly accepted (``insecure``)."""

    def __init__(self, addresses: tuple[str, ...]) -> None:
        self.addresses = addresses
        super().__init__(
            f"a plaintext channel to {', '.join(addresses)} is refused: anyone on the path could read and alter "
            "it; connect with tls=True, or set insecure=True to accept that"
        )


@dataclass(frozen=True)
class BridgeConfig:
    """How a bridge reaches its gateways and paces itself. ``gateways`` are tried in turn: after a session
    ends, the next one is used (so a bridge moves off a replica that died)."""

    device_id: str
    gateways: tuple[str, ...]
    ledger_path: Path
    bridge_version: str = BRIDGE_VERSION
    tls: bool = False  # without it, only loopback gateways unless ``insecure``
    root_certificates: bytes | None = field(default=None, repr=False)
    insecure: bool = False  # plaintext to gateways beyond loopback: traffic can be read and altered on the way
    connect_timeout: float = 5.0
    welcome_timeout: float = 10.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    # After SESSION_REPLACED (another bridge took this device): wait this long, doubling with each takeover
    # in a row up to the cap; at the replaced_limit-th in a row, stop (DeviceTakenOver).
    replaced_backoff: float = 30.0
    replaced_backoff_cap: float = 300.0
    replaced_limit: int = 4
    auth_failure_limit: int = 5  # UNAUTHENTICATED this many times in a row: stop (CredentialsRefused)
    healthy_after: float = 5.0  # a session this long (after Welcome) resets the backoff
    quote_interval: float = 1.0
    quote_refresh: float = 10.0  # an unchanged quote is sent again this often
    # While positions are open, the account's state is sent when its equity moved, at most this often
    # (and after every fill and close result, and at every Welcome, whatever this says).
    account_state_interval: float = 2.0
    # An order whose outcome is unknown is looked up again after this, doubling up to the cap (and at
    # once after every reconnect), until the terminal answers.
    lookup_backoff_base: float = 1.0
    lookup_backoff_cap: float = 60.0
    max_concurrent_orders: int = 8
    drain_timeout: float = 10.0  # on stop: how long in-flight orders and unreceipted frames may take
    prune_after: timedelta = timedelta(days=30)
    max_message_bytes: int = 1024 * 1024

    def __post_init__(self) -> None:
        if not self.gateways:
            raise ValueError("at least one gateway address is needed")
        if self.max_concurrent_orders < 1:
            raise ValueError("max_concurrent_orders must be at least 1")
        if self.replaced_limit < 1 or self.auth_failure_limit < 1:
            raise ValueError("replaced_limit and auth_failure_limit must be at least 1")
        if not self.account_state_interval > 0:
            raise ValueError("account_state_interval must be more than 0 seconds")
        exposed = tuple(address for address in self.gateways if not is_loopback(address))
        if exposed and not self.tls and not self.insecure:
            raise PlaintextRefused(exposed)


@dataclass
class BridgeStats:
    """Counters for logs, tests and the demo."""

    sessions: int = 0
    welcomes: int = 0
    instructions: int = 0
    refused: int = 0  # sealed instructions that did not open (never executed)
    repeated: int = 0  # instructions seen before (re-acked, never re-executed)
    filled: int = 0
    rejected: int = 0
    closed: int = 0
    close_failed: int = 0
    frames_sent: int = 0
    frames_resent: int = 0
    receipts: int = 0
    receipts_rejected: int = 0
    quotes_sent: int = 0
    account_states_sent: int = 0
    lookups_failed: int = 0  # order lookups the terminal could not answer (the outcome stayed unknown)
