"""Nonces, idempotency records and the audit log."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    DateTime,
    Index,
    LargeBinary,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from backoffice.models.base import Base, _created, _enum, _id
from backoffice.models.enums import (
    ActorType,
)


class Nonce(Base):
    """Seen signature nonces, every one (``backoffice.platform.nonces``). UNLOGGED: a commit into it waits
    for no disk flush, and a crash of Postgres empties it."""

    __tablename__ = "nonces"
    __table_args__ = ({"prefixes": ["UNLOGGED"]},)
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
