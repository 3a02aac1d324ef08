"""Secrets at rest: bound to their row and column, re-sealed by master key rotation, never in plaintext."""

from __future__ import annotations

import asyncio
import base64
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, text

from backoffice.bootstrap import Resources
from backoffice.devices import registration
from backoffice.models import SEALED_COLUMNS, Device, Producer
from backoffice.platform import vault
from backoffice.platform.config import MasterKey
from backoffice.platform.vault import Binding, Vault, VaultError
from signalhub.protocol import signing
from signalhub.protocol.secret import Secret
from tests.conftest import KeyCredentials, UserCredentials, make_device

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
    changed = await vault.reseal_all(res.sessions, rotated)
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
    assert await vault.reseal_all(res.sessions, Vault(current, (next_key,))) == changed
    assert all(s.startswith("sv1:rotated:") for s in sealed_rows)


async def test_batches_reseal_every_row_and_a_second_run_finds_none(
    res: Resources, user: UserCredentials, producer: KeyCredentials
) -> None:
    """One row per batch: the walk by id visits every row and ends; nothing is left for another run."""
    await make_device(res, user)
    await make_device(res, user)
    current = res.settings.require_master_key()
    next_key = MasterKey("batched", Secret(uuid.uuid4().bytes * 2))
    try:
        changed = await vault.reseal_all(res.sessions, Vault(next_key, (current,)), batch_rows=1)
        assert changed >= 3
        assert await vault.reseal_all(res.sessions, Vault(next_key, (current,)), batch_rows=1) == 0
        assert not await _sealed_under(res, current.key_id)
    finally:
        await vault.reseal_all(res.sessions, Vault(current, (next_key,)))
    assert not await _sealed_under(res, next_key.key_id)


async def test_reseal_waits_for_a_concurrent_rotation_and_reseals_its_new_secret(
    res: Resources, user: UserCredentials, device: KeyCredentials
) -> None:
    """A RotateDeviceSecret holds its device's row when the re-seal reaches it: the re-seal waits, then
    re-seals the rotation's new secret rather than writing the old one back over it."""
    current = res.settings.require_master_key()
    next_key = MasterKey("interleaved", Secret(uuid.uuid4().bytes * 2))
    resealing: asyncio.Task[int] | None = None
    try:
        async with res.sessions.begin() as session:
            holder = await session.scalar(text("SELECT pg_backend_pid()"))
            _, shown = await registration.rotate_device_secret(
                session, res.vault, user.caller, device.id, grace=timedelta(hours=1)
            )
            resealing = asyncio.create_task(vault.reseal_all(res.sessions, Vault(next_key, (current,)), batch_rows=1))
            await wait_until_blocked_behind(res, holder, resealing)
        await asyncio.wait_for(resealing, 30)
        async with res.sessions() as session:
            row = await session.get(Device, device.id)
        assert row is not None and row.previous_secret_sealed is not None
        opened = Vault(next_key).open(row.secret_sealed, Binding("devices", str(device.id), "secret_sealed"))
        assert opened == signing.parse_secret(shown)
        previous = Binding("devices", str(device.id), "previous_secret_sealed")
        assert Vault(next_key).open(row.previous_secret_sealed, previous) == signing.parse_secret(device.secret)
    finally:
        if resealing is not None:
            await asyncio.wait([resealing], timeout=30)  # done before the keys are put back
        await vault.reseal_all(res.sessions, Vault(current, (next_key,)))


async def wait_until_blocked_behind(res: Resources, holder: int, waiter: asyncio.Future[Any]) -> None:
    """Until some connection waits for a lock that the backend ``holder`` holds (``waiter`` must not end
    first: it would have run without waiting)."""
    deadline = asyncio.get_running_loop().time() + 30
    while asyncio.get_running_loop().time() < deadline:
        assert not waiter.done(), "finished without waiting for the held row"
        async with res.sessions() as session:  # a transaction per look: pg_stat_activity is a snapshot
            blocked = await session.scalar(
                text("SELECT count(*) FROM pg_stat_activity WHERE CAST(:holder AS int) = ANY(pg_blocking_pids(pid))"),
                {"holder": holder},
            )
        if blocked:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"nothing waited for backend {holder} within 30 s")


async def _sealed_under(res: Resources, key_id: str) -> list[str]:
    """Every sealed value (of every sealed column) under master key ``key_id``."""
    found: list[str] = []
    async with res.sessions() as session:
        for model, column in SEALED_COLUMNS:
            values = await session.scalars(select(getattr(model, column)))
            found += [v for v in values if v is not None and v.startswith(f"sv1:{key_id}:")]
    return found


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
