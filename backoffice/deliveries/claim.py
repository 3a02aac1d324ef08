"""What is due for connected devices, marked SENT: deliveries without a RECEIVED ack and close commands
without a CloseResult, oldest first (see the package docstring for when each is due)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backoffice.models import CloseReason, Side
from backoffice.platform import db


@dataclass(frozen=True)
class ClaimRequest:
    device_id: uuid.UUID
    room: int  # how many instructions the device's stream can take now
    connected_at: datetime  # instructions SENT before this went out on an earlier stream: send again


@dataclass(frozen=True)
class DeliveryOrder:
    id: uuid.UUID
    signal_id: uuid.UUID
    instrument: str
    side: Side
    volume: Decimal
    entry_price: Decimal | None
    max_deviation: Decimal | None
    expire_time: datetime
    attempt: int
    created_at: datetime


@dataclass(frozen=True)
class CloseOrder:
    id: uuid.UUID
    position_id: uuid.UUID
    broker_ticket: str
    volume: Decimal
    reason: CloseReason
    attempt: int
    created_at: datetime


Order = DeliveryOrder | CloseOrder
OrderT = TypeVar("OrderT", DeliveryOrder, CloseOrder)


@dataclass(frozen=True)
class Claim:
    orders: dict[uuid.UUID, list[Order]]  # per device, oldest first
    more: frozenset[uuid.UUID]  # devices that may have more due than they had room for


# Sends of a close command without a CloseResult; after that it waits for expire_closes.
DEFAULT_CLOSE_ATTEMPTS = 5


# What is due for each device, as much as its room takes, marked SENT with a SENT execution event, in one
# statement (its own transaction). Rows another transaction holds are skipped (SKIP LOCKED). $1-$3 are the
# devices, their room and when their stream connected (sent before it: send again), $4 now, $5 the close
# attempts, $6 the ack-timeout cutoff (sent before it: send again). A close command's attempt counts its
# sends on the current stream: a new stream starts it again at 1, so sends into a connection that was
# dying never use up the budget that expire_closes judges (the bridge executes a command at most once,
# so sending it again is always safe). The rows sent come back oldest first, then one row per device that
# had more due than room (is_more).
_CLAIM_IN_ONE = """
WITH wanted AS (
    SELECT * FROM unnest($1::uuid[], $2::int[], $3::timestamptz[]) AS w(device_id, room, connected)
), due_deliveries AS (
    SELECT d.id, d.device_id, d.created_at, false AS is_command
    FROM wanted w, LATERAL (
        SELECT id, device_id, created_at FROM deliveries
        WHERE device_id = w.device_id AND state IN ('PENDING', 'SENT') AND expire_time > $4
          AND (state = 'PENDING' OR sent_at < w.connected OR sent_at < $6)
        ORDER BY created_at, id LIMIT w.room + 1
        FOR UPDATE SKIP LOCKED
    ) d
), due_commands AS (
    SELECT k.id, k.device_id, k.created_at, true AS is_command
    FROM wanted w, LATERAL (
        SELECT id, device_id, created_at FROM close_commands
        WHERE device_id = w.device_id
          AND (status = 'PENDING' OR (status = 'SENT' AND (sent_at < w.connected OR (attempt < $5 AND sent_at < $6))))
        ORDER BY created_at, id LIMIT w.room + 1
        FOR UPDATE SKIP LOCKED
    ) k
), ranked AS (
    SELECT c.*, w.room, w.connected,
           row_number() OVER (PARTITION BY c.device_id ORDER BY c.created_at, c.id) AS n,
           count(*) OVER (PARTITION BY c.device_id) AS due
    FROM (SELECT * FROM due_deliveries UNION ALL SELECT * FROM due_commands) c JOIN wanted w USING (device_id)
), sent_deliveries AS (
    UPDATE deliveries d SET state = 'SENT', sent_at = $4, attempt = d.attempt + 1, updated_at = $4
    FROM ranked r WHERE d.id = r.id AND NOT r.is_command AND r.n <= r.room
    RETURNING d.id, d.device_id, d.signal_id, d.instrument, d.side, d.volume, d.entry_price, d.max_deviation,
              d.expire_time, d.attempt, d.created_at
), sent_commands AS (
    UPDATE close_commands k SET status = 'SENT', sent_at = $4,
        attempt = CASE WHEN k.status = 'SENT' AND k.sent_at < r.connected THEN 1 ELSE k.attempt + 1 END
    FROM ranked r WHERE k.id = r.id AND r.is_command AND r.n <= r.room
    RETURNING k.id, k.device_id, k.position_id, k.volume, k.reason, k.attempt, k.created_at
), events AS (
    INSERT INTO execution_events (id, device_id, kind, delivery_id, close_command_id, stage, body, received_at)
    SELECT gen_random_uuid(), device_id, 'SENT', id, NULL, 'SENT', jsonb_build_object('attempt', attempt), $4
    FROM sent_deliveries
    UNION ALL
    SELECT gen_random_uuid(), device_id, 'SENT', NULL, id, 'SENT', jsonb_build_object('attempt', attempt), $4
    FROM sent_commands
)
SELECT false AS is_more, false AS is_command, id, device_id, signal_id, instrument, side, volume, entry_price,
       max_deviation, expire_time, attempt, created_at, NULL::uuid AS position_id, NULL AS broker_ticket,
       NULL AS reason
