"""The outbox (gateway/bridge/outbox.py): every Ack, Fill and CloseResult is kept until its receipt, sent
again on the next session and after a restart, and dropped when the gateway rejects it."""

from __future__ import annotations

import asyncio
import logging

import pytest

from signalhub.protocol import errors
from tests.gateway.bridge.scripted import Rig, delivery, ledger_rows, paper
from tests.gateway.support import eventually


async def test_unreceipted_frames_are_resent_after_reconnect(rig: Rig) -> None:
    client = await rig.connect(paper())
    rig.gateway.hold_receipts = True
    instruction = delivery()
    delivery_id = instruction.delivery.delivery_id
    rig.gateway.push(instruction)
    await eventually(lambda: bool(rig.gateway.fills(delivery_id)))
    first = [f.frame_id for f in rig.gateway.streams[0].frames if f.WhichOneof("body") in ("ack", "fill")]
    assert len(first) == 3
    assert [r[0] for r in ledger_rows(rig.ledger, "outbox")] == first

    rig.gateway.hold_receipts = False
    rig.gateway.end_stream(errors.Unavailable("replica going away"))
    await eventually(lambda: len(rig.gateway.streams) == 2, what="a reconnect")
    await eventually(lambda: ledger_rows(rig.ledger, "outbox") == [], what="the outbox to drain")
    second = [f.frame_id for f in rig.gateway.streams[1].frames if f.WhichOneof("body") in ("ack", "fill")]
    assert second == first  # the same frames, same ids, same order
    assert client.stats.frames_resent == 3


async def test_outbox_survives_a_restart(rig: Rig) -> None:
    rig.gateway.hold_receipts = True
    client = await rig.connect(paper())
    instruction = delivery()
    rig.gateway.push(instruction)
    await eventually(lambda: bool(rig.gateway.fills(instruction.delivery.delivery_id)))
    client_stop = rig.stop(client)
    await asyncio.wait_for(client_stop, 15)  # drain gives up: the receipts never come
    pending = [r[0] for r in ledger_rows(rig.ledger, "outbox")]
    assert len(pending) == 3

    rig.gateway.hold_receipts = False
    await rig.connect(paper())
    await eventually(lambda: ledger_rows(rig.ledger, "outbox") == [])
    resent = [f.frame_id for f in rig.gateway.streams[-1].frames if f.WhichOneof("body") in ("ack", "fill")]
    assert resent == pending


async def test_rejected_receipts_are_dropped(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    client = await rig.connect(paper())
    rig.gateway.hold_receipts = True
    instruction = delivery()
    rig.gateway.push(instruction)
    await eventually(lambda: bool(rig.gateway.fills(instruction.delivery.delivery_id)))
    rig.gateway.reject_frames = {r[0] for r in ledger_rows(rig.ledger, "outbox")}
    rig.gateway.hold_receipts = False
    with caplog.at_level(logging.WARNING, "signalhub.bridge"):
        rig.gateway.end_stream(errors.Unavailable("again"))
        await eventually(lambda: ledger_rows(rig.ledger, "outbox") == [])
    assert client.stats.receipts_rejected == 3
    assert any("rejected a frame" in r.getMessage() for r in caplog.records)
