"""Affiliates, referrals, the commission queue, commissions, payouts and the ledger."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Index,
    Numeric,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from backoffice.models.base import Base, _created, _enum, _fk, _id
from backoffice.models.enums import (
    CommissionStatus,
    LedgerEntryKind,
    PayoutStatus,
)


class Affiliate(Base):
    __tablename__ = "affiliates"
    id: Mapped[uuid.UUID] = _id()
    user_id: Mapped[uuid.UUID] = _fk("users.id", unique=True)
    referral_code: Mapped[str] = mapped_column(Text, unique=True)  # 96 random bits, base64url
    created_at: Mapped[datetime] = _created()


class Referral(Base):  # who referred a user: written with the user, never changed (a trigger enforces it)
    __tablename__ = "referrals"
    id: Mapped[uuid.UUID] = _id()
    affiliate_id: Mapped[uuid.UUID] = _fk("affiliates.id", index=True)
    referred_user_id: Mapped[uuid.UUID] = _fk("users.id", unique=True)
    created_at: Mapped[datetime] = _created()


class CommissionQueueItem(Base):  # a fill to accrue: written on the uplink's transaction, deleted once accrued
    __tablename__ = "commission_queue"
    fill_event_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    device_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    delivery_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    lots: Mapped[Decimal] = mapped_column(Numeric)
    filled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # the server's receive time


class Commission(Base):
    __tablename__ = "commissions"
    __table_args__ = (
        UniqueConstraint("fill_event_id"),  # exactly one commission per fill, whoever accrues it
        Index("ix_commissions_affiliate_id_created_at", "affiliate_id", "created_at"),
        Index("ix_commissions_affiliate_id_month", "affiliate_id", "month"),
        Index("ix_commissions_pending_available_at", "available_at", postgresql_where=text("status = 'PENDING'")),
        CheckConstraint("lots > 0 AND amount >= 0 AND amount = round(amount, 2)", name="lots_and_cents"),
    )
    id: Mapped[uuid.UUID] = _id()
    affiliate_id: Mapped[uuid.UUID] = _fk("affiliates.id")
    referred_user_id: Mapped[uuid.UUID] = _fk("users.id")
    fill_event_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))  # the FILL execution event
    position_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    lots: Mapped[Decimal] = mapped_column(Numeric)
    month: Mapped[date] = mapped_column(Date)  # first day of the fill's calendar month (UTC)
    pricing: Mapped[dict[str, Any]] = mapped_column(JSONB)  # the month's lots before it and the tiers it fell in
    amount: Mapped[Decimal] = mapped_column(Numeric)
    currency: Mapped[str] = mapped_column(Text)
    status: Mapped[CommissionStatus] = mapped_column(_enum(CommissionStatus, "commission_status"))
    clawed_back: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    filled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    available_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # the end of its hold
    reversed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reverse_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()


class Payout(Base):
    __tablename__ = "payouts"
    __table_args__ = (
        UniqueConstraint("affiliate_id", "request_id"),
        Index("ix_payouts_affiliate_id_created_at", "affiliate_id", "created_at"),
        CheckConstraint("amount > 0 AND amount = round(amount, 2)", name="amount_in_cents"),
    )
    id: Mapped[uuid.UUID] = _id()
    affiliate_id: Mapped[uuid.UUID] = _fk("affiliates.id")
    request_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    amount: Mapped[Decimal] = mapped_column(Numeric)
    currency: Mapped[str] = mapped_column(Text)
    status: Mapped[PayoutStatus] = mapped_column(_enum(PayoutStatus, "payout_status"))
    method_details_sealed: Mapped[str] = mapped_column(Text)  # JSON, sealed by the vault
    reason: Mapped[str | None] = mapped_column(Text)
    payment_reference: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    paid_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AffiliateLedgerEntry(Base):  # one money movement and the balances after it (backoffice/affiliates/ledger.py)
    __tablename__ = "affiliate_ledger"
    __table_args__ = (
        UniqueConstraint("affiliate_id", "entry_no"),
        Index("ix_affiliate_ledger_commission_id", "commission_id"),
        Index("ix_affiliate_ledger_payout_id", "payout_id"),
        CheckConstraint("least(amount, pending, available, reserved, paid, clawback_due) >= 0", name="not_negative"),
    )
    id: Mapped[uuid.UUID] = _id()
    affiliate_id: Mapped[uuid.UUID] = _fk("affiliates.id")
    entry_no: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[LedgerEntryKind] = mapped_column(_enum(LedgerEntryKind, "ledger_entry_kind"))
    commission_id: Mapped[uuid.UUID | None] = _fk("commissions.id", nullable=True)
    payout_id: Mapped[uuid.UUID | None] = _fk("payouts.id", nullable=True)
    amount: Mapped[Decimal] = mapped_column(Numeric)
    pending: Mapped[Decimal] = mapped_column(Numeric)
    available: Mapped[Decimal] = mapped_column(Numeric)
    reserved: Mapped[Decimal] = mapped_column(Numeric)
    paid: Mapped[Decimal] = mapped_column(Numeric)
    clawback_due: Mapped[Decimal] = mapped_column(Numeric)  # reversed commission still to set against earnings
    created_at: Mapped[datetime] = _created()
