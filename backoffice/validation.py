"""Decoding request fields into domain values (INVALID_ARGUMENT naming the field), and decimals back to
their text form."""

from __future__ import annotations

import re
import uuid
from decimal import Decimal

from backoffice.errors import InvalidArgument

# Plain decimal notation only: no exponent, NaN or infinity; bounded so numeric columns stay sane.
_DECIMAL_RE = re.compile(r"^-?[0-9]{1,20}(\.[0-9]{1,12})?$")


def parse_id(value: str, field: str) -> uuid.UUID:
    """An object id from the wire. A malformed id cannot name anything: INVALID_ARGUMENT."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidArgument([(field, "a UUID is required")]) from None


def parse_optional_id(value: str, field: str) -> uuid.UUID | None:
    return parse_id(value, field) if value else None


def parse_decimal(value: str, field: str, *, positive: bool = True) -> Decimal:
    """A decimal string ("2034.15"); never a float, never NaN or infinity, no exponent."""
    text = value.strip()
    if not _DECIMAL_RE.match(text):
        raise InvalidArgument([(field, "a decimal string such as '2034.15' is required (at most 12 decimals)")])
    number = Decimal(text)
    if positive and number <= 0:
        raise InvalidArgument([(field, "must be greater than zero")])
    return number


def parse_optional_decimal(value: str, field: str, *, positive: bool = True) -> Decimal | None:
    return parse_decimal(value, field, positive=positive) if value.strip() else None


def decimal_text(value: Decimal | None) -> str:
    """Decimal strings as the contract wants them: no exponent, no float rounding; '' for none."""
    return "" if value is None else format(value, "f")
