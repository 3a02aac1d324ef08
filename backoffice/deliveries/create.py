"""Deliveries come into being when a signal is approved for an account: one per chosen device, read with
its guard in the decision's one read, planned in memory, and written by the decision's one function call
(``insert_planned_deliveries``, every column one array) however many devices there are."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from backoffice import sizing
from backoffice.deliveries.guards import DeviceGuard, Guards
from backoffice.deliveries.guards import from_row as guards_from_row
from backoffice.devices.hello import Hello
from backoffice.models import DeliveryState, Signal
from backoffice.platform.metrics import RISK_GUARD_SKIPS


@dataclass
class Planned:
    """Deliveries to insert, and what the approval and the wake-up need to know of them."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    woken: list[uuid.UUID] = field(default_factory=list)  # devices with a PENDING delivery to wake


def _symbol(instrument: str) -> str:
    """The broker's symbol device ``d`` trades a signal's ``instrument`` (an SQL expression) under."""
    return f"coalesce(d.symbol_map ->> {instrument}, {instrument})"


def recipient_columns(instrument: str) -> str:
    """What a delivery needs of device ``d`` (a read's columns) for a signal on ``instrument`` (an SQL
    expression): its id, name and symbol map and, of its last Hello, the account and the one symbol the map
    names for the instrument. A terminal may declare 2,000 symbols, which would otherwise be read and parsed
    for every device of every fan-out. With ``device_guard``'s columns (``guards.GUARD_COLUMNS``) after a
    ``LEFT JOIN LATERAL device_guard(d.id, <symbol>, <now>) g ON true``."""
    symbol = _symbol(instrument)
    return (
        "d.id AS device_id, d.name AS device_name, d.symbol_map,"
        " CASE WHEN d.id IS NOT NULL THEN jsonb_build_object("  # no device on the row (outer join): no Hello
        " 'account_currency', d.last_hello -> 'account_currency',"
        " 'balance', d.last_hello -> 'balance', 'equity', d.last_hello -> 'equity',"
        f" 'symbols', jsonb_build_object({symbol}, d.last_hello -> 'symbols' -> {symbol})) END AS last_hello"
    )


def guard_join(instrument: str, now: str) -> str:
    """The join giving each device ``d`` its guard for a signal on ``instrument`` at ``now`` (SQL)."""
    return f"LEFT JOIN LATERAL device_guard(d.id, {_symbol(instrument)}, {now}) g ON true"


@dataclass(frozen=True)
class Recipient:
    """What a delivery needs of its device, as a decision's read gives it (``recipient_columns``)."""

    id: uuid.UUID
    name: str
    symbol_map: dict[str, str]
    last_hello: dict[str, Any] | None


def recipient(row: Mapping[str, Any], signal_instrument: str, guards: dict[uuid.UUID, DeviceGuard]) -> Recipient:
    """The device in a read's row (``recipient_columns``), its guard (if any) added to ``guards``."""
    device = Recipient(row["device_id"], row["device_name"], row["symbol_map"], row["last_hello"])
    guard = guards_from_row(device.id, device.symbol_map.get(signal_instrument, signal_instrument), row)
    if guard is not None:
        guards[device.id] = guard
    return device


def plan_for_approval(
    planned: Planned,
    approval_id: uuid.UUID,
    signal: Signal,
    devices: Sequence[Recipient],
    rule: sizing.Rule,
    volume: Decimal | None,
    now: datetime,
    guards: Guards | None = None,
) -> list[str]:
    """Add one delivery per device to ``planned``, in the symbol the device's map gives, sized from its
    last Hello (or ``volume`` when the approval names one): PENDING when tradable, else SKIPPED with the
    reason. ``guards`` (read with the devices: ``recipient``) are the owners' risk guards: a guarded
    device's delivery may be SKIPPED for them, its volume capped, its expiry brought forward and its price
    deviation bounded.
    Returns this approval's skipped devices ("<name>: <why>")."""
    skipped: list[str] = []
    for device in devices:
        instrument = device.symbol_map.get(signal.instrument, signal.instrument)
        guard = guards.get(device.id) if guards else None
        refused = guard.refusal(signal.side) if guard is not None else None
        if refused is not None:
            RISK_GUARD_SKIPS.labels(refused).inc()
        device_rule = rule
        if guard is not None and guard.policy.max_volume is not None:
            cap = guard.policy.max_volume if rule.max_volume is None else min(rule.max_volume, guard.policy.max_volume)
            device_rule = replace(rule, max_volume=cap)
        sized = (
            sizing.Sized(None, refused)
            if refused is not None
            else sizing.size(
                device_rule,
                Hello.from_json(device.last_hello),
                instrument,
                entry_price=signal.entry_price,
                stop_loss=signal.stop_loss,
                override=volume,
            )
        )
        expire_time, max_deviation = signal.expire_time, None
        if guard is not None and sized.volume is not None:
            max_deviation = guard.policy.max_deviation
            if guard.policy.max_delay_seconds:
                delay = timedelta(seconds=guard.policy.max_delay_seconds)
                expire_time = min(expire_time, signal.signal_time + delay)
        planned.rows.append(
            {
                "id": uuid.uuid4(),
                "approval_id": approval_id,
                "signal_id": signal.id,
                "device_id": device.id,
                "instrument": instrument,
                "side": signal.side,
                "volume": sized.volume if sized.volume is not None else Decimal(0),
                "entry_price": signal.entry_price,
                "max_deviation": max_deviation,
                "expire_time": expire_time,
                "state": DeliveryState.PENDING if sized.volume is not None else DeliveryState.SKIPPED,
                "state_reason": sized.reason,
                "created_at": now,
                "updated_at": now,
            }
        )
        if sized.volume is None:
            skipped.append(f"{device.name}: {sized.reason}")
        else:
            planned.woken.append(device.id)
    return skipped


def planned_columns(planned: Planned) -> list[list[Any]]:
    """The planned deliveries as ``insert_planned_deliveries``'s nine arrays (the signal's side, entry price
    and the decision's time are the function's own arguments)."""
    rows = planned.rows
    return [
        [row["id"] for row in rows],
        [row["approval_id"] for row in rows],
        [row["device_id"] for row in rows],
        [row["instrument"] for row in rows],
        [row["volume"] for row in rows],
        [row["max_deviation"] for row in rows],
        [row["expire_time"] for row in rows],
        [row["state"].value for row in rows],
        [row["state_reason"] for row in rows],
    ]
