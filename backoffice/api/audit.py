"""AuditService."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backoffice import audit, models
from backoffice.platform.interceptors import current_caller
from signalhub.protocol import wire
from signalhub.protocol.wire import parse_optional_id
from signalhub.v1 import backoffice_pb2 as pb


def encode_audit_event(event: models.AuditEvent) -> pb.AuditEvent:
    return pb.AuditEvent(
        id=str(event.id),
        actor_type=wire.enum_to_wire(pb.ActorType, "ACTOR_TYPE", event.actor_type),
        actor_id=str(event.actor_id or ""),
        action=event.action,
        object_type=event.object_type,
        object_id=str(event.object_id or ""),
        details=wire.dict_to_struct(event.details),
        create_time=wire.timestamp(event.created_at),
        request_id=event.request_id or "",
    )


class AuditServicer:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def ListAuditEvents(self, request: pb.ListAuditEventsRequest, context: Any) -> pb.ListAuditEventsResponse:
        caller = current_caller()
        actor_id = parse_optional_id(request.actor_id, "actor_id")
        object_id = parse_optional_id(request.object_id, "object_id")
        async with self._sessions() as session:
            found, token = await audit.list_audit_events(
                session,
                caller,
                actor_id=actor_id,
                object_type=request.object_type,
                object_id=object_id,
                action=request.action,
                page_size=request.page_size,
                page_token=request.page_token,
            )
        return pb.ListAuditEventsResponse(audit_events=[encode_audit_event(e) for e in found], next_page_token=token)
