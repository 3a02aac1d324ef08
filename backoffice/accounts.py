"""Users, API tokens and producers."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import Select, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from backoffice import audit
from backoffice.affiliates import referrals
from backoffice.models import ActorType, ApiToken, Device, Producer, ProducerStatus, Role, User
from backoffice.platform import paging
from backoffice.platform.auth import Caller, new_api_token, require_admin
from backoffice.platform.text import validate_name
from backoffice.platform.vault import Binding, Vault
from signalhub.protocol import signing
from signalhub.protocol.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted

_EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{2,63}$")


def _system_or(caller: Caller | None) -> tuple[ActorType, uuid.UUID | None]:
    return (caller.kind, caller.id) if caller else (ActorType.SYSTEM, None)


async def enforce_user_cap(
    session: AsyncSession,
    user_id: uuid.UUID,
    cap: int | None,
    held: Select[int],
    *,
    what: str,
    quota: str,
    reason: str,
) -> None:
    """Refuse one more of ``what`` once ``user_id`` holds ``cap`` of them (``held`` counts them):
    RESOURCE_EXHAUSTED with ``reason`` and metadata naming the ``quota`` and its limit. Call it before the
    insert, in the same transaction: the user's row stays locked until that transaction ends, so concurrent
    creations for one user count one after another and never pass the cap together. ``cap`` None: no cap
    (the operator's own tools on the server; every RPC passes its setting)."""
    if cap is None:
        return
    # FOR NO KEY UPDATE: it queues behind itself, yet still lets other transactions insert rows that
    # reference the user (their foreign-key checks take FOR KEY SHARE, which it does not block).
    await session.execute(select(User.id).where(User.id == user_id).with_for_update(key_share=True))
    count = await session.scalar(held)
    if count is not None and count >= cap:
        raise ResourceExhausted(
            f"a user may hold at most {cap} {what}",
            reason=reason,
            metadata={"quota": quota, "limit": str(cap)},
        )


async def create_user(
    session: AsyncSession, *, email: str, role: Role, referral_code: str = "", created_by: Caller | None = None
) -> tuple[User, str]:
    """A new user and its first API token (shown once)."""
    normalised = email.strip().lower()
    violations = []
    if not _EMAIL_RE.match(normalised):
        violations.append(("email", "not an email address"))
    referrer, refused = (
        await referrals.find_referrer(session, referral_code, normalised) if referral_code else (None, "")
    )
    if refused:
        violations.append(("referral_code", refused))
    if violations:
        raise InvalidArgument(violations)
    user = User(id=uuid.uuid4(), email=normalised, role=role)
    try:
        async with session.begin_nested():  # the unique index decides, also between concurrent calls
            session.add(user)
            await session.flush()
    except IntegrityError:
        raise AlreadyExists("a user with this email exists", reason="EMAIL_TAKEN") from None
    if referrer is not None:
        await referrals.attribute(session, referrer, user.id)  # once and for ever
    _, shown = await create_api_token(session, user_id=user.id, name="initial", created_by=created_by)
    actor_type, actor_id = _system_or(created_by)
    audit.record(
        session,
        (actor_type, actor_id),
        "CreateUser",
        "user",
        user.id,
        details={"role": role.value, "referrer_affiliate_id": str(referrer.id) if referrer else ""},
    )
    return user, shown


async def create_api_token(
    session: AsyncSession, *, user_id: uuid.UUID, name: str, created_by: Caller | None = None, cap: int | None = None
) -> tuple[ApiToken, str]:
    """A new API token of ``user_id`` (shown once), refused once the user holds ``cap`` tokens that are
    not revoked (None: no cap)."""
    unrevoked = (
        select(func.count()).select_from(ApiToken).where(ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None))
    )
    await enforce_user_cap(
        session,
        user_id,
        cap,
        unrevoked,
        what="API tokens that are not revoked; revoke one first",
        quota="api_tokens_per_user",
        reason="API_TOKEN_LIMIT",
    )
    shown, token_hash = new_api_token()
    token = ApiToken(id=uuid.uuid4(), user_id=user_id, name=name, token_hash=token_hash)
    session.add(token)
    actor_type, actor_id = _system_or(created_by)
    audit.record(
        session,
        (actor_type, actor_id),
        "CreateApiToken",
        "api_token",
        token.id,
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
        (actor_type, actor_id),
        "CreateProducer",
        "producer",
        producer_id,
    )
    await session.flush()
    return producer, shown


