"""The producer SDK against the real back office, directly and through a real flaky proxy.

The proxy is a grpc.aio server that forwards the raw request bytes and the signed metadata it received to
the back office, unchanged, after answering its planned faults; it records every attempt it saw.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import grpc
import pytest
from sqlalchemy import select

from backoffice import models
from backoffice.bootstrap import Resources
from backoffice.platform.rpc_errors import build_status, trailing_metadata
from backoffice.platform.serving import Server
from backoffice.producer import (
    CANCEL_SIGNAL,
    SUBMIT_QUOTES,
    SUBMIT_SIGNAL,
    ProducerCallError,
    ProducerClient,
    RetryPolicy,
    channel_options,
    decimal_string,
    make_quote,
    submit_signal_request,
)
from signalhub.protocol import errors, signing
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import common_pb2
from tests.conftest import KeyCredentials

# --------------------------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Seen:
    """One attempt as it arrived at the proxy."""

    method: str
    body: bytes
    metadata: dict[str, str]
    time_remaining: float | None

    @property
    def nonce(self) -> str:
        return self.metadata[signing.HEADER_NONCE]


# RESOURCE_EXHAUSTED faults by their reason: load (retried) or a quota used up (not).
BUSY = {"busy": "CALLER_CONCURRENCY", "at_capacity": "SERVER_AT_CAPACITY", "quota": "SUBSCRIPTION_LIMIT"}


class FlakyProxy(grpc.GenericRpcHandler):
    """Answers the first calls with ``faults`` (one per call), then forwards bytes and signature as they came.

    Faults: ``unavailable`` (answers UNAVAILABLE, forwards nothing), ``lost`` (forwards, then answers
    UNAVAILABLE: the back office acted but the caller never hears), ``stall`` (never answers, so the
    caller's deadline passes), ``stall_after`` (forwards, then never answers).
    """

    def __init__(self, upstream: grpc.aio.Channel) -> None:
        self.upstream = upstream
        self.faults: list[str] = []
        self.always: str | None = None
        self.seen: list[Seen] = []
        self.forwarded = 0

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method

        async def handle(body: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            return await self._handle(method, body, context)

        return grpc.unary_unary_rpc_method_handler(handle)  # no (de)serializers: raw bytes both ways

    async def _handle(self, method: str, body: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if k.startswith("x-") and isinstance(v, str)}
        self.seen.append(Seen(method, body, metadata, context.time_remaining()))
        fault = self.faults.pop(0) if self.faults else self.always
        if fault == "unavailable":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "proxy: injected outage")
        if fault in BUSY:
            code, status = build_status(errors.ResourceExhausted("proxy: busy", reason=BUSY[fault]))
            await context.abort(code, "proxy: busy", trailing_metadata(status))
        if fault == "stall":
            await asyncio.sleep(3600)
        response = await self._forward(method, body, metadata, context)
        if fault == "lost":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "proxy: the back office answered, the answer was lost")
        if fault == "stall_after":
            await asyncio.sleep(3600)
        return response

    async def _forward(
        self, method: str, body: bytes, metadata: dict[str, str], context: grpc.aio.ServicerContext[Any, Any]
    ) -> bytes:
        self.forwarded += 1
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = self.upstream.unary_unary(method)
        try:
            response: bytes = await call(body, metadata=tuple(metadata.items()), timeout=context.time_remaining())
        except grpc.aio.AioRpcError as error:  # pass the back office's status and details through as they are
            await context.abort(error.code(), error.details() or "", tuple(error.trailing_metadata() or ()))
        return response


@pytest.fixture
async def proxy(backoffice_channel: grpc.aio.Channel) -> AsyncIterator[tuple[FlakyProxy, str]]:
    handler = FlakyProxy(backoffice_channel)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield handler, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


class RecordingSleep:
    """The client's injected sleep: records each backoff and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def client_for(
    target: str | grpc.aio.Channel,
    producer: KeyCredentials,
    *,
    sleep: Callable[[float], Awaitable[object]] | None = None,
    random_source: Callable[[], float] = random.random,
    retry: RetryPolicy | None = None,
    deadline_seconds: float = 5.0,
    secret: str | None = None,
) -> ProducerClient:
    return ProducerClient(
        target,
        producer.id,
        secret or producer.secret,
        deadline_seconds=deadline_seconds,
        retry=retry,
        sleep=sleep or RecordingSleep(),
        random=random_source,
    )


