"""Secrets at rest: AES-256-GCM under a named master key, bound to the table, row and column they live in.

A sealed value is text ``sv1:<key id>:<base64url(nonce || ciphertext)>``. The AAD names the table, row id
and column, so a ciphertext copied into another row or column does not open.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Table, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from backoffice.models import SEALED_COLUMNS
from backoffice.platform.config import MasterKey

FORMAT = "sv1"
_NONCE_BYTES = 12


class VaultError(Exception):
    """A sealed value did not open (unknown master key, wrong binding, or altered bytes)."""


@dataclass(frozen=True)
class Binding:
    """Where a sealed value lives; it is the AES-GCM associated data."""

    table: str
    row_id: str
    column: str

    def aad(self) -> bytes:
        return f"{FORMAT}|{self.table}|{self.row_id}|{self.column}".encode()


class Vault:
    """Seals under the current master key; opens under the current or any previous one."""

    def __init__(self, current: MasterKey, previous: tuple[MasterKey, ...] = ()) -> None:
        self._current_id = current.key_id
        self._keys = {k.key_id: AESGCM(k.key.reveal()) for k in (*previous, current)}

    def __repr__(self) -> str:
        return f"Vault(current={self._current_id!r}, keys={sorted(self._keys)!r})"

    @property
    def current_key_id(self) -> str:
        return self._current_id

    def seal(self, plaintext: bytes, binding: Binding) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        ciphertext = self._keys[self._current_id].encrypt(nonce, plaintext, binding.aad())
        body = base64.urlsafe_b64encode(nonce + ciphertext).rstrip(b"=").decode("ascii")
        return f"{FORMAT}:{self._current_id}:{body}"

    def open(self, sealed: str, binding: Binding) -> bytes:
        key_id, blob = _split(sealed)
        aead = self._keys.get(key_id)
        if aead is None:
            raise VaultError(f"sealed under unknown master key {key_id!r}")
        try:
            return aead.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], binding.aad())
        except InvalidTag:
            raise VaultError(f"sealed value for {binding.table}.{binding.column} did not open") from None

    def needs_reseal(self, sealed: str) -> bool:
        return _split(sealed)[0] != self._current_id

    def reseal(self, sealed: str, binding: Binding) -> str:
        return self.seal(self.open(sealed, binding), binding)


def _split(sealed: str) -> tuple[str, bytes]:
    fmt, _, rest = sealed.partition(":")
    key_id, _, body = rest.partition(":")
    if fmt != FORMAT or not key_id or not body:
        raise VaultError("not a sealed value")
    try:
        blob = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise VaultError("not a sealed value") from None
    if len(blob) < _NONCE_BYTES + 16:
        raise VaultError("not a sealed value")
    return key_id, blob


async def reseal_all(session: AsyncSession, vault: Vault) -> int:
    """Re-seal every sealed column under the current master key; returns how many values changed."""
    changed = 0
    for model, column in SEALED_COLUMNS:
        table = model.__table__
        assert isinstance(table, Table)
        key_column = table.c.id
        value_column = table.c[column]
        rows = (await session.execute(select(key_column, value_column).where(value_column.is_not(None)))).all()
        for row_id, sealed in rows:
            if not vault.needs_reseal(sealed):
                continue
            resealed = vault.reseal(sealed, Binding(table.name, str(row_id), column))
            await session.execute(update(table).where(key_column == row_id).values({column: resealed}))
            changed += 1
    return changed
