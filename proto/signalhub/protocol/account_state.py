"""The one rule for a device's AccountState frame, for the gateway that decodes it and the bridge that
checks what it is about to send (a state the gateway would refuse is never sent)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from signalhub.protocol.errors import InvalidArgument
from signalhub.protocol.wire import parse_decimal, reported_time
from signalhub.v1 import gateway_pb2


@dataclass(frozen=True)
class AccountFigures:
    """An AccountState's values: balance and equity never negative, free margin of either sign."""

    balance: Decimal
    equity: Decimal
    margin: Decimal | None
    free_margin: Decimal | None
    state_time: datetime


def parse_account_state(
    state: gateway_pb2.AccountState, prefix: str = "account_state", not_after: datetime | None = None
) -> AccountFigures:
    """InvalidArgument names every bad field as ``<prefix>.<field>``: balance and equity are required and
    not negative (an emptied account reports zero), margin optional and not negative, free_margin optional
    (negative once the margin exceeds equity), state_time required. A server passes ``not_after`` (its
    clock plus the signature tolerance): a state dated later would outrank every true one after it."""
    violations: list[tuple[str, str]] = []

    def amount(name: str, *, required: bool, signed: bool = False) -> Decimal | None:
        text = getattr(state, name)
        path = f"{prefix}.{name}"
        if not text.strip():
            if required:
                violations.append((path, "is required"))
            return None
        try:
            number = parse_decimal(text, path, positive=False)
        except InvalidArgument as exc:
            violations.extend(exc.violations)
            return None
        if not signed and number < 0:
            violations.append((path, "must not be negative"))
            return None
        return number

    balance = amount("balance", required=True)
    equity = amount("equity", required=True)
    margin = amount("margin", required=False)
    free_margin = amount("free_margin", required=False, signed=True)
    state_time = reported_time(state, "state_time", prefix, not_after, violations)
    if violations:
        raise InvalidArgument(violations)
    assert balance is not None and equity is not None and state_time is not None
    return AccountFigures(balance, equity, margin, free_margin, state_time)