async def signals_of(res: Resources, producer: KeyCredentials) -> list[models.Signal]:
    async with res.sessions() as session:
        rows = await session.execute(select(models.Signal).where(models.Signal.producer_id == producer.id))
        return list(rows.scalars().all())


def assert_signed_over_the_bytes_sent(seen: Seen, producer: KeyCredentials) -> None:
    headers = signing.parse_headers(seen.metadata.items())
    assert headers.key_id == str(producer.id)
    secret = signing.parse_secret(producer.secret)
    assert signing.match_secret(headers, seen.method, seen.body, [secret]) == 0
    assert signing.match_secret(headers, seen.method, seen.body + b"\x00", [secret]) is None


XAU: dict[str, Any] = {"entry_price": "2034.15", "stop_loss": "2020", "take_profit": "2050"}

# ---------------------------------------------------------------------------------- straight to the server


async def test_submit_returns_the_signal(backoffice_server: Server, producer: KeyCredentials, res: Resources) -> None:
    request_id = uuid.uuid4()
    async with client_for(backoffice_server.bound_address, producer) as client:
        signal = await client.submit_signal(
            "XAUUSD",
            "buy",
            entry_price=Decimal("2034.15"),
            stop_loss="2020",
            take_profit="2050.0",
            expire_time=timedelta(seconds=90),
            payload={"strategy": "breakout", "confidence": 0.7},
            request_id=request_id,
        )
    assert isinstance(signal, pb.Signal)
    assert signal.producer_id == str(producer.id) and signal.request_id == str(request_id)
    assert (signal.instrument, signal.side, signal.status) == ("XAUUSD", common_pb2.SIDE_BUY, pb.SIGNAL_STATUS_OPEN)
    assert Decimal(signal.entry_price) == Decimal("2034.15")
    assert (Decimal(signal.stop_loss), Decimal(signal.take_profit)) == (Decimal(2020), Decimal(2050))
    assert signal.expire_time.ToSeconds() - signal.signal_time.ToSeconds() == 90
    assert dict(signal.payload)["strategy"] == "breakout"
    stored = await signals_of(res, producer)
    assert [str(s.id) for s in stored] == [signal.id]


async def test_repeating_a_request_id_returns_the_first_signal(
    backoffice_server: Server, producer: KeyCredentials, res: Resources
) -> None:
    request_id = uuid.uuid4()
    moment = datetime.now(UTC)
    async with client_for(backoffice_server.bound_address, producer) as client:
        first = await client.submit_signal(
            "EURUSD", "sell", entry_price="1.0850", signal_time=moment, request_id=request_id
        )
        again = await client.submit_signal(
            "EURUSD", "sell", entry_price="1.0850", signal_time=moment, request_id=request_id
        )
        assert again.id == first.id
        with pytest.raises(ProducerCallError) as info:  # same id, different request
            await client.submit_signal(
                "EURUSD", "sell", entry_price="1.0900", signal_time=moment, request_id=request_id
            )
    assert (info.value.code, info.value.attempts) == (grpc.StatusCode.ALREADY_EXISTS, 1)
    assert len(await signals_of(res, producer)) == 1


