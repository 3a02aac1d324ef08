"""Keyset paging for every list RPC: ``page_size`` 0 means 50, larger than 500 is coerced to 500, and an
opaque ``page_token`` that only says where the previous page ended (it grants nothing: every query still
filters by what the caller may see), bound to the request's filters."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from signalhub.protocol.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MAX_TOKEN_CHARS = 512
# Rows are stamped as they are written: a cursor outside these years was not issued by this server, and the
# bounds keep well clear of the edges of Python's calendar, where converting to UTC overflows.
EARLIEST_CURSOR_TIME = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_CURSOR_TIME = datetime(9000, 1, 1, tzinfo=UTC)
_TOKEN_KEYS = frozenset({"t", "i", "f"})

RowT = TypeVar("RowT")


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument([("page_size", "must not be negative")])
    return DEFAULT_PAGE_SIZE if requested == 0 else min(requested, MAX_PAGE_SIZE)


@dataclass(frozen=True)
class PageRequest:
    """Which page a list request asks for: its ``page_size`` and ``page_token``, as sent."""

    size: int
    token: str


class ListRequest(Protocol):
    """Every list request message: it carries a page size and a page token."""

    @property
    def page_size(self) -> int: ...

    @property
    def page_token(self) -> str: ...


def requested(request: ListRequest) -> PageRequest:
    return PageRequest(request.page_size, request.page_token)


@dataclass(frozen=True)
class Cursor:
    created_at: datetime
    id: uuid.UUID


def _fingerprint(filters: Sequence[object]) -> str:
    return hashlib.sha256(json.dumps([str(f) for f in filters]).encode()).hexdigest()[:16]


def encode_token(cursor: Cursor, filters: Sequence[object]) -> str:
    raw = json.dumps({"t": cursor.created_at.isoformat(), "i": str(cursor.id), "f": _fingerprint(filters)})
    return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode()


def decode_token(token: str, filters: Sequence[object]) -> Cursor | None:
    """The cursor ``token`` carries (None for the first page); INVALID_ARGUMENT naming ``page_token`` for
    anything ``encode_token`` did not write for these filters."""
    if not token:
        return None
    # The tokens issued are about 130 characters. The cap bounds the work a forged one costs, and with it
    # how deep JSON inside one can nest (the parser recurses once per level).
    if len(token) > MAX_TOKEN_CHARS:
        raise _not_a_token()
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, RecursionError):  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise _not_a_token() from None
    if not isinstance(data, dict) or set(data) != _TOKEN_KEYS or not all(isinstance(v, str) for v in data.values()):
        raise _not_a_token()
    try:
        cursor = Cursor(_cursor_time(data["t"]), uuid.UUID(data["i"]))
    except ValueError:
        raise _not_a_token() from None
    if data["f"] != _fingerprint(filters):
        raise InvalidArgument([("page_token", "the filters changed since this token was issued")])
    return cursor


def _cursor_time(text: str) -> datetime:
    """A token's time, in UTC; ValueError unless it names its offset and lies in the rows' range. Checked
    here because the database driver converts it to UTC, which overflows at the edges of Python's calendar
    (0001-01-01T00:00:00+05:00), and would fail the query as if the database were down."""
    moment = datetime.fromisoformat(text)
    if moment.utcoffset() is None:
        raise ValueError("a page token's time must name its offset")
    try:
        in_utc = moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("a page token's time is out of range") from None
    if not EARLIEST_CURSOR_TIME <= in_utc <= LATEST_CURSOR_TIME:
        raise ValueError("a page token's time is out of range")
    return in_utc


def _not_a_token() -> InvalidArgument:
    return InvalidArgument([("page_token", "not a page token from this list")])


async def fetch_page(
    session: AsyncSession,
    query: Select[RowT],
    *,
    created_at: InstrumentedAttribute[datetime],
    id_column: InstrumentedAttribute[uuid.UUID],
    requested_size: int,
    page_token: str,
    filters: Sequence[Any],
    newest_first: bool = True,
) -> tuple[list[RowT], str]:
    """One page of ``query`` in (created_at, id) order and the token of the next ('' at the end)."""
    size = page_size(requested_size)
    cursor = decode_token(page_token, filters)
    if cursor is not None:
        if newest_first:
            after = or_(created_at < cursor.created_at, and_(created_at == cursor.created_at, id_column < cursor.id))
        else:
            after = or_(created_at > cursor.created_at, and_(created_at == cursor.created_at, id_column > cursor.id))
        query = query.where(after)
    order = (created_at.desc(), id_column.desc()) if newest_first else (created_at.asc(), id_column.asc())
    rows = list((await session.scalars(query.order_by(*order).limit(size + 1))).all())
    if len(rows) <= size:
        return rows, ""
    last = rows[size - 1]
    token = encode_token(Cursor(getattr(last, created_at.key), getattr(last, id_column.key)), filters)
    return rows[:size], token


async def fetch(
    session: AsyncSession,
    query: Select[RowT],
    model: Any,
    page: PageRequest,
    *,
    filters: Sequence[Any],
    created_at: InstrumentedAttribute[datetime] | None = None,
    newest_first: bool = True,
) -> tuple[list[RowT], str]:
    """``fetch_page`` keyed on ``model``'s ``created_at`` (or the column given) and ``id``."""
    return await fetch_page(
        session,
        query,
        created_at=model.created_at if created_at is None else created_at,
        id_column=model.id,
        requested_size=page.size,
        page_token=page.token,
        filters=filters,
        newest_first=newest_first,
    )
