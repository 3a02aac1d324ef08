"""Signals, subscriptions, approvals, devices, deliveries and execution events."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    DateTime,
    Identity,
    Index,
    Integer,
    Numeric,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from backoffice.models.base import Base, _created, _enum, _fk, _id
from backoffice.models.enums import (
    ApprovalStatus,
    DeliveryState,
    DeviceStatus,
    EventKind,
    Side,
    SignalStatus,
    SizingMode,
    SubscriptionMode,
    SubscriptionStatus,
)


class Signal(Base):
    __tablename__ = "signals"
    __table_args__ = (
        UniqueConstraint("producer_id", "request_id"),
        Index("ix_signals_producer_id_signal_time", "producer_id", "signal_time"),
        Index("ix_signals_open_expire_time", "expire_time", postgresql_where=text("status = 'OPEN'")),
        # ListSignals's order, newest first: a page reads its own rows, never sorts the table.
        Index("ix_signals_created_at_id", "created_at", "id"),
    )
    id: Mapped[uuid.UUID] = _id()
    producer_id: Mapped[uuid.UUID] = _fk("producers.id")
    request_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))  # None: not idempotent
    instrument: Mapped[str] = mapped_column(Text)
    side: Mapped[Side] = mapped_column(_enum(Side, "side"))
    entry_price: Mapped[Decimal | None] = mapped_column(Numeric)
    stop_loss: Mapped[Decimal | None] = mapped_column(Numeric)  # hidden: never sent to devices
    take_profit: Mapped[Decimal | None] = mapped_column(Numeric)  # hidden: never sent to devices
    signal_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expire_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    # Hidden like the levels: the trailing distance and the breakeven move copied into each position.
    trailing_distance: Mapped[Decimal | None] = mapped_column(Numeric)
    breakeven_trigger: Mapped[Decimal | None] = mapped_column(Numeric)
    breakeven_offset: Mapped[Decimal | None] = mapped_column(Numeric)
    status: Mapped[SignalStatus] = mapped_column(_enum(SignalStatus, "signal_status"))
    cancel_reason: Mapped[str | None] = mapped_column(Text)
    # The cancel asked for its positions to be closed: a late fill's position is closed at once too.
    cancel_closes_positions: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    created_at: Mapped[datetime] = _created()
    cancelled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    def status_at(self, now: datetime) -> SignalStatus:
        """OPEN signals past their expire_time are EXPIRED even before the worker writes it down."""
        if self.status is SignalStatus.OPEN and self.expire_time <= now:
            return SignalStatus.EXPIRED
        return self.status


class Subscription(Base):
    __tablename__ = "subscriptions"
    __table_args__ = (
        Index(
            "uq_subscriptions_active_user_producer",
            "user_id",
            "producer_id",
            unique=True,
            postgresql_where=text("status = 'ACTIVE'"),
        ),
        Index("ix_subscriptions_producer_id_status", "producer_id", "status"),
    )
    id: Mapped[uuid.UUID] = _id()
    user_id: Mapped[uuid.UUID] = _fk("users.id")
    producer_id: Mapped[uuid.UUID] = _fk("producers.id")
    mode: Mapped[SubscriptionMode] = mapped_column(_enum(SubscriptionMode, "subscription_mode"))
    # None (MANUAL only): no sizing rule, every approval names its volume.
    sizing_mode: Mapped[SizingMode | None] = mapped_column(_enum(SizingMode, "sizing_mode"))
    sizing_value: Mapped[Decimal | None] = mapped_column(Numeric)
    max_volume: Mapped[Decimal | None] = mapped_column(Numeric)
    instruments: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'::text[]"))
    status: Mapped[SubscriptionStatus] = mapped_column(_enum(SubscriptionStatus, "subscription_status"))
    created_at: Mapped[datetime] = _created()
    unsubscribed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Approval(Base):
    __tablename__ = "approvals"
    __table_args__ = (
        UniqueConstraint("signal_id", "user_id"),
        Index("ix_approvals_user_id_status", "user_id", "status"),
    )
    id: Mapped[uuid.UUID] = _id()
    signal_id: Mapped[uuid.UUID] = _fk("signals.id")
    subscription_id: Mapped[uuid.UUID] = _fk("subscriptions.id")
    user_id: Mapped[uuid.UUID] = _fk("users.id")
    status: Mapped[ApprovalStatus] = mapped_column(_enum(ApprovalStatus, "approval_status"))
    automatic: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    volume: Mapped[Decimal | None] = mapped_column(Numeric)  # an override; None means sized per device
    device_ids: Mapped[list[uuid.UUID]] = mapped_column(ARRAY(UUID(as_uuid=True)), server_default=text("'{}'::uuid[]"))
    decided_by: Mapped[uuid.UUID | None] = _fk("users.id", nullable=True)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Device(Base):
    __tablename__ = "devices"
    __table_args__ = (UniqueConstraint("user_id", "request_id"),)
    id: Mapped[uuid.UUID] = _id()
    user_id: Mapped[uuid.UUID] = _fk("users.id", index=True)
    request_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    name: Mapped[str] = mapped_column(Text)
    mac_address: Mapped[str | None] = mapped_column(Text)
    symbol_map: Mapped[dict[str, str]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    status: Mapped[DeviceStatus] = mapped_column(_enum(DeviceStatus, "device_status"))
    secret_sealed: Mapped[str] = mapped_column(Text)
    previous_secret_sealed: Mapped[str | None] = mapped_column(Text)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    secret_rotated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The last Hello: balance, equity, currency and symbol specs, for sizing.
    last_hello: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    last_hello_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _created()
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Delivery(Base):
    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("approval_id", "device_id"),
        # The hot path: a device's pending deliveries, oldest first.
        Index(
            "ix_deliveries_pending_device_id_created_at",
            "device_id",
            "created_at",
            postgresql_where=text("state IN ('PENDING', 'SENT')"),
        ),
        Index("ix_deliveries_signal_id", "signal_id"),
        # Deliveries that may still become a position, counted against a risk policy's caps.
        Index(
            "ix_deliveries_in_flight_device_id",
            "device_id",
            "instrument",
            postgresql_where=text("state IN ('PENDING', 'SENT', 'RECEIVED', 'PLACED')"),
        ),
    )
    id: Mapped[uuid.UUID] = _id()
    approval_id: Mapped[uuid.UUID] = _fk("approvals.id")
    signal_id: Mapped[uuid.UUID] = _fk("signals.id")
    device_id: Mapped[uuid.UUID] = _fk("devices.id")
    instrument: Mapped[str] = mapped_column(Text)  # after the device's symbol map
    side: Mapped[Side] = mapped_column(_enum(Side, "side"))
    volume: Mapped[Decimal] = mapped_column(Numeric)
    entry_price: Mapped[Decimal | None] = mapped_column(Numeric)
    max_deviation: Mapped[Decimal | None] = mapped_column(Numeric)
    expire_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    state: Mapped[DeliveryState] = mapped_column(_enum(DeliveryState, "delivery_state"))
    state_reason: Mapped[str | None] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    created_at: Mapped[datetime] = _created()
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = _created()


class ExecutionEvent(Base):
    """What a device reported, kept as it came: rows are never updated or deleted (a trigger enforces it)."""

    __tablename__ = "execution_events"
    __table_args__ = (
        UniqueConstraint("device_id", "frame_id"),
        Index("ix_execution_events_delivery_id_received_at", "delivery_id", "received_at"),
        Index("ix_execution_events_close_command_id", "close_command_id"),
    )
    id: Mapped[uuid.UUID] = _id()
    # Insertion order: frames applied in one batch share received_at, and ids are random.
    seq: Mapped[int] = mapped_column(BigInteger, Identity(always=True))
    device_id: Mapped[uuid.UUID] = _fk("devices.id")
    frame_id: Mapped[str | None] = mapped_column(Text)  # the device's frame id; None for server events
    kind: Mapped[EventKind] = mapped_column(_enum(EventKind, "event_kind"))
    delivery_id: Mapped[uuid.UUID | None] = _fk("deliveries.id", nullable=True)
    close_command_id: Mapped[uuid.UUID | None] = _fk("close_commands.id", nullable=True)
    stage: Mapped[str | None] = mapped_column(Text)
    # What the frame said (price, volume, broker ticket, reason, error, attempt), as decimal strings.
    body: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    event_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # at the source
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
