"""PositionService."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backoffice import models, positions
from backoffice.platform import paging
from backoffice.platform.interceptors import current_caller
from backoffice.platform.mutations import Mutations, Wake
from backoffice.platform.vault import Vault
from signalhub.protocol import wire
from signalhub.protocol.wire import parse_id, parse_optional_id
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import common_pb2

_STATUS = "POSITION_STATUS"
_COMMAND_STATUS = "CLOSE_COMMAND_STATUS"


def _reason(value: models.CloseReason | None) -> common_pb2.CloseReason.ValueType:
    reason: common_pb2.CloseReason.ValueType = wire.enum_to_wire(common_pb2.CloseReason, "CLOSE_REASON", value)
    return reason


def encode_event(event: models.PositionEvent) -> pb.PositionEvent:
    return pb.PositionEvent(
        id=str(event.id),
        type=wire.enum_to_wire(pb.PositionEventType, "POSITION_EVENT_TYPE", event.kind),
        stop_loss=wire.decimal_text(event.stop_loss),
        take_profit=wire.decimal_text(event.take_profit),
        price=wire.decimal_text(event.price),
        volume=wire.decimal_text(event.volume),
        close_command_id=str(event.close_command_id or ""),
        reason=_reason(event.reason),
        detail=event.detail or "",
        actor_type=wire.enum_to_wire(pb.ActorType, "ACTOR_TYPE", event.actor_type),
        actor_id=str(event.actor_id or ""),
        create_time=wire.timestamp(event.created_at),
    )


def encode_position(view: positions.PositionView) -> pb.Position:
    """A position on the wire, with its hidden levels (its owner and admins may see them) and, from
    GetPosition, its events."""
    p = view.position
    return pb.Position(
        id=str(p.id),
        device_id=str(p.device_id),
        signal_id=str(p.signal_id),
        instrument=p.instrument,
        side=wire.enum_to_wire(common_pb2.Side, "SIDE", p.side),
        volume=wire.decimal_text(p.volume),
        entry_price=wire.decimal_text(p.entry_price),
        stop_loss=wire.decimal_text(p.stop_loss),
        take_profit=wire.decimal_text(p.take_profit),
        broker_ticket=p.broker_ticket,
        status=wire.enum_to_wire(pb.PositionStatus, _STATUS, p.status),
        close_price=wire.decimal_text(p.close_price),
        profit=wire.decimal_text(p.profit),
        user_id=str(view.user_id),
        delivery_id=str(p.delivery_id),
        closed_volume=wire.decimal_text(p.closed_volume),
        close_reason=_reason(p.close_reason),
        open_time=wire.timestamp(p.opened_at),
        close_time=wire.timestamp(p.closed_at),
        signal_instrument=p.signal_instrument,
        trailing_distance=wire.decimal_text(p.trailing_distance),
        best_price=wire.decimal_text(p.best_price),
        breakeven_trigger=wire.decimal_text(p.breakeven_trigger),
        breakeven_offset=wire.decimal_text(p.breakeven_offset),
        breakeven_done=p.breakeven_done,
        price_profit=wire.decimal_text(p.price_profit),
        events=[encode_event(e) for e in view.events],
    )


def encode_close_command(command: models.CloseCommand) -> pb.CloseCommand:
    return pb.CloseCommand(
        id=str(command.id),
        position_id=str(command.position_id),
        device_id=str(command.device_id),
        volume=wire.decimal_text(command.volume),
        reason=_reason(command.reason),
        status=wire.enum_to_wire(pb.CloseCommandStatus, _COMMAND_STATUS, command.status),
        close_price=wire.decimal_text(command.close_price),
        closed_volume=wire.decimal_text(command.closed_volume),
        error=command.error or "",
        create_time=wire.timestamp(command.created_at),
        complete_time=wire.timestamp(command.completed_at),
        attempt=command.attempt,
    )


def _optional(request: Any, name: str) -> str | None:
    return str(getattr(request, name)) if request.HasField(name) else None


class PositionServicer:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], vault: Vault, redis: Redis, quote_max_age_seconds: float
    ) -> None:
        self._sessions = sessions
        self._mutations = Mutations(sessions, vault, redis)
        self._quote_max_age = timedelta(seconds=quote_max_age_seconds)

    async def ListPositions(self, request: pb.ListPositionsRequest, context: Any) -> pb.ListPositionsResponse:
        caller = current_caller()
        device_id = parse_optional_id(request.device_id, "device_id")
        signal_id = parse_optional_id(request.signal_id, "signal_id")
        status = wire.optional_enum_from_wire(
            pb.PositionStatus, _STATUS, request.status, models.PositionStatus, "status"
        )
        async with self._sessions() as session:
            found, token = await positions.list_positions(
                session,
                caller,
                device_id=device_id,
                signal_id=signal_id,
                status=status,
                instrument=request.instrument,
                page=paging.requested(request),
            )
        return pb.ListPositionsResponse(positions=[encode_position(v) for v in found], next_page_token=token)

    async def GetPosition(self, request: pb.GetPositionRequest, context: Any) -> pb.Position:
        caller = current_caller()
        position_id = parse_id(request.id, "id")
        async with self._sessions() as session:
            return encode_position(await positions.get_position(session, caller, position_id))

    async def ClosePosition(self, request: pb.ClosePositionRequest, context: Any) -> pb.CloseCommand:
        caller = current_caller()
        position_id = parse_id(request.id, "id")

        async def close(session: AsyncSession, wake: Wake) -> pb.CloseCommand:
            closed = await positions.close_position(
                session,
                caller,
                position_id,
                volume=request.volume,
                now=datetime.now(UTC),
                request_id=request.request_id,
            )
            wake.add([closed.device_id])
            wake.add_positions([position_id])
            return encode_close_command(closed.command)

        return await self._mutations.run(caller.id, request, pb.CloseCommand, close)

    async def UpdateProtection(self, request: pb.UpdateProtectionRequest, context: Any) -> pb.Position:
        caller = current_caller()
        position_id = parse_id(request.id, "id")
        change = positions.ProtectionChange(
            stop_loss=_optional(request, "stop_loss"),
            take_profit=_optional(request, "take_profit"),
            trailing_distance=_optional(request, "trailing_distance"),
            breakeven_trigger=_optional(request, "breakeven_trigger"),
            breakeven_offset=_optional(request, "breakeven_offset"),
        )

        async def update(session: AsyncSession, wake: Wake) -> pb.Position:
            view = await positions.update_protection(
                session,
                caller,
                position_id,
                change,
                now=datetime.now(UTC),
                quote_max_age=self._quote_max_age,
                request_id=request.request_id,
            )
            wake.add_positions([position_id])
            return encode_position(view)

        return await self._mutations.run(caller.id, request, pb.Position, update)

    async def ListCloseCommands(
        self, request: pb.ListCloseCommandsRequest, context: Any
    ) -> pb.ListCloseCommandsResponse:
        caller = current_caller()
        position_id = parse_optional_id(request.position_id, "position_id")
        device_id = parse_optional_id(request.device_id, "device_id")
        status = wire.optional_enum_from_wire(
            pb.CloseCommandStatus, _COMMAND_STATUS, request.status, models.CloseCommandStatus, "status"
        )
        async with self._sessions() as session:
            found, token = await positions.list_close_commands(
                session,
                caller,
                position_id=position_id,
                device_id=device_id,
                status=status,
                page=paging.requested(request),
            )
        return pb.ListCloseCommandsResponse(
            close_commands=[encode_close_command(c) for c in found], next_page_token=token
        )
