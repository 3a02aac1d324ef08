"""Encoding domain values for the wire and back: timestamps, decimals, enums, structs."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from backoffice.errors import InvalidArgument

# Re-exported: encoders use it beside the other wire helpers.
from backoffice.validation import decimal_text as decimal_text
from backoffice.validation import parse_timestamp as parse_timestamp

EnumT = TypeVar("EnumT", bound=enum.Enum)


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def enum_to_wire(wire_enum: Any, prefix: str, value: enum.Enum | None) -> Any:
    """``Side.BUY`` -> ``SIDE_BUY``'s number; None -> 0 (UNSPECIFIED). Typed Any: each generated enum
    has its own ``ValueType``."""
    return 0 if value is None else wire_enum.Value(f"{prefix}_{value.value}")


def enum_from_wire(wire_enum: Any, prefix: str, number: int, domain: type[EnumT], field: str) -> EnumT:
    """The domain enum for a wire number; UNSPECIFIED or an unknown number is INVALID_ARGUMENT."""
    try:
        name = str(wire_enum.Name(number))
        return domain(name.removeprefix(prefix + "_"))
    except ValueError:
        allowed = ", ".join(f"{prefix}_{m.value}" for m in domain)
        raise InvalidArgument([(field, f"one of {allowed} is required")]) from None


def optional_enum_from_wire(wire_enum: Any, prefix: str, number: int, domain: type[EnumT], field: str) -> EnumT | None:
    return None if number == 0 else enum_from_wire(wire_enum, prefix, number, domain, field)


def struct_to_dict(value: Struct, field: str = "payload") -> dict[str, Any]:
    try:
        return dict(json_format.MessageToDict(value))
    except ValueError:  # NaN or infinity has no JSON form
        raise InvalidArgument([(field, "numbers must be finite")]) from None


def dict_to_struct(value: dict[str, Any] | None) -> Struct:
    struct = Struct()
    if value:
        struct.update(value)
    return struct
