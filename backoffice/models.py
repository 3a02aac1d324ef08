"""The data model, shared by the back office and the gateway. Alembic (migrations/) is the schema's author;
a test fails when these models and the migrated schema differ."""

from __future__ import annotations

import enum
import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Enum,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    # Text with a CHECK constraint: adding a value is a plain migration, no ALTER TYPE.
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=32,
        values_callable=lambda members: [m.value for m in members],
    )


def _id() -> Mapped[uuid.UUID]:
    return mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)


def _created() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now())


def _fk(target: str, *, nullable: bool = False, **options: Any) -> Mapped[Any]:  # options: index, unique
    return mapped_column(UUID(as_uuid=True), ForeignKey(target, ondelete="RESTRICT"), nullable=nullable, **options)


class Role(enum.StrEnum):
    ADMIN = "ADMIN"
    USER = "USER"


class ProducerStatus(enum.StrEnum):
    ACTIVE = "ACTIVE"
    REVOKED = "REVOKED"


class Side(enum.StrEnum):
    BUY = "BUY"
    SELL = "SELL"


class SignalStatus(enum.StrEnum):
    OPEN = "OPEN"
    EXPIRED = "EXPIRED"
    CANCELLED = "CANCELLED"


class SubscriptionMode(enum.StrEnum):
    MANUAL = "MANUAL"
    AUTO = "AUTO"


class SizingMode(enum.StrEnum):
    FIXED_VOLUME = "FIXED_VOLUME"
    BALANCE_RATIO = "BALANCE_RATIO"
    RISK_PERCENT = "RISK_PERCENT"


class SubscriptionStatus(enum.StrEnum):
    ACTIVE = "ACTIVE"
    UNSUBSCRIBED = "UNSUBSCRIBED"


class ApprovalStatus(enum.StrEnum):
    PENDING = "PENDING"
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"


class DeviceStatus(enum.StrEnum):
    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"
    REVOKED = "REVOKED"


class DeliveryState(enum.StrEnum):
    PENDING = "PENDING"  # created, not yet pushed
    SENT = "SENT"  # pushed, no RECEIVED ack yet
    RECEIVED = "RECEIVED"
    PLACED = "PLACED"
    FILLED = "FILLED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"
    FAILED = "FAILED"  # the server could not send it (e.g. could not be sealed)
    SKIPPED = "SKIPPED"  # sizing gave no tradable volume; the reason is recorded
    CANCELLED = "CANCELLED"  # the signal was cancelled before the device acked RECEIVED: never (re-)sent


class EventKind(enum.StrEnum):
    SENT = "SENT"  # the gateway pushed a delivery or close order (server-side: no frame_id)
    ACK = "ACK"
    FILL = "FILL"
    CLOSE_RESULT = "CLOSE_RESULT"
    EXPIRED = "EXPIRED"
    ERROR = "ERROR"
    QUOTE = "QUOTE"
    HEARTBEAT = "HEARTBEAT"
    HELLO = "HELLO"


class PositionStatus(enum.StrEnum):
    OPEN = "OPEN"
    CLOSING = "CLOSING"
    CLOSED = "CLOSED"
    CLOSED_ERROR = "CLOSED_ERROR"


class CloseReason(enum.StrEnum):
    STOP_LOSS = "STOP_LOSS"
    TAKE_PROFIT = "TAKE_PROFIT"
    MANUAL = "MANUAL"
    SIGNAL_CANCELLED = "SIGNAL_CANCELLED"
    ADMIN = "ADMIN"


class CloseCommandStatus(enum.StrEnum):
    PENDING = "PENDING"
    SENT = "SENT"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"


class PositionEventKind(enum.StrEnum):
    OPENED = "OPENED"
    FILL_ADDED = "FILL_ADDED"
    PROTECTION_UPDATED = "PROTECTION_UPDATED"
    TRAILING_STOP_MOVED = "TRAILING_STOP_MOVED"
    BREAKEVEN_MOVED = "BREAKEVEN_MOVED"
    CLOSE_REQUESTED = "CLOSE_REQUESTED"
    PARTIALLY_CLOSED = "PARTIALLY_CLOSED"
    CLOSED = "CLOSED"
    CLOSE_FAILED = "CLOSE_FAILED"


