"""Server interceptors that re-wrap each method handler: request id and access log, admission control,
authentication (bearer token, or an SH1 signature verified over the raw request bytes), and the mapping
of domain exceptions to gRPC status."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, cast

import asyncpg
import grpc
from google.protobuf.message import DecodeError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from backoffice.models import ActorType
from backoffice.platform import auth, db
from backoffice.platform.auth import Caller, KeyKind, SignatureVerifier
from backoffice.platform.metrics import AUTH_FAILURES, RPC_REJECTED, RPC_SECONDS
from backoffice.platform.rpc_errors import as_domain_error, build_status, status_code_of, trailing_metadata
from signalhub.protocol import errors, wire
from signalhub.protocol.logs import request_id_var
from signalhub.protocol.signing import SignatureError

log = logging.getLogger("signalhub.rpc")

caller_var: ContextVar[Caller | None] = ContextVar("caller", default=None)


REQUEST_ID_HEADER = "x-request-id"
_TRANSIENT = (
    OperationalError,
    InterfaceError,
    asyncpg.InterfaceError,  # a lost connection on a path that uses asyncpg directly
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    OSError,
)
_DATA_EXCEPTION = "22"  # SQLSTATE class 22: a value Postgres cannot store or compute with
# SQLSTATEs of a server that is down for now: class 08 (connection exceptions) and 57P (shutting down,
# crashed, or not yet accepting connections while it recovers). SQLAlchemy raises some of these as a plain
# DBAPIError; the client is told to retry, as for any other outage (found by tests/reliability).
_SERVER_DOWN = ("08", "57P")
# SQLSTATE class 40: a deadlock or serialization failure. Nothing was written; the same request may succeed.
_LOST_RACE = "40"
# Health checks and reflection are open to anyone and never counted against the admission limit.
_OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


if TYPE_CHECKING:  # generic only in the type stubs
    Handler = grpc.RpcMethodHandler[Any, Any]
    Context = grpc.aio.ServicerContext[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    Context = grpc.aio.ServicerContext
_UnaryBehavior = Callable[[Any, Context], Awaitable[Any]]
_StreamBehavior = Callable[[AsyncIterator[Any], Context], AsyncIterator[Any]]


class Auth(Enum):
    """How a method's caller proves who it is."""

    BEARER = "bearer"  # authorization: Bearer <api token>
    PRODUCER_SIGNED = "producer-signed"  # SH1 signature over the raw request bytes
    PRODUCER_SIGNED_OR_BEARER = "producer-signed-or-bearer"
    SELF = "self"  # the servicer authenticates (the device stream open)
    NONE = "none"


def current_caller() -> Caller:
    caller = caller_var.get()
    if caller is None:  # a wiring bug, never a client's doing
        raise RuntimeError("no authenticated caller in this context")
    return caller


# Whom a per-caller share is counted for: a user (whichever of its tokens it calls with) or a producer.
_CallerKey = tuple[ActorType, uuid.UUID]


@dataclass(frozen=True)
class _CallInfo:
    method: str
    metadata: tuple[tuple[str, str | bytes], ...]


class RpcInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        *,
        policies: Mapping[str, Auth],
        default_policy: Auth,
        sessions: Any,
        verifier: SignatureVerifier | None,
        max_in_flight: int,
        max_message_bytes: int,
        max_in_flight_per_caller: int | None = None,
    ) -> None:
        """``max_in_flight`` unary calls at once in all; ``max_in_flight_per_caller`` (None: no share) of them
        for one authenticated caller."""
        self._policies = policies
        self._default = default_policy
        self._sessions = sessions
        self._verifier = verifier
        self._max_in_flight = max_in_flight
        self._max_in_flight_per_caller = max_in_flight_per_caller
        self._max_message_bytes = max_message_bytes
        self._in_flight = 0
        self._in_flight_by_caller: dict[_CallerKey, int] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_OPEN_SERVICES):
            return handler
        policy = self._policies.get(method, self._default)
        if handler.unary_unary is not None:
            return self._wrap_unary(handler, method, policy)
        if handler.stream_stream is not None:
            return self._wrap_stream(handler, method)
        return handler

    def _wrap_unary(self, handler: Handler, method: str, policy: Auth) -> Handler:
        """The unary handler behind the interceptor: admission, authentication (a signature over the raw bytes
        or a bearer token), then decoding, the servicer, and the error mapping; one access-log line each."""
        inner = cast(_UnaryBehavior, handler.unary_unary)
        decode = _decoder(handler, self._max_message_bytes)

        async def behavior(raw: bytes, context: Context) -> Any:
            # Registered without a deserializer: ``raw`` is the request exactly as sent. A signature
            # covers those bytes, and bytes that are not a message are only looked at once the caller
            # is known (unauthenticated callers learn nothing about the method's message).
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            metadata = _metadata(context)
            request_id_var.set(_request_id(metadata))
            counted_for: _CallerKey | None = None
            try:
                if not self._admit(method):
                    raise errors.ResourceExhausted(
                        "server is at capacity; retry with backoff", reason="SERVER_AT_CAPACITY"
                    )
                caller = await self._authenticate(policy, method, metadata, raw)
                caller_var.set(caller)
                if caller is not None:
                    counted_for = self._admit_caller(method, caller)
                return await inner(decode(raw), context)
            except Exception as exc:
                error = _domain_error(exc, method)
                code = status_code_of(error)
                await _abort(context, error)
            finally:
                self._in_flight -= 1
                if counted_for is not None:
                    self._release_caller(counted_for)
                RPC_SECONDS.labels(method, code.name).observe(time.perf_counter() - started)
                log.info(
                    "rpc",
                    extra={"method": method, "code": code.name, "ms": round((time.perf_counter() - started) * 1e3, 2)},
                )

        return grpc.unary_unary_rpc_method_handler(
            behavior, request_deserializer=None, response_serializer=handler.response_serializer
        )

    def _wrap_stream(self, handler: Handler, method: str) -> Handler:
        """The streaming handler behind the interceptor: frames decoded from raw bytes (bytes that are not a
        frame end the stream INVALID_ARGUMENT), the servicer's own authentication, and the error mapping."""
        inner = cast(_StreamBehavior, handler.stream_stream)
        decode = _decoder(handler, self._max_message_bytes, check_text=False)

        async def decoded(requests: AsyncIterator[bytes]) -> AsyncIterator[Any]:
            # A frame that is not a message ends the stream INVALID_ARGUMENT (raised to whoever reads).
            async for raw in requests:
                yield decode(raw)

        async def behavior(requests: AsyncIterator[bytes], context: Context) -> Any:
            request_id_var.set(_request_id(_metadata(context)))
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                async for response in inner(decoded(requests), context):
                    yield response
            except Exception as exc:
                error = _domain_error(exc, method)
                code = status_code_of(error)
                await _abort(context, error)
            finally:
                log.info(
                    "stream closed",
                    extra={"method": method, "code": code.name, "seconds": round(time.perf_counter() - started, 3)},
                )

        return grpc.stream_stream_rpc_method_handler(
            behavior, request_deserializer=None, response_serializer=handler.response_serializer
        )

    def _admit(self, method: str) -> bool:
        # The aio server does not reliably enforce maximum_concurrent_rpcs (grpc#30424), so we count.
        self._in_flight += 1
        if self._in_flight > self._max_in_flight:
            RPC_REJECTED.labels(method).inc()
            return False
        return True

    def _admit_caller(self, method: str, caller: Caller) -> _CallerKey | None:
        """Count the call against its caller's share and return what to release when it ends (None: no
        share is kept); RESOURCE_EXHAUSTED, counting nothing, when the share is spent. The event loop runs
        one handler at a time between awaits, so the count needs no lock."""
        share = self._max_in_flight_per_caller
        if share is None:
            return None
        key = (caller.kind, caller.id)
        held = self._in_flight_by_caller.get(key, 0)
        if held >= share:
            RPC_REJECTED.labels(method).inc()
            raise errors.ResourceExhausted(
                f"at most {share} calls of one caller are served at once; wait for some to finish",
                reason="CALLER_CONCURRENCY",
                metadata={"quota": "concurrent_rpcs_per_caller", "limit": str(share)},
            )
        self._in_flight_by_caller[key] = held + 1
        return key

    def _release_caller(self, key: _CallerKey) -> None:
        left = self._in_flight_by_caller[key] - 1
        if left:
            self._in_flight_by_caller[key] = left
        else:  # callers come and go: keep only those with calls in flight
            del self._in_flight_by_caller[key]

    async def _authenticate(
        self, policy: Auth, method: str, metadata: tuple[tuple[str, str | bytes], ...], raw: bytes
    ) -> Caller | None:
        if policy in (Auth.NONE, Auth.SELF):
            return None
        has_signature = any(key == "x-sh-signature" for key, _ in metadata)
        if policy is Auth.PRODUCER_SIGNED or (policy is Auth.PRODUCER_SIGNED_OR_BEARER and has_signature):
            if self._verifier is None:
                raise RuntimeError("signed method served without a signature verifier")
            try:
                key = await self._verifier.verify(KeyKind.PRODUCER, method, metadata, raw)
            except SignatureError as exc:
                raise as_domain_error(exc) from None
            return key.caller()
        return await auth.authenticate_token(self._sessions, auth.bearer_token(metadata))


