"""Encoding domain values for the wire: timestamps, decimals, ids, enums."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from google.protobuf.timestamp_pb2 import Timestamp


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def decimal_text(value: Decimal | None) -> str:
    """Decimal strings as the contract wants them: no exponent, no float rounding."""
    return "" if value is None else format(value, "f")
