"""Hypothesis strategies for hostile input, built from the contract's own descriptors so that every field
of every request and frame is covered without a list to keep in step: huge strings, NUL characters, bad
decimals, NaN, Timestamps at and past their range, unknown enum numbers, deep Structs, forged page tokens
(deeply nested JSON, wrong shapes, cursor times that overflow when converted to UTC), odd x-sh-timestamp
headers, and raw bytes that are not a message at all."""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from backoffice.platform import paging
from tests.conftest import rpc_failure

# UNAVAILABLE too: Postgres and Redis are up while the hunt runs, so it means the input broke a call to one.
NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE}
# Bounded and repeatable in the suite; SIGNALHUB_HOSTILE_EXAMPLES=500 SIGNALHUB_HOSTILE_RANDOM=1 for a hunt.
HUNT = settings(
    max_examples=int(os.environ.get("SIGNALHUB_HOSTILE_EXAMPLES", "12")),
    deadline=None,
    derandomize=os.environ.get("SIGNALHUB_HOSTILE_RANDOM") != "1",
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

_DECIMALS = [
    "0",
    "-1",
    "1e5",
    "NaN",
    "Infinity",
    "-0",
    "0.000000000001",
    "2034.15",
    "99999999999999999999.999999999999",
]
_DECIMALS += ["1" * 30, "0.1234567890123", " 1.5 ", "1,5", "+1", ".5"]
_WORDS = ["", "XAUUSD", "GOLD.m", "EURUSD", "a@b.c", "sht_x", "shs_x", "\x00", "a\x00b", "é€😀", "\ud7ff", " "]


def _forged_page_tokens() -> list[str]:
    """Tokens that decode but point where no real token would: odd times, naive times, wrong fingerprints."""
    tokens = ["", "!!!", "e30", base64.urlsafe_b64encode(b"\xff\xfe").decode()]
    for filters in range(7):
        for moment in ("0001-01-01T00:00:00", "9999-12-31T23:59:59+14:00", "2026-01-01", "x", "2026-01-01T00:00:00Z"):
            raw = json.dumps({"t": moment, "i": str(uuid.uuid4()), "f": paging._fingerprint([None] * filters)})
            tokens.append(base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode())
    tokens.append(base64.urlsafe_b64encode(json.dumps({"t": 1, "i": [], "f": None}).encode()).decode())
    return tokens


FORGED_TOKENS = _forged_page_tokens()
# The two fields every list request has; the rest of a list request's fields are its filters.
PAGING_FIELDS = ("page_size", "page_token")
# Cursor times no real token carries: the edges of Python's calendar, with offsets that push them past it
# when converted to UTC, naive times, times out of any row's range, and text that is no time at all.
CURSOR_TIMES = [
    "0001-01-01T00:00:00+05:00",
    "0001-01-01T00:00:00+00:00:01",
    "9999-12-31T23:59:59-05:00",
    "9999-12-31T23:59:59.999999-00:00:01",
    "0001-01-01T00:00:00",
    "9999-12-31T23:59:59.999999+00:00",
    "1969-12-31T23:59:59+00:00",
    "2026-01-01T00:00:00+23:59:59.999999",
    "2026-01-01",
    "x",
    "",
]
# JSON nested past the parser's recursion limit (and just under it), as a page token's whole body.
NESTED_JSON = ["[" * 100_000, "[" * 1_000 + "]" * 1_000, '{"t": ' * 5_000, "[" * 50 + "]" * 50]


def unset_filters(descriptor: Descriptor) -> list[object]:
    """A list request's filters as the servers hand them to paging when the client sets none: its fields
    but the paging ones, in order, None for an id or an enum and '' for text. A token forged with their
    fingerprint gets past the filter check to the query, where a bad cursor would hurt."""
    return [
        None if field.type == FieldDescriptor.TYPE_ENUM or field.name.endswith("_id") else ""
        for field in descriptor.fields
        if field.name not in PAGING_FIELDS
    ]


def encode_page_token(body: Any) -> str:
    """``body`` (JSON text, or a value to write as JSON) as a page token's base64url."""
    text = body if isinstance(body, str) else json.dumps(body)
    return base64.urlsafe_b64encode(text.encode("utf-8", "surrogatepass")).rstrip(b"=").decode()


def _cursor_times() -> st.SearchStrategy[Any]:
    fixed_offsets = st.integers(-1439, 1439).map(lambda minutes: timezone(timedelta(minutes=minutes)))
    return st.one_of(
        st.sampled_from(CURSOR_TIMES),
        st.datetimes(min_value=datetime.min, max_value=datetime.max, timezones=fixed_offsets).map(datetime.isoformat),
        _json_values(),
    )


@st.composite
def page_tokens(draw: st.DrawFn, descriptor: Descriptor | None = None) -> str:
    """A page token a hostile client forges. Mostly a cursor of the real shape with a hostile time, id or
    fingerprint (mostly that of ``descriptor``'s unset filters, so the cursor reaches the query); else JSON
    of any other shape, JSON nested past the parser's recursion limit, or one of FORGED_TOKENS."""
    kind = draw(st.sampled_from(["cursor"] * 3 + ["shape", "nested", "forged"]))
    if kind == "nested":
        return encode_page_token(draw(st.sampled_from(NESTED_JSON)))
    if kind == "forged":
        return draw(st.sampled_from(FORGED_TOKENS))
    if kind == "shape":
        keys = st.sampled_from(["t", "i", "f", "x"])
        return encode_page_token(draw(_json_values() | st.dictionaries(keys, _json_values())))
    fingerprints = [paging._fingerprint([None] * filters) for filters in range(4)]
    if descriptor is not None:
        fingerprints = [paging._fingerprint(unset_filters(descriptor))] * 4 + fingerprints
    hostile = draw(st.sampled_from(["t", "t", "i", "f"]))  # the one part that is odd for sure
    cursor = {
        "t": draw(_cursor_times()) if hostile == "t" else "2026-01-01T00:00:00+00:00",
        "i": draw(_json_values()) if hostile == "i" else str(draw(st.uuids())),
        "f": draw(st.sampled_from(fingerprints) | _json_values()) if hostile == "f" else fingerprints[0],
    }
    return encode_page_token(cursor)


# Timestamp's own range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
_TIMESTAMP_SECONDS_RANGE = (-62135596800, 253402300799)
_TIMESTAMP_SECONDS = [*_TIMESTAMP_SECONDS_RANGE, -62135596801, 253402300800, 0, -1, 2**63 - 1, -(2**63)]
_TIMESTAMP_NANOS = [0, -1, 999_999_999, 1_000_000_000, -(2**31), 2**31 - 1]

# x-sh-timestamp text that is no ASCII integer: signs, spaces, the separators and other scripts' digits that
# str.isdigit() and int() accept, fractions, exponents, lengths far past any clock, nothing at all.
TIMESTAMP_HEADERS = [
    "--5",
    "+5",
    "-5",
    "-0",
    " 5",
    "5 ",
    "",
    "-",
    "1_700_000_000",
    "0x10",
    "1e9",
    "12.5",
    "9" * 13,
    "5" * 5_000,
    "\u0663",
    "\uff15",
    "\u0661\u0667\u0660\u0660\u0660\u0660\u0660\u0660\u0660\u0660",
]


def _printable_ascii(text: str) -> bool:
    return all(" " <= character <= "~" for character in text)


def timestamp_headers(*, sendable: bool = False) -> st.SearchStrategy[str]:
    """Hostile ``x-sh-timestamp`` values: malformed text, or well-formed numbers other than the one signed.
    ``sendable``: only what grpc's own client lets through (printable ASCII); a server must survive the rest."""
    ascii_digits = st.characters(min_codepoint=ord("0"), max_codepoint=ord("9"))
    digits = ascii_digits if sendable else ascii_digits | st.characters(categories=["Nd"])
    numbers = st.builds(
        lambda sign, body, tail: sign + body + tail,
        st.sampled_from(["-", "--", "+", "+-", " ", "_", ""]),
        st.text(digits, max_size=14) | st.sampled_from(["5" * 13, "5" * 5_000]),
        st.sampled_from(["", " ", ".0", "_0", "e3"]),
    )
    edges = [text for text in TIMESTAMP_HEADERS if _printable_ascii(text) or not sendable]
    # Well-formed numbers too: TIMESTAMP_SKEW, or SIGNATURE_INVALID for one inside the window but not signed.
    return st.one_of(st.sampled_from(edges), numbers, st.integers(0, 10**12 - 1).map(str))


def strings(known: Sequence[str] = ()) -> st.SearchStrategy[str]:
    """Text a client might send, friendly or not; ``known`` adds ids of real objects, so calls get past
    the first NOT_FOUND into the code behind it."""
    return st.one_of(
        st.text(max_size=40),
        st.sampled_from(_WORDS + _DECIMALS + FORGED_TOKENS + [str(uuid.uuid4()) for _ in range(3)] + list(known)),
        st.text(max_size=10).map(lambda s: s + "\x00" + s),
        st.sampled_from([n * "A" for n in (65, 300, 5_000, 200_000)]),
    )


def _json_values() -> st.SearchStrategy[Any]:
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=12),
        st.just("\x00"),
    )
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=12,
    )