def _decoder(handler: Handler, max_bytes: int, *, check_text: bool = True) -> Callable[[bytes], Any]:
    """Turns a request's wire bytes into its message, or raises INVALID_ARGUMENT: bytes over the size
    limit, bytes that do not parse, and (with ``check_text``) text Postgres cannot store, one rule for
    every string field. Stream frames are checked by their session, which rejects just that frame."""
    deserialize = handler.request_deserializer
    if deserialize is None:
        raise RuntimeError("every signalhub method is registered with its request type")

    def decode(raw: bytes) -> Any:
        if len(raw) > max_bytes:
            raise errors.InvalidArgument(
                [("", f"the message is {len(raw)} bytes; at most {max_bytes} are accepted")], reason="MESSAGE_TOO_LARGE"
            )
        try:
            message = deserialize(raw)
        except DecodeError:
            raise errors.InvalidArgument(
                [("", "the bytes are not a valid message")], reason="MALFORMED_MESSAGE"
            ) from None
        # NUL is the one character Postgres refuses in text (and in JSONB); most messages have no zero
        # byte at all, so only those that do are walked.
        if check_text and b"\x00" in raw:
            wire.check_text(message)
        return message

    return decode


def _metadata(context: Context) -> tuple[tuple[str, str | bytes], ...]:
    return tuple((m[0], m[1]) for m in (context.invocation_metadata() or ()))


def _request_id(metadata: tuple[tuple[str, str | bytes], ...]) -> str:
    for key, value in metadata:
        if key == REQUEST_ID_HEADER and isinstance(value, str) and 0 < len(value) <= 64 and value.isprintable():
            return value
    return uuid.uuid4().hex


def _domain_error(exc: Exception, method: str) -> errors.DomainError:
    """What the client is told about ``exc``; re-raises an abort that is already under way."""
    if _is_abort(exc):
        raise exc
    if isinstance(exc, errors.DomainError):
        return exc
    if isinstance(exc, NotImplementedError):
        return errors.NotImplementedYet(f"{method} is not implemented yet")
    if _sqlstate(exc).startswith(_DATA_EXCEPTION):
        # A value the edge's validation let through but Postgres refuses: the client still hears that its
        # input was bad, and the ERROR line says validation has a gap to close.
        log.error("the database refused a value from a request", exc_info=exc)
        return errors.InvalidArgument([("", "a value the database cannot store")], reason="VALUE_NOT_STORABLE")
    if _sqlstate(exc).startswith(_LOST_RACE):
        log.warning("a transaction lost a race", exc_info=exc)
        # Transient, so UNAVAILABLE as the contract has it (it names no ABORTED for calls): retry.
        return db.lost_race()
    if (
        isinstance(exc, _TRANSIENT)
        or (isinstance(exc, DBAPIError) and exc.connection_invalidated)
        or _sqlstate(exc).startswith(_SERVER_DOWN)
    ):
        log.warning("transient failure", exc_info=exc)
        return errors.Unavailable("a backing service is unavailable; retry with backoff")
    log.error("unexpected failure", exc_info=exc)
    return errors.DomainError("internal error; quote the request id when reporting it", reason="INTERNAL")


def _sqlstate(exc: Exception) -> str:
    """The SQLSTATE of a database error, raised through SQLAlchemy or by asyncpg on a hot path."""
    if isinstance(exc, DBAPIError):
        return str(getattr(exc.orig, "sqlstate", "") or "")
    if isinstance(exc, asyncpg.PostgresError):
        return str(getattr(exc, "sqlstate", "") or "")
    return ""


async def _abort(context: Context, error: errors.DomainError) -> None:
    code, status = build_status(error, request_id_var.get())
    if code is grpc.StatusCode.UNAUTHENTICATED:
        AUTH_FAILURES.labels(error.reason).inc()
    await context.abort(code, status.message, trailing_metadata(status))


def _is_abort(exc: BaseException) -> bool:
    # grpc.aio raises its own AbortError out of context.abort(); it must pass through untouched.
    return type(exc).__name__ == "AbortError"
