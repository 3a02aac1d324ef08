"""What both client SDKs (the EA bridge, the producer SDK) do alike beyond the contract itself: keep their
channels alive within what the servers permit, and back off between attempts."""

from __future__ import annotations

from typing import Any

# The servers' ``server_options`` allow a ping every 10 s, also without calls; pinging every 30 s stays
# well inside that, so a server never answers too_many_pings and drops the connection.
KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)


def device_channel_options(max_message_bytes: int = 1024 * 1024) -> list[tuple[str, Any]]:
    """A device channel's options: keepalive within what the gateway permits, its message size limit, a
    subchannel (a TCP connection) of its own per channel, and no gRPC retries (the bridge reconnects, and
    resends from its outbox, itself)."""
    return [
        *KEEPALIVE_OPTIONS,
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.enable_retries", 0),
    ]


def backoff_ceiling(retry: int, initial: float, cap: float, multiplier: float = 2.0) -> float:
    """The most to wait before retry number ``retry`` (1 for the first retry): ``initial``, multiplied by
    ``multiplier`` for every retry after the first, never more than ``cap``."""
    if retry < 1:
        raise ValueError("retries are numbered from 1")
    # Stop growing once past the cap, so a large retry number cannot overflow.
    grown = initial
    for _ in range(retry - 1):
        if grown >= cap or grown <= 0:
            break
        grown *= multiplier
    return min(cap, grown)


def jittered_backoff(retry: int, unit_random: float, initial: float, cap: float, multiplier: float = 2.0) -> float:
    """The wait before retry ``retry`` given a uniform draw from [0, 1): anywhere up to its ceiling ("full
    jitter"), so many clients failing at once do not come back in lockstep."""
    if not 0.0 <= unit_random <= 1.0:
        raise ValueError("unit_random must lie in [0, 1]")
    return backoff_ceiling(retry, initial, cap, multiplier) * unit_random


def gateway_silence_limit(heartbeat_seconds: float) -> float:
    """How long a bridge hears nothing from the gateway before it ends the session: three heartbeat
    periods, and five seconds of slack for a busy gateway."""
    return 3 * heartbeat_seconds + 5


def silence_noticed_within(heartbeat_seconds: float) -> float:
    """How long after the gateway's last frame that arrived a bridge has surely ended a silent session (it
    looks once per heartbeat period). A device still on the same stream later than this received everything
    sent before (one stream is in order)."""
    return gateway_silence_limit(heartbeat_seconds) + heartbeat_seconds
