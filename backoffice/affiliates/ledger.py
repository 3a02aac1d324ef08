"""The affiliate ledger: every money movement of an affiliate is one row, and the ledger is the only
source of its balances.

An affiliate's money sits in five balances: ``pending`` (commission in its hold period), ``available``
(may be paid out), ``reserved`` (in a requested or approved payout), ``paid``, and ``clawback_due``
(reversed commission that was already released and not yet set against later earnings). Each entry
names a movement (its kind and amount) and stores the balances after it; what a kind moves is written
once, in ``Balances.after``:

| kind | moves |
|---|---|
| ACCRUAL | + pending |
| HOLD_RELEASE | pending -> available, paying off clawback_due first |
| VOID | - pending (the fill was reversed in the hold period) |
| CLAWBACK | - available, and what available cannot cover becomes clawback_due |
| PAYOUT_REQUESTED | available -> reserved |
| PAYOUT_REJECTED | reserved -> available, paying off clawback_due first |
| PAYOUT_PAID | reserved -> paid |

No balance is ever negative (a CHECK constraint), so a clawback is set against future earnings and is
never a negative payout. Entries are numbered 1, 2, ... per affiliate and written only while the
affiliate's row is locked (``open_books``), so concurrent movements of one affiliate take turns and the
second sees the first; the unique (affiliate, number) key and an append-only trigger back that up.
``check`` replays every entry from zero and compares the balances it gets with the stored ones and with
the commissions and payouts they stand for.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from sqlalchemy import case, func, insert, select, true
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from backoffice.models import (
    Affiliate,
    AffiliateLedgerEntry,
    Commission,
    CommissionStatus,
    LedgerEntryKind,
    Payout,
    PayoutStatus,
)
from backoffice.platform.db import any_id

ZERO = Decimal("0.00")  # balances are in cents, and say so even when empty
BALANCES = ("pending", "available", "reserved", "paid", "clawback_due")
_AMOUNTS = ("amount", *BALANCES)


class LedgerError(RuntimeError):
    """A movement would make a balance negative: callers check what they may move first."""


@dataclass(frozen=True)
class Balances:
    pending: Decimal = ZERO
    available: Decimal = ZERO
    reserved: Decimal = ZERO
    paid: Decimal = ZERO
    clawback_due: Decimal = ZERO

    def after(self, kind: LedgerEntryKind, amount: Decimal) -> Balances:
        """The balances after moving ``amount`` as ``kind`` says (the table in the module docstring)."""
        K = LedgerEntryKind
        if kind is K.ACCRUAL:
            moved = replace(self, pending=self.pending + amount)
        elif kind is K.HOLD_RELEASE:
            moved = replace(self, pending=self.pending - amount)._credit(amount)
        elif kind is K.VOID:
            moved = replace(self, pending=self.pending - amount)
        elif kind is K.CLAWBACK:
            taken = min(self.available, amount)
            moved = replace(self, available=self.available - taken, clawback_due=self.clawback_due + amount - taken)
        elif kind is K.PAYOUT_REQUESTED:
            moved = replace(self, available=self.available - amount, reserved=self.reserved + amount)
        elif kind is K.PAYOUT_REJECTED:
            moved = replace(self, reserved=self.reserved - amount)._credit(amount)
        else:
            moved = replace(self, reserved=self.reserved - amount, paid=self.paid + amount)
        if amount < 0 or min(moved.values()) < 0:
            raise LedgerError(f"{kind.value} of {amount} would make a balance negative")
        return moved

    def _credit(self, amount: Decimal) -> Balances:
        # Earnings pay off what reversed, already released commission still owes before they are available.
        settled = min(self.clawback_due, amount)
        return replace(self, available=self.available + amount - settled, clawback_due=self.clawback_due - settled)

    def values(self) -> tuple[Decimal, ...]:
        return tuple(getattr(self, name) for name in BALANCES)

    @property
    def earned(self) -> Decimal:
        """Commission earned net of reversals: what the affiliate's live commissions add up to."""
        return self.pending + self.available + self.reserved + self.paid - self.clawback_due


