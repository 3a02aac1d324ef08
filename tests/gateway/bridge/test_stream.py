"""One session (gateway/bridge/stream.py): sealed instructions that do not open are refused, heartbeats
are sent, and a terminal's quote the gateway would refuse is not sent."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import grpc
import pytest

from gateway.bridge import PaperConfig, PaperExecutor, Price
from signalhub.protocol.sealing import InstructionSealer
from signalhub.v1 import gateway_pb2 as pb
from tests.gateway.bridge.scripted import Rig, delivery, paper
from tests.gateway.support import eventually


async def test_instructions_that_do_not_open_are_refused_and_never_executed(rig: Rig) -> None:
    executor = paper()
    client = await rig.connect(executor)
    bad = delivery()
    bad_id = bad.delivery.delivery_id
    plaintext = bad.SerializeToString()
    other_key = InstructionSealer(bytes(32), rig.device_id)
    other_device = InstructionSealer(rig.secret, str(uuid.uuid4()))
    good_nonce, good_ciphertext = rig.gateway.sealer.seal(plaintext)
    tampered = bytes([good_ciphertext[0] ^ 1]) + good_ciphertext[1:]
    for nonce, ciphertext in (
        other_key.seal(plaintext),
        other_device.seal(plaintext),
        (good_nonce, tampered),
        (good_nonce[:8], good_ciphertext),
        (b"", plaintext),  # not sealed at all
    ):
        rig.gateway.push(sealed=pb.SealedInstruction(nonce=nonce, ciphertext=ciphertext))
    rig.gateway.push(delivery())  # then a good one, to know the bad ones were handled
    await eventually(lambda: client.stats.filled == 1)
    assert client.stats.refused == 5
    assert rig.gateway.acks(bad_id) == [] and len(executor.fills) == 1
    assert all(o.delivery_id != bad_id for o, _ in executor.fills)


async def test_heartbeats_are_sent(rig: Rig) -> None:
    rig.gateway.heartbeat_seconds = 1
    await rig.connect(paper())
    await eventually(lambda: len(rig.gateway.of_kind("heartbeat")) >= 2, what="heartbeats")
    assert all(f.frame_id for f in rig.gateway.of_kind("heartbeat"))


async def test_a_stream_that_swallows_a_frame_is_left_and_the_frame_sent_again(rig: Rig) -> None:
    """The gateway's receipts for other frames keep coming, but one frame's never does: after the silence
    limit (three heartbeats and 5 s) the bridge leaves the stream, and the next one sends the frame again."""
    rig.gateway.heartbeat_seconds = 1
    rig.gateway.swallow = {"fill"}
    client = await rig.connect(paper())
    instruction = delivery()
    rig.gateway.push(instruction)
    await eventually(lambda: len(rig.gateway.fills(instruction.delivery.delivery_id)) == 2, within=20)
    first, again = [f for f in rig.gateway.frames if f.WhichOneof("body") == "fill"]
    assert first.frame_id == again.frame_id and len(rig.gateway.streams) == 2
    await eventually(lambda: client.stats.sessions == 2 and client.stats.frames_resent >= 1)


class _OddTerminal(PaperExecutor):
    """A terminal quoting a price the gateway refuses (more decimals than a price may carry)."""

    async def quote(self, instrument: str) -> Price | None:
        return Price(instrument, Decimal("1999.0000000000001"), Decimal("2000.01"), datetime.now(UTC))


async def test_a_quote_the_gateway_would_refuse_is_not_sent(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    executor = _OddTerminal(PaperConfig(prices={"XAUUSD": Decimal("2000.00")}))
    client = await rig.connect(executor, quote_refresh=0.1)
    instruction = delivery()
    rig.gateway.push(instruction)
    with caplog.at_level(logging.WARNING, "signalhub.bridge"):
        await eventually(lambda: bool(rig.gateway.fills(instruction.delivery.delivery_id)))
        await eventually(
            lambda: any("quote the gateway would refuse" in r.getMessage() for r in caplog.records), what="a warning"
        )
    assert rig.gateway.of_kind("quote") == [] and client.stats.quotes_sent == 0


async def test_bytes_that_are_not_a_frame_end_the_session_never_the_bridge(rig: Rig) -> None:
    """A gateway (or a damaged connection) hands the bridge bytes that are not a GatewayFrame: that
    session ends and the bridge moves on to the next gateway; it used to die of an AttributeError. Found by
    the fault suite's proxy (tests/reliability/test_network.py)."""

    async def connect(requests: Any, context: Any) -> Any:
        async for _ in requests:  # the Hello
            yield b"\x0a\xff\xff"  # field 1, a length that never ends: no GatewayFrame parses from it
            return

    broken = grpc.aio.server()
    handler = grpc.stream_stream_rpc_method_handler(connect)
    service = grpc.method_handlers_generic_handler("signalhub.v1.DeviceGateway", {"Connect": handler})
    broken.add_generic_rpc_handlers([service])
    port = broken.add_insecure_port("127.0.0.1:0")
    await broken.start()
    try:
        client = rig.start(paper(), gateways=(f"127.0.0.1:{port}", rig.gateway.address))
        await asyncio.wait_for(client.connected.wait(), 15)
        assert client.address == rig.gateway.address and client.stats.sessions == 2
    finally:
        await broken.stop(0)
