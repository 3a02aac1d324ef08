"""The wire codecs of the contract, for servers and client SDKs alike: request fields into domain values
(INVALID_ARGUMENT naming the field), domain values back to their wire form (decimal strings, timestamps,
enums, structs), the one text rule (no NUL), the one quote rule, and the error details of a status."""

from __future__ import annotations

import enum
import ipaddress
import re
import uuid
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2

from signalhub.protocol.errors import InvalidArgument
from signalhub.v1 import common_pb2

EnumT = TypeVar("EnumT", bound=enum.Enum)
STATUS_DETAILS_KEY = "grpc-status-details-bin"

# Plain decimal notation only: no exponent, NaN or infinity; bounded so numeric columns stay sane.
_DECIMAL_RE = re.compile(r"^-?[0-9]{1,20}(\.[0-9]{1,12})?$")
# A broker's symbol as a device names it (symbol maps, Hello, quotes): brokers add suffixes like ".m" or "#".
SYMBOL_RE = re.compile(r"^[A-Za-z0-9._#-]{1,32}$")


# Repeated items and map entries the NUL rule reads in one message at the most: no request or frame of the
# contract needs more, and a message of half a million empty items must not hold the event loop.
MAX_ITEMS = 10_000


def check_text(message: Message, max_items: int = MAX_ITEMS) -> None:
    """One rule for all text at the edge: Postgres stores no NUL character (in text or JSONB), so a
    request or frame with one in any string (map keys and Struct contents included) is INVALID_ARGUMENT
    naming each such field, before any domain code sees it. Its cost is bounded: a message with more than
    ``max_items`` repeated items and map entries in all is INVALID_ARGUMENT (reason TOO_MANY_ITEMS), told
    before the items are read."""
    violations = [(path, "must not contain a NUL character") for path in _nul_fields(message, "", [max_items])]
    if violations:
        raise InvalidArgument(violations, reason="NUL_CHARACTER")


def _spend(budget: list[int], count: int, path: str) -> None:
    """Take ``count`` items from what the walk may still read (a one-item list, shared by the recursion)."""
    budget[0] -= count
    if budget[0] < 0:
        raise InvalidArgument([(path, "too many items in one message")], reason="TOO_MANY_ITEMS")


def _nul_fields(message: Message, prefix: str, budget: list[int]) -> list[str]:
    found: list[str] = []
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            _spend(budget, len(value), path)
            value_field = field.message_type.fields_by_name["value"]
            for key, item in value.items():
                entry = f"{path}[{key!r}]"
                if "\x00" in key:
                    found.append(entry)
                if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    found.extend(_nul_fields(item, entry + ".", budget))
                elif isinstance(item, str) and "\x00" in item:
                    found.append(entry)
        elif field.is_repeated:
            _spend(budget, len(value), path)
            if field.type == FieldDescriptor.TYPE_STRING and "\x00" not in "".join(value):
                continue  # one scan of the text, not a Python step per item
            for index, item in enumerate(value):
                found.extend(_nul_in(field, item, f"{path}[{index}]", budget))
        else:
            found.extend(_nul_in(field, value, path, budget))
    return found


def _nul_in(field: FieldDescriptor, value: object, path: str, budget: list[int]) -> list[str]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        assert isinstance(value, Message)
        return _nul_fields(value, path + ".", budget)
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


def parse_timestamp(value: Timestamp, present: bool, field: str = "timestamp") -> datetime | None:
    """An aware datetime, or None when absent; out-of-range seconds or nanos are INVALID_ARGUMENT."""
    if not present:
        return None
    try:
        return value.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument([(field, "not a valid timestamp")]) from None


@dataclass(frozen=True)
class QuotePrices:
    instrument: str
    bid: Decimal
    ask: Decimal
    quote_time: datetime


def parse_quote(
    quote: common_pb2.Quote, prefix: str, instrument: re.Pattern[str], not_after: datetime | None = None
) -> QuotePrices:
    """The one rule for a wire Quote, whoever sends it (a producer's feed, a device, or the bridge
    checking what it is about to send). InvalidArgument names every bad field as ``<prefix>.<field>``;
    ``instrument`` is the sender's naming rule: producers name instruments, devices their broker's symbols.
    A server passes ``not_after`` (its clock plus the signature tolerance): a quote dated later would count
    as fresh for ever."""
    violations: list[tuple[str, str]] = []
    if not instrument.match(quote.instrument):
        violations.append((f"{prefix}.instrument", f"must match {instrument.pattern}"))
    prices: dict[str, Decimal] = {}
    for name in ("bid", "ask"):
        try:
            prices[name] = parse_decimal(getattr(quote, name), f"{prefix}.{name}")
        except InvalidArgument as exc:
            violations.extend(exc.violations)
    if len(prices) == 2 and prices["bid"] > prices["ask"]:
        violations.append((f"{prefix}.bid", "must not exceed ask"))
    quote_time = reported_time(quote, "quote_time", prefix, not_after, violations)
    if violations:
        raise InvalidArgument(violations)
    assert quote_time is not None
    return QuotePrices(quote.instrument, prices["bid"], prices["ask"], quote_time)


def reported_time(
    message: Message, field: str, prefix: str, not_after: datetime | None, violations: list[tuple[str, str]]
) -> datetime | None:
    """The required time ``field`` a sender reported (a quote's, an account state's), or None with its
    violation added: absent, out of range, or later than ``not_after`` (the server's clock plus the
    signature tolerance; a time ahead of it would count as fresh for ever)."""
    path = f"{prefix}.{field}"
    if not message.HasField(field):
        violations.append((path, "is required"))
        return None
    try:
        reported = parse_timestamp(getattr(message, field), True, path)
    except InvalidArgument as exc:
        violations.extend(exc.violations)
        return None
    if reported is not None and not_after is not None and reported > not_after:
        violations.append((path, "must not be in the future (beyond the clock tolerance)"))
    return reported


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


@dataclass(frozen=True)
class StatusDetails:
    """What a failed call's ``google.rpc.Status`` says beyond its code: the ErrorInfo and the BadRequest."""

    reason: str = ""
    domain: str = ""
    metadata: dict[str, str] = dataclass_field(default_factory=dict)
    violations: dict[str, str] = dataclass_field(default_factory=dict)  # field path -> what is wrong


def status_details(error: grpc.aio.AioRpcError) -> StatusDetails:
    """The details in ``grpc-status-details-bin``; empty when absent or garbled (a broken trailer must
    never hide the status code itself)."""
    raw = next((v for k, v in error.trailing_metadata() or () if k == STATUS_DETAILS_KEY), None)
    if not isinstance(raw, bytes):
        return StatusDetails()
    try:
        status = status_pb2.Status.FromString(raw)
    except DecodeError:
        return StatusDetails()
    details = StatusDetails()
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR) and not details.reason:
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            metadata = {str(k): str(v) for k, v in info.metadata.items()}
            details = StatusDetails(str(info.reason), str(info.domain), metadata, details.violations)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            details.violations.update({str(v.field): str(v.description) for v in bad.field_violations})
    return details


def is_loopback(address: str) -> bool:
    """Whether a ``host:port`` names this machine only (127.0.0.0/8, ``[::1]``, localhost): the only place
    plaintext cannot be read or altered on the path. ``0.0.0.0`` and ``[::]`` (every interface) do not."""
    host = address.rpartition(":")[0].strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
