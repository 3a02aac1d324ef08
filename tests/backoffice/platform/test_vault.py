"""Secrets at rest: bound to their row and column, re-sealed by master key rotation, never in plaintext."""

from __future__ import annotations

import base64
import uuid

import pytest
from sqlalchemy import select, text

from backoffice.bootstrap import Resources
from backoffice.models import Device, Producer
from backoffice.platform import vault
from backoffice.platform.config import MasterKey
from backoffice.platform.vault import Binding, Vault, VaultError
from signalhub.protocol import signing
from signalhub.protocol.secret import Secret
from tests.conftest import KeyCredentials, UserCredentials

OLD = MasterKey("old", Secret(b"o" * 32))
NEW = MasterKey("new", Secret(b"n" * 32))
BINDING = Binding("producers", "7f1e4b9a-0000-4000-8000-000000000001", "secret_sealed")


def test_round_trip_and_format() -> None:
    v = Vault(NEW)
    sealed = v.seal(b"top secret", BINDING)
    assert sealed.startswith("sv1:new:") and b"top secret" not in sealed.encode()
    assert v.open(sealed, BINDING) == b"top secret"


@pytest.mark.parametrize(
    "other",
    [
        Binding("devices", BINDING.row_id, BINDING.column),
        Binding(BINDING.table, "7f1e4b9a-0000-4000-8000-000000000002", BINDING.column),
        Binding(BINDING.table, BINDING.row_id, "previous_secret_sealed"),
    ],
)
def test_wrong_binding_does_not_open(other: Binding) -> None:
    v = Vault(NEW)
    with pytest.raises(VaultError):
        v.open(v.seal(b"x", BINDING), other)


def test_unknown_key_and_garbage_do_not_open() -> None:
    sealed = Vault(OLD).seal(b"x", BINDING)
    with pytest.raises(VaultError, match="unknown master key"):
        Vault(NEW).open(sealed, BINDING)
    for garbage in ("", "sv1:new:", "sv2:new:AAAA", "sv1:new:!!!!", sealed[:-4] + "AAAA"):
        with pytest.raises(VaultError):
            Vault(OLD).open(garbage, BINDING)


def test_previous_key_opens_and_reseal_moves_to_current() -> None:
    sealed = Vault(OLD).seal(b"x", BINDING)
    rotated = Vault(NEW, (OLD,))
    assert rotated.needs_reseal(sealed)
    resealed = rotated.reseal(sealed, BINDING)
    assert resealed.startswith("sv1:new:") and Vault(NEW).open(resealed, BINDING) == b"x"


def test_repr_names_keys_not_bytes() -> None:
    assert "nnnn" not in repr(Vault(NEW, (OLD,))) and "oooo" not in repr(Vault(NEW, (OLD,)))


async def test_rotate_master_key_reseals_every_row(
    res: Resources, producer: KeyCredentials, device: KeyCredentials
) -> None:
    current = res.settings.require_master_key()
    next_key = MasterKey("rotated", Secret(uuid.uuid4().bytes * 2))
    rotated = Vault(next_key, (current,))
    async with res.sessions.begin() as session:
        changed = await vault.reseal_all(session, rotated)
    assert changed >= 2
    async with res.sessions() as session:
        producer_row = await session.get(Producer, producer.id)
        device_row = await session.get(Device, device.id)
        assert producer_row is not None and device_row is not None
        assert producer_row.secret_sealed.startswith("sv1:rotated:")
        opened = Vault(next_key).open(
            producer_row.secret_sealed, Binding("producers", str(producer.id), "secret_sealed")
        )
        assert opened == signing.parse_secret(producer.secret)
        assert Vault(next_key).open(device_row.secret_sealed, Binding("devices", str(device.id), "secret_sealed")) == (
            signing.parse_secret(device.secret)
        )
        sealed_rows = (await session.scalars(select(Producer.secret_sealed))).all()
    # Put the session's key back for the other tests.
    async with res.sessions.begin() as session:
        assert await vault.reseal_all(session, Vault(current, (next_key,))) == changed
    assert all(s.startswith("sv1:rotated:") for s in sealed_rows)


async def test_database_dump_holds_no_plaintext_secret(
    res: Resources, producer: KeyCredentials, device: KeyCredentials, user: UserCredentials
) -> None:
    async with res.sessions() as session:
        tables = (await session.scalars(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))).all()
        rows: list[str] = []
        for table in tables:
            rows.extend((await session.scalars(text(f'SELECT t::text FROM "{table}" t'))).all())
    dump = "\n".join(rows)
    assert str(producer.id) in dump and str(device.id) in dump  # the dump did see the rows
    for credential in (producer.secret, device.secret, user.token):
        raw = signing.parse_secret(credential) if credential.startswith("shs_") else credential.encode()
        for form in (credential, raw.hex(), base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()):
            assert form.rstrip("=") not in dump
