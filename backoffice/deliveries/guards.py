"""The account owner's risk guards, applied when a signal's deliveries are planned (AUTO and MANUAL
approvals alike): no delivery while a stopout is active, caps on open positions (per account and per
instrument, counting deliveries still in flight), the sides allowed, a cap on volume, a bound on how late
a delivery may be placed (``max_delay_seconds``) and the price deviation the bridge may accept.

A guard is read with the devices a decision plans for (Postgres's ``device_guard``, one row per guarded
device, joined into the decision's read). Counting open positions is race-safe: the decision's write
(``submit_signal``, ``approve_signal``) takes an advisory lock per capped device and writes nothing when
the device no longer holds what was counted (``counted``); the caller then reads and plans again."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
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
    """One device's policy, whether a stopout of it is active, and what it holds now (updated as this
    approval plans deliveries)."""

    policy: risk.Policy
    stopped: bool = False
    held: int = 0  # OPEN and CLOSING positions plus deliveries in flight
    held_by_instrument: dict[str, int] = field(default_factory=dict)
    # What was counted when read (instrument, held, held on it): the write checks it still holds.
    counted: tuple[str, int, int] | None = None

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
    held, held_on_it = row["o_held"], row["o_held_for_instrument"]
    guard = DeviceGuard(policy, stopped=row["o_stopped"], held=held, held_by_instrument={instrument: held_on_it})
    if guard.caps_positions:
        guard.counted = (instrument, held, held_on_it)
    return guard


def counted(guards: Guards) -> list[list[Any]]:
    """The capped devices and what was counted of them, as ``guards_hold``'s four arrays."""
    capped = [(device_id, guard.counted) for device_id, guard in guards.items() if guard.counted is not None]
    return [
        [device_id for device_id, _ in capped],
        [count[0] for _, count in capped if count],
        [count[1] for _, count in capped if count],
        [count[2] for _, count in capped if count],
    ]
