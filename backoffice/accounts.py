"""Users, API tokens and producers."""

from __future__ import annotations

import re
import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from backoffice import audit, signing
from backoffice.auth import Caller, new_api_token
from backoffice.errors import AlreadyExists, InvalidArgument
from backoffice.models import ActorType, ApiToken, Producer, ProducerStatus, Role, User
from backoffice.vault import Binding, Vault

_EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{2,63}$")
_NAME_MAX = 200


def _system_or(caller: Caller | None) -> tuple[ActorType, uuid.UUID | None]:
    return (caller.kind, caller.id) if caller else (ActorType.SYSTEM, None)


def validate_name(value: str, field: str) -> str:
    name = value.strip()
    if not name or len(name) > _NAME_MAX or not name.isprintable():
        raise InvalidArgument([(field, f"1-{_NAME_MAX} printable characters")])
    return name


async def create_user(
    session: AsyncSession, *, email: str, role: Role, created_by: Caller | None = None
) -> tuple[User, str]:
    """A new user and its first API token (shown once)."""
    normalised = email.strip().lower()
    if not _EMAIL_RE.match(normalised):
        raise InvalidArgument([("email", "not an email address")])
    if await session.scalar(select(User.id).where(User.email == normalised)) is not None:
        raise AlreadyExists("a user with this email exists", reason="EMAIL_TAKEN")
    user = User(id=uuid.uuid4(), email=normalised, role=role)
    session.add(user)
    await session.flush()
    _, shown = await create_api_token(session, user_id=user.id, name="initial", created_by=created_by)
    actor_type, actor_id = _system_or(created_by)
    audit.record(
        session,
        actor_type=actor_type,
        actor_id=actor_id,
        action="user.create",
        object_type="user",
        object_id=user.id,
        details={"role": role.value},
    )
    return user, shown


async def create_api_token(
    session: AsyncSession, *, user_id: uuid.UUID, name: str, created_by: Caller | None = None
) -> tuple[ApiToken, str]:
    shown, token_hash = new_api_token()
    token = ApiToken(id=uuid.uuid4(), user_id=user_id, name=name, token_hash=token_hash)
    session.add(token)
    actor_type, actor_id = _system_or(created_by)
    audit.record(
        session,
        actor_type=actor_type,
        actor_id=actor_id,
        action="api_token.create",
        object_type="api_token",
        object_id=token.id,
    )
    await session.flush()
    return token, shown


async def create_producer(
    session: AsyncSession, vault: Vault, *, name: str, created_by: Caller | None = None
) -> tuple[Producer, str]:
    """A new producer and its HMAC secret (shown once, sealed at rest)."""
    producer_id = uuid.uuid4()
    shown, raw = signing.generate_secret()
    producer = Producer(
        id=producer_id,
        name=validate_name(name, "name"),
        status=ProducerStatus.ACTIVE,
        created_by=created_by.id if created_by else None,
        secret_sealed=vault.seal(raw, Binding("producers", str(producer_id), "secret_sealed")),
    )
    session.add(producer)
    actor_type, actor_id = _system_or(created_by)
    audit.record(
        session,
        actor_type=actor_type,
        actor_id=actor_id,
        action="producer.create",
        object_type="producer",
        object_id=producer_id,
    )
    await session.flush()
    return producer, shown