class AlertKind(enum.StrEnum):
    DEVICE_SILENT = "DEVICE_SILENT"  # an open position's device not heard from for long
    DEVICE_DISCONNECTED = "DEVICE_DISCONNECTED"  # a device with open positions disconnected for a while
    CLOSE_FAILED = "CLOSE_FAILED"


class ActorType(enum.StrEnum):
    USER = "USER"
    PRODUCER = "PRODUCER"
    DEVICE = "DEVICE"
    SYSTEM = "SYSTEM"


class CommissionStatus(enum.StrEnum):
    PENDING = "PENDING"  # in its hold period
    AVAILABLE = "AVAILABLE"
    VOIDED = "VOIDED"  # its fill was reversed (after release: clawed back)


class PayoutStatus(enum.StrEnum):
    REQUESTED = "REQUESTED"
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"
    PAID = "PAID"


class LedgerEntryKind(enum.StrEnum):  # what each moves: backoffice/affiliates/ledger.py
    ACCRUAL = "ACCRUAL"
    HOLD_RELEASE = "HOLD_RELEASE"
    VOID = "VOID"
    CLAWBACK = "CLAWBACK"
    PAYOUT_REQUESTED = "PAYOUT_REQUESTED"
    PAYOUT_REJECTED = "PAYOUT_REJECTED"
    PAYOUT_PAID = "PAYOUT_PAID"


class User(Base):
    __tablename__ = "users"
    id: Mapped[uuid.UUID] = _id()
    email: Mapped[str] = mapped_column(Text, unique=True)  # stored lower-cased
    role: Mapped[Role] = mapped_column(_enum(Role, "role"))
    created_at: Mapped[datetime] = _created()


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[uuid.UUID] = _id()
    user_id: Mapped[uuid.UUID] = _fk("users.id", index=True)
    name: Mapped[str] = mapped_column(Text, server_default="")
    # SHA-256 of the 32 random token bytes: a fast hash is enough for a full-entropy secret.
    token_hash: Mapped[bytes] = mapped_column(LargeBinary, unique=True)
    created_at: Mapped[datetime] = _created()
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Producer(Base):
    __tablename__ = "producers"
    id: Mapped[uuid.UUID] = _id()
    name: Mapped[str] = mapped_column(Text)
    status: Mapped[ProducerStatus] = mapped_column(_enum(ProducerStatus, "producer_status"))
    created_by: Mapped[uuid.UUID | None] = _fk("users.id", nullable=True)
    secret_sealed: Mapped[str] = mapped_column(Text)
    previous_secret_sealed: Mapped[str | None] = mapped_column(Text)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    secret_rotated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _created()
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Signal(Base):
    __tablename__ = "signals"
    __table_args__ = (
        UniqueConstraint("producer_id", "request_id"),
        Index("ix_signals_producer_id_signal_time", "producer_id", "signal_time"),
        Index("ix_signals_open_expire_time", "expire_time", postgresql_where=text("status = 'OPEN'")),
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


class Position(Base):
    """A position at the broker. ``updated_at`` is set by a trigger on every write (the monitor re-reads
    what changed since its last look, so no writer can forget it)."""

    __tablename__ = "positions"
    __table_args__ = (
        Index("ix_positions_open_instrument", "instrument", postgresql_where=text("status = 'OPEN'")),
        Index("ix_positions_device_id_opened_at", "device_id", "opened_at"),
        Index("ix_positions_updated_at", "updated_at"),
    )
    id: Mapped[uuid.UUID] = _id()
    device_id: Mapped[uuid.UUID] = _fk("devices.id")
    signal_id: Mapped[uuid.UUID] = _fk("signals.id")
    delivery_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("deliveries.id", ondelete="RESTRICT"), unique=True
    )
    instrument: Mapped[str] = mapped_column(Text)  # the broker symbol the delivery named
    signal_instrument: Mapped[str] = mapped_column(Text)  # the signal's, before the symbol map
    side: Mapped[Side] = mapped_column(_enum(Side, "side"))
    volume: Mapped[Decimal] = mapped_column(Numeric)  # open volume (the last one, once closed)
    entry_price: Mapped[Decimal] = mapped_column(Numeric)  # volume-weighted over partial fills
    # Hidden levels, enforced by the monitor; never sent to devices.
    stop_loss: Mapped[Decimal | None] = mapped_column(Numeric)
    take_profit: Mapped[Decimal | None] = mapped_column(Numeric)
    trailing_distance: Mapped[Decimal | None] = mapped_column(Numeric)
    best_price: Mapped[Decimal | None] = mapped_column(Numeric)  # what the trailing stop follows
    breakeven_trigger: Mapped[Decimal | None] = mapped_column(Numeric)
    breakeven_offset: Mapped[Decimal | None] = mapped_column(Numeric)
    breakeven_done: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    # When the levels were last set (by a person, or by the monitor from a quote received then): a quote
    # received before that never acts on them, however late a monitor gets to it.
    levels_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    broker_ticket: Mapped[str] = mapped_column(Text)
    status: Mapped[PositionStatus] = mapped_column(_enum(PositionStatus, "position_status"))
    close_reason: Mapped[CloseReason | None] = mapped_column(_enum(CloseReason, "close_reason"))
    close_price: Mapped[Decimal | None] = mapped_column(Numeric)
    closed_volume: Mapped[Decimal] = mapped_column(Numeric, server_default=text("0"))
    profit: Mapped[Decimal | None] = mapped_column(Numeric)  # account currency
    price_profit: Mapped[Decimal | None] = mapped_column(Numeric)  # price units, averaged over closed volume
    opened_at: Mapped[datetime] = _created()
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = _created()