def deep_struct_bytes(depth: int) -> bytes:
    """A Struct nested ``depth`` times ({"a": {"a": ...}}), written by hand: deeper than protobuf's
    recursion limit of 100, it cannot be built as a message."""
    inner = b""
    for _ in range(depth):
        value = b"\x2a" + _varint(len(inner)) + inner  # Value.struct_value (field 5)
        entry = b"\x0a\x01a" + b"\x12" + _varint(len(value)) + value  # map entry: key "a", value
        inner = b"\x0a" + _varint(len(entry)) + entry  # Struct.fields (field 1)
    return inner


def _varint(number: int) -> bytes:
    out = bytearray()
    while True:
        byte = number & 0x7F
        number >>= 7
        if number:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


@st.composite
def messages(draw: st.DrawFn, descriptor: Descriptor, known: Sequence[str] = (), depth: int = 0) -> Message:
    """A message of ``descriptor``'s type with a random subset of its fields set to hostile values."""
    message = GetMessageClass(descriptor)()
    if descriptor.full_name == "google.protobuf.Struct":
        message.update(draw(st.dictionaries(st.text(max_size=8), _json_values(), max_size=5)))  # type: ignore[attr-defined]
        return message
    if descriptor.full_name == "google.protobuf.Timestamp":
        seconds = st.integers(-(2**63), 2**63 - 1) | st.integers(*_TIMESTAMP_SECONDS_RANGE)
        message.seconds = draw(st.sampled_from(_TIMESTAMP_SECONDS) | seconds)  # type: ignore[attr-defined]
        message.nanos = draw(st.sampled_from(_TIMESTAMP_NANOS) | st.integers(-(2**31), 2**31 - 1))  # type: ignore[attr-defined]
        return message
    # A list request with no filter set matches the fingerprint most forged tokens carry, so some draws set
    # the page token alone: a forged cursor then gets past the size and filter checks to the query.
    token_alone = "page_token" in descriptor.fields_by_name and draw(st.integers(0, 3)) == 0
    for field in descriptor.fields:
        if token_alone and field.name != "page_token":
            continue
        if not token_alone and not draw(st.booleans()):
            continue
        if field.name == "page_token":
            message.page_token = draw(page_tokens(descriptor) | strings(known))  # type: ignore[attr-defined]
        elif field.message_type is not None and field.message_type.GetOptions().map_entry:
            entries = draw(st.dictionaries(strings(known), strings(known), max_size=4))
            getattr(message, field.name).update(entries)
        elif field.is_repeated:
            for _ in range(draw(st.integers(0, 3))):
                _append(draw, message, field, known, depth)
        elif field.message_type is not None:
            if depth < 3:
                getattr(message, field.name).CopyFrom(draw(messages(field.message_type, known, depth + 1)))
        else:
            setattr(message, field.name, draw(_scalar(field, known)))
    return message


