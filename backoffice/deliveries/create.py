"""Deliveries come into being when a signal is approved for an account: one per chosen device, planned
in memory and written with one bulk INSERT however many devices there are."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy import func, select, type_coerce
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from backoffice import sizing
from backoffice.deliveries.guards import Guards
from backoffice.devices.hello import Hello
from backoffice.models import Delivery, DeliveryState, Device, DeviceStatus, Signal
from backoffice.platform import db
from backoffice.platform.db import any_id
from backoffice.platform.metrics import RISK_GUARD_SKIPS


class Recipient(Protocol):
    """What a delivery needs of its device (a Device row, or a row of just these columns)."""

    id: uuid.UUID
    name: str
    symbol_map: dict[str, str]
    last_hello: dict[str, Any] | None


@dataclass
class Planned:
    """Deliveries to insert, and what the approval and the wake-up need to know of them."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    woken: list[uuid.UUID] = field(default_factory=list)  # devices with a PENDING delivery to wake
    skipped: list[str] = field(default_factory=list)  # "<device name>: <why>" for each SKIPPED delivery


async def active_recipients(
    session: AsyncSession, user_ids: set[uuid.UUID], signal_instrument: str
) -> dict[uuid.UUID, list[Any]]:
    """The ACTIVE devices of these users, oldest first, with just what a delivery of ``signal_instrument``
    needs of them: of each last Hello, the account and the one symbol the device's map names for it. A
    terminal may declare 2,000 symbols, which would otherwise be read and parsed for every device of every
    fan-out."""
    if not user_ids:
        return {}
    symbol = func.coalesce(Device.symbol_map.op("->>")(signal_instrument), signal_instrument)
    hello = Device.last_hello
    hello_for_signal = func.jsonb_build_object(
        "account_currency",
        hello.op("->")("account_currency"),
        "balance",
        hello.op("->")("balance"),
        "equity",
        hello.op("->")("equity"),
        "symbols",
        func.jsonb_build_object(symbol, hello.op("->")("symbols").op("->")(symbol)),
    )
    rows = await session.execute(
        select(
            Device.id,
            Device.user_id,
            Device.name,
            Device.symbol_map,
            type_coerce(hello_for_signal, JSONB).label("last_hello"),
        )
        .where(any_id(Device.user_id, user_ids), Device.status == DeviceStatus.ACTIVE)
        .order_by(Device.created_at, Device.id)
    )
    found: dict[uuid.UUID, list[Any]] = {}
    for row in rows:
        found.setdefault(row.user_id, []).append(row)
    return found


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
    reason. ``guards`` (``guards.load``) are the owners' risk guards: a guarded device's delivery may be
    SKIPPED for them, its volume capped, its expiry brought forward and its price deviation bounded.
    Returns this approval's skipped devices ("<name>: <why>")."""
    skipped: list[str] = []
    for device in devices:
        instrument = device.symbol_map.get(signal.instrument, signal.instrument)
        guard = guards.get(device.id) if guards else None
        refused = guard.refusal(signal.side, instrument) if guard is not None else None
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
            guard.take(instrument)
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
    planned.skipped.extend(skipped)
    return skipped


async def insert_planned(session: AsyncSession, planned: Planned) -> None:
    """Write the planned deliveries in one statement, every column one array (the approvals they belong to
    come first, flushed), not SQLAlchemy's multi-row INSERT with its processing of every bound value."""
    await db.insert_rows(session, Delivery, planned.rows)
