"""Who is calling: bearer API tokens for users and admins, SH1 signatures for producers and devices."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backoffice.models import ActorType, Device, DeviceStatus, Producer, ProducerStatus, Role
from backoffice.platform import db
from backoffice.platform.nonces import NonceStore
from backoffice.platform.vault import Binding, Vault
from signalhub.protocol import signing
from signalhub.protocol.errors import PermissionDenied, Unauthenticated
from signalhub.protocol.signing import AuthFailure, SignatureError

TOKEN_PREFIX = "sht_"  # noqa: S105 - a format marker, not a secret
AUTHORIZATION_HEADER = "authorization"
# last_used_at is a hint for people, not an audit trail: refresh it at most this often per token.
_LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class Caller:
    """The authenticated principal of one call."""

    kind: ActorType
    id: uuid.UUID
    role: Role | None = None

    @property
    def is_admin(self) -> bool:
        return self.kind is ActorType.USER and self.role is Role.ADMIN


def new_api_token() -> tuple[str, bytes]:
    """(the ``sht_`` token shown once, the hash that is stored)."""
    raw = secrets.token_bytes(32)
    shown = TOKEN_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    return shown, hash_api_token(shown)


def hash_api_token(shown: str) -> bytes:
    return hashlib.sha256(shown.encode("utf-8")).digest()


def bearer_token(metadata: Iterable[tuple[str, str | bytes]]) -> str:
    for key, value in metadata:
        if key == AUTHORIZATION_HEADER and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            break
    raise Unauthenticated("missing 'authorization: Bearer <api token>' metadata", reason="TOKEN_MISSING")


async def authenticate_token(sessions: async_sessionmaker[AsyncSession], token: str) -> Caller:
    """The user an API token belongs to (UNAUTHENTICATED when unknown or revoked), its last use noted at
    most once a minute: the driver's own SQL on the pooled asyncpg connection (no ORM session), on every
    call a person's tools make. The lookup only reads: a lock on api_tokens (a migration's, a token being
    created) holds up the minute's note of last use, never the call."""
    now = datetime.now(UTC)
    async with db.driver(sessions) as connection:
        row = await connection.fetchrow(_CALLER_LOOKUP, hash_api_token(token))
        if row is None:
            raise Unauthenticated("unknown or revoked API token", reason="TOKEN_INVALID")
        token_id, last_used_at, user_id, role = row
        if last_used_at is None or now - last_used_at > _LAST_USED_RESOLUTION:
            await connection.execute(_NOTE_USE, token_id, now)
    return Caller(ActorType.USER, user_id, Role(role))


_CALLER_LOOKUP = """
SELECT t.id, t.last_used_at, u.id, u.role
FROM api_tokens t JOIN users u ON u.id = t.user_id
WHERE t.token_hash = $1 AND t.revoked_at IS NULL
"""
_NOTE_USE = "UPDATE api_tokens SET last_used_at = $2 WHERE id = $1"


@dataclass(frozen=True)
class SignedKey:
    """A producer or device whose signature verified; ``secret`` is the one that matched."""

    kind: ActorType
    id: uuid.UUID
    secret: bytes

    def __repr__(self) -> str:
        return f"SignedKey(kind={self.kind.value}, id={self.id})"

    def caller(self) -> Caller:
        return Caller(self.kind, self.id)


class KeyKind(Enum):
    PRODUCER = (ActorType.PRODUCER, Producer, ProducerStatus.REVOKED)
    DEVICE = (ActorType.DEVICE, Device, DeviceStatus.REVOKED)


# A producer's or device's key (the table is one of KeyKind's, never input).
_KEY_LOOKUP = (
    "SELECT status, secret_sealed, previous_secret_sealed, previous_secret_expires_at FROM {table} WHERE id = $1"
)


class SignatureVerifier:
    """docs/contract.md's verification order: well-formed headers, timestamp within tolerance, signature over
    the raw bytes in constant time against the current and (inside its grace period) previous secret,
    and only then the nonce is recorded, so a bad signature can never burn one."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        vault: Vault,
        nonces: NonceStore,
        tolerance_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sessions = sessions
        self._vault = vault
        self._nonces = nonces
        self._tolerance = tolerance_seconds
        self._clock = clock

    async def verify(
        self, kind: KeyKind, method: str, metadata: Iterable[tuple[str, str | bytes]], body: bytes
    ) -> SignedKey:
        headers = signing.parse_headers(metadata)
        signing.check_timestamp(headers, self._clock(), self._tolerance)
        actor, model, revoked_status = kind.value
        try:
            key_uuid = uuid.UUID(headers.key_id)
        except ValueError:
            raise SignatureError(AuthFailure.SIGNATURE_INVALID, "signature does not verify") from None
        table = model.__tablename__
        # One checkout, no ORM, on every signed call: the key's lookup, then (verified) the nonce's record.
        async with db.driver(self._sessions) as connection:
            row = await connection.fetchrow(_KEY_LOOKUP.format(table=table), key_uuid)
            if row is None:
                # Unknown keys fail exactly like bad signatures, so key ids cannot be probed.
                raise SignatureError(AuthFailure.SIGNATURE_INVALID, "signature does not verify")
            candidates = self._candidate_secrets(table, key_uuid, row)
            matched = signing.match_secret(headers, method, body, candidates)
            if matched is None:
                raise SignatureError(AuthFailure.SIGNATURE_INVALID, "signature does not verify")
            if row["status"] == revoked_status.value:
                raise SignatureError(AuthFailure.KEY_REVOKED, f"this {actor.value.lower()} key is revoked")
            if not await self._nonces.remember(connection, headers.key_id, headers.nonce):
                raise SignatureError(AuthFailure.NONCE_REPLAYED, "nonce was already used")
        return SignedKey(actor, key_uuid, candidates[matched])

    def _candidate_secrets(self, table: str, key_id: uuid.UUID, row: Any) -> Sequence[bytes]:
        """The key's current secret, and its previous one while the rotation's grace period lasts."""
        found = [self._vault.open(row["secret_sealed"], Binding(table, str(key_id), "secret_sealed"))]
        expires = row["previous_secret_expires_at"]
        if row["previous_secret_sealed"] and expires is not None and expires.timestamp() > self._clock():
            binding = Binding(table, str(key_id), "previous_secret_sealed")
            found.append(self._vault.open(row["previous_secret_sealed"], binding))
        return found


def require_admin(caller: Caller) -> None:
    if not caller.is_admin:
        raise PermissionDenied("only an admin may do this", reason="ADMIN_ONLY")