async def test_invalid_argument_carries_the_field_violations(
    backoffice_server: Server, producer: KeyCredentials
) -> None:
    async with client_for(backoffice_server.bound_address, producer) as client:
        with pytest.raises(ProducerCallError) as info:
            await client.submit_signal("XAUUSD", "buy", entry_price="2034.15", stop_loss="2040")  # stop above entry
    error = info.value
    assert (error.code, error.reason, error.domain) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "signalhub.v1",
    )
    assert "stop_loss" in error.violations
    assert "INVALID_ARGUMENT" in str(error) and "stop_loss" in str(error)


async def test_cancel_signal(backoffice_server: Server, producer: KeyCredentials) -> None:
    async with client_for(backoffice_server.bound_address, producer) as client:
        signal = await client.submit_signal("XAUUSD", "sell", **XAU | {"stop_loss": "2050", "take_profit": "2020"})
        cancelled = await client.cancel_signal(signal.id, "strategy changed its mind")
        assert (cancelled.id, cancelled.status) == (signal.id, pb.SIGNAL_STATUS_CANCELLED)
        assert cancelled.cancel_reason == "strategy changed its mind"
        with pytest.raises(ProducerCallError) as info:
            await client.cancel_signal(uuid.uuid4(), "no such signal")
    assert info.value.code == grpc.StatusCode.NOT_FOUND


async def test_submit_quotes(backoffice_server: Server, producer: KeyCredentials) -> None:
    async with client_for(backoffice_server.bound_address, producer) as client:
        response = await client.submit_quotes(
            [make_quote("XAUUSD", "2034.10", Decimal("2034.30")), make_quote("EURUSD", "1.0849", "1.0851")]
        )
    assert isinstance(response, pb.SubmitQuotesResponse)
    assert response.accepted_count == 2


async def test_a_wrong_secret_is_refused_at_once_and_never_shown(
    proxy: tuple[FlakyProxy, str], producer: KeyCredentials, caplog: pytest.LogCaptureFixture
) -> None:
    handler, target = proxy
    wrong = signing.format_secret(bytes(range(32)))
    sleep = RecordingSleep()
    caplog.set_level(logging.DEBUG)
    async with client_for(target, producer, secret=wrong, sleep=sleep) as client:
        with pytest.raises(ProducerCallError) as info:
            await client.submit_signal("XAUUSD", "buy", **XAU)
        shown = " ".join((repr(client), repr(vars(client)), str(info.value), repr(info.value), caplog.text))
    assert (info.value.code, info.value.reason) == (grpc.StatusCode.UNAUTHENTICATED, "SIGNATURE_INVALID")
    assert len(handler.seen) == 1 and sleep.delays == []
    assert wrong not in shown and wrong[4:] not in shown
    assert repr(signing.parse_secret(wrong)) not in shown
    assert producer.secret not in shown


def test_a_malformed_secret_is_refused_without_echoing_it() -> None:
    almost = "shs_" + "A" * 42 + "!"
    with pytest.raises(ValueError, match="43 base64url") as info:
        ProducerClient("127.0.0.1:1", uuid.uuid4(), almost)
    assert almost not in str(info.value)


async def test_a_channel_passed_in_stays_open(backoffice_channel: grpc.aio.Channel, producer: KeyCredentials) -> None:
    client = client_for(backoffice_channel, producer)
    await client.submit_quotes([make_quote("XAUUSD", "2034.10", "2034.30")])
    await client.close()
    with pytest.raises(RuntimeError, match="closed"):
        await client.submit_quotes([])
    async with client_for(backoffice_channel, producer) as another:  # the channel itself still works
        response = await another.submit_quotes([make_quote("XAUUSD", "2034.10", "2034.30")])
    assert response.accepted_count == 1
    assert backoffice_channel.get_state() != grpc.ChannelConnectivity.SHUTDOWN


# ---------------------------------------------------------------------------------- the bytes and the retries


