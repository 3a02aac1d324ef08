"""Commissions as affiliates and admins see them, and the one admin action on them: reversing a fill
(e.g. the broker cancelled the trade). A PENDING commission is voided; one already AVAILABLE is voided
too, but its amount was released, so it becomes a negative adjustment (a CLAWBACK entry) taken from the
available balance, and what that cannot cover is set against the affiliate's future earnings. Reversing
changes only the affiliate side: what the device reported stays recorded as it came.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from backoffice import audit
from backoffice.affiliates import accrual, ledger, referrals
from backoffice.affiliates.program import Program
from backoffice.models import Commission, CommissionStatus, LedgerEntryKind
from backoffice.platform.auth import Caller, require_admin
from backoffice.platform.text import validate_name
from signalhub.protocol.errors import NotFound


async def reverse_fill(
    session: AsyncSession,
    caller: Caller,
    program: Program,
    fill_event_id: uuid.UUID,
    *,
    reason: str,
    request_id: str,
    now: datetime,
) -> Commission:
    """Reverse the commission a fill earned (admins only, with a reason); a fill still queued is accrued
    first. Reversing twice changes nothing. NOT_FOUND when the fill earned no commission."""
    require_admin(caller)
    reason = validate_name(reason, "reason")
    await accrual.accrue(session, program, fill_event_id=fill_event_id)
    affiliate_id = await session.scalar(
        select(Commission.affiliate_id).where(Commission.fill_event_id == fill_event_id)
    )
    if affiliate_id is None:
        raise NotFound("commission")
    book = (await ledger.open_books(session, [affiliate_id]))[affiliate_id]  # the affiliate first, then its row
    commission = (
        await session.scalars(
            select(Commission)
            .where(Commission.fill_event_id == fill_event_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).one()
    if commission.status is CommissionStatus.VOIDED:
        return commission
    clawed_back = commission.status is CommissionStatus.AVAILABLE
    kind = LedgerEntryKind.CLAWBACK if clawed_back else LedgerEntryKind.VOID
    entry_no = book.post(kind, commission.amount, commission_id=commission.id)
    commission.status = CommissionStatus.VOIDED
    commission.clawed_back = clawed_back
    commission.reversed_at = now
    commission.reverse_reason = reason
    await ledger.write(session, [book])
    audit.record(
        session,
        caller,
        "ReverseFill",
        "commission",
        commission.id,
        details={
            "amount": str(commission.amount),
            "ledger_entry": entry_no,
            "kind": kind.value,
            "fill_event_id": str(fill_event_id),
            "reason": reason,
        },
        request_id=request_id,
    )
    await session.flush()
    return commission


async def list_commissions(
    session: AsyncSession, caller: Caller, page: referrals.Page, status: CommissionStatus | None
) -> tuple[list[Commission], str]:
    """An affiliate's commissions, newest first (a user sees only its own; an admin names any)."""
    affiliate = await referrals.affiliate_of(session, caller, page.affiliate_id)
    query = select(Commission).where(Commission.affiliate_id == affiliate.id)
    if status is not None:
        query = query.where(Commission.status == status)
    return await referrals.page_of(session, query, Commission, page, status)
