"""Volume sizing rules, one per mode, with rounding, caps and the minimum."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from backoffice.devices.hello import Hello
from backoffice.models import SizingMode
from backoffice.sizing import Rule, size
from tests.conftest import GOLD_SPEC

HELLO = {
    "balance": "10000",
    "equity": "9500",
    "symbols": {"GOLD.m": GOLD_SPEC},
}
ACCOUNT = Hello.from_json(HELLO)


def _size(rule: Rule, account: Hello = ACCOUNT, symbol: str = "GOLD.m") -> D | None:
    return size(rule, account, symbol, entry_price=None, stop_loss=None).volume


def test_fixed_volume_is_rounded_down_to_the_step() -> None:
    assert _size(Rule(SizingMode.FIXED_VOLUME, D("0.129"), None)) == D("0.12")


def test_balance_ratio() -> None:
    assert _size(Rule(SizingMode.BALANCE_RATIO, D("0.00001"), None)) == D("0.10")


def test_risk_percent_from_equity_and_stop_distance() -> None:
    # 1% of 9500 = 95 at risk; 20.00 to the stop = 2000 ticks of 1 per lot = 2000 per lot -> 0.0475 -> 0.04
    rule = Rule(SizingMode.RISK_PERCENT, D("1"), None)
    sized = size(rule, ACCOUNT, "GOLD.m", entry_price=D("2034.00"), stop_loss=D("2014.00"))
    assert sized.volume == D("0.04")


def test_risk_percent_without_stop_is_skipped_with_reason() -> None:
    sized = size(Rule(SizingMode.RISK_PERCENT, D("1"), None), ACCOUNT, "GOLD.m", entry_price=D("2034"), stop_loss=None)
    assert sized.volume is None and "stop_loss" in (sized.reason or "")


def test_caps_by_max_volume_and_symbol_maximum() -> None:
    rule = Rule(SizingMode.FIXED_VOLUME, D("80"), D("60"))
    assert size(rule, ACCOUNT, "GOLD.m", entry_price=None, stop_loss=None).volume == D("50.00")
    capped = Rule(SizingMode.FIXED_VOLUME, D("5"), D("1.5"))
    assert size(capped, ACCOUNT, "GOLD.m", entry_price=None, stop_loss=None).volume == D("1.50")


def test_below_minimum_is_skipped() -> None:
    sized = size(Rule(SizingMode.FIXED_VOLUME, D("0.004"), None), ACCOUNT, "GOLD.m", entry_price=None, stop_loss=None)
    assert sized.volume is None and "minimum 0.01" in (sized.reason or "")


def test_override_is_still_fitted() -> None:
    rule = Rule(SizingMode.BALANCE_RATIO, D("1"), D("0.5"))
    assert size(rule, ACCOUNT, "GOLD.m", entry_price=None, stop_loss=None, override=D("0.777")).volume == D("0.50")


@pytest.mark.parametrize("mode", [SizingMode.BALANCE_RATIO, SizingMode.RISK_PERCENT])
def test_no_hello_means_no_account_data(mode: SizingMode) -> None:
    sized = size(Rule(mode, D("1"), None), Hello.from_json(None), "GOLD.m", entry_price=D("2"), stop_loss=D("1"))
    assert sized.volume is None and "Hello" in (sized.reason or "")


def test_fixed_volume_without_symbol_spec_passes_as_given() -> None:
    assert _size(Rule(SizingMode.FIXED_VOLUME, D("0.10"), None), Hello.from_json(None), "X") == D("0.10")
