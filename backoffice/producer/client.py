"""The Python producer SDK: signed calls to ``SignalService`` that are safe to retry.

Each call serialises its request once; every attempt signs those exact bytes (docs/contract.md's
SH1-HMAC-SHA256, with a fresh timestamp and nonce, so a retry is never a replay) and sends them through a
multicallable that does not serialise again. Every attempt carries a deadline. ``UNAVAILABLE`` and
``DEADLINE_EXCEEDED`` are retried with capped exponential backoff and full jitter; a mutating call keeps
its ``request_id`` on every attempt, so a retry returns the first attempt's result instead of making a
second signal. Anything else raises :class:`ProducerCallError` at once.

    async with ProducerClient("127.0.0.1:50051", producer_id, "shs_...") as client:
        signal = await client.submit_signal("XAUUSD", "buy", entry_price="2034.15", stop_loss="2020")
"""

from __future__ import annotations

import asyncio
import logging
import random as _random
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self, TypeVar, Unpack

import grpc
from google.protobuf.message import Message

from backoffice.producer.messages import (
    SideLike,
    SignalOptions,
    check_signal_options,
    request_id_text,
    submit_signal_request,
)
from signalhub.protocol.client import KEEPALIVE_OPTIONS, backoff_ceiling, jittered_backoff
from signalhub.protocol.secret import Secret
from signalhub.protocol.signing import SECRET_BYTES, parse_secret, signed_metadata
from signalhub.protocol.wire import status_details
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import common_pb2

log = logging.getLogger("signalhub.producer")

SUBMIT_SIGNAL = "/signalhub.v1.SignalService/SubmitSignal"
CANCEL_SIGNAL = "/signalhub.v1.SignalService/CancelSignal"
SUBMIT_QUOTES = "/signalhub.v1.SignalService/SubmitQuotes"

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_DEADLINE_SECONDS = 5.0
# Not signed, only for correlating the server's logs: the idempotency key of the call (same on every retry).
REQUEST_ID_HEADER = "x-request-id"
_USER_AGENT = "signalhub-producer-python/0.1"

_ResponseT = TypeVar("_ResponseT", bound=Message)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a call is retried.

    The wait before retry ``n`` (1-based) is ``uniform(0, min(max_backoff, initial_backoff * multiplier**(n-1)))``
    ("full jitter"), so many producers failing at once do not come back in lockstep.
    """

    max_attempts: int = 5
    initial_backoff_seconds: float = 0.1
    multiplier: float = 2.0
    max_backoff_seconds: float = 2.0
    retryable_codes: frozenset[grpc.StatusCode] = field(
        default=frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
    )
    # RESOURCE_EXHAUSTED with one of these reasons is load, not a quota used up: it passes with time.
    retryable_reasons: frozenset[str] = frozenset({"SERVER_AT_CAPACITY", "CALLER_CONCURRENCY"})

    def retries(self, error: grpc.aio.AioRpcError) -> bool:
        """Whether a failed attempt is worth another (the attempt count aside)."""
        if error.code() in self.retryable_codes:
            return True
        return error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and status_details(error).reason in (
            self.retryable_reasons
        )

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff_seconds < 0 or self.max_backoff_seconds < 0:
            raise ValueError("backoff must not be negative")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")

    def ceiling(self, retry: int) -> float:
        """The most to wait before retry number ``retry`` (1 for the first retry)."""
        return backoff_ceiling(retry, self.initial_backoff_seconds, self.max_backoff_seconds, self.multiplier)

    def delay(self, retry: int, unit_random: float) -> float:
        """The wait before retry ``retry`` given a uniform draw from [0, 1)."""
        return jittered_backoff(
            retry, unit_random, self.initial_backoff_seconds, self.max_backoff_seconds, self.multiplier
        )


class ProducerCallError(Exception):
    """A call failed for good: a non-retryable status, or the last of ``attempts`` retryable ones.

    ``reason``, ``domain`` and ``metadata`` come from the ``google.rpc.ErrorInfo`` the server attached,
    ``violations`` (field -> description) from its ``google.rpc.BadRequest``; both are empty when the
    failure came from the transport rather than the server (e.g. connection refused).
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        method: str,
        attempts: int,
        reason: str = "",
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
        violations: Mapping[str, str] | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.method = method
        self.attempts = attempts
        self.reason = reason
        self.domain = domain
        self.metadata = dict(metadata or {})
        self.violations = dict(violations or {})
        super().__init__(self._describe())

    def _describe(self) -> str:
        head = f"{self.code.name} {self.reason}" if self.reason not in ("", self.code.name) else self.code.name
        text = f"{head}: {self.message}" if self.message else head
        if self.violations:
            text += " (" + "; ".join(f"{f or '<request>'}: {d}" for f, d in self.violations.items()) + ")"
        if self.attempts > 1:
            text += f" after {self.attempts} attempts"
        return text

    @classmethod
    def from_rpc_error(cls, error: grpc.aio.AioRpcError, *, method: str, attempts: int) -> ProducerCallError:
        details = status_details(error)
        return cls(
            error.code(),
            error.details() or "",
            method=method,
            attempts=attempts,
            reason=details.reason,
            domain=details.domain,
            metadata=details.metadata,
            violations=details.violations,
        )