async def test_the_signature_covers_the_bytes_sent_and_each_attempt_is_fresh(
    proxy: tuple[FlakyProxy, str], producer: KeyCredentials
) -> None:
    """Checked on what actually crossed the wire: every attempt verifies over its own received bytes."""
    handler, target = proxy
    handler.always = "unavailable"
    client = client_for(target, producer, retry=RetryPolicy(max_attempts=3))
    with pytest.raises(ProducerCallError):
        await client.submit_signal("XAUUSD", "buy", **XAU, payload={"k": "v"})
    with pytest.raises(ProducerCallError):
        await client.cancel_signal(uuid.uuid4(), "why not")
    with pytest.raises(ProducerCallError):
        await client.submit_quotes([make_quote("XAUUSD", "1", "2")])
    await client.close()
    assert [s.method for s in handler.seen] == [SUBMIT_SIGNAL] * 3 + [CANCEL_SIGNAL] * 3 + [SUBMIT_QUOTES] * 3
    for seen in handler.seen:
        assert_signed_over_the_bytes_sent(seen, producer)
    nonces = [s.nonce for s in handler.seen]
    assert len(set(nonces)) == len(nonces)
    for group in (handler.seen[0:3], handler.seen[3:6]):
        assert len({s.body for s in group}) == 1  # one serialisation, resent byte for byte
        assert len({s.metadata["x-request-id"] for s in group}) == 1
    submitted = pb.SubmitSignalRequest.FromString(handler.seen[0].body)
    assert (submitted.entry_price, submitted.stop_loss, submitted.take_profit) == ("2034.15", "2020", "2050")
    assert handler.seen[0].metadata["x-request-id"] == submitted.request_id


async def test_unavailable_is_retried_under_one_request_id_and_makes_one_signal(
    proxy: tuple[FlakyProxy, str], producer: KeyCredentials, res: Resources
) -> None:
    """The second fault lets the back office store the signal and loses its answer: the retry must not
    store another."""
    handler, target = proxy
    handler.faults = ["unavailable", "lost"]
    sleep = RecordingSleep()
    async with client_for(target, producer, sleep=sleep) as client:
        signal = await client.submit_signal("XAUUSD", "buy", **XAU)
    assert len(handler.seen) == 3 and handler.forwarded == 2 and len(sleep.delays) == 2
    assert len({s.body for s in handler.seen}) == 1
    assert len({s.nonce for s in handler.seen}) == 3
    request = pb.SubmitSignalRequest.FromString(handler.seen[0].body)
    assert signal.request_id == request.request_id
    for seen in handler.seen:
        assert_signed_over_the_bytes_sent(seen, producer)
    stored = await signals_of(res, producer)
    assert [str(s.id) for s in stored] == [signal.id]


async def test_load_is_retried_but_a_used_up_quota_is_not(
    proxy: tuple[FlakyProxy, str], producer: KeyCredentials, res: Resources
) -> None:
    """RESOURCE_EXHAUSTED for the caller's or the server's calls in flight passes with time: retried. One
    for a quota (any other reason) is raised at once."""
    handler, target = proxy
    handler.faults = ["busy", "at_capacity"]
    async with client_for(target, producer, sleep=RecordingSleep()) as client:
        signal = await client.submit_signal("XAUUSD", "buy", **XAU)
    assert len(handler.seen) == 3 and [str(s.id) for s in await signals_of(res, producer)] == [signal.id]
    handler.faults = ["quota"]
    async with client_for(target, producer, sleep=RecordingSleep()) as client:
        with pytest.raises(ProducerCallError) as failed:
            await client.submit_signal("XAUUSD", "buy", **XAU)
    assert (failed.value.code, failed.value.reason, failed.value.attempts) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "SUBSCRIPTION_LIMIT",
        1,
    )


