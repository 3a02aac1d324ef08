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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

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


def newest(states: Iterable[AccountStateIn]) -> dict[uuid.UUID, AccountStateIn]:
    """The newest state of each device (the later one of two equally dated)."""
    found: dict[uuid.UUID, AccountStateIn] = {}
    for state in states:
        current = found.get(state.device_id)
        if current is None or current.state_time <= state.state_time:
            found[state.device_id] = state
    return found


async def store_latest(
    session: AsyncSession, states: Iterable[AccountStateIn], now: datetime
) -> list[StoredAccountState]:
    """Upsert the newest state of each device in one statement, in device order (two transactions lock the
    same rows in the same order); returns the states that were stored."""
    found = newest(states)
    if not found:
        return []
    ordered = [found[device_id] for device_id in sorted(found)]
    rows = await driver_rows(
        session,
        _UPSERT,
        [s.device_id for s in ordered],
        [s.balance for s in ordered],
        [s.equity for s in ordered],
        [s.margin for s in ordered],
        [s.free_margin for s in ordered],
        [s.state_time for s in ordered],
        [s.frame_id for s in ordered],
        now,
    )
    stored = [found[row.device_id] for row in rows]
    return [StoredAccountState(s.device_id, s.balance, s.equity, s.state_time, now) for s in stored]


async def recorded_frames(
    session: AsyncSession, device_frames: Iterable[tuple[uuid.UUID, str]]
) -> set[tuple[uuid.UUID, str]]:
    """Which (device, frame id) pairs set a stored state: a repeat of such a frame is a DUPLICATE."""
    pairs = set(device_frames)
    if not pairs:
        return set()
    rows = await driver_rows(
        session, _RECORDED_FRAMES, list({device for device, _ in pairs}), list({frame for _, frame in pairs})
    )
    return {(row.device_id, row.frame_id) for row in rows if (row.device_id, row.frame_id) in pairs}


# The driver's own SQL (``db.driver_rows``): states can come every few seconds from every device holding
# positions, so the statement is one fixed text whatever the batch's size.
_UPSERT = """
INSERT INTO account_states AS stored
    (device_id, balance, equity, margin, free_margin, state_time, frame_id, received_at)
SELECT v.*, $8::timestamptz
FROM unnest($1::uuid[], $2::numeric[], $3::numeric[], $4::numeric[], $5::numeric[], $6::timestamptz[], $7::text[])
    AS v(device_id, balance, equity, margin, free_margin, state_time, frame_id)
ON CONFLICT (device_id) DO UPDATE SET
    balance = excluded.balance, equity = excluded.equity, margin = excluded.margin,
    free_margin = excluded.free_margin, state_time = excluded.state_time, frame_id = excluded.frame_id,
    received_at = excluded.received_at
WHERE stored.state_time < excluded.state_time
   OR stored.state_time > excluded.received_at
   OR (stored.frame_id IS NULL AND excluded.frame_id IS NOT NULL)
RETURNING stored.device_id
"""
_RECORDED_FRAMES = (
    "SELECT device_id, frame_id FROM account_states WHERE device_id = ANY($1::uuid[]) AND frame_id = ANY($2::text[])"
)


async def latest(session: AsyncSession, device_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, AccountState]:
    """The stored (newest) account state of each of these devices that has one."""
    if not device_ids:
        return {}
    rows = await session.scalars(select(AccountState).where(any_id(AccountState.device_id, device_ids)))
    return {row.device_id: row for row in rows}
