"""Devices: the EA bridges beside traders' terminals, each with its own HMAC secret."""

from __future__ import annotations

import re
import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from backoffice import audit, signing
from backoffice.accounts import validate_name
from backoffice.auth import Caller
from backoffice.errors import InvalidArgument
from backoffice.models import Device, DeviceStatus
from backoffice.vault import Binding, Vault

_MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$")
_SYMBOL_RE = re.compile(r"^[A-Za-z0-9._#-]{1,32}$")
SYMBOL_MAP_MAX = 500


def validate_symbol_map(symbol_map: dict[str, str], field: str = "symbol_map") -> dict[str, str]:
    if len(symbol_map) > SYMBOL_MAP_MAX:
        raise InvalidArgument([(field, f"at most {SYMBOL_MAP_MAX} entries")])
    bad = [k for k, v in symbol_map.items() if not _SYMBOL_RE.match(k) or not _SYMBOL_RE.match(v)]
    if bad:
        raise InvalidArgument([(f"{field}[{k}]", "symbols are 1-32 of [A-Za-z0-9._#-]") for k in bad[:10]])
    return dict(symbol_map)


async def register_device(
    session: AsyncSession,
    vault: Vault,
    *,
    owner: Caller,
    name: str,
    mac_address: str = "",
    symbol_map: dict[str, str] | None = None,
    request_id: uuid.UUID | None = None,
) -> tuple[Device, str]:
    """A new ACTIVE device of ``owner`` and its HMAC secret (shown once, sealed at rest)."""
    if mac_address and not _MAC_RE.match(mac_address):
        raise InvalidArgument([("mac_address", "six hex pairs separated by ':' or '-'")])
    device_id = uuid.uuid4()
    shown, raw = signing.generate_secret()
    device = Device(
        id=device_id,
        user_id=owner.id,
        request_id=request_id,
        name=validate_name(name, "name"),
        mac_address=mac_address.lower() or None,
        symbol_map=validate_symbol_map(symbol_map or {}),
        status=DeviceStatus.ACTIVE,
        secret_sealed=vault.seal(raw, Binding("devices", str(device_id), "secret_sealed")),
    )
    session.add(device)
    audit.record(
        session,
        actor_type=owner.kind,
        actor_id=owner.id,
        action="device.register",
        object_type="device",
        object_id=device_id,
    )
    await session.flush()
    return device, shown
