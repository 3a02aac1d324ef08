"""Affiliates and referrals: a user becomes an affiliate with an unguessable referral code, and a user
created with that code is attributed to the affiliate once and for ever.

Attribution happens only in ``accounts.create_user``, for the user being created, and is refused for
self-referral (the new user's mailbox is the affiliate's own: the same address once a ``+tag`` is
dropped from its local part and case is ignored) and for cycles (the affiliate was itself referred,
directly or down a chain, by the user being attributed). The referral row is never changed afterwards
(a trigger refuses UPDATE and DELETE).
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Select, func, literal, select
from sqlalchemy.dialects.postgresql import UUID, insert
from sqlalchemy.ext.asyncio import AsyncSession

from backoffice import audit
from backoffice.models import Affiliate, Commission, CommissionStatus, Referral, User
from backoffice.platform import paging
from backoffice.platform.auth import Caller
from backoffice.platform.db import any_id
from signalhub.protocol.errors import FailedPrecondition, NotFound

CODE_BYTES = 12  # 96 random bits: 16 base64url characters, unguessable and safe in a URL


def new_code() -> str:
    """A referral code that does not start with "-": people pass it after an option on a command line
    (``--referral-code CODE``), where a leading dash would read as another option."""
    while (code := secrets.token_urlsafe(CODE_BYTES)).startswith("-"):
        pass
    return code


async def register(session: AsyncSession, caller: Caller, *, request_id: str = "") -> Affiliate:
    """Make the caller an affiliate with a new referral code; one who already is one gets it back."""
    affiliate_id = await session.scalar(
        insert(Affiliate)
        .values(id=uuid.uuid4(), user_id=caller.id, referral_code=new_code())
        .on_conflict_do_nothing(index_elements=[Affiliate.user_id])
        .returning(Affiliate.id)
    )
    if affiliate_id is not None:
        audit.record(session, caller, "RegisterAffiliate", "affiliate", affiliate_id, request_id=request_id)
    return (await session.scalars(select(Affiliate).where(Affiliate.user_id == caller.id))).one()


@dataclass(frozen=True)
class Page:
    """Which page of a list, and whose: ``affiliate_id`` as ``affiliate_of`` reads it."""

    affiliate_id: uuid.UUID | None
    size: int
    token: str


async def page_of(
    session: AsyncSession, query: Select[Any], model: Any, page: Page, *filters: object
) -> tuple[list[Any], str]:
    """One page of ``query`` over ``model`` (its rows have ``created_at`` and ``id``), newest first."""
    return await paging.fetch(
        session, query, model, paging.PageRequest(page.size, page.token), filters=[page.affiliate_id, *filters]
    )


async def affiliate_of(session: AsyncSession, caller: Caller, affiliate_id: uuid.UUID | None = None) -> Affiliate:
    """The affiliate a call is about: ``affiliate_id`` when given (an admin may name any, a user only its
    own), else the caller's. Anything else is NOT_FOUND, exactly like an affiliate that does not exist."""
    query = select(Affiliate)
    if affiliate_id is not None:
        query = query.where(Affiliate.id == affiliate_id)
    if affiliate_id is None or not caller.is_admin:
        query = query.where(Affiliate.user_id == caller.id)
    affiliate = await session.scalar(query)
    if affiliate is None:
        raise NotFound("affiliate")
    return affiliate


async def find_referrer(session: AsyncSession, referral_code: str, email: str) -> tuple[Affiliate | None, str]:
    """The affiliate whose code a new user gave, or why it cannot refer this user (unknown code,
    self-referral); ``email`` is the new user's, normalised."""
    row = (
        await session.execute(
            select(Affiliate, User.email)
            .join(User, User.id == Affiliate.user_id)
            .where(Affiliate.referral_code == referral_code)
        )
    ).first()
    if row is None:
        return None, "unknown referral code"
    affiliate, affiliate_email = row
    if mailbox(affiliate_email) == mailbox(email):
        return None, "an affiliate cannot refer itself"
    return affiliate, ""


def mailbox(email: str) -> str:
    """The mailbox behind an address: case ignored, and a ``+tag`` dropped from the local part."""
    local, _, domain = email.strip().lower().rpartition("@")
    return f"{local.split('+', 1)[0]}@{domain}"


async def attribute(session: AsyncSession, affiliate: Affiliate, user_id: uuid.UUID) -> Referral:
    """Record that ``affiliate`` referred ``user_id``; refuses self-referral and cycles (FAILED_PRECONDITION)
    and a user already referred (the unique key on the referred user)."""
    if affiliate.user_id == user_id:
        raise FailedPrecondition("an affiliate cannot refer itself", reason="SELF_REFERRAL")
    # The affiliate's chain of referrers, upwards; UNION (not UNION ALL) ends even on a cycle.
    chain = select(literal(affiliate.user_id, UUID(as_uuid=True)).label("user_id")).cte("chain", recursive=True)
    chain = chain.union(
        select(Affiliate.user_id)
        .join(Referral, Referral.affiliate_id == Affiliate.id)
        .join(chain, Referral.referred_user_id == chain.c.user_id)
    )
    if await session.scalar(select(chain.c.user_id).where(chain.c.user_id == user_id).limit(1)) is not None:
        raise FailedPrecondition("the user already refers this affiliate, directly or not", reason="REFERRAL_CYCLE")
    referral = Referral(id=uuid.uuid4(), affiliate_id=affiliate.id, referred_user_id=user_id)
    session.add(referral)
    await session.flush()
    return referral


async def referrer_of(session: AsyncSession, user_id: uuid.UUID) -> uuid.UUID | None:
    """The affiliate that referred the user, if any."""
    return (await referrers_of(session, [user_id])).get(user_id)


async def referrers_of(session: AsyncSession, user_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
    """The affiliate that referred each of these users, for those referred."""
    if not user_ids:
        return {}
    rows = await session.execute(
        select(Referral.referred_user_id, Referral.affiliate_id).where(any_id(Referral.referred_user_id, user_ids))
    )
    return {user_id: affiliate_id for user_id, affiliate_id in rows}


@dataclass(frozen=True)
class ReferralView:
    referral: Referral
    commission_total: Decimal  # net of reversed commissions


async def list_referrals(session: AsyncSession, caller: Caller, page: Page) -> tuple[list[ReferralView], str]:
    """The affiliate's referrals, newest first, each with the commission earned on it so far."""
    affiliate = await affiliate_of(session, caller, page.affiliate_id)
    rows, token = await page_of(session, select(Referral).where(Referral.affiliate_id == affiliate.id), Referral, page)
    totals = dict(
        (
            await session.execute(
                select(Commission.referred_user_id, func.sum(Commission.amount))
                .where(
                    Commission.affiliate_id == affiliate.id,
                    Commission.status != CommissionStatus.VOIDED,
                    any_id(Commission.referred_user_id, [r.referred_user_id for r in rows]),
                )
                .group_by(Commission.referred_user_id)
            )
        ).all()
    )
    return [ReferralView(r, totals.get(r.referred_user_id, Decimal("0.00"))) for r in rows], token