async def test_deadline_exceeded_is_retried_and_makes_one_signal(
    proxy: tuple[FlakyProxy, str], producer: KeyCredentials, res: Resources
) -> None:
    handler, target = proxy
    handler.faults = ["stall", "stall_after"]  # the second reaches the back office, then times out
    sleep = RecordingSleep()
    async with client_for(target, producer, sleep=sleep, deadline_seconds=0.5) as client:
        signal = await asyncio.wait_for(client.submit_signal("XAUUSD", "buy", **XAU), timeout=10)
    assert len(handler.seen) == 3 and handler.forwarded == 2 and len(sleep.delays) == 2
    assert len({s.body for s in handler.seen}) == 1 and len({s.nonce for s in handler.seen}) == 3
    stored = await signals_of(res, producer)
    assert [str(s.id) for s in stored] == [signal.id]


async def test_every_attempt_carries_the_deadline(proxy: tuple[FlakyProxy, str], producer: KeyCredentials) -> None:
    handler, target = proxy
    handler.always = "stall"
    async with client_for(target, producer, deadline_seconds=1.0, retry=RetryPolicy(max_attempts=3)) as client:
        with pytest.raises(ProducerCallError) as info:  # wait_for: a call without a deadline fails, not hangs
            await asyncio.wait_for(client.submit_quotes([make_quote("XAUUSD", "1", "2")]), timeout=20)
    assert (info.value.code, info.value.attempts) == (grpc.StatusCode.DEADLINE_EXCEEDED, 3)
    assert handler.seen  # every attempt that reached the server carried the deadline
    for seen in handler.seen:
        assert seen.time_remaining is not None and 0 < seen.time_remaining <= 1.05


async def test_a_non_retryable_error_is_raised_at_once(
    proxy: tuple[FlakyProxy, str], producer: KeyCredentials, res: Resources
) -> None:
    handler, target = proxy
    sleep = RecordingSleep()
    async with client_for(target, producer, sleep=sleep) as client:
        with pytest.raises(ProducerCallError) as info:
            await client.submit_signal("xau usd", "buy", **XAU)
    assert (info.value.code, info.value.reason, info.value.attempts) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        1,
    )
    assert "instrument" in info.value.violations
    assert len(handler.seen) == 1 and sleep.delays == []
    assert await signals_of(res, producer) == []


async def test_retries_give_up_after_max_attempts(
    proxy: tuple[FlakyProxy, str], producer: KeyCredentials, res: Resources
) -> None:
    handler, target = proxy
    handler.always = "unavailable"
    sleep = RecordingSleep()
    async with client_for(target, producer, sleep=sleep, random_source=lambda: 0.5) as client:
        with pytest.raises(ProducerCallError) as info:
            await client.submit_signal("XAUUSD", "buy", **XAU)
    assert (info.value.code, info.value.attempts) == (grpc.StatusCode.UNAVAILABLE, 5)
    assert "after 5 attempts" in str(info.value)
    assert len(handler.seen) == 5 and handler.forwarded == 0
    assert sleep.delays == pytest.approx([0.05, 0.1, 0.2, 0.4])  # half of 0.1, 0.2, 0.4, 0.8
    assert await signals_of(res, producer) == []


async def test_backoff_is_jittered_within_the_exponential_ceiling(
    proxy: tuple[FlakyProxy, str], producer: KeyCredentials
) -> None:
    handler, target = proxy
    handler.always = "unavailable"
    policy = RetryPolicy(max_attempts=8, initial_backoff_seconds=0.1, multiplier=2, max_backoff_seconds=1.0)
    sleep = RecordingSleep()
    draws = random.Random(7)
    async with client_for(target, producer, sleep=sleep, retry=policy, random_source=draws.random) as client:
        with pytest.raises(ProducerCallError):
            await client.submit_quotes([make_quote("XAUUSD", "1", "2")])
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    assert len(sleep.delays) == 7
    assert all(0 <= d <= c for d, c in zip(sleep.delays, ceilings, strict=True))
    assert len(set(sleep.delays)) == 7  # jittered, not a fixed schedule
    expected = random.Random(7)
    assert sleep.delays == pytest.approx([c * expected.random() for c in ceilings])


