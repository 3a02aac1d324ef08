"""Devices: the EA bridges beside traders' terminals, each with its own HMAC secret."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Collection
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from sqlalchemy import ColumnElement, func, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from backoffice import accounts, audit
from backoffice.accounts import rotate_secret
from backoffice.models import Device, DeviceStatus
from backoffice.platform import paging
from backoffice.platform.auth import Caller
from backoffice.platform.idempotency import add_once
from backoffice.platform.text import validate_name
from backoffice.platform.vault import Binding, Vault
from signalhub.protocol import signing
from signalhub.protocol.errors import FailedPrecondition, InvalidArgument, NotFound
from signalhub.protocol.wire import SYMBOL_RE

_MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$")
# A broker symbol as MetaTrader spells it (e.g. "GOLD.m", "EURUSD#").
SYMBOL_MAP_MAX = 500
UPDATABLE_FIELDS = ("name", "symbol_map")

T = TypeVar("T")


def validate_symbol_map(symbol_map: dict[str, str], field: str = "symbol_map") -> dict[str, str]:
    if len(symbol_map) > SYMBOL_MAP_MAX:
        raise InvalidArgument([(field, f"at most {SYMBOL_MAP_MAX} entries")])
    bad = [k for k, v in symbol_map.items() if not SYMBOL_RE.match(k) or not SYMBOL_RE.match(v)]
    if bad:
        raise InvalidArgument([(f"{field}[{k}]", "symbols are 1-32 of [A-Za-z0-9._#-]") for k in bad[:10]])
    return dict(symbol_map)


def validate_mac_address(value: str, field: str = "mac_address") -> str | None:
    if not value:
        return None
    if not _MAC_RE.match(value):
        raise InvalidArgument([(field, "six hex pairs separated by ':' or '-'")])
    return value.lower()


def visible_to(caller: Caller) -> ColumnElement[bool]:
    """The devices ``caller`` may see and change: its own; an admin's, every one."""
    return true() if caller.is_admin else Device.user_id == caller.id


def _secret_binding(device_id: uuid.UUID, column: str) -> Binding:
    return Binding("devices", str(device_id), column)


def _check(violations: list[tuple[str, str]], validate: Callable[[], T]) -> T | None:
    """Run one field's validation, collecting its violations so the client hears of every bad field."""
    try:
        return validate()
    except InvalidArgument as error:
        violations.extend(error.violations)
        return None


async def register_device(
    session: AsyncSession,
    vault: Vault,
    *,
    owner: Caller,
    name: str,
    mac_address: str = "",
    symbol_map: dict[str, str] | None = None,
    request_id: uuid.UUID | None = None,
    cap: int | None = None,
) -> tuple[Device, str]:
    """A new ACTIVE device of ``owner`` and its HMAC secret (shown once, sealed at rest); refused once the
    owner holds ``cap`` devices that are not REVOKED (None: no cap)."""
    violations: list[tuple[str, str]] = []
    clean_name = _check(violations, lambda: validate_name(name, "name"))
    clean_mac = _check(violations, lambda: validate_mac_address(mac_address))
    clean_map = _check(violations, lambda: validate_symbol_map(symbol_map or {}))
    if violations:
        raise InvalidArgument(violations)
    assert clean_name is not None and clean_map is not None
    unrevoked = (
        select(func.count())
        .select_from(Device)
        .where(Device.user_id == owner.id, Device.status != DeviceStatus.REVOKED)
    )
    await accounts.enforce_user_cap(
        session,
        owner.id,
        cap,
        unrevoked,
        what="devices that are not revoked; revoke one first",
        quota="devices_per_user",
        reason="DEVICE_LIMIT",
    )
    device_id = uuid.uuid4()
    shown, raw = signing.generate_secret()
    device = Device(
        id=device_id,
        user_id=owner.id,
        request_id=request_id,
        name=clean_name,
        mac_address=clean_mac,
        symbol_map=clean_map,
        status=DeviceStatus.ACTIVE,
        secret_sealed=vault.seal(raw, _secret_binding(device_id, "secret_sealed")),
    )
    await add_once(session, device)
    audit.record(
        session,
        (owner.kind, owner.id),
        "RegisterDevice",
        "device",
        device_id,
        details={"name": clean_name},
        request_id=str(request_id) if request_id else None,
    )
    await session.flush()
    return device, shown


