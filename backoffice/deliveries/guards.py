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
    """One device's policy, whether a stopout of it is active, and what it holds now (updated as this
    approval plans deliveries)."""

    policy: risk.Policy
    stopped: bool = False
    held: int = 0  # OPEN and CLOSING positions plus deliveries in flight
    held_by_instrument: dict[str, int] = field(default_factory=dict)

    @property
    def caps_positions(self) -> bool:
        return bool(self.policy.max_open_positions or self.policy.max_open_positions_per_instrument)

    def refusal(self, side: Side, instrument: str) -> str | None:
        """Why a new delivery of ``side`` on ``instrument`` (the broker's symbol) is skipped, or None."""
        policy = self.policy
        if self.stopped:
            return RISK_STOPOUT
        if not policy.allows_side(side):
            return SIDE_NOT_ALLOWED
        if policy.max_open_positions and self.held >= policy.max_open_positions:
            return MAX_OPEN_POSITIONS
        per_instrument = policy.max_open_positions_per_instrument
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
    policies = {d: p for d, p in (await risk.stored_policies(session, ids)).items() if not p.is_empty}
    stopped = await risk.active_stopouts(session, ids, now)
    guards = {
        device_id: DeviceGuard(policies.get(device_id) or risk.Policy(device_id), stopped=device_id in stopped)
        for device_id in policies.keys() | stopped
    }
    capped = sorted(d for d, g in guards.items() if g.caps_positions)
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
