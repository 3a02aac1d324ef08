"""Positions, their events, close commands, quotes and alerts."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Numeric,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from backoffice.models.base import Base, _created, _enum, _fk, _id
from backoffice.models.enums import (
    ActorType,
    AlertKind,
    CloseCommandStatus,
    CloseReason,
    PositionEventKind,
    PositionStatus,
    Side,
)


class Position(Base):
    """A position at the broker. ``updated_at`` is set by a trigger on every write (the monitor re-reads
    what changed since its last look, so no writer can forget it)."""

    __tablename__ = "positions"
    __table_args__ = (
        Index("ix_positions_open_instrument", "instrument", postgresql_where=text("status = 'OPEN'")),
        Index("ix_positions_device_id_opened_at", "device_id", "opened_at"),
        Index("ix_positions_updated_at", "updated_at"),
        # What a device holds, counted against its risk policy's caps on open positions.
        Index(
            "ix_positions_held_device_id",
            "device_id",
            "instrument",
            postgresql_where=text("status IN ('OPEN', 'CLOSING')"),
        ),
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
    # It closes the whole position: volume a further fill adds while it is out gets a command of its own.
    whole: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
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
    __table_args__ = (
        # The uplink's repeat check (which device frames set a stored quote) and the monitor's sweep.
        Index("ix_quotes_source_id_frame_id", "source_id", "frame_id"),
        Index("ix_quotes_received_at", "received_at"),
    )
    instrument: Mapped[str] = mapped_column(Text, primary_key=True)
    source_type: Mapped[ActorType] = mapped_column(_enum(ActorType, "actor_type"), primary_key=True)
    source_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    bid: Mapped[Decimal] = mapped_column(Numeric)
    ask: Mapped[Decimal] = mapped_column(Numeric)
    quote_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    frame_id: Mapped[str | None] = mapped_column(Text)  # the device frame that set it: a repeat is DUPLICATE
    received_at: Mapped[datetime] = _created()
    # From a producer an admin marked a price feed: read against every position on the instrument, not only
    # those its own signals opened.
    price_feed: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))


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
