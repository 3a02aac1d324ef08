"""What an affiliate has earned: referral counts, lots, the balances (read from the ledger), and totals by
calendar month."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from backoffice.affiliates import ledger, referrals
from backoffice.models import Commission, CommissionStatus, Referral
from backoffice.platform.auth import Caller

MONTHS_SHOWN = 24


@dataclass(frozen=True)
class Month:
    month: date
    lots: Decimal
    commission: Decimal  # net of reversed commissions
    fills: int


@dataclass(frozen=True)
class Stats:
    affiliate_id: uuid.UUID
    referrals: int
    active_referrals: int  # referred users with at least one fill that earned a live commission
    lots: Decimal
    balances: ledger.Balances
    months: tuple[Month, ...]  # newest first, at most MONTHS_SHOWN


async def affiliate_stats(session: AsyncSession, caller: Caller, affiliate_id: uuid.UUID | None) -> Stats:
    """The affiliate's figures (a user's own; an admin names any). Reversed commissions count nowhere."""
    affiliate = await referrals.affiliate_of(session, caller, affiliate_id)
    referral_count = await session.scalar(
        select(func.count()).select_from(Referral).where(Referral.affiliate_id == affiliate.id)
    )
    live = (Commission.affiliate_id == affiliate.id, Commission.status != CommissionStatus.VOIDED)
    active, lots = (
        await session.execute(
            select(func.count(Commission.referred_user_id.distinct()), func.sum(Commission.lots)).where(*live)
        )
    ).one()
    months = await session.execute(
        select(Commission.month, func.sum(Commission.lots), func.sum(Commission.amount), func.count())
        .where(*live)
        .group_by(Commission.month)
        .order_by(Commission.month.desc())
        .limit(MONTHS_SHOWN)
    )
    return Stats(
        affiliate_id=affiliate.id,
        referrals=referral_count or 0,
        active_referrals=active,
        lots=lots or Decimal(0),
        balances=await ledger.balances(session, affiliate.id),
        months=tuple(Month(*row) for row in months),
    )