async def revoke_api_token(session: AsyncSession, caller: Caller, token_id: uuid.UUID) -> ApiToken:
    """Revoke one of the caller's tokens (admins: anyone's); revoking twice changes nothing."""
    token = await session.get(ApiToken, token_id, with_for_update=True)
    if token is None or (token.user_id != caller.id and not caller.is_admin):
        raise NotFound("api_token")
    if token.revoked_at is None:
        token.revoked_at = datetime.now(UTC)
        audit.record(session, caller, "RevokeApiToken", "api_token", token.id)
    return token


async def _admin_producer(session: AsyncSession, caller: Caller, producer_id: uuid.UUID) -> Producer:
    require_admin(caller)
    producer = await session.get(Producer, producer_id, with_for_update=True)
    if producer is None:
        raise NotFound("producer")
    return producer


async def rotate_producer_secret(
    session: AsyncSession, vault: Vault, caller: Caller, producer_id: uuid.UUID, *, grace: timedelta, request_id: str
) -> tuple[Producer, str]:
    """A new secret (shown once); the previous one keeps verifying for ``grace``."""
    producer = await _admin_producer(session, caller, producer_id)
    if producer.status is ProducerStatus.REVOKED:
        raise FailedPrecondition("the producer is revoked", reason="PRODUCER_REVOKED")
    shown = rotate_secret(producer, vault, grace)
    audit.record(session, caller, "RotateProducerSecret", "producer", producer.id, request_id=request_id)
    return producer, shown


def rotate_secret(row: Producer | Device, vault: Vault, grace: timedelta) -> str:
    """Seal a new secret into ``row``, keeping the current one as the previous secret for ``grace``.

    One home for producers and devices: both sign with the same scheme and the same grace rule."""
    table, row_id = row.__tablename__, str(row.id)
    current = vault.open(row.secret_sealed, Binding(table, row_id, "secret_sealed"))
    shown, raw = signing.generate_secret()
    now = datetime.now(UTC)
    row.previous_secret_sealed = vault.seal(current, Binding(table, row_id, "previous_secret_sealed"))
    row.previous_secret_expires_at = now + grace
    row.secret_sealed = vault.seal(raw, Binding(table, row_id, "secret_sealed"))
    row.secret_rotated_at = now
    return shown


async def revoke_producer(session: AsyncSession, caller: Caller, producer_id: uuid.UUID) -> Producer:
    producer = await _admin_producer(session, caller, producer_id)
    if producer.status is not ProducerStatus.REVOKED:
        producer.status = ProducerStatus.REVOKED
        producer.revoked_at = datetime.now(UTC)
        audit.record(session, caller, "RevokeProducer", "producer", producer.id)
    return producer


async def list_producers(session: AsyncSession, caller: Caller, page: paging.PageRequest) -> tuple[list[Producer], str]:
    """Producers, newest first, one page: an admin sees every one, a user the ACTIVE ones (whom they may
    follow)."""
    query = select(Producer)
    if not caller.is_admin:
        query = query.where(Producer.status == ProducerStatus.ACTIVE)
    return await paging.fetch(session, query, Producer, page, filters=[caller.is_admin])


async def list_users(
    session: AsyncSession, caller: Caller, page: paging.PageRequest, *, email: str = ""
) -> tuple[list[tuple[User, uuid.UUID | None]], str]:
    """Users, newest first, one page, each with the affiliate that referred it (if any); only the one with
    ``email`` when given. Admin only."""
    require_admin(caller)
    wanted = email.strip().lower()
    query = select(User)
    if wanted:
        query = query.where(User.email == wanted)
    users, token = await paging.fetch(session, query, User, page, filters=[wanted])
    referrers = await referrals.referrers_of(session, [u.id for u in users])
    return [(user, referrers.get(user.id)) for user in users], token