async def get_device(session: AsyncSession, caller: Caller, device_id: uuid.UUID, *, lock: bool = False) -> Device:
    """One device the caller may see; NotFound when absent or someone else's. ``lock`` holds its row."""
    query = select(Device).where(Device.id == device_id, visible_to(caller))
    if lock:
        query = query.with_for_update().execution_options(populate_existing=True)
    device = await session.scalar(query)
    if device is None:
        raise NotFound("device")
    return device


async def list_devices(
    session: AsyncSession,
    caller: Caller,
    *,
    status: DeviceStatus | None,
    page: paging.PageRequest,
) -> tuple[list[Device], str]:
    """The caller's devices (an admin's: everyone's), newest first, one page."""
    query = select(Device).where(visible_to(caller))
    if status is not None:
        query = query.where(Device.status == status)
    return await paging.fetch(session, query, Device, page, filters=[status])


async def update_device(
    session: AsyncSession,
    caller: Caller,
    device_id: uuid.UUID,
    *,
    fields: Collection[str],
    name: str,
    symbol_map: dict[str, str],
) -> Device:
    """Replace the fields named in ``fields`` (empty means all of UPDATABLE_FIELDS)."""
    chosen = set(fields) or set(UPDATABLE_FIELDS)
    unknown = sorted(chosen - set(UPDATABLE_FIELDS))
    if unknown:
        raise InvalidArgument([("update_mask", f"unknown path(s) {', '.join(unknown)}; updatable: name, symbol_map")])
    violations: list[tuple[str, str]] = []
    changes: dict[str, object] = {}
    if "name" in chosen:
        changes["name"] = _check(violations, lambda: validate_name(name, "name"))
    if "symbol_map" in chosen:
        changes["symbol_map"] = _check(violations, lambda: validate_symbol_map(symbol_map))
    if violations:
        raise InvalidArgument(violations)
    device = await get_device(session, caller, device_id, lock=True)
    for column, value in changes.items():
        setattr(device, column, value)
    audit.record(session, caller, "UpdateDevice", "device", device.id, details={"fields": sorted(chosen)})
    await session.flush()
    return device


async def rotate_device_secret(
    session: AsyncSession,
    vault: Vault,
    caller: Caller,
    device_id: uuid.UUID,
    *,
    grace: timedelta,
    request_id: str | None = None,
) -> tuple[Device, str]:
    """A new secret (shown once); the current one stays valid for ``grace`` as the previous secret."""
    device = await get_device(session, caller, device_id, lock=True)
    if device.status is DeviceStatus.REVOKED:
        raise FailedPrecondition("a revoked device cannot get a new secret", reason="DEVICE_REVOKED")
    shown = rotate_secret(device, vault, grace)
    audit.record(
        session,
        caller,
        "RotateDeviceSecret",
        "device",
        device.id,
        details={"grace_seconds": int(grace.total_seconds())},
        request_id=request_id,
    )
    await session.flush()
    return device, shown


async def revoke_device(
    session: AsyncSession, caller: Caller, device_id: uuid.UUID, *, now: datetime | None = None
) -> Device:
    """Revoke for good; revoking a revoked device changes nothing. The caller publishes the REVOKED hint
    after commit, so the gateway ends the device's stream."""
    device = await get_device(session, caller, device_id, lock=True)
    if device.status is DeviceStatus.REVOKED:
        return device
    previous = device.status
    device.status = DeviceStatus.REVOKED
    device.revoked_at = now or datetime.now(UTC)
    audit.record(session, caller, "RevokeDevice", "device", device.id, details={"previous_status": previous.value})
    await session.flush()
    return device
