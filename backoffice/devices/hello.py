"""A device's Hello as the server keeps it: the trading account and the broker's symbol specs that sizing
and profit read. ``devices.last_hello`` stores ``Hello.to_json()`` (decimals as strings, "" when the
bridge did not say); ``Hello.from_json`` reads it back, tolerating rows written by older versions."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from decimal import Decimal, InvalidOperation
from typing import Any

from signalhub.protocol.errors import InvalidArgument
from signalhub.protocol.wire import SYMBOL_RE, decimal_text, parse_decimal
from signalhub.v1 import gateway_pb2 as pb

MAX_SYMBOLS = 2000
_CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
_VERSION_MAX = 64


@dataclass(frozen=True)
class SymbolSpec:
    """One broker symbol's specs; None where the bridge did not say."""

    contract_size: Decimal | None = None
    tick_size: Decimal | None = None
    tick_value: Decimal | None = None
    volume_min: Decimal | None = None
    volume_step: Decimal | None = None
    volume_max: Decimal | None = None


SPEC_FIELDS = tuple(f.name for f in fields(SymbolSpec))


@dataclass(frozen=True)
class Hello:
    bridge_version: str = ""
    account_currency: str = ""
    balance: Decimal | None = None
    equity: Decimal | None = None
    symbols: dict[str, SymbolSpec] | None = None

    def spec(self, symbol: str) -> SymbolSpec | None:
        return (self.symbols or {}).get(symbol)

    def to_json(self) -> dict[str, Any]:
        return {
            "bridge_version": self.bridge_version,
            "account_currency": self.account_currency,
            "balance": decimal_text(self.balance),
            "equity": decimal_text(self.equity),
            "symbols": {
                name: {f: decimal_text(getattr(spec, f)) for f in SPEC_FIELDS}
                for name, spec in (self.symbols or {}).items()
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Hello:
        """The stored Hello, or an empty one for a device that never said Hello."""
        data = data or {}
        symbols = {
            str(name): SymbolSpec(**{f: _stored_decimal(spec.get(f)) for f in SPEC_FIELDS})
            for name, spec in (data.get("symbols") or {}).items()
            if isinstance(spec, dict)
        }
        return cls(
            bridge_version=str(data.get("bridge_version") or ""),
            account_currency=str(data.get("account_currency") or ""),
            balance=_stored_decimal(data.get("balance")),
            equity=_stored_decimal(data.get("equity")),
            symbols=symbols,
        )


def check_symbol_count(hello: pb.Hello, max_symbols: int = MAX_SYMBOLS) -> None:
    """A Hello's symbol list within ``max_symbols``: told before anything reads the list."""
    if len(hello.symbols) > max_symbols:
        raise InvalidArgument([("hello.symbols", f"at most {max_symbols} symbols")], reason="TOO_MANY_SYMBOLS")


def decode_hello(hello: pb.Hello, max_symbols: int = MAX_SYMBOLS) -> Hello:
    """A Hello frame as the record the server keeps; InvalidArgument names every bad field."""
    violations: list[tuple[str, str]] = []

    def decimal(value: str, path: str, *, positive: bool) -> Decimal | None:
        if not value.strip():
            return None
        try:
            return parse_decimal(value, path, positive=positive)
        except InvalidArgument as exc:
            violations.extend(exc.violations)
            return None

    if len(hello.bridge_version) > _VERSION_MAX or not hello.bridge_version.isprintable():
        violations.append(("hello.bridge_version", f"at most {_VERSION_MAX} printable characters"))
    if hello.account_currency and not _CURRENCY_RE.match(hello.account_currency):
        violations.append(("hello.account_currency", "an ISO 4217 code such as 'USD'"))
    if len(hello.symbols) > max_symbols:
        violations.append(("hello.symbols", f"at most {max_symbols} symbols"))
    symbols: dict[str, SymbolSpec] = {}
    for index, spec in enumerate(hello.symbols[:max_symbols]):
        path = f"hello.symbols[{index}]"
        if not SYMBOL_RE.match(spec.name):
            violations.append((f"{path}.name", "the broker's symbol: 1 to 32 of [A-Za-z0-9._#-]"))
        elif spec.name in symbols:
            violations.append((f"{path}.name", "named twice"))
        symbols[spec.name] = SymbolSpec(
            **{name: decimal(getattr(spec, name), f"{path}.{name}", positive=True) for name in SPEC_FIELDS}
        )
    record = Hello(
        bridge_version=hello.bridge_version,
        account_currency=hello.account_currency,
        balance=decimal(hello.balance, "hello.balance", positive=False),
        equity=decimal(hello.equity, "hello.equity", positive=False),
        symbols=symbols,
    )
    if violations:
        raise InvalidArgument(violations[:50])
    return record


def _stored_decimal(value: object) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return number if number.is_finite() and number >= 0 else None
