"""The program's terms from the settings (validated at start, one line per bad value) and its pricing rule:
marginal tiers, exact arithmetic, one rounding to the cent, half to even."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from backoffice.affiliates.program import Program, Tier, month_of
from backoffice.platform.config import ConfigError, Settings
from tests.backoffice.affiliates.support import PROGRAM


def test_the_default_program() -> None:
    program = Program.from_settings(Settings.from_env({}))
    assert [(t.from_lots, t.rate) for t in program.tiers] == [
        (Decimal(0), Decimal("5.00")),
        (Decimal(100), Decimal("7.00")),
        (Decimal(500), Decimal("10.00")),
    ]
    assert (program.hold, program.payout_minimum, program.currency) == (timedelta(days=30), Decimal("50.00"), "USD")
    assert program.price(Decimal("99.5"), Decimal(1)).amount == Decimal("6.00")  # 0.5 x 5.00 + 0.5 x 7.00


def test_settings_configure_the_program() -> None:
    settings = Settings.from_env(
        {
            "SIGNALHUB_AFFILIATE_TIERS": "0:2.5, 10:3.125",
            "SIGNALHUB_AFFILIATE_HOLD_DAYS": "0",
            "SIGNALHUB_AFFILIATE_PAYOUT_MINIMUM": "20.00",
            "SIGNALHUB_AFFILIATE_CURRENCY": "eur",
            "SIGNALHUB_PUBLIC_URL": "https://partners.example/",
        }
    )
    program = Program.from_settings(settings)
    assert program.tiers == (Tier(Decimal(0), Decimal("2.5")), Tier(Decimal(10), Decimal("3.125")))
    assert (program.hold, program.payout_minimum, program.currency) == (timedelta(0), Decimal("20.00"), "EUR")
    assert program.referral_link("abc") == "https://partners.example/signup?ref=abc"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AFFILIATE_TIERS", "5:1.00"),  # must start at 0 lots
        ("AFFILIATE_TIERS", "0:1.00,10:2.00,10:3.00"),  # must increase
        ("AFFILIATE_TIERS", "0:1e2"),  # plain decimals only
        ("AFFILIATE_TIERS", "0-1.00"),
        ("AFFILIATE_HOLD_DAYS", "-1"),
        ("AFFILIATE_PAYOUT_MINIMUM", "10.005"),  # whole cents
        ("AFFILIATE_PAYOUT_MINIMUM", "0"),
        ("AFFILIATE_CURRENCY", "DOLLARS"),
    ],
)
def test_bad_terms_are_named(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({f"SIGNALHUB_{name}": value})
    assert [p for p in info.value.problems if p.startswith(f"SIGNALHUB_{name}:")], info.value.problems


@pytest.mark.parametrize(
    ("before", "lots", "amount", "parts"),
    [
        ("0", "0.6", "3.00", [("0", "0.6")]),
        ("0.6", "0.6", "3.40", [("0", "0.4"), ("1", "0.2")]),  # crosses a boundary inside the fill
        ("0", "5", "42.00", [("0", "1"), ("1", "1"), ("2", "3")]),  # crosses two
        ("1", "0.5", "3.50", [("1", "0.5")]),  # exactly at a boundary: the higher tier
        ("0", "0.015", "0.08", [("0", "0.015")]),  # 0.075: half to even, up
        ("1", "0.015", "0.10", [("1", "0.015")]),  # 0.105: half to even, down
        ("0", "0.001", "0.00", [("0", "0.001")]),  # less than half a cent
    ],
)
def test_marginal_tiers_rounded_once(before: str, lots: str, amount: str, parts: list[tuple[str, str]]) -> None:
    price = PROGRAM.price(Decimal(before), Decimal(lots))
    assert price.amount == Decimal(amount) and str(price.amount) == amount
    assert [(str(tier.from_lots), str(part)) for tier, part in price.parts] == parts
    assert price.as_json()["month_lots_before"] == before


def test_a_months_total_does_not_depend_on_how_its_lots_were_split() -> None:
    whole = PROGRAM.price(Decimal(0), Decimal("3.4")).amount
    pieces, volume = Decimal(0), Decimal(0)
    for lots in ("0.3", "0.9", "0.8", "1.4"):
        pieces += PROGRAM.price(volume, Decimal(lots)).amount
        volume += Decimal(lots)
    assert whole == pieces == Decimal("26.00")


def test_the_month_is_the_utc_calendar_month() -> None:
    late = datetime(2031, 1, 31, 23, 30, tzinfo=timezone(timedelta(hours=-5)))  # 04:30 UTC on February 1st
    assert month_of(late) == date(2031, 2, 1)
    assert month_of(datetime(2031, 3, 1, tzinfo=UTC)) == date(2031, 3, 1)
