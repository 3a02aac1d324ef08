"""The bridge SDK's tests: a ``rig`` holds a scripted gateway for one device and the clients a test starts."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.gateway.bridge.scripted import Rig, ScriptedGateway


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    secret = bytes(range(32, 64))
    device_id = str(uuid.uuid4())
    gateway = ScriptedGateway(device_id, secret)
    await gateway.start()
    rig = Rig(gateway, device_id, secret, tmp_path / "ledger.db", tmp_path)
    yield rig
    for client, task in rig.clients:
        client.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 15)
    await gateway.stop()