class PositionEvent(Base):
    """What happened to a position (opened, levels moved, close requested, closed), with the hidden levels
    after it. Written once, never changed."""

    __tablename__ = "position_events"
    __table_args__ = (Index("ix_position_events_position_id_seq", "position_id", "seq"),)
    id: Mapped[uuid.UUID] = _id()
    seq: Mapped[int] = mapped_column(BigInteger, Identity(always=True))
    position_id: Mapped[uuid.UUID] = _fk("positions.id")
    kind: Mapped[PositionEventKind] = mapped_column(_enum(PositionEventKind, "position_event_kind"))
    stop_loss: Mapped[Decimal | None] = mapped_column(Numeric)
    take_profit: Mapped[Decimal | None] = mapped_column(Numeric)
    price: Mapped[Decimal | None] = mapped_column(Numeric)
    volume: Mapped[Decimal | None] = mapped_column(Numeric)
    close_command_id: Mapped[uuid.UUID | None] = _fk("close_commands.id", nullable=True)
    reason: Mapped[CloseReason | None] = mapped_column(_enum(CloseReason, "close_reason"))
    detail: Mapped[str | None] = mapped_column(Text)
    actor_type: Mapped[ActorType] = mapped_column(_enum(ActorType, "actor_type"))
    actor_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    created_at: Mapped[datetime] = _created()