def _append(draw: st.DrawFn, message: Message, field: FieldDescriptor, known: Sequence[str], depth: int) -> None:
    values = getattr(message, field.name)
    if field.message_type is not None:
        if depth < 3:
            values.add().CopyFrom(draw(messages(field.message_type, known, depth + 1)))
    else:
        values.append(draw(_scalar(field, known)))


def _names_an_object(field: FieldDescriptor) -> bool:
    return field.name == "id" or field.name.endswith(("_id", "_ids"))


def _scalar(field: FieldDescriptor, known: Sequence[str]) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING and known and _names_an_object(field):
        # Half the time a real object's id: the call then gets past NOT_FOUND to the code that acts on it.
        return st.one_of(st.sampled_from(list(known)), strings(known))
    if kind == FieldDescriptor.TYPE_STRING:
        return strings(known)
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_ENUM:
        return st.integers(-3, 12) | st.sampled_from([2**31 - 1, -(2**31)])
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32 if kind == FieldDescriptor.TYPE_FLOAT else 64)
    if kind in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
        return st.integers(-(2**31), 2**31 - 1)
    if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    if kind in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    return st.integers(-(2**63), 2**63 - 1)


def raw_bytes(descriptor: Descriptor) -> st.SearchStrategy[bytes]:
    """Bytes on the wire that are garbage, a truncated real message, or a Struct nested too deep."""
    options = [
        st.binary(min_size=1, max_size=200),
        messages(descriptor).map(lambda m: m.SerializeToString()[:-1]).filter(bool),
        st.just(b"\x0a" + _varint(2_000_000) + b"x"),  # a length prefix far past the end
    ]
    structs = [f for f in descriptor.fields if f.message_type and f.message_type.full_name == "google.protobuf.Struct"]
    for field in structs:
        tag = _varint(field.number << 3 | 2)
        options.append(st.integers(90, 140).map(lambda d, tag=tag: tag + _length_prefixed(deep_struct_bytes(d))))
    return st.one_of(*options)


def _length_prefixed(body: bytes) -> bytes:
    return _varint(len(body)) + body


def assert_proper_status(error: grpc.aio.AioRpcError) -> str:
    """A hostile call's answer: a real status (never UNKNOWN or INTERNAL) with exactly one ErrorInfo."""
    assert error.code() not in NEVER, f"{error.code()}: {error.details()}"
    return rpc_failure(error).reason
