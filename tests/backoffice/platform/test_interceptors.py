"""Authentication and error mapping as a client sees them through the generated stubs."""

from __future__ import annotations

import time
import uuid

import asyncpg
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from backoffice.bootstrap import Resources
from backoffice.platform import db
from signalhub.protocol import signing
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import backoffice_pb2_grpc as rpc
from signalhub.v1 import common_pb2
from tests.conftest import KeyCredentials, RpcFailure, UserCredentials, make_user, rpc_failure, serving

SUBMIT = "/signalhub.v1.SignalService/SubmitSignal"


def _submit_request() -> pb.SubmitSignalRequest:
    now = Timestamp()
    now.GetCurrentTime()
    return pb.SubmitSignalRequest(
        request_id=str(uuid.uuid4()),
        instrument="XAUUSD",
        side=common_pb2.SIDE_BUY,
        entry_price="2034.15",
        signal_time=now,
    )


async def _call_raw(
    channel: grpc.aio.Channel, method: str, body: bytes, metadata: tuple[tuple[str, str], ...]
) -> bytes:
    call = channel.unary_unary(method)  # bytes in, bytes out: exactly what a signer signs
    result: bytes = await call(body, metadata=metadata, timeout=5)
    return result


def _signed(producer: KeyCredentials, body: bytes, *, timestamp: int | None = None) -> tuple[tuple[str, str], ...]:
    """SubmitSignal metadata for ``body``, signed with the producer's own secret."""
    secret = signing.parse_secret(producer.secret)
    return signing.signed_metadata(secret, SUBMIT, str(producer.id), body, timestamp=timestamp)


