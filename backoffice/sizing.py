"""Per-device volume sizing from a subscription's rule and the device's last Hello.

The result is rounded down to the symbol's volume step, capped by the subscription's max_volume and the
symbol's volume_max, and skipped (with a reason a person can read) when it falls below volume_min.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal

from backoffice.devices.hello import Hello, SymbolSpec
from backoffice.models import SizingMode


@dataclass(frozen=True)
class Rule:
    mode: SizingMode
    value: Decimal
    max_volume: Decimal | None


@dataclass(frozen=True)
class Sized:
    """A tradable volume, or None with the reason it was skipped."""

    volume: Decimal | None
    reason: str | None = None


def size(
    rule: Rule,
    account: Hello,
    symbol: str,
    *,
    entry_price: Decimal | None,
    stop_loss: Decimal | None,
    override: Decimal | None = None,
) -> Sized:
    """The volume ``rule`` gives for ``symbol`` on the account of ``account`` (a device's last Hello), or
    None with a reason a person can read when the Hello lacks what the rule needs. ``override`` (an
    approval's own volume) replaces the rule but is still fitted to the symbol's limits."""
    spec = account.spec(symbol)
    if override is not None:
        raw = override
    elif rule.mode is SizingMode.FIXED_VOLUME:
        raw = rule.value
    elif rule.mode is SizingMode.BALANCE_RATIO:
        if account.balance is None:
            return Sized(None, "BALANCE_RATIO needs the balance from the device's Hello")
        raw = account.balance * rule.value
    else:
        if entry_price is None or stop_loss is None:
            return Sized(None, "RISK_PERCENT needs the signal's entry_price and stop_loss")
        if account.equity is None:
            return Sized(None, "RISK_PERCENT needs the equity from the device's Hello")
        if spec is None or not spec.tick_size or not spec.tick_value:
            return Sized(None, f"RISK_PERCENT needs tick_size and tick_value of {symbol} from the device's Hello")
        loss_per_lot = abs(entry_price - stop_loss) / spec.tick_size * spec.tick_value
        if loss_per_lot <= 0:
            return Sized(None, "entry_price equals stop_loss")
        raw = account.equity * rule.value / 100 / loss_per_lot
    return _fit(raw, rule.max_volume, spec, symbol)


def _fit(raw: Decimal, max_volume: Decimal | None, spec: SymbolSpec | None, symbol: str) -> Sized:
    volume = raw
    if max_volume is not None:
        volume = min(volume, max_volume)
    if spec is not None and spec.volume_max:
        volume = min(volume, spec.volume_max)
    if spec is not None and spec.volume_step:
        volume = (volume / spec.volume_step).to_integral_value(rounding=ROUND_DOWN) * spec.volume_step
    minimum = spec.volume_min if spec is not None and spec.volume_min else None
    if volume <= 0 or (minimum is not None and volume < minimum):
        shown = format(raw.normalize(), "f")
        floor = f" (minimum {format(minimum, 'f')})" if minimum is not None else ""
        return Sized(None, f"sized volume {shown} for {symbol} is below the tradable minimum{floor}")
    return Sized(volume)
