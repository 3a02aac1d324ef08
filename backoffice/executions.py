"""The execution read-model: what happened to each delivery of an approved signal, assembled from the
deliveries, the immutable execution events the gateway records, approvals, signals and positions."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from backoffice import devices, signals
from backoffice.models import (
    Approval,
    Delivery,
    DeliveryState,
    Device,
    EventKind,
    ExecutionEvent,
    Position,
    Side,
    Signal,
)
from backoffice.platform import paging
from backoffice.platform.auth import Caller

K = TypeVar("K")
V = TypeVar("V")

# Latencies are listed in the order a delivery moves through its states.
_STAGE_ORDER = {state: index for index, state in enumerate(DeliveryState)}


@dataclass(frozen=True)
class StageReached:
    stage: DeliveryState
    reached_at: datetime
    latency: timedelta | None  # from approval; None when the approval time is unknown


@dataclass(frozen=True)
class Fill:
    price: Decimal | None
    volume: Decimal | None
    broker_ticket: str


@dataclass(frozen=True)
class DeviceExecution:
    delivery: Delivery
    approved_at: datetime | None
    entry_price: Decimal | None  # the signal's
    fill: Fill | None
    slippage: Decimal | None
    position_id: uuid.UUID | None
    latencies: tuple[StageReached, ...]
    events: tuple[ExecutionEvent, ...]  # oldest first


def slippage(side: Side, entry_price: Decimal | None, fill_price: Decimal | None) -> Decimal | None:
    """Positive when the fill is worse for the trader than the signal's entry."""
    if entry_price is None or fill_price is None:
        return None
    return fill_price - entry_price if side is Side.BUY else entry_price - fill_price


def stages_reached(approved_at: datetime | None, events: Iterable[ExecutionEvent]) -> tuple[StageReached, ...]:
    """The first time each stage was reached, by server receive time: approval time is a server time too,
    so the latency never mixes the server's clock with the broker's."""
    first: dict[DeliveryState, datetime] = {}
    for event in events:
        stage = parse_stage(event.stage)
        if stage is not None and (stage not in first or event.received_at < first[stage]):
            first[stage] = event.received_at
    return tuple(
        StageReached(stage, reached, reached - approved_at if approved_at else None)
        for stage, reached in sorted(first.items(), key=lambda item: _STAGE_ORDER[item[0]])
    )


def body_decimal(body: Mapping[str, Any], key: str) -> Decimal | None:
    """A decimal the gateway stored as a string; None when absent or unreadable."""
    raw = body.get(key)
    if raw is None or raw == "":
        return None
    try:
        value = Decimal(str(raw))
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def parse_stage(value: str | None) -> DeliveryState | None:
    """An event's stage as a delivery state; None when it names none."""
    try:
        return DeliveryState(value) if value else None
    except ValueError:
        return None


def _fill(events: Sequence[ExecutionEvent]) -> Fill | None:
    for event in events:
        if event.kind is EventKind.FILL:
            body = event.body or {}
            return Fill(body_decimal(body, "price"), body_decimal(body, "volume"), str(body.get("broker_ticket") or ""))
    return None


def _visible_deliveries(caller: Caller) -> Select[Delivery]:
    """Deliveries to devices the caller may see."""
    return select(Delivery).join(Device, Device.id == Delivery.device_id).where(devices.visible_to(caller))


async def _pairs(session: AsyncSession, query: Select[K, V]) -> dict[K, V]:
    return {key: value for key, value in await session.execute(query)}


async def _assemble(session: AsyncSession, deliveries: Sequence[Delivery]) -> list[DeviceExecution]:
    """Load what the deliveries' executions need in four queries, whatever the page size."""
    if not deliveries:
        return []
    ids = [d.id for d in deliveries]
    events_by_delivery: dict[uuid.UUID, list[ExecutionEvent]] = {d: [] for d in ids}
    events = await session.scalars(
        select(ExecutionEvent)
        .where(ExecutionEvent.delivery_id.in_(ids))
        .order_by(ExecutionEvent.received_at, ExecutionEvent.seq)  # ties within one batch: insertion order
    )
    for event in events:
        assert event.delivery_id is not None
        events_by_delivery[event.delivery_id].append(event)
    approved_at = await _pairs(
        session, select(Approval.id, Approval.decided_at).where(Approval.id.in_({d.approval_id for d in deliveries}))
    )
    entry_prices = await _pairs(
        session, select(Signal.id, Signal.entry_price).where(Signal.id.in_({d.signal_id for d in deliveries}))
    )
    positions = await _pairs(session, select(Position.delivery_id, Position.id).where(Position.delivery_id.in_(ids)))
    result = []
    for delivery in deliveries:
        own_events = events_by_delivery[delivery.id]
        fill = _fill(own_events)
        entry = entry_prices.get(delivery.signal_id)
        approval_time = approved_at.get(delivery.approval_id)
        result.append(
            DeviceExecution(
                delivery=delivery,
                approved_at=approval_time,
                entry_price=entry,
                fill=fill,
                slippage=slippage(delivery.side, entry, fill.price if fill else None),
                position_id=positions.get(delivery.id),
                latencies=stages_reached(approval_time, own_events),
                events=tuple(own_events),
            )
        )
    return result


async def get_signal_execution(session: AsyncSession, caller: Caller, signal_id: uuid.UUID) -> list[DeviceExecution]:
    """Every delivery of the signal to a device the caller may see. A signal the caller can see but that
    has no such delivery gives an empty list; one it cannot see is NotFound, like an absent one."""
    deliveries = list(
        await session.scalars(
            _visible_deliveries(caller)
            .where(Delivery.signal_id == signal_id)
            .order_by(Delivery.created_at, Delivery.id)
        )
    )
    if not deliveries:
        await signals.get(session, caller, signal_id)  # NotFound unless the caller may see the signal
    return await _assemble(session, deliveries)


async def list_executions(
    session: AsyncSession,
    caller: Caller,
    *,
    signal_id: uuid.UUID | None,
    device_id: uuid.UUID | None,
    state: DeliveryState | None,
    page: paging.PageRequest,
) -> tuple[list[DeviceExecution], str]:
    """Executions on the caller's devices (an admin's: every device), newest first, one page."""
    query = _visible_deliveries(caller)
    if signal_id is not None:
        query = query.where(Delivery.signal_id == signal_id)
    if device_id is not None:
        query = query.where(Delivery.device_id == device_id)
    if state is not None:
        query = query.where(Delivery.state == state)
    deliveries, token = await paging.fetch(session, query, Delivery, page, filters=[signal_id, device_id, state])
    return await _assemble(session, deliveries), token
