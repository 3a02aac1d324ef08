"""What the gateway records about a connected device: its Hello (account and symbol specs, which the back
office's sizing reads), its reactivation, when it was last seen; and which connected devices were revoked.

``devices.last_hello`` has exactly this shape (decimals as strings, "" when the bridge did not say):
``{"bridge_version", "account_currency", "balance", "equity",
"symbols": {name: {"contract_size", "tick_size", "tick_value", "volume_min", "volume_step", "volume_max"}}}``
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from backoffice import audit
from backoffice.deliveries import any_id, event_row
from backoffice.models import ActorType, Device, DeviceStatus, EventKind, ExecutionEvent
from signalhub.protocol.errors import InvalidArgument, Unauthenticated
from signalhub.protocol.signing import AuthFailure
from signalhub.protocol.wire import SYMBOL_RE, decimal_text, parse_decimal
from signalhub.v1 import gateway_pb2 as pb

MAX_SYMBOLS = 2000
SPEC_FIELDS = ("contract_size", "tick_size", "tick_value", "volume_min", "volume_step", "volume_max")
_CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
_VERSION_MAX = 64


def decode_hello(hello: pb.Hello) -> dict[str, Any]:
    """The Hello as stored in ``devices.last_hello``; InvalidArgument names every bad field."""
    violations: list[tuple[str, str]] = []

    def decimal(value: str, path: str, *, positive: bool) -> str:
        if not value.strip():
            return ""
        try:
            return decimal_text(parse_decimal(value, path, positive=positive))
        except InvalidArgument as exc:
            violations.extend(exc.violations)
            return ""

    if len(hello.bridge_version) > _VERSION_MAX or not hello.bridge_version.isprintable():
        violations.append(("hello.bridge_version", f"at most {_VERSION_MAX} printable characters"))
    if hello.account_currency and not _CURRENCY_RE.match(hello.account_currency):
        violations.append(("hello.account_currency", "an ISO 4217 code such as 'USD'"))
    if len(hello.symbols) > MAX_SYMBOLS:
        violations.append(("hello.symbols", f"at most {MAX_SYMBOLS} symbols"))
    symbols: dict[str, dict[str, str]] = {}
    for index, spec in enumerate(hello.symbols[:MAX_SYMBOLS]):
        path = f"hello.symbols[{index}]"
        if not SYMBOL_RE.match(spec.name):
            violations.append((f"{path}.name", "the broker's symbol: 1 to 32 of [A-Za-z0-9._#-]"))
        elif spec.name in symbols:
            violations.append((f"{path}.name", "named twice"))
        symbols[spec.name] = {
            name: decimal(getattr(spec, name), f"{path}.{name}", positive=True) for name in SPEC_FIELDS
        }
    record = {
        "bridge_version": hello.bridge_version,
        "account_currency": hello.account_currency,
        "balance": decimal(hello.balance, "hello.balance", positive=False),
        "equity": decimal(hello.equity, "hello.equity", positive=False),
        "symbols": symbols,
    }
    if violations:
        raise InvalidArgument(violations[:50])
    return record


async def store_hello(
    session: AsyncSession, device_id: uuid.UUID, frame_id: str, hello: dict[str, Any], now: datetime
) -> bool:
    """Record the Hello (a HELLO event, and ``last_hello`` for sizing), mark the device seen and make an
    INACTIVE device ACTIVE again. False when the frame_id was recorded before: the Hello then changes
    nothing. A device revoked since its stream opened is refused."""
    status = await session.scalar(select(Device.status).where(Device.id == device_id).with_for_update())
    if status is None or status is DeviceStatus.REVOKED:
        raise Unauthenticated("this device key is revoked", reason=AuthFailure.KEY_REVOKED.value)
    summary = {k: hello[k] for k in ("bridge_version", "account_currency", "balance", "equity")}
    row = event_row(device_id, EventKind.HELLO, now, frame_id=frame_id, body=summary)
    inserted = await session.scalar(
        pg_insert(ExecutionEvent)
        .values(**row)
        .on_conflict_do_nothing(index_elements=[ExecutionEvent.device_id, ExecutionEvent.frame_id])
        .returning(ExecutionEvent.id)
    )
    values: dict[str, Any] = {"last_seen_at": now, "status": DeviceStatus.ACTIVE}
    if inserted is not None:
        values.update(last_hello=hello, last_hello_at=now)
    await session.execute(
        update(Device).where(Device.id == device_id).values(**values).execution_options(synchronize_session=False)
    )
    if status is DeviceStatus.INACTIVE:
        audit.record(
            session,
            actor_type=ActorType.DEVICE,
            actor_id=device_id,
            action="device.reactivate",
            object_type="device",
            object_id=device_id,
        )
    return inserted is not None


async def mark_seen(session: AsyncSession, device_ids: Sequence[uuid.UUID], now: datetime) -> None:
    if device_ids:
        await session.execute(
            update(Device)
            .where(any_id(Device.id, device_ids))
            .values(last_seen_at=now)
            .execution_options(synchronize_session=False)
        )


async def revoked_among(session: AsyncSession, device_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    if not device_ids:
        return set()
    rows = await session.scalars(
        select(Device.id).where(any_id(Device.id, device_ids), Device.status == DeviceStatus.REVOKED)
    )
    return set(rows)
