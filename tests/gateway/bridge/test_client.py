"""Reconnects and failover (gateway/bridge/client.py): a revoked key stops the bridge for good, a replaced
session backs off longer, transient failures reconnect, a dead gateway is left for the next one; and the
device secret is never logged or shown."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.bridge import BridgeClient, DeviceRevoked
from signalhub.protocol import errors, signing
from signalhub.v1 import gateway_pb2 as pb
from tests.gateway.bridge.scripted import Rig, ScriptedGateway, delivery, paper
from tests.gateway.support import eventually


async def test_revoked_key_stops_for_good(rig: Rig) -> None:
    rig.gateway.fail_next = [errors.Unauthenticated("revoked", reason="KEY_REVOKED")]
    client = BridgeClient(rig.config(), rig.secret, paper())
    with pytest.raises(DeviceRevoked, match="revoked"):
        await asyncio.wait_for(client.run(), 15)
    assert rig.gateway.streams == []  # it never came back


async def _settled(client: BridgeClient) -> None:
    """Wait until the session's opening frames (its first account state) were receipted: the gateway ending
    the stream while the bridge writes is a race gRPC reports as INTERNAL, not what these tests are about."""
    await eventually(lambda: client.stats.account_states_sent >= 1 and client.stats.receipts >= 1)


async def test_revocation_mid_stream_stops_for_good(rig: Rig) -> None:
    client = BridgeClient(rig.config(), rig.secret, paper())
    task = asyncio.create_task(client.run())
    await client.connected.wait()
    await _settled(client)
    rig.gateway.end_stream(errors.Unauthenticated("revoked", reason="KEY_REVOKED"))
    with pytest.raises(DeviceRevoked):
        await asyncio.wait_for(task, 15)
    assert len(rig.gateway.streams) == 1


async def test_session_replaced_backs_off_longer(rig: Rig) -> None:
    client = await rig.connect(paper(), replaced_backoff=120.0)
    await _settled(client)
    rig.gateway.end_stream(errors.Aborted("another session", reason="SESSION_REPLACED"))
    await eventually(lambda: not client.connected.is_set())
    await asyncio.sleep(1.0)  # with backoff_cap 0.5 s it would have reconnected by now
    assert len(rig.gateway.streams) == 1
    await rig.stop(client)  # and stop() cuts the wait short


async def test_transient_failures_reconnect(rig: Rig) -> None:
    rig.gateway.fail_next = [errors.Unavailable("busy"), errors.ResourceExhausted("too many streams")]
    client = await rig.connect(paper())
    assert client.stats.sessions == 3 and len(rig.gateway.streams) == 1


async def test_moves_to_the_next_gateway_when_one_dies(rig: Rig) -> None:
    second = ScriptedGateway(rig.device_id, rig.secret)
    await second.start()
    try:
        executor = paper()
        client = await rig.connect(executor, gateways=(rig.gateway.address, second.address))
        assert client.address == rig.gateway.address
        await rig.gateway.stop()
        await eventually(lambda: client.address == second.address and client.connected.is_set(), what="failover")
        instruction = delivery()
        second.push(instruction)
        await eventually(lambda: bool(second.fills(instruction.delivery.delivery_id)))
        assert len(executor.fills) == 1
    finally:
        await second.stop()


async def test_the_secret_is_never_logged(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    shown = signing.format_secret(rig.secret)
    with caplog.at_level(logging.DEBUG):
        client = await rig.connect(paper())
        instruction = delivery()
        rig.gateway.push(instruction)
        rig.gateway.push(sealed=pb.SealedInstruction(nonce=bytes(12), ciphertext=b"junk"))
        await eventually(lambda: bool(rig.gateway.fills(instruction.delivery.delivery_id)))
        await rig.stop(client)
    text = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert "delivery filled" in text
    assert shown not in text and shown[4:] not in text and rig.secret.hex() not in text
    assert shown not in repr(client) and shown not in repr(client.config)
