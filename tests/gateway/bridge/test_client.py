"""Reconnects and failover (gateway/bridge/client.py): a revoked key stops the bridge for good, refused
credentials after a few tries, a replaced session backs off longer each time in a row and at last steps
aside, transient failures reconnect, a dead gateway is left for the next one; one bridge per ledger; and the
device secret is never logged or shown."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.bridge import BridgeClient, CredentialsRefused, DeviceRevoked, DeviceTakenOver, LedgerError
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


async def test_taken_over_again_and_again_it_backs_off_longer_then_steps_aside(rig: Rig) -> None:
    """Two bridges for one device would take the stream from each other for ever: each takeover in a row
    doubles the wait, and the replaced_limit-th stops this bridge with one line saying why."""
    rig.gateway.fail_next = [errors.Aborted("another session", reason="SESSION_REPLACED") for _ in range(3)]
    client = BridgeClient(rig.config(replaced_backoff=0.2, replaced_limit=3), rig.secret, paper())
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(DeviceTakenOver, match=r"another bridge took device .* 3 times in a row") as stopped:
        await asyncio.wait_for(client.run(), 15)
    assert loop.time() - started >= 0.2 + 0.4  # the waits after the first and second takeovers, doubled
    assert rig.gateway.streams == [] and "\n" not in str(stopped.value)


async def test_takeovers_fewer_than_the_limit_are_ridden_out(rig: Rig) -> None:
    rig.gateway.fail_next = [errors.Aborted("another session", reason="SESSION_REPLACED") for _ in range(2)]
    client = await rig.connect(paper(), replaced_backoff=0.05, replaced_limit=3)
    assert client.stats.sessions == 3


async def test_refused_credentials_stop_the_bridge_after_a_few_tries(rig: Rig) -> None:
    """A wrong or rotated secret does not fix itself: after auth_failure_limit refusals in a row the bridge
    stops with one line naming the reason (and never the secret), instead of retrying for ever."""
    rig.gateway.fail_next = [errors.Unauthenticated("bad signature", reason="SIGNATURE_INVALID") for _ in range(3)]
    client = BridgeClient(rig.config(auth_failure_limit=3), rig.secret, paper())
    with pytest.raises(CredentialsRefused, match=r"3 times in a row \(SIGNATURE_INVALID") as stopped:
        await asyncio.wait_for(client.run(), 15)
    assert signing.format_secret(rig.secret) not in str(stopped.value)
    assert rig.gateway.streams == []


async def test_fewer_refusals_than_the_limit_are_retried(rig: Rig) -> None:
    rig.gateway.fail_next = [errors.Unauthenticated("bad signature", reason="SIGNATURE_INVALID") for _ in range(2)]
    client = await rig.connect(paper(), auth_failure_limit=3)
    assert client.stats.sessions == 3


async def test_a_second_bridge_on_the_same_ledger_is_refused(rig: Rig) -> None:
    """One bridge per device and ledger: the second stops at once with one line; once the first has
    stopped, the ledger is free again."""
    first = await rig.connect(paper())
    second = BridgeClient(rig.config(), rig.secret, paper())
    with pytest.raises(LedgerError, match="in use by another bridge"):
        await asyncio.wait_for(second.run(), 15)
    assert len(rig.gateway.streams) == 1 and first.connected.is_set()
    await rig.stop(first)
    await rig.connect(paper())


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
