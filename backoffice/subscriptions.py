"""Users' subscriptions to producers' signals."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from backoffice import accounts, audit
from backoffice.models import Producer, ProducerStatus, SizingMode, Subscription, SubscriptionMode, SubscriptionStatus
from backoffice.platform import paging
from backoffice.platform.auth import Caller
from backoffice.signals import INSTRUMENT_RE
from signalhub.protocol.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

MAX_INSTRUMENTS = 200
# An AUTO subscription that names no sizing trades one micro lot (0.01, the smallest volume most brokers
# accept), fitted to each symbol's volume limits like any other size: the least a rule can risk.
DEFAULT_AUTO_SIZING = (SizingMode.FIXED_VOLUME, Decimal("0.01"))


@dataclass(frozen=True)
class SubscriptionTerms:
    """What a user asks for. ``sizing`` None: for MANUAL, every approval names its volume; for AUTO,
    ``DEFAULT_AUTO_SIZING``."""

    producer_id: uuid.UUID
    mode: SubscriptionMode
    sizing: SizingMode | None
    sizing_value: Decimal | None
    max_volume: Decimal | None
    instruments: tuple[str, ...]

    def with_default_sizing(self) -> SubscriptionTerms:
        if self.sizing is not None or self.mode is not SubscriptionMode.AUTO:
            return self
        sizing, value = DEFAULT_AUTO_SIZING
        return replace(self, sizing=sizing, sizing_value=value)


def validate_instruments(instruments: Sequence[str], field: str = "instruments") -> tuple[str, ...]:
    if len(instruments) > MAX_INSTRUMENTS:
        raise InvalidArgument([(field, f"at most {MAX_INSTRUMENTS} instruments")])
    bad = [
        (f"{field}[{i}]", "must match ^[A-Z0-9._-]{2,20}$")
        for i, v in enumerate(instruments)
        if not INSTRUMENT_RE.match(v)
    ]
    if bad:
        raise InvalidArgument(bad)
    return tuple(dict.fromkeys(instruments))


async def subscribe(
    session: AsyncSession, caller: Caller, terms: SubscriptionTerms, request_id: str, *, cap: int | None = None
) -> Subscription:
    """Subscribe the caller to an active producer on ``terms`` (AUTO without sizing gets the default rule).
    One active subscription per producer: a second is ALREADY_EXISTS, caught on the partial unique index
    inside a savepoint so the caller's transaction survives. Once the caller holds ``cap`` ACTIVE
    subscriptions, one more is RESOURCE_EXHAUSTED (None: no cap)."""
    producer = await session.get(Producer, terms.producer_id)
    if producer is None:
        raise NotFound("producer")
    if producer.status is ProducerStatus.REVOKED:
        raise FailedPrecondition("the producer is revoked", reason="PRODUCER_REVOKED")
    active = (
        select(func.count())
        .select_from(Subscription)
        .where(Subscription.user_id == caller.id, Subscription.status == SubscriptionStatus.ACTIVE)
    )
    await accounts.enforce_user_cap(
        session,
        caller.id,
        cap,
        active,
        what="active subscriptions; unsubscribe from one first",
        quota="subscriptions_per_user",
        reason="SUBSCRIPTION_LIMIT",
    )
    terms = terms.with_default_sizing()
    subscription = Subscription(
        id=uuid.uuid4(),
        user_id=caller.id,
        producer_id=terms.producer_id,
        mode=terms.mode,
        sizing_mode=terms.sizing,
        sizing_value=terms.sizing_value,
        max_volume=terms.max_volume,
        instruments=list(terms.instruments),
        status=SubscriptionStatus.ACTIVE,
    )
    try:
        async with session.begin_nested():
            session.add(subscription)
            await session.flush()
    except IntegrityError:
        raise AlreadyExists(
            "an active subscription to this producer exists; unsubscribe first", reason="ALREADY_SUBSCRIBED"
        ) from None
    audit.record(
        session,
        caller,
        "Subscribe",
        "subscription",
        subscription.id,
        details={
            "producer_id": str(terms.producer_id),
            "mode": terms.mode.value,
            "sizing": terms.sizing.value if terms.sizing else None,
        },
        request_id=request_id or None,
    )
    return subscription


async def _own(session: AsyncSession, caller: Caller, subscription_id: uuid.UUID) -> Subscription:
    subscription = await session.get(Subscription, subscription_id, with_for_update=True)
    if subscription is None or (subscription.user_id != caller.id and not caller.is_admin):
        raise NotFound("subscription")
    return subscription


async def unsubscribe(session: AsyncSession, caller: Caller, subscription_id: uuid.UUID) -> Subscription:
    subscription = await _own(session, caller, subscription_id)
    if subscription.status is SubscriptionStatus.ACTIVE:
        subscription.status = SubscriptionStatus.UNSUBSCRIBED
        subscription.unsubscribed_at = datetime.now(UTC)
        audit.record(session, caller, "Unsubscribe", "subscription", subscription.id)
    return subscription


async def list_subscriptions(
    session: AsyncSession,
    caller: Caller,
    *,
    producer_id: uuid.UUID | None,
    status: SubscriptionStatus | None,
    page: paging.PageRequest,
) -> tuple[list[Subscription], str]:
    query = select(Subscription)
    if not caller.is_admin:
        query = query.where(Subscription.user_id == caller.id)
    if producer_id is not None:
        query = query.where(Subscription.producer_id == producer_id)
    if status is not None:
        query = query.where(Subscription.status == status)
    return await paging.fetch(session, query, Subscription, page, filters=[producer_id, status])
