"""The audit trail: every state change made by a person or producer, written in the same transaction."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from backoffice.models import ActorType, AuditEvent
from backoffice.platform import paging
from backoffice.platform.auth import Caller
from signalhub.protocol.errors import PermissionDenied


def record(
    session: AsyncSession,
    actor: Caller | tuple[ActorType, uuid.UUID | None],
    action: str,
    object_type: str,
    object_id: uuid.UUID | None,
    *,
    details: dict[str, Any] | None = None,
    request_id: str | None = None,
) -> AuditEvent:
    """An audit row: who (a request's caller, or an actor type and id such as SYSTEM), did what, to what."""
    actor_type, actor_id = (actor.kind, actor.id) if isinstance(actor, Caller) else actor
    event = AuditEvent(
        id=uuid.uuid4(),
        actor_type=actor_type,
        actor_id=actor_id,
        action=action,
        object_type=object_type,
        object_id=object_id,
        details=details or {},
        request_id=request_id or None,  # "" on the wire: the call carried none
    )
    session.add(event)
    return event


async def list_audit_events(
    session: AsyncSession,
    caller: Caller,
    *,
    actor_id: uuid.UUID | None,
    object_type: str,
    object_id: uuid.UUID | None,
    action: str,
    page_size: int,
    page_token: str,
) -> tuple[list[AuditEvent], str]:
    """Audit events, newest first, for admins only; empty filters match everything."""
    if not caller.is_admin:
        raise PermissionDenied("only admins may read the audit log", reason="ADMIN_ONLY")
    query = select(AuditEvent)
    if actor_id is not None:
        query = query.where(AuditEvent.actor_id == actor_id)
    if object_type:
        query = query.where(AuditEvent.object_type == object_type)
    if object_id is not None:
        query = query.where(AuditEvent.object_id == object_id)
    if action:
        query = query.where(AuditEvent.action == action)
    return await paging.fetch_page(
        session,
        query,
        created_at=AuditEvent.created_at,
        id_column=AuditEvent.id,
        requested_size=page_size,
        page_token=page_token,
        filters=[actor_id, object_type, object_id, action],
    )
