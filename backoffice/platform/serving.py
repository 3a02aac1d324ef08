"""What every signalhub gRPC server shares: channel options, health, reflection, metrics and a
graceful stop (health NOT_SERVING, drain in-flight calls, close)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from backoffice.platform.config import ENV_PREFIX, ConfigError, ServerTls, Settings
from backoffice.platform.metrics import EVENT_LOOP_LAG, GC_PAUSE
from backoffice.platform.readiness import Probe, Readiness
from signalhub.protocol.wire import is_loopback

log = logging.getLogger("signalhub.serving")


def server_options(settings: Settings, *, reuse_port: bool = False) -> list[tuple[str, Any]]:
    """Keepalive and limits; the bridge SDK's channel options mirror these (too_many_pings otherwise).
    ``reuse_port``: the address is shared with this server's sibling processes (SO_REUSEPORT, which Linux
    allows only to processes of the same user); otherwise a second server on it fails to start."""
    return [
        # The interceptor refuses anything over max_message_bytes with INVALID_ARGUMENT and details; grpc's
        # own limit, which can only answer a bare RESOURCE_EXHAUSTED, sits well above it.
        ("grpc.max_receive_message_length", 4 * settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 3),
        ("grpc.http2.max_pings_without_data", 0),
        # After a deploy, long-lived streams drift to new replicas: GOAWAY after an hour, then 5 min grace.
        ("grpc.max_connection_age_ms", 3_600_000),
        ("grpc.max_connection_age_grace_ms", 300_000),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ]


class TlsUnavailable(ConfigError):
    """A server cannot serve TLS as configured: one line naming the setting and the file, never a file's
    contents."""

    def __init__(self, problem: str) -> None:
        super().__init__([problem])
        self.args = (problem,)


def server_credentials(tls: ServerTls) -> grpc.ServerCredentials | None:
    """The server's TLS credentials from its PEM certificate chain and private key, or None to serve
    plaintext (refused when TLS is required). Both files are checked here, so that a wrong one is one clear
    line at start rather than a failed handshake for every client."""
    if tls.certificate_chain is None or tls.private_key is None:
        if tls.required:
            raise TlsUnavailable(
                f"{tls.variable('REQUIRE_TLS')} is set, but {tls.variable('TLS_CERT')} and "
                f"{tls.variable('TLS_KEY')} are not: refusing to serve plaintext"
            )
        return None
    chain = _read_pem(tls.certificate_chain, tls.variable("TLS_CERT"))
    key = _read_pem(tls.private_key, tls.variable("TLS_KEY"))
    # Errors name the file, never echo it: the key's contents must not reach a log or a terminal.
    try:
        leaf = x509.load_pem_x509_certificates(chain)[0]
    except ValueError:
        raise TlsUnavailable(f"{tls.variable('TLS_CERT')}: {tls.certificate_chain} holds no PEM certificate") from None
    try:
        private_key = serialization.load_pem_private_key(key, password=None)
    except TypeError:
        raise TlsUnavailable(
            f"{tls.variable('TLS_KEY')}: {tls.private_key} is encrypted; gRPC needs it unencrypted "
            "(readable by the server's account alone)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsUnavailable(f"{tls.variable('TLS_KEY')}: {tls.private_key} holds no PEM private key") from None
    if _public_key_bytes(leaf.public_key()) != _public_key_bytes(private_key.public_key()):
        raise TlsUnavailable(
            f"{tls.variable('TLS_KEY')}: {tls.private_key} is not the key of the first certificate in "
            f"{tls.certificate_chain}"
        )
    return grpc.ssl_server_credentials([(key, chain)])


def _read_pem(path: Path, variable: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsUnavailable(f"{variable}: cannot read {path}: {exc.strerror or exc}") from None


def _public_key_bytes(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class Server:
    """A grpc.aio server with health and reflection, serving until ``stop`` is called or SIGTERM/SIGINT;
    with TLS when ``tls`` names a certificate and key."""

    def __init__(
        self,
        settings: Settings,
        address: str,
        interceptors: Sequence[grpc.aio.ServerInterceptor],
        service_names: Sequence[str],
        tls: ServerTls | None = None,
        dependencies: Sequence[Probe] = (),
        reuse_port: bool = False,
    ) -> None:
        # Before anything is built: a server that cannot serve TLS as configured never starts.
        self._credentials = server_credentials(tls) if tls is not None else None
        self.settings = settings
        self.address = address
        self.grpc = grpc.aio.server(
            interceptors=list(interceptors), options=server_options(settings, reuse_port=reuse_port)
        )
        self.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        self._service_names = tuple(service_names)
        reflection.enable_server_reflection(
            (*self._service_names, reflection.SERVICE_NAME, "grpc.health.v1.Health"), self.grpc
        )
        # The services go NOT_SERVING while a dependency they need stays unreachable (the readiness module).
        self.readiness = Readiness(self.health, self._service_names, dependencies, settings.readiness_grace_seconds)
        self.port = 0
        self._stopped = asyncio.Event()

    @property
    def tls(self) -> bool:
        return self._credentials is not None

    async def start(self) -> int:
        """Listen and serve; ConfigError (one line for a person) when the address cannot be listened on."""
        try:
            if self._credentials is not None:
                self.port = self.grpc.add_secure_port(self.address, self._credentials)
            else:
                self.port = self.grpc.add_insecure_port(self.address)
        except RuntimeError:  # grpc's "Failed to bind": in use, or not an address of this machine
            self.port = 0
        if self.port == 0:
            raise ConfigError([f"cannot listen on {self.address}: in use, or not an address of this machine"])
        if self._credentials is None and not is_loopback(self.address):
            log.warning(
                "serving plaintext beyond loopback: unless a proxy in front terminates TLS, anyone on the "
                "path can read and alter the traffic",
                extra={"address": self.address},
            )
        await self.grpc.start()
        for name in ("", *self._service_names):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.readiness.start()
        log.info(
            "serving",
            extra={"address": self.bound_address, "services": list(self._service_names), "tls": self.tls},
        )
        return self.port

    @property
    def bound_address(self) -> str:
        host = self.address.rpartition(":")[0]
        return f"{host}:{self.port}"

    async def stop(self) -> None:
        """Tell load balancers first, then let in-flight calls finish within the grace period."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        await self.readiness.stop()
        await self.health.enter_graceful_shutdown()
        await self.grpc.stop(self.settings.shutdown_grace_seconds)
        log.info("stopped", extra={"address": self.bound_address})

    async def wait(self) -> None:
        await self._stopped.wait()


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


