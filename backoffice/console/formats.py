"""How values read on a page: enum values by name, timestamps in UTC, durations, short ids, and the
problems a form's field has."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2


def label(value: int, enum: Any) -> str:
    """An enum value for people: ``APPROVAL_STATUS_PENDING`` of ApprovalStatus is "Pending". ``enum`` is a
    generated enum (typed Any: each has its own ValueType)."""
    try:
        name = str(enum.Name(value))
    except ValueError:
        return str(value)
    prefix = str(enum.DESCRIPTOR.values[0].name).removesuffix("UNSPECIFIED")
    text = name.removeprefix(prefix).replace("_", " ").lower()
    return text[:1].upper() + text[1:]


def css(value: int, enum: Any) -> str:
    """An enum value as a CSS class word: ``POSITION_STATUS_CLOSED_ERROR`` is "closed-error"."""
    return label(value, enum).lower().replace(" ", "-")


def when(stamp: timestamp_pb2.Timestamp) -> str:
    """A timestamp in UTC to the second; empty when unset."""
    if not stamp.seconds and not stamp.nanos:
        return ""
    return datetime.fromtimestamp(stamp.seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(stamp: timestamp_pb2.Timestamp) -> str:
    """A timestamp for a ``<time datetime>`` attribute; empty when unset."""
    return stamp.ToDatetime(UTC).isoformat() if stamp.seconds or stamp.nanos else ""


def seconds(duration: duration_pb2.Duration) -> float:
    return duration.seconds + duration.nanos / 1e9


def milliseconds(duration: duration_pb2.Duration) -> str:
    ms = seconds(duration) * 1000
    return f"{ms:.0f} ms" if ms < 10_000 else f"{ms / 1000:.1f} s"


def short(identifier: str) -> str:
    """The first block of a UUID: enough to tell objects apart on one page."""
    return identifier.split("-", 1)[0]


def for_field(errors: Mapping[str, str], name: str) -> str:
    """What is wrong with the field ``name``: the violations at its path and below it (``symbol_map[XAU]``
    belongs to ``symbol_map``), on one line."""
    found = [text for path, text in errors.items() if path == name or path.startswith((f"{name}[", f"{name}."))]
    return "; ".join(found)


def enum_options(enum: Any, blank: str = "") -> list[tuple[str, str]]:
    """A select's options for ``enum`` (its values by name, UNSPECIFIED left out), after ``blank`` as the
    empty choice when given."""
    found = [("", blank)] if blank else []
    found.extend((value.name, label(value.number, enum)) for value in enum.DESCRIPTOR.values[1:])
    return found
