"""Decoding request fields into domain values, with INVALID_ARGUMENT naming the field."""

from __future__ import annotations

import uuid
from decimal import Decimal, InvalidOperation

from backoffice.errors import InvalidArgument

MAX_DECIMAL_DIGITS = 30


def parse_id(value: str, field: str) -> uuid.UUID:
    """An object id from the wire. A malformed id cannot name anything: INVALID_ARGUMENT."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidArgument([(field, "a UUID is required")]) from None


def parse_optional_id(value: str, field: str) -> uuid.UUID | None:
    return parse_id(value, field) if value else None


def parse_decimal(value: str, field: str, *, positive: bool = True) -> Decimal:
    """A decimal string ("2034.15"); never a float, never NaN or infinity, no exponent tricks."""
    try:
        number = Decimal(value.strip())
    except (InvalidOperation, ValueError):
        raise InvalidArgument([(field, "a decimal string such as '2034.15' is required")]) from None
    if not number.is_finite() or len(number.as_tuple().digits) > MAX_DECIMAL_DIGITS:
        raise InvalidArgument([(field, "a finite decimal of at most 30 digits is required")])
    if positive and number <= 0:
        raise InvalidArgument([(field, "must be greater than zero")])
    return number


def parse_optional_decimal(value: str, field: str, *, positive: bool = True) -> Decimal | None:
    return parse_decimal(value, field, positive=positive) if value.strip() else None
