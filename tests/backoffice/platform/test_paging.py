"""Page tokens: what paging issues reads back to the same place, and anything else is INVALID_ARGUMENT
naming page_token before it can reach a query."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from backoffice.bootstrap import Resources
from backoffice.devices import registration
from backoffice.models import Device
from backoffice.platform import paging
from backoffice.platform.paging import Cursor
from signalhub.protocol.errors import InvalidArgument
from tests.conftest import UserCredentials, make_device
from tests.hostile import NESTED_JSON, encode_page_token

FILTERS: list[object] = [None]
FINGERPRINT = paging._fingerprint(FILTERS)
SOME_ID = "556b51c7-1222-4e04-8cbf-2f6b96461b91"  # fixed: it names tests, which every xdist worker must name alike
# Inside Python's calendar, but past it once converted to UTC (the driver's first step), or outside the
# years a row of this server can carry.
BOUNDARY_TIMES = [
    "0001-01-01T00:00:00+05:00",
    "0001-01-01T00:00:00+00:00:01",
    "9999-12-31T23:59:59-05:00",
    "9999-12-31T23:59:59.999999-00:00:01",
    "0001-01-01T00:00:00+00:00",
    "9999-12-31T23:59:59.999999+00:00",
    "1969-12-31T23:59:59.999999+00:00",
    "9000-01-01T00:00:00.000001+00:00",
]


def cursor_token(moment: object, row_id: object = SOME_ID, fingerprint: object = FINGERPRINT) -> str:
    return encode_page_token({"t": moment, "i": row_id, "f": fingerprint})


def assert_names_page_token(token: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        paging.decode_token(token, FILTERS)
    assert [field for field, _ in info.value.violations] == ["page_token"]


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 1, 1, 5, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(8999, 12, 31, 23, 59, 59, tzinfo=UTC),
    ],
)
def test_an_issued_token_reads_back_the_same_place(moment: datetime) -> None:
    cursor = Cursor(moment, uuid.uuid4())
    decoded = paging.decode_token(paging.encode_token(cursor, FILTERS), FILTERS)
    assert decoded == cursor and decoded.created_at.utcoffset() == timedelta(0)


def test_no_token_is_the_first_page() -> None:
    assert paging.decode_token("", FILTERS) is None


@pytest.mark.parametrize("moment", [*BOUNDARY_TIMES, "2026-01-01T00:00:00"])
def test_a_cursor_time_outside_the_rows_range_or_without_offset_names_page_token(moment: str) -> None:
    assert_names_page_token(cursor_token(moment))


@pytest.mark.parametrize("body", NESTED_JSON, ids=lambda body: f"{body[:8]}...({len(body)})")
def test_nested_json_names_page_token(body: str) -> None:
    assert_names_page_token(encode_page_token(body))


@pytest.mark.parametrize(
    "body",
    [
        {"t": "2026-01-01T00:00:00+00:00", "i": 5, "f": FINGERPRINT},
        {"t": "2026-01-01T00:00:00+00:00", "i": [], "f": FINGERPRINT},
        {"t": "2026-01-01T00:00:00+00:00", "i": "not-a-uuid", "f": FINGERPRINT},
        {"t": 1767225600, "i": SOME_ID, "f": FINGERPRINT},
        {"t": None, "i": SOME_ID, "f": FINGERPRINT},
        {"t": "2026-01-01T00:00:00+00:00", "i": SOME_ID, "f": ["list"]},
        {"t": "2026-01-01T00:00:00+00:00", "i": SOME_ID},
        {"t": "2026-01-01T00:00:00+00:00", "i": SOME_ID, "f": FINGERPRINT, "x": 1},
        ["2026-01-01T00:00:00+00:00", SOME_ID, FINGERPRINT],
        "text",
        None,
        1e400,
    ],
    ids=str,
)
def test_any_other_shape_names_page_token(body: object) -> None:
    assert_names_page_token(encode_page_token(body))


@pytest.mark.parametrize("token", ["!!!", "é", "\x00", "A", "AAAA", "_w", "A" * 10_000])
def test_text_that_is_no_token_names_page_token(token: str) -> None:
    assert_names_page_token(token)


def test_a_token_of_other_filters_names_page_token() -> None:
    token = paging.encode_token(Cursor(datetime(2026, 1, 1, tzinfo=UTC), uuid.uuid4()), ["ACTIVE"])
    assert_names_page_token(token)


async def test_a_boundary_cursor_never_reaches_postgres(res: Resources, user: UserCredentials) -> None:
    """Each boundary time carries the right fingerprint, so only the time stands between it and the query."""
    async with res.sessions() as session:
        for moment in BOUNDARY_TIMES:
            with pytest.raises(InvalidArgument) as info:
                await registration.list_devices(
                    session, user.caller, status=None, page=paging.PageRequest(1, cursor_token(moment))
                )
            assert [field for field, _ in info.value.violations] == ["page_token"], moment


async def test_issued_tokens_page_through_real_rows(res: Resources, user: UserCredentials) -> None:
    made = {(await make_device(res, user)).id for _ in range(3)}
    seen: list[uuid.UUID] = []
    token = ""
    async with res.sessions() as session:
        while True:
            rows, token = await paging.fetch_page(
                session,
                select(Device).where(Device.user_id == user.id),
                created_at=Device.created_at,
                id_column=Device.id,
                requested_size=1,
                page_token=token,
                filters=FILTERS,
            )
            seen += [row.id for row in rows]
            if not token:
                break
    assert len(seen) == 3 and set(seen) == made