async def _refused(channel: grpc.aio.Channel, body: bytes, metadata: tuple[tuple[str, str], ...]) -> RpcFailure:
    """How the back office refuses this raw SubmitSignal (the call must fail)."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _call_raw(channel, SUBMIT, body, metadata)
    return rpc_failure(info.value)


async def test_bad_signature_is_unauthenticated_signature_invalid(
    backoffice_channel: grpc.aio.Channel, producer: KeyCredentials
) -> None:
    body = _submit_request().SerializeToString()
    md = signing.signed_metadata(bytes(32), SUBMIT, str(producer.id), body)
    failure = await _refused(backoffice_channel, body, md)
    assert (failure.code, failure.reason, failure.domain) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "SIGNATURE_INVALID",
        "signalhub.v1",
    )
    assert "request_id" in failure.metadata


async def test_missing_signature(backoffice_channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await rpc.SignalServiceStub(backoffice_channel).SubmitSignal(_submit_request(), timeout=5)
    assert rpc_failure(info.value).reason == "SIGNATURE_MISSING"


async def test_signature_covers_the_raw_bytes_sent(
    backoffice_channel: grpc.aio.Channel, producer: KeyCredentials
) -> None:
    """Bytes that parse to the same message but differ on the wire (an unknown field appended) must fail."""
    body = _submit_request().SerializeToString()
    md = _signed(producer, body)
    padded = body + b"\xf8\x3f\x01"  # field 1023, varint 1: ignored by the parser
    assert (await _refused(backoffice_channel, padded, md)).reason == "SIGNATURE_INVALID"


async def test_valid_signature_reaches_the_method(
    backoffice_channel: grpc.aio.Channel, producer: KeyCredentials
) -> None:
    body = _submit_request().SerializeToString()
    md = _signed(producer, body)
    signal = pb.Signal.FromString(await _call_raw(backoffice_channel, SUBMIT, body, md))
    assert signal.producer_id == str(producer.id)
    # The same signed request again is a replay, refused before the method runs.
    assert (await _refused(backoffice_channel, body, md)).reason == "NONCE_REPLAYED"


async def test_skewed_signature(backoffice_channel: grpc.aio.Channel, producer: KeyCredentials) -> None:
    body = _submit_request().SerializeToString()
    md = _signed(producer, body, timestamp=int(time.time()) - 301)
    assert (await _refused(backoffice_channel, body, md)).reason == "TIMESTAMP_SKEW"


async def test_signed_garbage_is_invalid_argument(
    backoffice_channel: grpc.aio.Channel, producer: KeyCredentials
) -> None:
    body = b"\xff\xff\xff"
    assert (await _refused(backoffice_channel, body, _signed(producer, body))).code == grpc.StatusCode.INVALID_ARGUMENT


async def test_bearer_token_required(backoffice_channel: grpc.aio.Channel, user: UserCredentials) -> None:
    stub = rpc.AccountServiceStub(backoffice_channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetCurrentUser(pb.GetCurrentUserRequest(), timeout=5)
    assert (rpc_failure(info.value).code, rpc_failure(info.value).reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "TOKEN_MISSING",
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetCurrentUser(
            pb.GetCurrentUserRequest(), metadata=(("authorization", "Bearer sht_nope"),), timeout=5
        )
    assert rpc_failure(info.value).reason == "TOKEN_INVALID"
    assert user.token not in str(info.value)


async def test_unimplemented_rpcs_say_so_with_details(res: Resources, user: UserCredentials) -> None:
    """A method its servicer does not have is still served, and answers UNIMPLEMENTED with details instead
    of pretending: shown with a servicer that has no methods, whatever the real ones implement today."""
    from backoffice.platform.interceptors import Auth, RpcInterceptor
    from backoffice.platform.registry import service_handler
    from backoffice.platform.serving import Server

    service = pb.DESCRIPTOR.services_by_name["PositionService"]
    interceptor = RpcInterceptor(
        policies={},
        default_policy=Auth.BEARER,
        sessions=res.sessions,
        verifier=None,
        max_in_flight=10,
        max_message_bytes=res.settings.max_message_bytes,
    )
    server = Server(res.settings, "127.0.0.1:0", [interceptor], [service.full_name])
    server.grpc.add_generic_rpc_handlers([service_handler(service, object())])
    async with serving(server), grpc.aio.insecure_channel(server.bound_address) as channel:
        stub = rpc.PositionServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ListPositions(pb.ListPositionsRequest(), metadata=user.metadata, timeout=5)
    failure = rpc_failure(info.value)
    assert (failure.code, failure.reason) == (grpc.StatusCode.UNIMPLEMENTED, "NOT_IMPLEMENTED")


async def test_admission_control_answers_resource_exhausted(res: Resources) -> None:
    from backoffice import bootstrap
    from backoffice.platform.config import Settings

    tight = Settings(**{**res.settings.__dict__, "max_concurrent_rpcs": 1})
    server = bootstrap.build_server(Resources(**{**res.__dict__, "settings": tight}))
    someone = await make_user(res)
    async with serving(server), grpc.aio.insecure_channel(server.bound_address) as channel:
        stub = rpc.AccountServiceStub(channel)
        calls = [
            stub.GetCurrentUser(pb.GetCurrentUserRequest(), metadata=someone.metadata, timeout=5) for _ in range(20)
        ]
        outcomes = []
        for call in calls:
            try:
                await call
                outcomes.append("ok")
            except grpc.aio.AioRpcError as error:
                outcomes.append(rpc_failure(error).code.name)
    assert "ok" in outcomes and "RESOURCE_EXHAUSTED" in outcomes


@pytest.mark.server_error_expected  # the mapping logs the gap at ERROR on purpose
async def test_a_value_postgres_refuses_is_invalid_argument_never_internal(res: Resources) -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    from backoffice.platform.interceptors import _domain_error
    from signalhub.protocol import errors

    with pytest.raises(DBAPIError) as refused:
        async with res.sessions() as session:
            await session.execute(text("SELECT 1 / 0"))  # SQLSTATE 22012, a real data exception
    error = _domain_error(refused.value, "/signalhub.v1.Test/Method")
    assert isinstance(error, errors.InvalidArgument) and error.reason == "VALUE_NOT_STORABLE"
    # The same refusal raised by asyncpg itself, on a path that skips SQLAlchemy (a signed submit).
    with pytest.raises(asyncpg.PostgresError) as raw:
        async with db.driver(res.sessions) as connection:
            await connection.fetchval("SELECT 1 / 0")
    error = _domain_error(raw.value, "/signalhub.v1.Test/Method")
    assert isinstance(error, errors.InvalidArgument) and error.reason == "VALUE_NOT_STORABLE"


async def test_a_database_that_is_not_yet_accepting_connections_is_unavailable_never_internal() -> None:
    """Postgres recovering after a crash refuses connections with SQLSTATE 57P03, which SQLAlchemy raises
    as a plain DBAPIError: the client is told UNAVAILABLE (retry), not INTERNAL. Found by the fault suite's
    Postgres restart."""
    import asyncpg
    from sqlalchemy.exc import DBAPIError

    from backoffice.platform.interceptors import _domain_error
    from signalhub.protocol import errors

    class _Refused(Exception):
        sqlstate = asyncpg.exceptions.CannotConnectNowError.sqlstate

    refused = DBAPIError("connect", None, _Refused("the database system is not yet accepting connections"))
    assert not isinstance(refused.orig, OSError) and not refused.connection_invalidated
    error = _domain_error(refused, "/signalhub.v1.Test/Method")
    assert isinstance(error, errors.Unavailable)


def test_a_lost_connection_raised_by_asyncpg_itself_is_unavailable_never_internal() -> None:
    """The hot paths that use asyncpg directly (a signed submit, a key lookup) see its own errors: a server
    going down and a connection gone are UNAVAILABLE, as through SQLAlchemy."""
    from backoffice.platform.interceptors import _domain_error
    from signalhub.protocol import errors

    for raised in (
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    ):
        assert isinstance(_domain_error(raised, "/signalhub.v1.Test/Method"), errors.Unavailable), raised


def test_a_lost_race_is_unavailable_to_retry_never_internal() -> None:
    """A deadlock or serialization failure (SQLSTATE class 40), through SQLAlchemy or from asyncpg itself,
    wrote nothing: the client is told to retry, with a reason apart from an outage's."""
    from sqlalchemy.exc import DBAPIError

    from backoffice.platform.interceptors import _domain_error
    from signalhub.protocol import errors

    deadlock = asyncpg.exceptions.DeadlockDetectedError("deadlock detected")
    for raised in (deadlock, DBAPIError("UPDATE", None, deadlock), asyncpg.exceptions.SerializationError("")):
        error = _domain_error(raised, "/signalhub.v1.Test/Method")
        assert isinstance(error, errors.Unavailable) and error.reason == "CONCURRENT_CHANGE", raised
