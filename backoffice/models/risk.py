"""Risk protection per trading account (one device is one broker account): the owner's policy, the
account's latest state as its bridge reports it, the marks each period's limits measure from, and the
stopouts recorded when a limit was reached."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import DateTime, Integer, Numeric, Text, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from backoffice.models.base import Base, _created, _enum, _fk, _id
from backoffice.models.enums import RiskPeriod


class RiskPolicy(Base):
    """A device's policy, replaced whole by UpdateRiskPolicy; a device without a row has the empty one.
    ``limits`` holds up to ten limits as JSON, each with the time it was first set (a LIFETIME limit
    measures from then) and ``key``, a digest of what it is, which names it in its stopouts."""

    __tablename__ = "risk_policies"
    device_id: Mapped[uuid.UUID] = _fk("devices.id", primary_key=True)
    limits: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))
    max_open_positions: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    max_open_positions_per_instrument: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    max_volume: Mapped[Decimal | None] = mapped_column(Numeric)
    max_deviation: Mapped[Decimal | None] = mapped_column(Numeric)
    max_delay_seconds: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    allowed_sides: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'::text[]"))
    updated_at: Mapped[datetime] = _created()


class AccountState(Base):
    """The latest account state a device reported (its Hello's balance and equity count as one): one row per
    device, overwritten, never a row per frame."""

    __tablename__ = "account_states"
    device_id: Mapped[uuid.UUID] = _fk("devices.id", primary_key=True)
    balance: Mapped[Decimal] = mapped_column(Numeric)
    equity: Mapped[Decimal] = mapped_column(Numeric)
    margin: Mapped[Decimal | None] = mapped_column(Numeric)
    free_margin: Mapped[Decimal | None] = mapped_column(Numeric)
    state_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    frame_id: Mapped[str | None] = mapped_column(Text)  # the frame that set it: a repeat is a DUPLICATE
    received_at: Mapped[datetime] = _created()


class RiskMark(Base):
    """What a device's limits of one period measure from: the reference balance (the last balance known when
    the period began, else the first reported in it) and the highest equity reported in it; and the last
    balance reported in it, which the next period begins from."""

    __tablename__ = "risk_marks"
    device_id: Mapped[uuid.UUID] = _fk("devices.id", primary_key=True)
    period: Mapped[RiskPeriod] = mapped_column(_enum(RiskPeriod, "risk_period"), primary_key=True)
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    reference_balance: Mapped[Decimal] = mapped_column(Numeric)
    equity_high: Mapped[Decimal] = mapped_column(Numeric)
    last_balance: Mapped[Decimal] = mapped_column(Numeric)
    updated_at: Mapped[datetime] = _created()


class Stopout(Base):
    """A limit reached. At most one per device, limit and period start (a unique key decides, whichever
    replica or frame gets there first); active until its period ends or it is reset."""

    __tablename__ = "stopouts"
    __table_args__ = (UniqueConstraint("device_id", "limit_key", "period_start"),)
    id: Mapped[uuid.UUID] = _id()
    device_id: Mapped[uuid.UUID] = _fk("devices.id", index=True)
    limit_key: Mapped[str] = mapped_column(Text)
    limit: Mapped[dict[str, Any]] = mapped_column(JSONB)
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    reference: Mapped[Decimal] = mapped_column(Numeric)
    value: Mapped[Decimal] = mapped_column(Numeric)
    equity: Mapped[Decimal] = mapped_column(Numeric)
    trigger_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    end_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reset_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reset_by: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
