"""Decoding request fields into domain values (INVALID_ARGUMENT naming the field), and decimals back to
their text form."""

from __future__ import annotations

import re
import uuid
from decimal import Decimal

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from backoffice.errors import InvalidArgument

# Plain decimal notation only: no exponent, NaN or infinity; bounded so numeric columns stay sane.
_DECIMAL_RE = re.compile(r"^-?[0-9]{1,20}(\.[0-9]{1,12})?$")


def check_text(message: Message) -> None:
    """One rule for all text at the edge: Postgres stores no NUL character (in text or JSONB), so a
    request or frame with one in any string (map keys and Struct contents included) is INVALID_ARGUMENT
    naming each such field, before any domain code sees it."""
    violations = [(path, "must not contain a NUL character") for path in _nul_fields(message, "")]
    if violations:
        raise InvalidArgument(violations, reason="NUL_CHARACTER")


def _nul_fields(message: Message, prefix: str) -> list[str]:
    found: list[str] = []
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            for key, item in value.items():
                entry = f"{path}[{key!r}]"
                if "\x00" in key:
                    found.append(entry)
                if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    found.extend(_nul_fields(item, entry + "."))
                elif isinstance(item, str) and "\x00" in item:
                    found.append(entry)
        elif field.is_repeated:
            for index, item in enumerate(value):
                found.extend(_nul_in(field, item, f"{path}[{index}]"))
        else:
            found.extend(_nul_in(field, value, path))
    return found


def _nul_in(field: FieldDescriptor, value: object, path: str) -> list[str]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        assert isinstance(value, Message)
        return _nul_fields(value, path + ".")
    return [path] if isinstance(value, str) and "\x00" in value else []


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
