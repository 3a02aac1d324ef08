"""Signature verification against real Postgres and Redis: every failure reason, grace periods, nonces."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from sqlalchemy import select, update

from backoffice.bootstrap import Resources
from backoffice.models import ActorType, ApiToken, Device, DeviceStatus, Nonce, Producer, ProducerStatus
from backoffice.platform import db
from backoffice.platform.auth import KeyKind, SignatureVerifier, authenticate_token, bearer_token
from backoffice.platform.nonces import NonceStore
from backoffice.platform.vault import Binding
from signalhub.protocol import signing
from signalhub.protocol.errors import Unauthenticated
from signalhub.protocol.signing import AuthFailure, SignatureError
from tests.conftest import KeyCredentials, UserCredentials, rpc_failure

METHOD = "/signalhub.v1.SignalService/SubmitSignal"
BODY = b"\x0a\x04ABCD"


def signed(
    key: KeyCredentials, *, body: bytes = BODY, method: str = METHOD, **kw: object
) -> tuple[tuple[str, str], ...]:
    return signing.signed_metadata(signing.parse_secret(key.secret), method, str(key.id), body, **kw)  # type: ignore[arg-type]


async def expect(
    reason: AuthFailure, verifier: SignatureVerifier, kind: KeyKind, md: object, body: bytes = BODY
) -> None:
    with pytest.raises(SignatureError) as info:
        await verifier.verify(kind, METHOD, md, body)  # type: ignore[arg-type]
    assert info.value.reason is reason


async def test_valid_signature_identifies_producer(res: Resources, producer: KeyCredentials) -> None:
    key = await res.verifier.verify(KeyKind.PRODUCER, METHOD, signed(producer), BODY)
    assert key.id == producer.id and key.kind is ActorType.PRODUCER
    assert key.secret == signing.parse_secret(producer.secret)
    assert producer.secret not in repr(key)


async def test_replayed_nonce_is_refused(res: Resources, producer: KeyCredentials) -> None:
    md = signed(producer)
    await res.verifier.verify(KeyKind.PRODUCER, METHOD, md, BODY)
    await expect(AuthFailure.NONCE_REPLAYED, res.verifier, KeyKind.PRODUCER, md)


async def test_bad_signature_cannot_burn_a_nonce(res: Resources, producer: KeyCredentials) -> None:
    nonce = signing.new_nonce()
    forged = signing.signed_metadata(bytes(32), METHOD, str(producer.id), BODY, nonce=nonce)
    await expect(AuthFailure.SIGNATURE_INVALID, res.verifier, KeyKind.PRODUCER, forged)
    await res.verifier.verify(KeyKind.PRODUCER, METHOD, signed(producer, nonce=nonce), BODY)


async def test_tampered_body_is_invalid(res: Resources, producer: KeyCredentials) -> None:
    await expect(AuthFailure.SIGNATURE_INVALID, res.verifier, KeyKind.PRODUCER, signed(producer), BODY + b"x")


@pytest.mark.parametrize("offset", [-301, 301])
async def test_skewed_timestamp(res: Resources, producer: KeyCredentials, offset: int) -> None:
    md = signed(producer, timestamp=int(time.time()) + offset)
    await expect(AuthFailure.TIMESTAMP_SKEW, res.verifier, KeyKind.PRODUCER, md)


# Text int() or str.isdigit() accepts but the contract does not: signs, spaces, other scripts' digits, a
# length no clock reaches, nothing at all.
ODD_TIMESTAMPS = ["--5", "+5", "-5", " 5", "\u0663", "\uff15", "5" * 5_000, ""]


def with_timestamp(metadata: tuple[tuple[str, str], ...], timestamp: str) -> tuple[tuple[str, str], ...]:
    return tuple((key, timestamp if key == signing.HEADER_TIMESTAMP else value) for key, value in metadata)


@pytest.mark.parametrize("timestamp", ODD_TIMESTAMPS)
async def test_a_timestamp_not_in_ascii_digits_is_signature_invalid(
    res: Resources, producer: KeyCredentials, device: KeyCredentials, timestamp: str
) -> None:
    for kind, key in ((KeyKind.PRODUCER, producer), (KeyKind.DEVICE, device)):
        await expect(AuthFailure.SIGNATURE_INVALID, res.verifier, kind, with_timestamp(signed(key), timestamp))


@pytest.mark.parametrize("timestamp", [t for t in ODD_TIMESTAMPS if t.isascii()])
async def test_a_signed_call_with_such_a_timestamp_is_unauthenticated(
    backoffice_channel: grpc.aio.Channel, producer: KeyCredentials, timestamp: str
) -> None:
    """Through the server as sent (grpc's client sends only ASCII header text): UNAUTHENTICATED, never
    INTERNAL."""
    method = "/signalhub.v1.SignalService/SubmitSignal"
    metadata = with_timestamp(signed(producer, method=method), timestamp)
    submit: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = backoffice_channel.unary_unary(method)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await submit(BODY, metadata=metadata, timeout=10)
    failure = rpc_failure(info.value)
    assert (failure.code, failure.reason) == (grpc.StatusCode.UNAUTHENTICATED, "SIGNATURE_INVALID")


@pytest.mark.parametrize("timestamp", ["0", "1", "9" * 12])
async def test_a_well_formed_timestamp_out_of_the_window_is_skew(
    res: Resources, producer: KeyCredentials, timestamp: str
) -> None:
    skewed = with_timestamp(signed(producer), timestamp)
    await expect(AuthFailure.TIMESTAMP_SKEW, res.verifier, KeyKind.PRODUCER, skewed)


async def test_unknown_key_is_invalid(res: Resources) -> None:
    ghost = KeyCredentials(uuid.uuid4(), signing.generate_secret()[0])
    await expect(AuthFailure.SIGNATURE_INVALID, res.verifier, KeyKind.PRODUCER, signed(ghost))
    not_a_uuid = signing.signed_metadata(bytes(32), METHOD, "producer-7", BODY)
    await expect(AuthFailure.SIGNATURE_INVALID, res.verifier, KeyKind.PRODUCER, not_a_uuid)


async def test_device_key_does_not_sign_as_producer(res: Resources, device: KeyCredentials) -> None:
    await expect(AuthFailure.SIGNATURE_INVALID, res.verifier, KeyKind.PRODUCER, signed(device))
    assert (await res.verifier.verify(KeyKind.DEVICE, METHOD, signed(device), BODY)).id == device.id


async def test_revoked_key(res: Resources, producer: KeyCredentials, device: KeyCredentials) -> None:
    async with res.sessions.begin() as session:
        await session.execute(update(Producer).where(Producer.id == producer.id).values(status=ProducerStatus.REVOKED))
        await session.execute(update(Device).where(Device.id == device.id).values(status=DeviceStatus.REVOKED))
    await expect(AuthFailure.KEY_REVOKED, res.verifier, KeyKind.PRODUCER, signed(producer))
    await expect(AuthFailure.KEY_REVOKED, res.verifier, KeyKind.DEVICE, signed(device))
    # Without the secret, nobody learns that the key exists and is revoked.
    forged = signing.signed_metadata(bytes(32), METHOD, str(producer.id), BODY)
    await expect(AuthFailure.SIGNATURE_INVALID, res.verifier, KeyKind.PRODUCER, forged)


async def _rotate(res: Resources, producer: KeyCredentials, previous_valid_for: timedelta) -> KeyCredentials:
    shown, raw = signing.generate_secret()
    pid = str(producer.id)
    async with res.sessions.begin() as session:
        row = await session.get(Producer, producer.id)
        assert row is not None
        row.previous_secret_sealed = res.vault.seal(
            signing.parse_secret(producer.secret), Binding("producers", pid, "previous_secret_sealed")
        )
        row.previous_secret_expires_at = datetime.now(UTC) + previous_valid_for
        row.secret_sealed = res.vault.seal(raw, Binding("producers", pid, "secret_sealed"))
    return KeyCredentials(producer.id, shown)


async def test_old_secret_inside_grace_period(res: Resources, producer: KeyCredentials) -> None:
    new = await _rotate(res, producer, timedelta(hours=1))
    old_key = await res.verifier.verify(KeyKind.PRODUCER, METHOD, signed(producer), BODY)
    assert old_key.secret == signing.parse_secret(producer.secret)
    assert (await res.verifier.verify(KeyKind.PRODUCER, METHOD, signed(new), BODY)).secret == signing.parse_secret(
        new.secret
    )


async def test_old_secret_after_grace_period(res: Resources, producer: KeyCredentials) -> None:
    new = await _rotate(res, producer, timedelta(seconds=-1))
    await expect(AuthFailure.SIGNATURE_INVALID, res.verifier, KeyKind.PRODUCER, signed(producer))
    await res.verifier.verify(KeyKind.PRODUCER, METHOD, signed(new), BODY)


async def test_a_replay_is_refused_whatever_redis_forgets(res: Resources, producer: KeyCredentials) -> None:
    """Every nonce is in Postgres, the store every replica shares: a verifier of another process (its own
    store, as a replica cut off from Redis or one after Redis restarted empty would have) refuses the
    replay, with every Redis key of the old nonce scheme gone; a nonce past its TTL may come again."""
    md = signed(producer)
    await res.verifier.verify(KeyKind.PRODUCER, METHOD, md, BODY)
    async for key in res.redis.scan_iter(match="sh:nonce*"):
        await res.redis.delete(key)
    other = SignatureVerifier(res.sessions, res.vault, NonceStore(600), 300)
    await expect(AuthFailure.NONCE_REPLAYED, other, KeyKind.PRODUCER, md)
    nonce = dict(md)["x-sh-nonce"]
    async with res.sessions() as session:
        assert await session.scalar(select(Nonce.key_id).where(Nonce.nonce == nonce)) == str(producer.id)
    later = time.time() + 601
    store = NonceStore(600, clock=lambda: later)
    async with db.driver(res.sessions) as connection:
        assert await store.remember(connection, str(producer.id), nonce)  # expired: taken over
        assert not await store.remember(connection, str(producer.id), nonce)


async def test_a_nonce_check_never_fails_open(res: Resources, producer: KeyCredentials) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    dead_pg = create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:1/none", connect_args={"timeout": 1})
    verifier = SignatureVerifier(db.session_factory(dead_pg), res.vault, NonceStore(600), 300)
    with pytest.raises(ConnectionRefusedError):  # the interceptor answers it UNAVAILABLE
        await verifier.verify(KeyKind.PRODUCER, METHOD, signed(producer), BODY)
    await dead_pg.dispose()


async def test_bearer_token(res: Resources, user: UserCredentials) -> None:
    assert bearer_token([("authorization", f"Bearer {user.token}")]) == user.token
    with pytest.raises(Unauthenticated):
        bearer_token([("authorization", f"Basic {user.token}")])
    with pytest.raises(Unauthenticated):
        bearer_token([])
    caller = await authenticate_token(res.sessions, user.token)
    assert caller.id == user.id and caller.role is user.role
    async with res.sessions.begin() as session:
        await session.execute(update(ApiToken).where(ApiToken.user_id == user.id).values(revoked_at=datetime.now(UTC)))
    with pytest.raises(Unauthenticated):
        await authenticate_token(res.sessions, user.token)
    with pytest.raises(Unauthenticated):
        await authenticate_token(res.sessions, "sht_" + "A" * 43)


async def test_a_tokens_last_use_is_noted_at_most_once_a_minute(res: Resources, user: UserCredentials) -> None:
    async def last_used() -> datetime | None:
        async with res.sessions() as session:
            return await session.scalar(select(ApiToken.last_used_at).where(ApiToken.user_id == user.id))

    await authenticate_token(res.sessions, user.token)
    first = await last_used()
    assert first is not None and datetime.now(UTC) - first < timedelta(seconds=30)
    await authenticate_token(res.sessions, user.token)
    assert await last_used() == first  # within the minute: not written again
    long_ago = datetime.now(UTC) - timedelta(minutes=5)
    async with res.sessions.begin() as session:
        await session.execute(update(ApiToken).where(ApiToken.user_id == user.id).values(last_used_at=long_ago))
    await authenticate_token(res.sessions, user.token)
    noted = await last_used()
    assert noted is not None and noted > long_ago + timedelta(minutes=4)
