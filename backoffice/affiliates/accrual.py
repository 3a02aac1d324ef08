"""Commission accrual, off the uplink's hot transaction: the gateway queues every fill it records (a row of
``commission_queue`` naming the device, written by ``apply_delivery_reports`` with the fill's execution
event), and the worker drains the queue (``drain``):
a fill of a referred user accrues exactly one commission to the referrer, PENDING for the hold period;
``release_due`` then makes it AVAILABLE.

Exactly once: a queue row is taken by one worker at a time (``FOR UPDATE SKIP LOCKED``) and deleted in
the transaction that accrues it, and the unique key on ``commissions.fill_event_id`` refuses a second
commission for a fill whatever happens. A batch locks its affiliates (``ledger.open_books``) before it
reads their month's volume, so two workers accruing for one affiliate take turns and the second prices
from the volume the first wrote. The month is the fill's (by the server's receive time, UTC); voided
commissions do not count towards it; a reversal does not re-price what was accrued before it.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backoffice import audit
from backoffice.affiliates import ledger
from backoffice.affiliates.program import Program, month_of
from backoffice.models import (
    ActorType,
    Commission,
    CommissionQueueItem,
    CommissionStatus,
    Device,
    LedgerEntryKind,
    Position,
    Referral,
)
from backoffice.platform.db import any_id

BATCH = 500


async def drain(sessions: async_sessionmaker[AsyncSession], program: Program) -> int:
    """Accrue everything queued, a batch per transaction; returns how many fills were taken."""
    taken = 0
    while True:
        async with sessions.begin() as session:
            done = await accrue(session, program)
        taken += done
        if done < BATCH:
            return taken


async def accrue(session: AsyncSession, program: Program, *, fill_event_id: uuid.UUID | None = None) -> int:
    """Take up to a batch of queued fills (or the one named, waiting for it if a worker holds it) and
    accrue a commission for each fill of a referred user; the rest are simply dropped. Returns how many
    queue rows were taken. A batch prices its fills in the order they were received; concurrent
    batches take turns per affiliate (the book lock)."""
    query = select(CommissionQueueItem).order_by(CommissionQueueItem.filled_at, CommissionQueueItem.fill_event_id)
    if fill_event_id is None:
        query = query.limit(BATCH).with_for_update(skip_locked=True)
    else:
        query = query.where(CommissionQueueItem.fill_event_id == fill_event_id).with_for_update()
    items = list((await session.scalars(query)).all())
    if not items:
        return 0
    referred = await _referrers(session, {item.device_id for item in items})
    positions = dict(
        (
            await session.execute(
                select(Position.delivery_id, Position.id).where(
                    any_id(Position.delivery_id, {item.delivery_id for item in items})
                )
            )
        ).all()
    )
    by_affiliate: dict[uuid.UUID, list[CommissionQueueItem]] = defaultdict(list)
    for item in items:
        if item.device_id in referred:
            by_affiliate[referred[item.device_id][1]].append(item)
    books = await ledger.open_books(session, by_affiliate)
    accrued = set(
        (
            await session.scalars(
                select(Commission.fill_event_id).where(
                    any_id(Commission.fill_event_id, [item.fill_event_id for item in items])
                )
            )
        ).all()
    )
    commissions: list[dict[str, Any]] = []
    for affiliate_id, book in books.items():
        fresh = [item for item in by_affiliate[affiliate_id] if item.fill_event_id not in accrued]
        volume = await _month_lots(session, affiliate_id, {month_of(item.filled_at) for item in fresh})
        for item in fresh:
            month = month_of(item.filled_at)
            price = program.price(volume[month], item.lots)
            volume[month] += item.lots
            commission_id = uuid.uuid4()
            row = {
                "id": commission_id,
                "affiliate_id": affiliate_id,
                "referred_user_id": referred[item.device_id][0],
                "fill_event_id": item.fill_event_id,
                "position_id": positions.get(item.delivery_id),
                "lots": item.lots,
                "month": month,
                "pricing": price.as_json(),
                "amount": price.amount,
                "currency": program.currency,
                "status": CommissionStatus.PENDING,
                "filled_at": item.filled_at,
                "available_at": item.filled_at + program.hold,
            }
            commissions.append(row)
            entry_no = book.post(LedgerEntryKind.ACCRUAL, price.amount, commission_id=commission_id)
            _audit(
                session,
                "AccrueCommission",
                commission_id,
                price.amount,
                entry_no,
                fill_event_id=str(item.fill_event_id),
            )
    if commissions:
        connection = await session.connection()
        await connection.execute(insert(Commission), commissions)
    await ledger.write(session, books.values())
    await session.execute(
        delete(CommissionQueueItem).where(any_id(CommissionQueueItem.fill_event_id, [i.fill_event_id for i in items]))
    )
    return len(items)


async def release_due(sessions: async_sessionmaker[AsyncSession], now: datetime) -> int:
    """Make every PENDING commission whose hold has ended AVAILABLE, an affiliate per transaction (its
    released amounts first pay off any clawback due); returns how many were released."""
    async with sessions() as session:
        affiliate_ids = (
            await session.scalars(
                select(Commission.affiliate_id)
                .where(Commission.status == CommissionStatus.PENDING, Commission.available_at <= now)
                .distinct()
            )
        ).all()
    released = 0
    for affiliate_id in affiliate_ids:
        async with sessions.begin() as session:
            book = (await ledger.open_books(session, [affiliate_id]))[affiliate_id]
            due = (
                await session.execute(
                    select(Commission.id, Commission.amount)
                    .where(
                        Commission.affiliate_id == affiliate_id,
                        Commission.status == CommissionStatus.PENDING,
                        Commission.available_at <= now,
                    )
                    .order_by(Commission.available_at, Commission.id)
                    .with_for_update()
                )
            ).all()
            for commission_id, amount in due:
                entry_no = book.post(LedgerEntryKind.HOLD_RELEASE, amount, commission_id=commission_id)
                _audit(session, "ReleaseCommission", commission_id, amount, entry_no)
            await session.execute(
                update(Commission)
                .where(any_id(Commission.id, [commission_id for commission_id, _ in due]))
                .values(status=CommissionStatus.AVAILABLE)
            )
            await ledger.write(session, [book])
        released += len(due)
    return released


async def _referrers(session: AsyncSession, device_ids: set[uuid.UUID]) -> dict[uuid.UUID, tuple[uuid.UUID, uuid.UUID]]:
    """device id -> (its owner, the affiliate that referred the owner), for devices of referred users."""
    rows = await session.execute(
        select(Device.id, Device.user_id, Referral.affiliate_id)
        .join(Referral, Referral.referred_user_id == Device.user_id)
        .where(any_id(Device.id, device_ids))
    )
    return {device_id: (user_id, affiliate_id) for device_id, user_id, affiliate_id in rows}


async def _month_lots(session: AsyncSession, affiliate_id: uuid.UUID, months: set[date]) -> dict[date, Decimal]:
    """The affiliate's lots so far in each month (its referred users' fills, less reversed ones)."""
    volume = dict.fromkeys(months, Decimal(0))
    if months:
        rows = await session.execute(
            select(Commission.month, func.sum(Commission.lots))
            .where(
                Commission.affiliate_id == affiliate_id,
                Commission.month.in_(months),
                Commission.status != CommissionStatus.VOIDED,
            )
            .group_by(Commission.month)
        )
        volume.update(rows.all())
    return volume


def _audit(
    session: AsyncSession, action: str, commission_id: uuid.UUID, amount: Decimal, entry_no: int, **details: str
) -> None:
    audit.record(
        session,
        (ActorType.SYSTEM, None),
        action,
        "commission",
        commission_id,
        details={"amount": str(amount), "ledger_entry": entry_no, **details},
    )
