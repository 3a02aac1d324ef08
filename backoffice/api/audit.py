"""AuditService."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backoffice import alerts, audit, models
from backoffice.platform import paging
from backoffice.platform.interceptors import current_caller
from signalhub.protocol import wire
from signalhub.protocol.errors import InvalidArgument
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


def encode_alert(alert: models.Alert) -> pb.Alert:
    return pb.Alert(
        id=str(alert.id),
        kind=wire.enum_to_wire(pb.AlertKind, "ALERT_KIND", alert.kind),
        status=pb.ALERT_STATUS_OPEN if alert.resolved_at is None else pb.ALERT_STATUS_RESOLVED,
        device_id=str(alert.device_id),
        position_id=str(alert.position_id or ""),
        close_command_id=str(alert.close_command_id or ""),
        user_id=str(alert.user_id),
        message=alert.message,
        create_time=wire.timestamp(alert.created_at),
        resolve_time=wire.timestamp(alert.resolved_at),
    )


# The wire's alert states as the domain's filter: open, resolved, or either.
_ALERT_STATUS = {pb.ALERT_STATUS_UNSPECIFIED: None, pb.ALERT_STATUS_OPEN: True, pb.ALERT_STATUS_RESOLVED: False}


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

    async def ListAlerts(self, request: pb.ListAlertsRequest, context: Any) -> pb.ListAlertsResponse:
        caller = current_caller()
        if request.status not in _ALERT_STATUS:
            raise InvalidArgument([("status", "one of ALERT_STATUS_OPEN, ALERT_STATUS_RESOLVED")])
        kind = wire.optional_enum_from_wire(pb.AlertKind, "ALERT_KIND", request.kind, models.AlertKind, "kind")
        device_id = parse_optional_id(request.device_id, "device_id")
        async with self._sessions() as session:
            found, token = await alerts.list_alerts(
                session,
                caller,
                status_open=_ALERT_STATUS[request.status],
                kind=kind,
                device_id=device_id,
                page=paging.requested(request),
            )
        return pb.ListAlertsResponse(alerts=[encode_alert(a) for a in found], next_page_token=token)