def test_retry_policy_ceiling_grows_exponentially_and_is_capped() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.initial_backoff_seconds, policy.multiplier, policy.max_backoff_seconds) == (
        5,
        0.1,
        2.0,
        2.0,
    )
    assert [policy.ceiling(n) for n in range(1, 8)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0])
    assert policy.ceiling(10_000) == 2.0
    assert policy.delay(3, 0.0) == 0.0
    assert policy.delay(3, 0.999) == pytest.approx(0.3996)
    draws = random.Random(1)
    for n in range(1, 50):
        assert 0 <= policy.delay(n, draws.random()) <= min(2.0, 0.1 * 2 ** (n - 1))
    with pytest.raises(ValueError, match="at least 1"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(AttributeError):
        policy.max_attempts = 9  # type: ignore[misc]


# ---------------------------------------------------------------------------------- building requests


def test_decimals_are_sent_as_plain_decimal_strings() -> None:
    request = submit_signal_request(
        "XAUUSD", "BUY", entry_price=Decimal("2.03415E+3"), stop_loss="2020.00", take_profit=2050
    )
    assert (request.entry_price, request.stop_loss, request.take_profit) == ("2034.15", "2020.00", "2050")
    assert decimal_string(Decimal("1E-7"), "x") == "0.0000001"
    with pytest.raises(TypeError, match="entry_price"):
        submit_signal_request("XAUUSD", "buy", entry_price=2034.15)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stop_loss"):
        submit_signal_request("XAUUSD", "buy", stop_loss="twenty")
    with pytest.raises(ValueError, match="finite"):
        decimal_string("NaN", "bid")


def test_request_defaults() -> None:
    before = datetime.now(UTC)
    request = submit_signal_request("XAUUSD", common_pb2.SIDE_SELL, expire_time=timedelta(seconds=30))
    assert uuid.UUID(request.request_id).version == 4
    assert request.side == common_pb2.SIDE_SELL
    assert before - timedelta(seconds=1) <= request.signal_time.ToDatetime(tzinfo=UTC) <= datetime.now(UTC)
    assert request.expire_time.ToSeconds() - request.signal_time.ToSeconds() == 30
    assert not request.entry_price and not request.HasField("payload")
    assert submit_signal_request("XAUUSD", "buy").request_id != request.request_id
    with pytest.raises(ValueError, match="side"):
        submit_signal_request("XAUUSD", "hold")
    with pytest.raises(ValueError, match="timezone"):
        submit_signal_request("XAUUSD", "buy", signal_time=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="UUID"):
        submit_signal_request("XAUUSD", "buy", request_id="not-a-uuid")


async def test_a_misspelt_signal_option_is_a_type_error_as_a_parameter_would_be() -> None:
    with pytest.raises(TypeError, match="'stoploss'"):
        submit_signal_request("XAUUSD", "buy", stoploss="2020")  # type: ignore[call-arg]
    client = ProducerClient("127.0.0.1:1", str(uuid.uuid4()), "shs_" + "A" * 43)
    try:
        with pytest.raises(TypeError, match=r"submit_signal\(\) .* 'stoploss'"):
            await client.submit_signal("XAUUSD", "buy", stoploss="2020")  # type: ignore[call-arg]
    finally:
        await client.close()


def test_channel_keepalive_stays_inside_what_the_server_permits(res: Resources) -> None:
    from backoffice.platform.serving import server_options

    client = dict(channel_options(RetryPolicy()))
    server = dict(server_options(res.settings))
    assert client["grpc.keepalive_time_ms"] >= server["grpc.http2.min_ping_interval_without_data_ms"]
    assert client["grpc.keepalive_permit_without_calls"] <= server["grpc.keepalive_permit_without_calls"]
    assert client["grpc.max_reconnect_backoff_ms"] == 2000  # on the scale of the retry policy, not 120 s
