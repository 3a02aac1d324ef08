"""Composition root of the back office: wires settings, engine, Redis, the vault and the servicers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from backoffice.affiliates.program import Program
from backoffice.api.accounts import AccountServicer
from backoffice.api.affiliates import AffiliateServicer
from backoffice.api.approvals import ApprovalServicer
from backoffice.api.audit import AuditServicer
from backoffice.api.devices import DeviceServicer
from backoffice.api.executions import ExecutionServicer
from backoffice.api.positions import PositionServicer
from backoffice.api.risk import RiskServicer
from backoffice.api.signals import SignalServicer
from backoffice.platform import db, readiness
from backoffice.platform.auth import SignatureVerifier
from backoffice.platform.config import Settings
from backoffice.platform.interceptors import Auth, RpcInterceptor
from backoffice.platform.nonces import NonceStore
from backoffice.platform.registry import service_handler
from backoffice.platform.serving import Server
from backoffice.platform.vault import Vault
from signalhub.v1 import backoffice_pb2

SIGNAL_SERVICE = "/signalhub.v1.SignalService/"
METHOD_AUTH = {
    SIGNAL_SERVICE + "SubmitSignal": Auth.PRODUCER_SIGNED,
    SIGNAL_SERVICE + "SubmitQuotes": Auth.PRODUCER_SIGNED,
    SIGNAL_SERVICE + "CancelSignal": Auth.PRODUCER_SIGNED_OR_BEARER,
}
SERVICES = tuple(backoffice_pb2.DESCRIPTOR.services_by_name.values())


@dataclass(frozen=True)
class Resources:
    """What both processes open once at start and close at stop."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    redis: Redis
    vault: Vault
    nonces: NonceStore
    verifier: SignatureVerifier


def open_redis(settings: Settings, *, block_seconds: float = 0.0) -> Redis:
    """A Redis client with short timeouts: when Redis is down, callers fall back (nonces) or carry on
    (hints) quickly. A client that blocks on purpose (the monitor on its stream) gets ``block_seconds``
    more to read an answer."""
    return Redis.from_url(settings.redis_url, socket_timeout=0.5 + block_seconds, socket_connect_timeout=0.5)


@asynccontextmanager
async def resources(settings: Settings) -> AsyncIterator[Resources]:
    master = settings.require_master_key()
    engine = db.create_engine(settings)
    sessions = db.session_factory(engine)
    redis = open_redis(settings)
    vault = Vault(master, settings.previous_master_keys)
    nonces = NonceStore(settings.nonce_ttl_seconds)
    verifier = SignatureVerifier(sessions, vault, nonces, settings.signature_tolerance_seconds)
    try:
        yield Resources(settings, engine, sessions, redis, vault, nonces, verifier)
    finally:
        await redis.aclose()
        await engine.dispose()


def build_server(res: Resources, address: str | None = None) -> Server:
    """The back-office gRPC server: every service of the contract behind one interceptor (admission,
    authentication per method, error mapping), with health and reflection."""
    interceptor = RpcInterceptor(
        policies=METHOD_AUTH,
        default_policy=Auth.BEARER,
        sessions=res.sessions,
        verifier=res.verifier,
        max_in_flight=res.settings.max_concurrent_rpcs,
        max_in_flight_per_caller=res.settings.max_concurrent_rpcs_per_caller,
        max_message_bytes=res.settings.max_message_bytes,
    )
    server = Server(
        res.settings,
        address or res.settings.backoffice_address,
        [interceptor],
        [s.full_name for s in SERVICES],
        tls=res.settings.backoffice_tls,
        # Without Postgres nothing works; Redis only carries hints here (the monitor's sweep covers them).
        dependencies=[readiness.postgres(res.engine)],
    )
    handlers = servicers(res)
    for service in SERVICES:
        server.grpc.add_generic_rpc_handlers([service_handler(service, handlers.get(service.name, object()))])
    return server


def servicers(res: Resources) -> dict[str, object]:
    """The servicer of each service of the contract, by the service's name."""
    return {
        "AccountService": AccountServicer(
            res.sessions,
            res.vault,
            timedelta(seconds=res.settings.secret_grace_seconds),
            max_api_tokens_per_user=res.settings.max_api_tokens_per_user,
        ),
        "SignalService": SignalServicer(res.sessions, res.vault, res.redis, res.settings.signature_tolerance_seconds),
        "ApprovalService": ApprovalServicer(
            res.sessions, res.vault, res.redis, max_subscriptions_per_user=res.settings.max_subscriptions_per_user
        ),
        "DeviceService": DeviceServicer(res.sessions, res.vault, res.redis, res.settings),
        "ExecutionService": ExecutionServicer(res.sessions),
        "PositionService": PositionServicer(res.sessions, res.vault, res.redis, res.settings.quote_max_age_seconds),
        "AuditService": AuditServicer(res.sessions),
        "AffiliateService": AffiliateServicer(res.sessions, res.vault, Program.from_settings(res.settings)),
        "RiskService": RiskServicer(res.sessions, res.vault),
    }
