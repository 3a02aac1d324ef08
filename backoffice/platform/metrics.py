"""Every Prometheus metric a signalhub server process exports, in one place, so the names, labels and
buckets that ``signalhub status`` and the Grafana dashboard (docs/grafana-dashboard.json) read are
defined once. Each process serves them on its own SIGNALHUB_METRICS_ADDRESS."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Latency buckets from 1 ms to 10 s: the hot paths aim at milliseconds, overload shows as seconds.
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Both servers' RPCs.
RPC_SECONDS = Histogram("signalhub_rpc_seconds", "Time to answer a unary RPC", ["method", "code"], buckets=_LATENCY)
RPC_REJECTED = Counter("signalhub_rpc_rejected_total", "RPCs refused by admission control", ["method"])
AUTH_FAILURES = Counter(
    "signalhub_auth_failures_total",
    "Calls and stream opens refused as UNAUTHENTICATED, by ErrorInfo reason",
    ["reason"],
)

# The gateway.
SESSIONS = Gauge("signalhub_gateway_sessions", "Device streams open on this gateway process (connected devices)")
FRAMES = Counter(
    "signalhub_gateway_frames_total", "Device frames answered, by frame kind and receipt status", ["kind", "status"]
)
PUSHED = Counter("signalhub_gateway_instructions_total", "Sealed instructions pushed", ["kind"])
ACCOUNT_STATES = Counter(
    "signalhub_gateway_account_states_total",
    "Devices' AccountState frames answered, by outcome (receipt status)",
    ["outcome"],
)
APPROVAL_TO_DELIVERY = Histogram(
    "signalhub_approval_to_delivery_seconds",
    "From a delivery's creation (its approval) to its first push to the device",
    buckets=_LATENCY,
)
FRAME_TO_RECEIPT = Histogram(
    "signalhub_frame_to_receipt_seconds",
    "From a session taking a device frame to its Receipt being queued (includes the commit)",
    buckets=_LATENCY,
)
UPLINK_BATCH = Histogram(
    "signalhub_uplink_batch_frames",
    "Frames applied per uplink transaction",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
UPLINK_COMMIT = Histogram(
    "signalhub_uplink_commit_seconds", "One uplink transaction, begin to commit", buckets=_LATENCY
)
REDIS_UP = Gauge("signalhub_redis_up", "1 while the gateway's hint subscription to Redis is connected, else 0")

# The monitor (in the worker) and the alerts any process raises.
MONITOR_WATCHED = Gauge("signalhub_monitor_positions_watched", "OPEN positions whose hidden levels the monitor holds")
MONITOR_QUOTES = Counter("signalhub_monitor_quotes_total", "Fresh quotes the monitor read against its books")
MONITOR_QUOTE_JUMPS = Counter(
    "signalhub_monitor_quote_jumps_total",
    "Quotes held back because their mid jumped beyond the allowed share from their feed's last, until confirmed",
)
MONITOR_ACTIONS = Counter(
    "signalhub_monitor_actions_total", "What quotes did to positions: level moves and close commands", ["action"]
)
MONITOR_ROUND = Histogram(
    "signalhub_monitor_round_seconds",
    "One monitor transaction acting on the positions quotes reached",
    buckets=_LATENCY,
)
ALERTS_RAISED = Counter("signalhub_alerts_raised_total", "Alerts raised (one per incident)", ["kind"])
# Risk protection: limits reached, and deliveries the owners' guards skipped.
RISK_STOPOUTS = Counter(
    "signalhub_risk_stopouts_total", "Stopouts recorded (a risk limit reached)", ["period", "metric", "action"]
)
RISK_GUARD_SKIPS = Counter(
    "signalhub_risk_guard_skips_total", "Deliveries skipped by the owner's risk guards", ["reason"]
)

# Every server process: how late its event loop runs what is ready (a blocked loop delays every stream).
EVENT_LOOP_LAG = Gauge(
    "signalhub_event_loop_lag_seconds",
    "The worst event-loop lag of this process over the last 10 s (a timer's lateness, sampled every 0.25 s)",
)

GC_PAUSE = Histogram(
    "signalhub_gc_pause_seconds",
    "How long each cyclic garbage collection held this process (every other task waits for it)",
    ["generation"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5),
)

# The database pool of this process (read when scraped).
DB_POOL_IN_USE = Gauge("signalhub_db_pool_in_use", "Database connections checked out of this process's pool")
DB_POOL_SIZE = Gauge("signalhub_db_pool_size", "Database connections this process's pool holds open")
