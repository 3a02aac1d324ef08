"""A device's trading account as its bridge last reported it: balance, equity and margin, from its
AccountState frames and the balance and equity of its Hello. One row per device (``account_states``),
overwritten by a newer state and never by an older one; no row, and no execution event, per frame.

Which state is newer is read from ``state_time``, the device's clock, with two exceptions, both about
comparing two clocks: a stored state dated ahead of the server's clock gives way to any state (a fast
device clock never holds the row), and a Hello's state, which the server dates itself, gives way to the
device's own frames that follow it (so a slow device clock does not hide them until it catches up).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from backoffice.models import AccountState
from backoffice.platform.db import any_id, driver_rows


@dataclass(frozen=True)
class AccountStateIn:
    device_id: uuid.UUID
    balance: Decimal
    equity: Decimal
    margin: Decimal | None
    free_margin: Decimal | None
    state_time: datetime
    frame_id: str | None  # the AccountState frame that carried it; None for a Hello's


@dataclass(frozen=True)
class StoredAccountState:
    """A state that was stored, for what acts on it once committed (risk limits)."""

    device_id: uuid.UUID
    balance: Decimal
    equity: Decimal
    state_time: datetime
    received_at: datetime


async def store_latest(
    session: AsyncSession, states: Sequence[AccountStateIn], now: datetime
) -> list[StoredAccountState]:
    """Upsert the newest state of each device (the later of two equally dated) in one statement, the
    Postgres function ``store_account_states`` (migration 0010, which the uplink's ``record_account_states``
    also calls), in the session's transaction; returns the states that were stored."""
    if not states:
        return []
    rows = await driver_rows(session, _STORE, *columns(states), now)
    return [StoredAccountState(row.device_id, row.balance, row.equity, row.state_time, now) for row in rows]


def columns(states: Sequence[AccountStateIn]) -> list[list[Any]]:
    """The states as the arrays ``store_account_states`` and ``record_account_states`` take, in their order."""
    return [
        [s.device_id for s in states],
        [s.balance for s in states],
        [s.equity for s in states],
        [s.margin for s in states],
        [s.free_margin for s in states],
        [s.state_time for s in states],
        [s.frame_id for s in states],
    ]


_STORE = """
SELECT device_id, balance, equity, state_time
FROM store_account_states($1::uuid[], $2::numeric[], $3::numeric[], $4::numeric[], $5::numeric[],
                          $6::timestamptz[], $7::text[], $8::timestamptz)
"""


async def latest(session: AsyncSession, device_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, AccountState]:
    """The stored (newest) account state of each of these devices that has one."""
    if not device_ids:
        return {}
    rows = await session.scalars(select(AccountState).where(any_id(AccountState.device_id, device_ids)))
    return {row.device_id: row for row in rows}
