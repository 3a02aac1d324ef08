"""Payouts: an affiliate asks for part of its available balance (at least the program's minimum), an admin
approves or rejects it, then marks it paid.

REQUESTED -> APPROVED -> PAID, or REQUESTED / APPROVED -> REJECTED (e.g. the transfer bounced). The
request moves the amount from available to reserved in the ledger; a rejection moves it back (paying off
any clawback due first); marking it paid moves it to paid. The same decision again returns the payout
unchanged; any other move is FAILED_PRECONDITION. The request reads the balance while holding the
affiliate's lock (``ledger.open_books``), so of two requests that together exceed it, the second is
refused. How to pay (``method_details``) is sealed at rest and never written to the audit log.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from backoffice import audit
from backoffice.affiliates import ledger, referrals
from backoffice.affiliates.program import CENT, Program
from backoffice.models import LedgerEntryKind, Payout, PayoutStatus
from backoffice.platform.auth import Caller, require_admin
from backoffice.platform.idempotency import add_once
from backoffice.platform.text import validate_name
from backoffice.platform.vault import Binding, Vault
from signalhub.protocol.errors import FailedPrecondition, InvalidArgument, NotFound

METHOD_DETAILS_MAX_BYTES = 4096


async def request_payout(
    session: AsyncSession,
    vault: Vault,
    caller: Caller,
    program: Program,
    *,
    amount: Decimal,
    method_details: dict[str, Any],
    request_id: str,
) -> Payout:
    """A REQUESTED payout of ``amount`` from the caller's available balance. INVALID_ARGUMENT for an amount
    not in whole cents or below the minimum, or missing or oversized method details; FAILED_PRECONDITION
    (reason INSUFFICIENT_BALANCE) for more than is available."""
    affiliate = await referrals.affiliate_of(session, caller)
    details = json.dumps(method_details, sort_keys=True, separators=(",", ":")).encode()
    violations = []
    if amount != amount.quantize(CENT):
        violations.append(("amount", "whole cents only"))
    elif amount < program.payout_minimum:
        violations.append(("amount", f"at least {program.payout_minimum} {program.currency}"))
    if not method_details or len(details) > METHOD_DETAILS_MAX_BYTES:
        violations.append(("method_details", f"how to pay, 1 to {METHOD_DETAILS_MAX_BYTES} bytes of JSON"))
    if violations:
        raise InvalidArgument(violations)
    book = (await ledger.open_books(session, [affiliate.id]))[affiliate.id]
    available = book.balances.available
    if amount > available:
        raise FailedPrecondition(
            f"only {available} {program.currency} is available",
            reason="INSUFFICIENT_BALANCE",
            metadata={"available": str(available), "currency": program.currency},
        )
    payout_id = uuid.uuid4()
    payout = Payout(
        id=payout_id,
        affiliate_id=affiliate.id,
        request_id=uuid.UUID(request_id) if request_id else None,
        amount=amount,
        currency=program.currency,
        status=PayoutStatus.REQUESTED,
        method_details_sealed=vault.seal(details, _binding(payout_id)),
    )
    await add_once(session, payout)
    entry_no = book.post(LedgerEntryKind.PAYOUT_REQUESTED, amount, payout_id=payout_id)
    await ledger.write(session, [book])
    _audit(session, caller, "RequestPayout", payout, entry_no, request_id)
    return payout


class Decision(Enum):
    APPROVE = ("ApprovePayout", PayoutStatus.APPROVED, (PayoutStatus.REQUESTED,), None)
    REJECT = ("RejectPayout", PayoutStatus.REJECTED, (PayoutStatus.REQUESTED, PayoutStatus.APPROVED), "PAYOUT_REJECTED")
    MARK_PAID = ("MarkPayoutPaid", PayoutStatus.PAID, (PayoutStatus.APPROVED,), "PAYOUT_PAID")


async def decide(
    session: AsyncSession,
    caller: Caller,
    payout_id: uuid.UUID,
    decision: Decision,
    *,
    note: str = "",
    request_id: str = "",
) -> Payout:
    """An admin's decision on a payout: ``note`` is the rejection's reason or the payment's reference
    (both required). Deciding the same again returns the payout unchanged."""
    require_admin(caller)
    action, target, sources, movement = decision.value
    text = ""
    if decision is Decision.REJECT:
        text = validate_name(note, "reason")
    elif decision is Decision.MARK_PAID:
        text = validate_name(note, "payment_reference")
    affiliate_id = await session.scalar(select(Payout.affiliate_id).where(Payout.id == payout_id))
    if affiliate_id is None:
        raise NotFound("payout")
    book = (await ledger.open_books(session, [affiliate_id]))[affiliate_id]  # the affiliate first, then its row
    payout = await session.get_one(Payout, payout_id, with_for_update=True, populate_existing=True)
    if payout.status is target:
        return payout
    if payout.status not in sources:
        raise FailedPrecondition(
            f"a payout that is {payout.status.value} cannot become {target.value}",
            reason="INVALID_TRANSITION",
            metadata={"payout_id": str(payout.id), "state": payout.status.value, "stage": target.value},
        )
    now = datetime.now(UTC)
    payout.status = target
    if decision is Decision.MARK_PAID:
        payout.payment_reference, payout.paid_at = text, now
    else:
        payout.decided_at = now
        payout.reason = text or None
    entry_no = book.post(LedgerEntryKind(movement), payout.amount, payout_id=payout.id) if movement else None
    await ledger.write(session, [book])
    _audit(session, caller, action, payout, entry_no, request_id)
    await session.flush()
    return payout


async def list_payouts(
    session: AsyncSession, caller: Caller, page: referrals.Page, status: PayoutStatus | None
) -> tuple[list[Payout], str]:
    """Payouts, newest first: a user's own; an admin's choice of affiliate, or everyone's."""
    query = select(Payout)
    if page.affiliate_id is not None or not caller.is_admin:
        query = query.where(
            Payout.affiliate_id == (await referrals.affiliate_of(session, caller, page.affiliate_id)).id
        )
    if status is not None:
        query = query.where(Payout.status == status)
    return await referrals.page_of(session, query, Payout, page, status)


def method_details(vault: Vault, payout: Payout) -> dict[str, Any]:
    """How to pay, opened from its sealed form (for the affiliate and admins only)."""
    opened: dict[str, Any] = json.loads(vault.open(payout.method_details_sealed, _binding(payout.id)))
    return opened


def _binding(payout_id: uuid.UUID) -> Binding:
    return Binding("payouts", str(payout_id), "method_details_sealed")


def _audit(
    session: AsyncSession, caller: Caller, action: str, payout: Payout, entry_no: int | None, request_id: str
) -> None:
    details: dict[str, Any] = {"amount": str(payout.amount), "currency": payout.currency}
    if entry_no is not None:
        details["ledger_entry"] = entry_no
    audit.record(
        session,
        caller,
        action,
        "payout",
        payout.id,
        details=details,
        request_id=request_id,
    )