class CloseCommand(Base):
    __tablename__ = "close_commands"
    __table_args__ = (
        Index(
            "ix_close_commands_pending_device_id_created_at",
            "device_id",
            "created_at",
            postgresql_where=text("status IN ('PENDING', 'SENT')"),
        ),
        Index("ix_close_commands_position_id", "position_id"),
        # At most one command out per position: a trigger seen by two monitors (or again after a
        # restart) can never close a position twice.
        Index(
            "uq_close_commands_outstanding_position_id",
            "position_id",
            unique=True,
            postgresql_where=text("status IN ('PENDING', 'SENT')"),
        ),
    )
    id: Mapped[uuid.UUID] = _id()
    position_id: Mapped[uuid.UUID] = _fk("positions.id")
    device_id: Mapped[uuid.UUID] = _fk("devices.id")
    volume: Mapped[Decimal] = mapped_column(Numeric)
    reason: Mapped[CloseReason] = mapped_column(_enum(CloseReason, "close_reason"))
    status: Mapped[CloseCommandStatus] = mapped_column(_enum(CloseCommandStatus, "close_command_status"))
    requested_by: Mapped[uuid.UUID | None] = _fk("users.id", nullable=True)
    close_price: Mapped[Decimal | None] = mapped_column(Numeric)
    closed_volume: Mapped[Decimal | None] = mapped_column(Numeric)
    error: Mapped[str | None] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    created_at: Mapped[datetime] = _created()
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Quote(Base):
    """The latest quote per instrument and source (a producer's instrument, a device's broker symbol),
    which the monitor reads. Market data, not a record: one row per key, overwritten by newer quotes."""

    __tablename__ = "quotes"
    instrument: Mapped[str] = mapped_column(Text, primary_key=True)
    source_type: Mapped[ActorType] = mapped_column(_enum(ActorType, "actor_type"), primary_key=True)
    source_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    bid: Mapped[Decimal] = mapped_column(Numeric)
    ask: Mapped[Decimal] = mapped_column(Numeric)
    quote_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    frame_id: Mapped[str | None] = mapped_column(Text)  # the device frame that set it: a repeat is DUPLICATE
    received_at: Mapped[datetime] = _created()


class Alert(Base):
    """Something a person should look at; one row per incident (a unique index allows one open alert per
    kind and subject), resolved when the incident ends."""

    __tablename__ = "alerts"
    __table_args__ = (
        Index(
            "uq_alerts_open_kind_subject_id",
            "kind",
            "subject_id",
            unique=True,
            postgresql_where=text("resolved_at IS NULL"),
        ),
        Index("ix_alerts_created_at", "created_at"),
    )
    id: Mapped[uuid.UUID] = _id()
    kind: Mapped[AlertKind] = mapped_column(_enum(AlertKind, "alert_kind"))
    subject_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))  # the position or device it is about
    device_id: Mapped[uuid.UUID] = _fk("devices.id")
    user_id: Mapped[uuid.UUID] = _fk("users.id")
    position_id: Mapped[uuid.UUID | None] = _fk("positions.id", nullable=True)
    close_command_id: Mapped[uuid.UUID | None] = _fk("close_commands.id", nullable=True)
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Nonce(Base):
    """Seen signature nonces, used only while Redis is unreachable (so an outage never lets a replay in)."""

    __tablename__ = "nonces"
    key_id: Mapped[str] = mapped_column(Text, primary_key=True)
    nonce: Mapped[str] = mapped_column(Text, primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class IdempotencyRecord(Base):
    """The first response to a (caller, method, request_id): a retry gets it back, a different request
    with the same id gets ALREADY_EXISTS."""

    __tablename__ = "idempotency_records"
    __table_args__ = (UniqueConstraint("caller_id", "method", "request_id"),)
    id: Mapped[uuid.UUID] = _id()
    caller_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    method: Mapped[str] = mapped_column(Text)
    request_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    request_hash: Mapped[bytes] = mapped_column(LargeBinary)
    # The serialised first response, sealed by the vault: some responses carry a secret shown once.
    response_sealed: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(), index=True)


class AuditEvent(Base):
    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_object_type_object_id", "object_type", "object_id"),
        Index("ix_audit_events_created_at", "created_at"),
    )
    id: Mapped[uuid.UUID] = _id()
    actor_type: Mapped[ActorType] = mapped_column(_enum(ActorType, "actor_type"))
    actor_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    action: Mapped[str] = mapped_column(Text)
    object_type: Mapped[str] = mapped_column(Text)
    object_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    request_id: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()


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


# Every column that holds a vault-sealed secret, for `signalhub admin rotate-master-key`.
SEALED_COLUMNS: tuple[tuple[type[Base], str], ...] = (
    (IdempotencyRecord, "response_sealed"),
    (Producer, "secret_sealed"),
    (Producer, "previous_secret_sealed"),
    (Device, "secret_sealed"),
    (Device, "previous_secret_sealed"),
    (Payout, "method_details_sealed"),
)
