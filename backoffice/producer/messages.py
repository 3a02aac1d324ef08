"""The requests the producer SDK sends, built from Python values: decimals as plain decimal strings (never
floats), sides by name or number, aware datetimes, idempotency keys as UUIDs. ``ProducerClient`` signs
and sends them; they are also usable alone (e.g. to store or inspect a request before sending it)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, TypeAlias, TypedDict, Unpack

from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import common_pb2

Decimalish: TypeAlias = Decimal | str | int
SideLike: TypeAlias = common_pb2.Side.ValueType | str


def decimal_string(value: Decimalish, name: str) -> str:
    """``value`` as a plain decimal string (``"2034.15"``, never exponent notation); floats are refused."""
    if isinstance(value, bool | float) or not isinstance(value, Decimal | str | int):
        raise TypeError(f"{name} must be a Decimal or a decimal string, not {type(value).__name__}")
    try:
        number = value if isinstance(value, Decimal) else Decimal(value)
    except InvalidOperation:
        raise ValueError(f"{name} is not a decimal number: {value!r}") from None
    if not number.is_finite():
        raise ValueError(f"{name} must be a finite decimal number")
    return format(number, "f")


def parse_side(side: SideLike) -> common_pb2.Side.ValueType:
    """``common_pb2.SIDE_BUY``/``SIDE_SELL``, or ``"buy"``/``"sell"``/``"SIDE_BUY"``/... in any case."""
    if isinstance(side, str):
        name = side.strip().upper()
        name = name if name.startswith("SIDE_") else "SIDE_" + name
        if name in ("SIDE_BUY", "SIDE_SELL"):
            return common_pb2.Side.Value(name)
        raise ValueError(f"side must be buy or sell, not {side!r}")
    if side in (common_pb2.SIDE_BUY, common_pb2.SIDE_SELL):
        return side
    raise ValueError(f"side must be SIDE_BUY or SIDE_SELL, not {side!r}")


def request_id_text(request_id: str | uuid.UUID | None) -> str:
    """An idempotency key as the wire carries it: a new UUID4 for None; ValueError for what is not a UUID."""
    if request_id is None:
        return str(uuid.uuid4())
    if isinstance(request_id, uuid.UUID):
        return str(request_id)
    try:
        return str(uuid.UUID(request_id))
    except ValueError:
        raise ValueError(f"request_id must be a UUID, not {request_id!r}") from None


def _timestamp(moment: datetime, name: str) -> Timestamp:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


class SignalOptions(TypedDict, total=False):
    """The optional keyword arguments of a signal: ``submit_signal_request`` and
    ``ProducerClient.submit_signal`` both take them, declared once here."""

    entry_price: Decimalish | None
    stop_loss: Decimalish | None
    take_profit: Decimalish | None
    signal_time: datetime | None
    expire_time: datetime | timedelta | None
    payload: Mapping[str, Any] | None
    request_id: str | uuid.UUID | None
    trailing_distance: Decimalish | None
    breakeven_trigger: Decimalish | None
    breakeven_offset: Decimalish | None


def check_signal_options(options: Mapping[str, object], function: str) -> None:
    """A TypeError for a keyword that is not a ``SignalOptions`` key, as a misspelt parameter would raise
    (``**options`` would otherwise swallow it at run time)."""
    unknown = sorted(set(options) - set(SignalOptions.__annotations__))
    if unknown:
        raise TypeError(f"{function}() got an unexpected keyword argument {unknown[0]!r}")


def submit_signal_request(instrument: str, side: SideLike, **options: Unpack[SignalOptions]) -> pb.SubmitSignalRequest:
    """The request ``ProducerClient.submit_signal`` sends.

    ``signal_time`` defaults to now; ``expire_time`` may be a ``timedelta`` after ``signal_time``; a
    missing ``request_id`` becomes a new UUID4. ``stop_loss``, ``take_profit``, ``trailing_distance`` and
    the breakeven pair are hidden levels the server enforces. The server applies the contract's rules.
    """
    check_signal_options(options, "submit_signal_request")
    signal_time = options.get("signal_time")
    expire_time = options.get("expire_time")
    payload = options.get("payload")
    moment = signal_time if signal_time is not None else datetime.now(UTC)
    request = pb.SubmitSignalRequest(
        request_id=request_id_text(options.get("request_id")),
        instrument=instrument,
        side=parse_side(side),
        signal_time=_timestamp(moment, "signal_time"),
    )
    for name, value in (
        ("entry_price", options.get("entry_price")),
        ("stop_loss", options.get("stop_loss")),
        ("take_profit", options.get("take_profit")),
        ("trailing_distance", options.get("trailing_distance")),
        ("breakeven_trigger", options.get("breakeven_trigger")),
        ("breakeven_offset", options.get("breakeven_offset")),
    ):
        if value is not None:
            setattr(request, name, decimal_string(value, name))
    if expire_time is not None:
        expires = moment + expire_time if isinstance(expire_time, timedelta) else expire_time
        request.expire_time.CopyFrom(_timestamp(expires, "expire_time"))
    if payload is not None:
        struct = Struct()
        struct.update(payload)
        request.payload.CopyFrom(struct)
    return request


def make_quote(
    instrument: str, bid: Decimalish, ask: Decimalish, quote_time: datetime | None = None
) -> common_pb2.Quote:
    """A ``Quote`` with decimal-string prices, observed at ``quote_time`` (default now)."""
    return common_pb2.Quote(
        instrument=instrument,
        bid=decimal_string(bid, "bid"),
        ask=decimal_string(ask, "ask"),
        quote_time=_timestamp(quote_time if quote_time is not None else datetime.now(UTC), "quote_time"),
    )
