"""ExecutionService."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from google.protobuf import duration
from google.protobuf.duration_pb2 import Duration
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backoffice import executions, models
from backoffice.platform import paging
from backoffice.platform.interceptors import current_caller
from signalhub.protocol import wire
from signalhub.protocol.wire import parse_id, parse_optional_id
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import common_pb2

_STATE = "DELIVERY_STATE"
# Only these kinds concern deliveries; the rest (quotes, heartbeats, hellos) never carry a delivery id.
_EVENT_TYPES = {
    models.EventKind.SENT: pb.EXECUTION_EVENT_TYPE_SENT,
    models.EventKind.ACK: pb.EXECUTION_EVENT_TYPE_ACK,
    models.EventKind.FILL: pb.EXECUTION_EVENT_TYPE_FILL,
    models.EventKind.CLOSE_RESULT: pb.EXECUTION_EVENT_TYPE_CLOSE_RESULT,
    models.EventKind.EXPIRED: pb.EXECUTION_EVENT_TYPE_EXPIRED,
    models.EventKind.ERROR: pb.EXECUTION_EVENT_TYPE_ERROR,
}


def _state(value: models.DeliveryState | None) -> pb.DeliveryState.ValueType:
    state: pb.DeliveryState.ValueType = wire.enum_to_wire(pb.DeliveryState, _STATE, value)
    return state


def _duration(value: timedelta | None) -> Duration | None:
    return None if value is None else duration.from_timedelta(value)


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    return "" if value is None else str(value)


def _attempt(body: dict[str, Any]) -> int:
    value = body.get("attempt")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def encode_event(event: models.ExecutionEvent) -> pb.ExecutionEvent:
    body = event.body or {}
    return pb.ExecutionEvent(
        id=str(event.id),
        type=_EVENT_TYPES.get(event.kind, pb.EXECUTION_EVENT_TYPE_UNSPECIFIED),
        stage=_state(executions.parse_stage(event.stage)),
        delivery_id=str(event.delivery_id or ""),
        close_command_id=str(event.close_command_id or ""),
        frame_id=event.frame_id or "",
        attempt=_attempt(body),
        broker_ticket=_text(body, "broker_ticket"),
        price=_text(body, "price"),
        volume=_text(body, "volume"),
        reason=_text(body, "reason"),
        error=_text(body, "error"),
        event_time=wire.timestamp(event.event_time),
        create_time=wire.timestamp(event.received_at),
    )


def encode_execution(execution: executions.DeviceExecution) -> pb.DeviceExecution:
    """One device's execution of a signal on the wire: its delivery's state and attempts, every stage with
    its time, latency from approval to each stage, and the fill's slippage."""
    delivery = execution.delivery
    fill = execution.fill
    return pb.DeviceExecution(
        delivery_id=str(delivery.id),
        device_id=str(delivery.device_id),
        signal_id=str(delivery.signal_id),
        approval_id=str(delivery.approval_id),
        state=_state(delivery.state),
        attempt=delivery.attempt,
        instrument=delivery.instrument,
        side=wire.enum_to_wire(common_pb2.Side, "SIDE", delivery.side),
        volume=wire.decimal_text(delivery.volume),
        entry_price=wire.decimal_text(execution.entry_price),
        fill_price=wire.decimal_text(fill.price if fill else None),
        filled_volume=wire.decimal_text(fill.volume if fill else None),
        slippage=wire.decimal_text(execution.slippage),
        broker_ticket=fill.broker_ticket if fill else "",
        position_id=str(execution.position_id or ""),
        reason=delivery.state_reason or "",
        approve_time=wire.timestamp(execution.approved_at),
        expire_time=wire.timestamp(delivery.expire_time),
        latencies=[
            pb.StageLatency(
                stage=_state(reached.stage),
                latency=_duration(reached.latency),
                reach_time=wire.timestamp(reached.reached_at),
            )
            for reached in execution.latencies
        ],
        events=[encode_event(event) for event in execution.events],
    )


class ExecutionServicer:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def GetSignalExecution(self, request: pb.GetSignalExecutionRequest, context: Any) -> pb.SignalExecution:
        caller = current_caller()
        signal_id = parse_id(request.signal_id, "signal_id")
        async with self._sessions() as session:
            found = await executions.get_signal_execution(session, caller, signal_id)
        return pb.SignalExecution(signal_id=str(signal_id), devices=[encode_execution(e) for e in found])

    async def ListExecutions(self, request: pb.ListExecutionsRequest, context: Any) -> pb.ListExecutionsResponse:
        caller = current_caller()
        signal_id = parse_optional_id(request.signal_id, "signal_id")
        device_id = parse_optional_id(request.device_id, "device_id")
        state = wire.optional_enum_from_wire(pb.DeliveryState, _STATE, request.state, models.DeliveryState, "state")
        async with self._sessions() as session:
            found, token = await executions.list_executions(
                session,
                caller,
                signal_id=signal_id,
                device_id=device_id,
                state=state,
                page=paging.requested(request),
            )
        return pb.ListExecutionsResponse(executions=[encode_execution(e) for e in found], next_page_token=token)