@dataclass
class Book:
    """One affiliate's ledger as the current transaction holds it: locked, with entries still to write."""

    affiliate_id: uuid.UUID
    last_no: int
    balances: Balances
    entries: list[dict[str, Any]] = field(default_factory=list)

    def post(
        self,
        kind: LedgerEntryKind,
        amount: Decimal,
        *,
        commission_id: uuid.UUID | None = None,
        payout_id: uuid.UUID | None = None,
    ) -> int:
        """Record one movement (written by ``write``); returns its entry number."""
        self.balances = self.balances.after(kind, amount)
        self.last_no += 1
        self.entries.append(
            {
                "id": uuid.uuid4(),
                "affiliate_id": self.affiliate_id,
                "entry_no": self.last_no,
                "kind": kind,
                "commission_id": commission_id,
                "payout_id": payout_id,
                "amount": amount,
                **{name: getattr(self.balances, name) for name in BALANCES},
            }
        )
        return self.last_no


async def open_books(session: AsyncSession, affiliate_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Book]:
    """Lock the affiliates' rows (in id order, so two transactions never wait on each other in a cycle) and
    read each one's last entry. Whoever moves an affiliate's money holds this lock until it commits; it is
    FOR NO KEY UPDATE, so rows that merely reference the affiliate (a new referral) do not wait for it."""
    ids = sorted(set(affiliate_ids))
    if not ids:
        return {}
    await session.execute(
        select(Affiliate.id).where(any_id(Affiliate.id, ids)).order_by(Affiliate.id).with_for_update(key_share=True)
    )
    last = await _last_entries(session, ids)
    books = {}
    for affiliate_id in ids:
        entry = last.get(affiliate_id)
        balances = Balances(*(getattr(entry, name) for name in BALANCES)) if entry else Balances()
        books[affiliate_id] = Book(affiliate_id, entry.entry_no if entry else 0, balances)
    return books


async def write(session: AsyncSession, books: Iterable[Book]) -> None:
    """Insert the entries the books posted, in order (one statement, many parameter sets)."""
    rows = [entry for book in books for entry in book.entries]
    if rows:
        connection = await session.connection()
        await connection.execute(insert(AffiliateLedgerEntry), rows)
    for book in books:
        book.entries.clear()


async def balances(session: AsyncSession, affiliate_id: uuid.UUID) -> Balances:
    """An affiliate's balances now: those after its last entry."""
    entry = (await _last_entries(session, [affiliate_id])).get(affiliate_id)
    return Balances(*(getattr(entry, name) for name in BALANCES)) if entry else Balances()


async def _last_entries(session: AsyncSession, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Any]:
    earlier = aliased(AffiliateLedgerEntry)
    last_no = (
        select(func.max(earlier.entry_no))
        .where(earlier.affiliate_id == AffiliateLedgerEntry.affiliate_id)
        .scalar_subquery()
    )
    rows = await session.execute(
        select(AffiliateLedgerEntry).where(
            any_id(AffiliateLedgerEntry.affiliate_id, ids), AffiliateLedgerEntry.entry_no == last_no
        )
    )
    return {entry.affiliate_id: entry for entry in rows.scalars()}


@dataclass(frozen=True)
class CheckReport:
    affiliates: int
    entries: int
    problems: tuple[str, ...]


