"""Stopouts written directly with the ORM (the limit evaluation is what records them in production), and
the RISK_STOPOUT alert it raises with one; and which devices are stopped out, asked every way the code
asks it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select, text

from backoffice import alerts, risk
from backoffice.bootstrap import Resources
from backoffice.models import AlertKind, RiskAction, RiskMetric, RiskPeriod, Stopout
from backoffice.risk import Limit

DAILY_LOSS = Limit.of(
    RiskPeriod.DAY, RiskMetric.LOSS, None, Decimal("5"), RiskAction.CLOSE_ALL, datetime(2026, 1, 1, tzinfo=UTC)
)


def stopout_row(device_id: uuid.UUID, trigger_time: datetime, **columns: Any) -> Stopout:
    """A DAY LOSS stopout reached at ``trigger_time``, ending a day later, not reset. Its period starts an
    hour before it by default, so that rows of one device and limit never share a period start."""
    limit = columns.pop("limit", DAILY_LOSS)
    defaults: dict[str, Any] = {
        "id": uuid.uuid4(),
        "period_start": trigger_time - timedelta(hours=1),
        "reference": Decimal("10000.00"),
        "value": Decimal("512.40"),
        "equity": Decimal("9487.60"),
        "end_time": trigger_time + timedelta(days=1),
    }
    return Stopout(
        **defaults | columns,
        device_id=device_id,
        limit_key=limit.key,
        limit=limit.to_json(),
        trigger_time=trigger_time,
    )


async def add_stopouts(res: Resources, *rows: Stopout) -> list[uuid.UUID]:
    async with res.sessions.begin() as session:
        session.add_all(rows)
    return [row.id for row in rows]


async def raise_stopout_alert(res: Resources, stopout: Stopout, now: datetime) -> uuid.UUID:
    """The RISK_STOPOUT alert of ``stopout``, raised as the evaluation raises it (its subject: the stopout)."""
    async with res.sessions.begin() as session:
        [raised] = await alerts.raise_alerts(
            session,
            [alerts.Incident(AlertKind.RISK_STOPOUT, stopout.id, stopout.device_id, f"stopout {stopout.id}")],
            now,
        )
    return raised.id


async def stopped_out(res: Resources, device_ids: list[uuid.UUID], now: datetime) -> set[uuid.UUID]:
    """The devices with an active stopout at ``now``, as the listing's filter (``risk.active_at``), a
    decision's guard (``device_guard``) and a loaded row (``risk.is_active``) each find them: all three
    must agree."""
    async with res.sessions() as session:
        listed = set(
            await session.scalars(
                select(Stopout.device_id).where(Stopout.device_id.in_(device_ids), risk.active_at(now)).distinct()
            )
        )
        guarded = {
            device_id
            for device_id in device_ids
            if await session.scalar(
                text("SELECT o_stopped FROM device_guard(:device, 'XAUUSD', :now)"), {"device": device_id, "now": now}
            )
        }
        loaded = {s.device_id for s in await session.scalars(select(Stopout)) if risk.is_active(s, now)}
    assert listed == guarded == loaded & set(device_ids)
    return listed