def start_metrics(settings: Settings) -> None:
    host, _, port = settings.metrics_address.rpartition(":")
    try:
        start_http_server(int(port), addr=host)
    except OSError as exc:
        # A second process on one machine: metrics are useful, never a reason not to serve.
        log.warning("metrics endpoint not started", extra={"address": settings.metrics_address, "error": str(exc)})


LAG_PERIOD_SECONDS = 0.25
LAG_WINDOW_SECONDS = 10.0


def watch_loop_lag(period: float = LAG_PERIOD_SECONDS, window: float = LAG_WINDOW_SECONDS) -> asyncio.Task[None]:
    """Start measuring this process's event-loop lag into ``signalhub_event_loop_lag_seconds``: the task
    sleeps ``period`` and records how much later than asked it woke; the gauge holds the worst of the last
    ``window`` seconds, so a scrape every 10 s misses no stall. Each round also records the collector's
    pauses (``record_gc_pauses``). Cancel the task when the server stops."""

    async def watch() -> None:
        loop = asyncio.get_running_loop()
        recent: deque[float] = deque(maxlen=max(1, round(window / period)))
        while True:
            asked = loop.time()
            await asyncio.sleep(period)
            recent.append(max(0.0, loop.time() - asked - period))
            EVENT_LOOP_LAG.set(max(recent))
            record_gc_pauses()

    return asyncio.create_task(watch(), name="event-loop-lag")


# CPython's defaults are (700, 10, 10). A young collection every 2,000 new container objects still costs
# well under a millisecond; a full one only after 100 middle ones (and CPython's own rule that a quarter
# of the old objects be new since the last), about ten times rarer: each walks every object made since
# start (1,000 streams' worth: 45-85 ms in the gateway). scripts/bench, approval to delivery: p99 121-133
# ms in three runs with the defaults, 9-23 ms in ten with these; the soak bounds the memory that garbage
# waiting longer for a full collection may hold.
GC_THRESHOLDS = (2_000, 10, 100)


def settle_heap() -> None:
    """Once a server has started: what start-up built (modules, the ORM's mappers, protobuf descriptors,
    pools) is frozen out of the garbage collector's reach, full collections are made rarer (GC_THRESHOLDS),
    and each collection's pause is noted for ``signalhub_gc_pause_seconds``. A full collection used to walk
    that whole heap and held the gateway for 100-150 ms, which a delivery pushed at that moment waited out
    (the worst approval-to-delivery latencies in scripts/bench)."""
    gc.collect()
    gc.freeze()
    gc.collect()  # counts the old generation afresh: without the frozen heap, which it never walks again
    gc.set_threshold(*GC_THRESHOLDS)
    if _note_collection not in gc.callbacks:
        gc.callbacks.append(_note_collection)


# Pauses noted by the collector's callback, moved into GC_PAUSE by ``record_gc_pauses``. The callback
# runs on whichever thread allocated: it must take no lock (a metric's lock is not reentrant, and the
# metrics thread holds it while it allocates), so it only appends here.
_pauses: deque[tuple[int, float]] = deque(maxlen=4096)
_collection_began = 0.0


def _note_collection(phase: str, info: dict[str, int]) -> None:
    global _collection_began
    if phase == "start":
        _collection_began = time.perf_counter()
    else:
        _pauses.append((info["generation"], time.perf_counter() - _collection_began))


def record_gc_pauses() -> None:
    """Move the pauses noted since the last call into ``signalhub_gc_pause_seconds`` (on the event loop)."""
    while _pauses:
        generation, seconds = _pauses.popleft()
        GC_PAUSE.labels(str(generation)).observe(seconds)


async def cancel_and_wait(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Stop background loops: cancel them all first, then wait for each to unwind."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


def event_loop_factory(settings: Settings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop a server runs on: uvloop where it is installed (``auto``, the default: scripts/bench
    measured 15-27 % less CPU per frame for the same work), or whichever SIGNALHUB_EVENT_LOOP names;
    None means asyncio's own."""
    if settings.event_loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if settings.event_loop == "auto":
            return None
        raise ConfigError([f"{ENV_PREFIX}EVENT_LOOP=uvloop, but uvloop is not installed"]) from None
    return uvloop.new_event_loop