FROM sent_deliveries
UNION ALL
SELECT false, true, k.id, k.device_id, NULL, NULL, NULL, k.volume, NULL, NULL, NULL, k.attempt, k.created_at,
       k.position_id, p.broker_ticket, k.reason
FROM sent_commands k JOIN positions p ON p.id = k.position_id
UNION ALL
SELECT true, false, NULL, device_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
FROM (SELECT DISTINCT device_id FROM ranked WHERE due > room) m
ORDER BY created_at, id
"""


async def claim(
    sessions: async_sessionmaker[AsyncSession],
    requests: Sequence[ClaimRequest],
    now: datetime,
    ack_timeout: timedelta,
    max_close_attempts: int = DEFAULT_CLOSE_ATTEMPTS,
) -> Claim:
    """Mark what is due for these devices SENT and return it, in one statement on asyncpg: it runs on every
    push, and the ORM's five statements with their Python were most of a push's time. Rows another
    transaction holds (another replica sending to the same device during a takeover, or a frame being
    applied) are skipped, never waited for: they are due again at the next sweep."""
    wanted = list({r.device_id: r for r in requests if r.room > 0}.values())  # one request per device
    if not wanted:
        return Claim({}, frozenset())
    async with db.driver(sessions) as connection:
        rows = await connection.fetch(
            _CLAIM_IN_ONE,
            [r.device_id for r in wanted],
            [r.room for r in wanted],
            [r.connected_at for r in wanted],
            now,
            max_close_attempts,
            now - ack_timeout,
        )
    orders: dict[uuid.UUID, list[Order]] = {}
    more: set[uuid.UUID] = set()
    for row in rows:  # oldest first (the devices with more due last)
        if row["is_more"]:
            more.add(row["device_id"])
        else:
            orders.setdefault(row["device_id"], []).append(_order(row))
    return Claim(orders, frozenset(more))


def _order(row: Any) -> Order:
    """A claimed row as its order: the columns the statement returns are named as the order's fields."""
    if row["is_command"]:
        return _from_row(CloseOrder, row, reason=CloseReason(row["reason"]))
    return _from_row(DeliveryOrder, row, side=Side(row["side"]))


def _from_row(cls: type[OrderT], row: Any, **converted: Any) -> OrderT:
    return cls(**{f.name: row[f.name] for f in fields(cls) if f.name not in converted}, **converted)
