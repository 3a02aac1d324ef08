"""The account owner's risk guards, applied when a signal's deliveries are planned (AUTO and MANUAL
approvals alike): no delivery while a stopout is active, caps on open positions (per account and per
instrument, counting deliveries still in flight), the sides allowed, a cap on volume, a bound on how late
a delivery may be placed (``max_delay_seconds``) and the price deviation the bridge may accept.

A guard is read with the devices a decision plans for (Postgres's ``device_guard``, one row per guarded
device, joined into the decision's read); whether a capped device has room for one more delivery is
Postgres's rule too (``device_room``). Counting open positions is race-safe: the decision's write
(``submit_signal``, ``approve_signal``) takes an advisory lock per capped device and writes nothing when a
device's room is no longer what the plan saw (``counted_on``); the caller then reads and plans again, with
those devices locked (``serialized``), so concurrent decisions on one device take turns."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from backoffice import risk
from backoffice.models import Side

# Why a delivery was SKIPPED (the contract's reasons).
RISK_STOPOUT = "RISK_STOPOUT"
MAX_OPEN_POSITIONS = "MAX_OPEN_POSITIONS"
SIDE_NOT_ALLOWED = "SIDE_NOT_ALLOWED"

# The columns ``device_guard`` returns, as a read selects them (``g.*``): one home for their names.
GUARD_COLUMNS = "g.o_max_open_positions IS NOT NULL AS guarded, g.*"


@dataclass
class DeviceGuard:
    """One device's policy, whether a stopout of it is active, and whether its caps on open positions
    leave room for one more delivery (always, without caps)."""

    policy: risk.Policy
    stopped: bool = False
    room: bool = True
    # For a device whose caps count: the instrument (the broker's symbol) its room was read for; the write
    # checks the device still has that room.
    counted_on: str | None = None

    @property
    def caps_positions(self) -> bool:
        return bool(self.policy.max_open_positions or self.policy.max_open_positions_per_instrument)

    def refusal(self, side: Side) -> str | None:
        """Why a new delivery of ``side`` is skipped, or None."""
        if self.stopped:
            return RISK_STOPOUT
        if not self.policy.allows_side(side):
            return SIDE_NOT_ALLOWED
        if not self.room:
            return MAX_OPEN_POSITIONS
        return None


Guards = Mapping[uuid.UUID, DeviceGuard]


def from_row(device_id: uuid.UUID, instrument: str, row: Mapping[str, Any]) -> DeviceGuard | None:
    """The guard in a read's row (its ``GUARD_COLUMNS``) of the device's delivery on ``instrument`` (the
    broker's symbol); None for a device nothing guards."""
    if not row["guarded"]:
        return None
    policy = risk.Policy(
        device_id,
        max_open_positions=row["o_max_open_positions"],
        max_open_positions_per_instrument=row["o_max_open_positions_per_instrument"],
        max_volume=row["o_max_volume"],
        max_deviation=row["o_max_deviation"],
        max_delay_seconds=row["o_max_delay_seconds"],
        allowed_sides=frozenset(Side(side) for side in row["o_allowed_sides"]),
    )
    guard = DeviceGuard(policy, stopped=row["o_stopped"], room=row["o_room"])
    if guard.caps_positions:
        guard.counted_on = instrument
    return guard


def counted(guards: Guards) -> list[list[Any]]:
    """The capped devices and the room the plan saw, as ``guards_hold``'s three arrays."""
    counted = [(device_id, guard) for device_id, guard in guards.items() if guard.counted_on is not None]
    return [
        [device_id for device_id, _ in counted],
        [guard.counted_on for _, guard in counted],
        [guard.room for _, guard in counted],
    ]


def capped(guards: Guards) -> list[uuid.UUID]:
    """The devices whose caps a plan counted on: those a retry locks before it reads (``serialized``)."""
    return sorted(device_id for device_id, guard in guards.items() if guard.counted_on is not None)


@asynccontextmanager
async def serialized(connection: Any, device_ids: Sequence[uuid.UUID]) -> AsyncIterator[None]:
    """With ``device_ids``: a transaction on ``connection`` (the driver's) holding their advisory locks
    from before a decision's read to its write's commit, so decisions on those devices take turns rather
    than plan again and again; the retry of a decision whose plan a concurrent one overtook. Without:
    nothing (each statement commits on its own)."""
    if not device_ids:
        yield
        return
    async with connection.transaction():
        await connection.execute("SELECT lock_devices($1)", list(device_ids))
        yield
