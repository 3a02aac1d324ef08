"""The rule for the free text people give things (names, reasons, payment references): a leaf module, so
every domain module that takes such text checks it the same way without importing another's."""

from __future__ import annotations

from signalhub.protocol.errors import InvalidArgument

NAME_MAX = 200


def validate_name(value: str, field: str) -> str:
    """``value`` without surrounding blanks: 1-200 printable characters, else INVALID_ARGUMENT naming
    ``field``."""
    name = value.strip()
    if not name or len(name) > NAME_MAX or not name.isprintable():
        raise InvalidArgument([(field, f"1-{NAME_MAX} printable characters")])
    return name