async def check(session: AsyncSession, only: Collection[uuid.UUID] | None = None) -> CheckReport:
    """Recompute every affiliate's balances (or ``only`` these affiliates') from its entries and compare:
    each entry's number follows the one before, its stored balances are what replaying the movements
    from zero gives, and the final balances agree with the commissions and payouts (pending = PENDING
    commissions; earned = those not VOIDED; reserved = REQUESTED and APPROVED payouts; paid = PAID ones;
    one ACCRUAL per commission)."""
    problems: list[str] = []
    replayed: dict[uuid.UUID, Balances] = {}
    accruals: dict[uuid.UUID, tuple[int, Decimal]] = {}
    entries = 0
    columns = [getattr(AffiliateLedgerEntry, name) for name in ("affiliate_id", "entry_no", "kind", *_AMOUNTS)]
    query = select(*columns).order_by(AffiliateLedgerEntry.affiliate_id, AffiliateLedgerEntry.entry_no)
    stream = await session.stream(
        query if only is None else query.where(any_id(AffiliateLedgerEntry.affiliate_id, only))
    )
    expected_no: dict[uuid.UUID, int] = {}
    async for entry in stream:
        entries += 1
        key = entry.affiliate_id
        number = expected_no.get(key, 0) + 1
        expected_no[key] = entry.entry_no
        where = f"affiliate {key} entry {entry.entry_no}"
        if entry.entry_no != number:
            problems.append(f"{where}: expected entry {number}")
        try:
            replayed[key] = replayed.get(key, Balances()).after(entry.kind, entry.amount)
        except LedgerError as exc:
            problems.append(f"{where}: {exc}")
            continue
        stored = Balances(*(getattr(entry, name) for name in BALANCES))
        if stored != replayed[key]:
            problems.append(f"{where}: stores {stored}, the movements give {replayed[key]}")
        if entry.kind is LedgerEntryKind.ACCRUAL:
            count, total = accruals.get(key, (0, ZERO))
            accruals[key] = (count + 1, total + entry.amount)
    expected = await _expected_balances(session, only)
    for affiliate_id in sorted(set(replayed) | set(expected)):
        got = replayed.get(affiliate_id, Balances())
        want = expected.get(affiliate_id, {})
        figures = {
            "pending": got.pending,
            "earned": got.earned,
            "reserved": got.reserved,
            "paid": got.paid,
            "accruals": accruals.get(affiliate_id, (0, ZERO)),
        }
        for name, value in figures.items():
            if value != want.get(name, (0, ZERO) if name == "accruals" else ZERO):
                problems.append(f"affiliate {affiliate_id}: {name} is {value} by the ledger, {want.get(name)} by rows")
    return CheckReport(len(replayed), entries, tuple(problems))


async def _expected_balances(
    session: AsyncSession, only: Collection[uuid.UUID] | None
) -> dict[uuid.UUID, dict[str, Any]]:
    """Per affiliate (or ``only`` these), what its commissions and payouts say the ledger must hold."""
    found: dict[uuid.UUID, dict[str, Any]] = {}
    commission_rows = await session.execute(
        select(
            Commission.affiliate_id,
            func.sum(case((Commission.status == CommissionStatus.PENDING, Commission.amount), else_=ZERO)),
            func.sum(case((Commission.status != CommissionStatus.VOIDED, Commission.amount), else_=ZERO)),
            func.count(),
            func.sum(Commission.amount),
        )
        .where(true() if only is None else any_id(Commission.affiliate_id, only))
        .group_by(Commission.affiliate_id)
    )
    for affiliate_id, pending, earned, count, total in commission_rows:
        found[affiliate_id] = {"pending": pending, "earned": earned, "accruals": (count, total)}
    payout_rows = await session.execute(
        select(
            Payout.affiliate_id,
            func.sum(
                case((Payout.status.in_([PayoutStatus.REQUESTED, PayoutStatus.APPROVED]), Payout.amount), else_=ZERO)
            ),
            func.sum(case((Payout.status == PayoutStatus.PAID, Payout.amount), else_=ZERO)),
        )
        .where(true() if only is None else any_id(Payout.affiliate_id, only))
        .group_by(Payout.affiliate_id)
    )
    for affiliate_id, reserved, paid in payout_rows:
        found.setdefault(affiliate_id, {}).update(reserved=reserved, paid=paid)
    return found