def _secret_bytes(secret: str | bytes) -> bytes:
    if isinstance(secret, bytes):
        if len(secret) != SECRET_BYTES:
            raise ValueError(f"a raw secret is {SECRET_BYTES} bytes")
        return secret
    return parse_secret(secret)  # its ValueError never echoes the text


def channel_options(retry: RetryPolicy) -> list[tuple[str, Any]]:
    """Keepalive inside what the servers permit (``KEEPALIVE_OPTIONS``), and reconnect backoff on the scale
    of the retry policy, so a retry after a dropped connection is not refused by a channel still waiting
    out a long reconnect backoff."""
    initial_ms = max(100, int(retry.initial_backoff_seconds * 1000))
    return [
        *KEEPALIVE_OPTIONS,
        ("grpc.initial_reconnect_backoff_ms", initial_ms),
        ("grpc.min_reconnect_backoff_ms", initial_ms),
        ("grpc.max_reconnect_backoff_ms", max(initial_ms, int(retry.max_backoff_seconds * 1000))),
        ("grpc.primary_user_agent", _USER_AGENT),
    ]


class ProducerClient:
    """Signed, deadline-bound, retrying calls to ``SignalService`` as one producer.

    ``target`` is a ``host:port`` (the client then owns its channel and closes it) or an existing
    ``grpc.aio.Channel`` (left open by :meth:`close`); ``channel_credentials`` makes the owned channel a
    TLS one. ``secret`` is the ``shs_`` form (or the 32 raw
    bytes); only the key bytes are kept, and they appear in no repr, log line or error.
    """

    def __init__(
        self,
        target: str | grpc.aio.Channel,
        producer_id: str | uuid.UUID,
        secret: str | bytes,
        *,
        deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
        retry: RetryPolicy | None = None,
        channel_credentials: grpc.ChannelCredentials | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        random: Callable[[], float] = _random.random,
    ) -> None:
        """Keep only the secret's key bytes, as a ``Secret``, and open no channel yet: a grpc.aio channel
        belongs to the event loop that first uses it, so an owned one is made on the first call.
        ``sleep`` and ``random`` pace the retries (tests pass their own)."""
        if deadline_seconds <= 0:
            raise ValueError("deadline_seconds must be positive")
        self.producer_id = str(producer_id)
        self.deadline_seconds = deadline_seconds
        self.retry = retry if retry is not None else RetryPolicy()
        self._secret = Secret(_secret_bytes(secret))
        self._sleep = sleep
        self._random = random
        self._channel_credentials = channel_credentials
        if isinstance(target, str):
            self.target = target
            self._given_channel: grpc.aio.Channel | None = None
        else:
            self.target = "<channel>"
            self._given_channel = target
        self._own_channel: grpc.aio.Channel | None = None  # created on first use, inside the running loop
        self._callables: dict[str, grpc.aio.UnaryUnaryMultiCallable[bytes, Any]] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"ProducerClient(target={self.target!r}, producer_id={self.producer_id!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel this client opened; a channel passed in stays open for its owner."""
        self._closed = True
        channel, self._own_channel = self._own_channel, None
        self._callables.clear()
        if channel is not None:
            await channel.close()

    async def submit_signal(self, instrument: str, side: SideLike, **options: Unpack[SignalOptions]) -> pb.Signal:
        """Submit a signal and return it as stored (``options``: see ``submit_signal_request``). Repeating
        a ``request_id`` with the same request returns the first signal; with a different request it fails
        ``ALREADY_EXISTS``."""
        check_signal_options(options, "submit_signal")
        request = submit_signal_request(instrument, side, **options)
        return await self._call(SUBMIT_SIGNAL, request.SerializeToString(), pb.Signal, request.request_id)

    async def cancel_signal(
        self,
        signal_id: str | uuid.UUID,
        reason: str,
        request_id: str | uuid.UUID | None = None,
        *,
        close_positions: bool = False,
    ) -> pb.Signal:
        """Cancel one of this producer's open signals and return it; with ``close_positions``, the positions
        opened from it are closed too (reason SIGNAL_CANCELLED)."""
        request = pb.CancelSignalRequest(
            id=str(signal_id), request_id=request_id_text(request_id), reason=reason, close_positions=close_positions
        )
        return await self._call(CANCEL_SIGNAL, request.SerializeToString(), pb.Signal, request.request_id)

    async def submit_quotes(self, quotes: Iterable[common_pb2.Quote]) -> pb.SubmitQuotesResponse:
        """Send price-feed quotes (see :func:`make_quote`). Retried like the rest: a quote seen twice is
        the same observation, so a repeat is harmless."""
        request = pb.SubmitQuotesRequest(quotes=list(quotes))
        return await self._call(SUBMIT_QUOTES, request.SerializeToString(), pb.SubmitQuotesResponse, str(uuid.uuid4()))

    async def _call(self, method: str, body: bytes, response_type: type[_ResponseT], request_id: str) -> _ResponseT:
        """Send ``body``, serialised once so every attempt carries the same bytes, signed afresh each attempt.
        Retryable codes are retried after a jittered backoff, under the same request id, up to max_attempts;
        anything else (or the last attempt) raises ProducerCallError with the server's details."""
        call = self._callable(method, response_type)
        attempt = 0
        while True:
            attempt += 1
            # A fresh timestamp and nonce over the same bytes: a retry is a new, valid request, not a replay.
            metadata = (
                *signed_metadata(self._secret.reveal(), method, self.producer_id, body),
                (REQUEST_ID_HEADER, request_id),
            )
            try:
                response = await call(body, metadata=metadata, timeout=self.deadline_seconds)
            except grpc.aio.AioRpcError as error:
                code = error.code()
                if not self.retry.retries(error) or attempt >= self.retry.max_attempts:
                    raise ProducerCallError.from_rpc_error(error, method=method, attempts=attempt) from error
                delay = self.retry.delay(attempt, self._random())
                log.info(
                    "retrying",
                    extra={"method": method, "attempt": attempt, "code": code.name, "delay_s": round(delay, 3)},
                )
                await self._sleep(delay)
                continue
            if not isinstance(response, response_type):  # the deserializer guarantees it; keeps mypy honest
                raise TypeError(f"unexpected response type {type(response).__name__}")
            return response

    def _callable(self, method: str, response_type: type[Message]) -> grpc.aio.UnaryUnaryMultiCallable[bytes, Any]:
        found = self._callables.get(method)
        if found is None:
            # No request serializer: the bytes that were signed are the bytes that go on the wire.
            found = self._channel().unary_unary(
                method, request_serializer=None, response_deserializer=response_type.FromString
            )
            self._callables[method] = found
        return found

    def _channel(self) -> grpc.aio.Channel:
        if self._closed:
            raise RuntimeError("this ProducerClient is closed")
        if self._given_channel is not None:
            return self._given_channel
        if self._own_channel is None:
            options = channel_options(self.retry)
            if self._channel_credentials is not None:
                self._own_channel = grpc.aio.secure_channel(self.target, self._channel_credentials, options=options)
            else:
                self._own_channel = grpc.aio.insecure_channel(self.target, options=options)
        return self._own_channel
