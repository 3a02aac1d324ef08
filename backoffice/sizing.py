"""Per-device volume sizing from a subscription's rule and the device's last Hello.

The result is rounded down to the symbol's volume step, capped by the subscription's max_volume and the
symbol's volume_max, and skipped (with a reason a person can read) when it falls below volume_min.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Any

from backoffice.models import SizingMode


@dataclass(frozen=True)
class SymbolSpec:
    contract_size: Decimal | None
    tick_size: Decimal | None
    tick_value: Decimal | None
    volume_min: Decimal | None
    volume_step: Decimal | None
    volume_max: Decimal | None


@dataclass(frozen=True)
class Account:
    """What sizing needs from a device's last Hello."""

    balance: Decimal | None
    equity: Decimal | None
    symbols: dict[str, SymbolSpec]

    @classmethod
    def from_hello(cls, hello: dict[str, Any] | None) -> Account:
        hello = hello or {}
        symbols = {
            str(name): SymbolSpec(
                contract_size=_dec(spec.get("contract_size")),
                tick_size=_dec(spec.get("tick_size")),
                tick_value=_dec(spec.get("tick_value")),
                volume_min=_dec(spec.get("volume_min")),
                volume_step=_dec(spec.get("volume_step")),
                volume_max=_dec(spec.get("volume_max")),
            )
            for name, spec in (hello.get("symbols") or {}).items()
            if isinstance(spec, dict)
        }
        return cls(balance=_dec(hello.get("balance")), equity=_dec(hello.get("equity")), symbols=symbols)


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
    account: Account,
    symbol: str,
    *,
    entry_price: Decimal | None,
    stop_loss: Decimal | None,
    override: Decimal | None = None,
) -> Sized:
    spec = account.symbols.get(symbol)
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


def _dec(value: object) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return number if number.is_finite() and number >= 0 else None
