"""Deliveries come into being when a signal is approved for an account: one per chosen device."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession

from backoffice import sizing
from backoffice.devices.hello import Hello
from backoffice.models import Approval, Delivery, DeliveryState, Device, Signal


@dataclass(frozen=True)
class Created:
    woken: tuple[uuid.UUID, ...]  # devices with a PENDING delivery to wake
    skipped: list[str]  # "<device name>: <why>" for each SKIPPED delivery


def create_for_approval(
    session: AsyncSession,
    approval: Approval,
    signal: Signal,
    devices: Sequence[Device],
    rule: sizing.Rule,
    volume: Decimal | None,
    now: datetime,
) -> Created:
    """One delivery per device, in the symbol the device's map gives, sized from its last Hello (or
    ``volume`` when the approval names one): PENDING when tradable, else SKIPPED with the reason."""
    skipped: list[str] = []
    woken: list[uuid.UUID] = []
    skipped = []
    woken = []
    for device in devices:
        instrument = device.symbol_map.get(signal.instrument, signal.instrument)
        sized = sizing.size(
            rule,
            Hello.from_json(device.last_hello),
            instrument,
            entry_price=signal.entry_price,
            stop_loss=signal.stop_loss,
            override=volume,
        )
        state = DeliveryState.PENDING if sized.volume is not None else DeliveryState.SKIPPED
        session.add(
            Delivery(
                id=uuid.uuid4(),
                approval_id=approval.id,
                signal_id=signal.id,
                device_id=device.id,
                instrument=instrument,
                side=signal.side,
                volume=sized.volume if sized.volume is not None else Decimal(0),
                entry_price=signal.entry_price,
                max_deviation=None,
                expire_time=signal.expire_time,
                state=state,
                state_reason=sized.reason,
                created_at=now,
                updated_at=now,
            )
        )
        if sized.volume is None:
            skipped.append(f"{device.name}: {sized.reason}")
        else:
            woken.append(device.id)
    return Created(tuple(woken), skipped)
