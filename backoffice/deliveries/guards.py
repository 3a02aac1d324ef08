"""The account owner's risk guards, applied when a signal's deliveries are planned (AUTO and MANUAL
approvals alike): no delivery while a stopout is active, caps on open positions (per account and per
instrument, counting deliveries still in flight), the sides allowed, a cap on volume, a bound on how late
a delivery may be placed (``max_delay_seconds``) and the price deviation the bridge may accept.

Counting open positions is race-safe: ``load`` takes a transaction-scoped advisory lock per device whose
policy caps them, so two approvals for one device count one after the other (the second sees the first's
deliveries once it commits)."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from sqlalchemy import and_, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from backoffice import risk
from backoffice.models import Delivery, DeliveryState, Position, PositionStatus, Side
from backoffice.platform.db import any_id

# Deliveries that may still become positions.
IN_FLIGHT = (DeliveryState.PENDING, DeliveryState.SENT, DeliveryState.RECEIVED, DeliveryState.PLACED)
HELD = (PositionStatus.OPEN, PositionStatus.CLOSING)

# Why a delivery was SKIPPED (the contract's reasons).
RISK_STOPOUT = "RISK_STOPOUT"
MAX_OPEN_POSITIONS = "MAX_OPEN_POSITIONS"
SIDE_NOT_ALLOWED = "SIDE_NOT_ALLOWED"


@dataclass
class DeviceGuard:
    """One device's guards, and what it holds now (updated as this approval plans deliveries)."""

    stopped: bool = False
    max_open_positions: int = 0
    max_open_positions_per_instrument: int = 0
    max_volume: Decimal | None = None
    max_deviation: Decimal | None = None
    max_delay_seconds: int = 0
    allowed_sides: frozenset[Side] = frozenset()
    held: int = 0  # OPEN and CLOSING positions plus deliveries in flight
    held_by_instrument: dict[str, int] = field(default_factory=dict)

    def refusal(self, side: Side, instrument: str) -> str | None:
        """Why a new delivery of ``side`` on ``instrument`` (the broker's symbol) is skipped, or None."""
        if self.stopped:
            return RISK_STOPOUT
        if self.allowed_sides and side not in self.allowed_sides:
            return SIDE_NOT_ALLOWED
        if self.max_open_positions and self.held >= self.max_open_positions:
            return MAX_OPEN_POSITIONS
        per_instrument = self.max_open_positions_per_instrument
        if per_instrument and self.held_by_instrument.get(instrument, 0) >= per_instrument:
            return MAX_OPEN_POSITIONS
        return None

    def take(self, instrument: str) -> None:
        """Count a delivery just planned, so the next signal of this approval sees it."""
        self.held += 1
        self.held_by_instrument[instrument] = self.held_by_instrument.get(instrument, 0) + 1


Guards = Mapping[uuid.UUID, DeviceGuard]


async def load(session: AsyncSession, device_ids: Collection[uuid.UUID], now: datetime) -> dict[uuid.UUID, DeviceGuard]:
    """The guards of these devices (their policies and active stopouts, one query each), then, only for the
    devices whose policy caps open positions, their advisory locks and what they hold. Devices with
    neither a policy nor an active stopout are left out (nothing guards them)."""
    ids = list(dict.fromkeys(device_ids))
    if not ids:
        return {}
    policies = await risk.load_policies(session, ids)
    stopped = await risk.active_stopouts(session, ids, now)
    guards: dict[uuid.UUID, DeviceGuard] = {}
    for device_id in ids:
        policy = policies[device_id]
        if policy.is_empty and device_id not in stopped:
            continue
        guards[device_id] = DeviceGuard(
            stopped=device_id in stopped,
            max_open_positions=policy.max_open_positions,
            max_open_positions_per_instrument=policy.max_open_positions_per_instrument,
            max_volume=policy.max_volume,
            max_deviation=policy.max_deviation,
            max_delay_seconds=policy.max_delay_seconds,
            allowed_sides=policy.allowed_sides,
        )
    capped = sorted(d for d, g in guards.items() if g.max_open_positions or g.max_open_positions_per_instrument)
    if capped:
        await _lock(session, capped)
        await _count_held(session, capped, guards)
    return guards


async def _lock(session: AsyncSession, device_ids: list[uuid.UUID]) -> None:
    """One advisory lock per device, in id order (no cycle between two approvals), until the commit."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(d::text, 0)) FROM unnest(CAST(:ids AS uuid[])) d"),
        {"ids": device_ids},
    )


async def _count_held(session: AsyncSession, device_ids: list[uuid.UUID], guards: dict[uuid.UUID, DeviceGuard]) -> None:
    positions = select(Position.device_id, Position.instrument, func.count()).where(
        any_id(Position.device_id, device_ids), Position.status.in_(HELD)
    )
    deliveries = select(Delivery.device_id, Delivery.instrument, func.count()).where(
        and_(any_id(Delivery.device_id, device_ids), Delivery.state.in_(IN_FLIGHT))
    )
    for query in (positions, deliveries):
        for device_id, instrument, count in await session.execute(
            query.group_by(query.selected_columns[0], query.selected_columns[1])
        ):
            guard = guards[device_id]
            guard.held += count
            guard.held_by_instrument[instrument] = guard.held_by_instrument.get(instrument, 0) + count
