"""Secrets at rest: AES-256-GCM under a named master key, bound to the table, row and column they live in.

A sealed value is text ``sv1:<key id>:<base64url(nonce || ciphertext)>``. The AAD names the table, row id
and column, so a ciphertext copied into another row or column does not open.
"""

from __future__ import annotations

import base64
import binascii
import os
import uuid
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Table, and_, func, or_, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backoffice.models import SEALED_COLUMNS
from backoffice.platform import db
from backoffice.platform.config import MasterKey

FORMAT = "sv1"
_NONCE_BYTES = 12
# Rows locked and re-sealed per transaction by reseal_all: few enough that a writer waiting on one of them
# waits briefly, many enough that a large table is not a transaction per row.
RESEAL_BATCH_ROWS = 200
_BATCH_ATTEMPTS = 5
_LOST_RACE = "40"  # SQLSTATE class 40: a deadlock or serialization failure, nothing written


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


async def reseal_all(
    sessions: async_sessionmaker[AsyncSession], vault: Vault, *, batch_rows: int = RESEAL_BATCH_ROWS
) -> int:
    """Re-seal every sealed column under the current master key; returns how many values changed.

    Rows go in batches of ``batch_rows``, a transaction each, and every row is read under its lock
    (SELECT ... FOR UPDATE) before it is re-sealed: a concurrent write of a sealed column (a secret
    rotation) either commits first, and the batch waits for it and re-seals the new value, or waits for
    the batch and writes after it.
    """
    changed = 0
    for table, columns in _sealed_tables().items():
        after: object = None
        while True:
            count, last_id = await _reseal_batch_with_retries(sessions, vault, table, columns, after, batch_rows)
            changed += count
            if last_id is None:
                break
            after = last_id
    return changed


def _sealed_tables() -> dict[Table, list[str]]:
    """SEALED_COLUMNS by table, so each row is locked and re-sealed once for all its columns."""
    tables: dict[Table, list[str]] = {}
    for model, column in SEALED_COLUMNS:
        table = model.__table__
        assert isinstance(table, Table)
        tables.setdefault(table, []).append(column)
    return tables


async def _reseal_batch_with_retries(
    sessions: async_sessionmaker[AsyncSession],
    vault: Vault,
    table: Table,
    columns: list[str],
    after: object,
    batch_rows: int,
) -> tuple[int, uuid.UUID | None]:
    # Bulk writers (presence marks many devices seen at once) lock rows in their own order, so a batch can
    # lose a deadlock to one; nothing of it was written, and the same batch is simply tried again.
    attempt = 1
    while True:
        try:
            async with sessions.begin() as session:
                return await _reseal_batch(session, vault, table, columns, after, batch_rows)
        except DBAPIError as exc:
            if attempt == _BATCH_ATTEMPTS or not str(getattr(exc.orig, "sqlstate", "")).startswith(_LOST_RACE):
                raise
            attempt += 1


async def _reseal_batch(
    session: AsyncSession, vault: Vault, table: Table, columns: list[str], after: object, batch_rows: int
) -> tuple[int, uuid.UUID | None]:
    """Lock and re-seal the next ``batch_rows`` rows of ``table`` (by id, after ``after``) that hold a value
    sealed under another key. Returns (values changed, the batch's last id), the id None when none was left.
    """
    values = [table.c[column] for column in columns]
    stale = or_(*(and_(v.is_not(None), func.split_part(v, ":", 2) != vault.current_key_id) for v in values))
    pending = select(table.c.id).where(stale).order_by(table.c.id).limit(batch_rows)
    if after is not None:
        pending = pending.where(table.c.id > after)
    ids = list((await session.scalars(pending)).all())
    if not ids:
        return 0, None
    # Read again under the lock: a rotation that committed meanwhile is what gets re-sealed (or skipped,
    # when it sealed under the current key already). Locking by id, not by the stale filter, means a row
    # that changed meanwhile never drops out of a LIMIT and ends the walk early.
    locked = select(table.c.id, *values).where(db.any_id(table.c.id, ids)).order_by(table.c.id).with_for_update()
    changed = 0
    for row_id, *sealed_values in (await session.execute(locked)).all():
        resealed = {
            column: vault.reseal(sealed, Binding(table.name, str(row_id), column))
            for column, sealed in zip(columns, sealed_values, strict=True)
            if sealed is not None and vault.needs_reseal(sealed)
        }
        if resealed:
            await session.execute(update(table).where(table.c.id == row_id).values(resealed))
            changed += len(resealed)
    return changed, ids[-1]
