"""Reading positions and close commands: users see their own devices' (another user's is NOT_FOUND, as
if it did not exist), admins everyone's."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, exists, or_, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from backoffice.models import CloseCommand, CloseCommandStatus, Device, Position, PositionEvent, PositionStatus
from backoffice.platform import paging
from backoffice.platform.auth import Caller
from backoffice.platform.db import any_id
from backoffice.positions import events
from signalhub.protocol.errors import NotFound


@dataclass(frozen=True)
class PositionView:
    """A position, its device's owner and (for GetPosition) its events."""

    position: Position
    user_id: uuid.UUID
    events: list[PositionEvent] = field(default_factory=list)


def _visible(caller: Caller, device_column: ColumnElement[uuid.UUID] | object) -> ColumnElement[bool]:
    if caller.is_admin:
        return true()
    return exists().where(Device.id == device_column, Device.user_id == caller.id)


async def owners(session: AsyncSession, device_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
    ids = set(device_ids)
    if not ids:
        return {}
    rows = await session.execute(select(Device.id, Device.user_id).where(any_id(Device.id, ids)))
    return {row.id: row.user_id for row in rows}


async def find_position(
    session: AsyncSession, caller: Caller, position_id: uuid.UUID, *, lock: bool = False
) -> Position:
    """A position the caller may see; NotFound when absent or someone else's. ``lock`` holds its row."""
    query = select(Position).where(Position.id == position_id, _visible(caller, Position.device_id))
    if lock:
        query = query.with_for_update(of=Position).execution_options(populate_existing=True)
    position = await session.scalar(query)
    if position is None:
        raise NotFound("position")
    return position


async def get_position(session: AsyncSession, caller: Caller, position_id: uuid.UUID) -> PositionView:
    position = await find_position(session, caller, position_id)
    owner = (await owners(session, [position.device_id]))[position.device_id]
    return PositionView(position, owner, await events.events_of(session, position.id))


async def list_positions(
    session: AsyncSession,
    caller: Caller,
    *,
    device_id: uuid.UUID | None,
    signal_id: uuid.UUID | None,
    status: PositionStatus | None,
    instrument: str,
    page: paging.PageRequest,
) -> tuple[list[PositionView], str]:
    """The positions the caller may see, newest first; ``instrument`` matches the broker symbol or the
    signal's instrument."""
    query = select(Position).where(_visible(caller, Position.device_id))
    if device_id is not None:
        query = query.where(Position.device_id == device_id)
    if signal_id is not None:
        query = query.where(Position.signal_id == signal_id)
    if status is not None:
        query = query.where(Position.status == status)
    if instrument:
        query = query.where(or_(Position.instrument == instrument, Position.signal_instrument == instrument))
    rows, token = await paging.fetch(
        session,
        query,
        Position,
        page,
        filters=[device_id, signal_id, status, instrument],
        created_at=Position.opened_at,
    )
    found = await owners(session, {p.device_id for p in rows})
    return [PositionView(p, found[p.device_id]) for p in rows], token


async def list_close_commands(
    session: AsyncSession,
    caller: Caller,
    *,
    position_id: uuid.UUID | None,
    device_id: uuid.UUID | None,
    status: CloseCommandStatus | None,
    page: paging.PageRequest,
) -> tuple[list[CloseCommand], str]:
    """The close commands of the positions the caller may see, newest first."""
    query = select(CloseCommand).where(_visible(caller, CloseCommand.device_id))
    if position_id is not None:
        query = query.where(CloseCommand.position_id == position_id)
    if device_id is not None:
        query = query.where(CloseCommand.device_id == device_id)
    if status is not None:
        query = query.where(CloseCommand.status == status)
    return await paging.fetch(session, query, CloseCommand, page, filters=[position_id, device_id, status])


async def held_symbols(session: AsyncSession, device_id: uuid.UUID) -> set[str]:
    """The broker symbols of the device's positions not yet closed (its quotes for them are read)."""
    rows = await session.scalars(
        select(Position.instrument)
        .where(Position.device_id == device_id, Position.status != PositionStatus.CLOSED)
        .distinct()
    )
    return set(rows)
