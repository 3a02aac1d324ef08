"""The terms of the affiliate program, from the settings: per-lot rates tiered by monthly volume, the hold
period, the payout minimum and the currency, and the one place a commission is priced and rounded.

Pricing follows introducing-broker rebates: a fill earns ``lots x rate`` in the currency, where the rate
is the tier the affiliate's referred users' lots this calendar month (UTC) have reached. Tiers are
marginal, like tax brackets: a fill that crosses a tier boundary earns the lower rate on the lots below
the boundary and the higher rate on the rest, so a month's total does not depend on how its lots were
split into fills. The exact product (computed with ``decimal``; an inexact step raises) is rounded
once, to the cent, half to even (banker's rounding: over many small fills, ties round up as often as
down).
"""

from __future__ import annotations

import decimal
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from backoffice.platform.config import Settings

CENT = Decimal("0.01")
ZERO = Decimal(0)


@dataclass(frozen=True)
class Tier:
    from_lots: Decimal  # the monthly volume at which this rate starts
    rate: Decimal  # per lot


@dataclass(frozen=True)
class Price:
    """What one fill earns, and how: the month's lots before it and the lots it put in each tier."""

    amount: Decimal
    month_lots_before: Decimal
    parts: tuple[tuple[Tier, Decimal], ...]

    def as_json(self) -> dict[str, object]:
        return {
            "month_lots_before": str(self.month_lots_before),
            "tiers": [
                {"from_lots": str(tier.from_lots), "rate": str(tier.rate), "lots": str(lots)}
                for tier, lots in self.parts
            ],
        }


@dataclass(frozen=True)
class Program:
    tiers: tuple[Tier, ...]
    hold: timedelta
    payout_minimum: Decimal
    currency: str
    public_url: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Program:
        return cls(
            tiers=tuple(Tier(start, rate) for start, rate in settings.affiliate_tiers),
            hold=timedelta(days=settings.affiliate_hold_days),
            payout_minimum=settings.affiliate_payout_minimum,
            currency=settings.affiliate_currency,
            public_url=settings.public_url,
        )

    def price(self, month_lots_before: Decimal, lots: Decimal) -> Price:
        """What a fill of ``lots`` earns when the month's lots so far are ``month_lots_before``."""
        return price(self.tiers, month_lots_before, lots)

    def referral_link(self, referral_code: str) -> str:
        return f"{self.public_url}/signup?ref={referral_code}"


def price(tiers: Sequence[Tier], month_lots_before: Decimal, lots: Decimal) -> Price:
    """Split ``lots`` over the tiers from ``month_lots_before`` on, sum lots x rate exactly, round once."""
    with decimal.localcontext() as context:
        context.prec = 100  # far beyond any product of two bounded decimals: every step below is exact
        context.traps[decimal.Inexact] = True
        parts: list[tuple[Tier, Decimal]] = []
        position, end = month_lots_before, month_lots_before + lots
        for index, tier in enumerate(tiers):
            upper = tiers[index + 1].from_lots if index + 1 < len(tiers) else None
            if upper is not None and upper <= position:
                continue
            take = end - position if upper is None or end <= upper else upper - position
            if take > 0:
                parts.append((tier, take))
                position += take
            if position >= end:
                break
        exact = sum((tier.rate * part for tier, part in parts), ZERO)
    amount = exact.quantize(CENT, rounding=ROUND_HALF_EVEN, context=decimal.Context(prec=100))  # the one rounding
    return Price(amount, month_lots_before, tuple(parts))


def month_of(moment: datetime) -> date:
    """The first day of ``moment``'s calendar month, in UTC: the month whose volume sets the tier."""
    utc = moment.astimezone(UTC)
    return date(utc.year, utc.month, 1)
