"""A stream's outbox: receipts wait for room, instructions take only the room reserved for them, and
whatever frees room lets a waiting receipt go."""

from __future__ import annotations

import asyncio

from gateway.outbox import Outbox
from signalhub.v1 import gateway_pb2 as pb

WAIT = 2.0  # a safety net for a hung test, not a performance claim


def _receipt(frame_id: str) -> pb.GatewayFrame:
    return pb.GatewayFrame(receipt=pb.Receipt(frame_id=frame_id, status=pb.RECEIPT_STATUS_ACCEPTED))


async def test_a_receipt_waits_while_a_read_holds_the_room_and_goes_once_it_finds_nothing() -> None:
    outbox = Outbox(2, on_room=lambda: None)
    room = outbox.reserve()  # a push round reading Postgres for this stream
    assert room == 2
    waiting = asyncio.create_task(outbox.put(_receipt("f-1")))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # no room while the read holds it
    outbox.release(room)  # the read found nothing due
    await asyncio.wait_for(waiting, WAIT)
    assert (await asyncio.wait_for(outbox.get(), WAIT)).receipt.frame_id == "f-1"


async def test_a_receipt_waiting_behind_filled_instructions_goes_once_they_are_written() -> None:
    outbox = Outbox(1, on_room=lambda: None)
    assert outbox.reserve() == 1
    waiting = asyncio.create_task(outbox.put(_receipt("f-2")))
    outbox.fill(pb.GatewayFrame(heartbeat=pb.Heartbeat()))  # the room used, nothing released
    outbox.release(0)
    await asyncio.sleep(0.05)
    assert not waiting.done()
    assert (await asyncio.wait_for(outbox.get(), WAIT)).WhichOneof("body") == "heartbeat"
    await asyncio.wait_for(waiting, WAIT)
    assert (await asyncio.wait_for(outbox.get(), WAIT)).receipt.frame_id == "f-2"


async def test_a_starved_stream_is_asked_for_again_once_half_its_room_is_free() -> None:
    asked: list[int] = []
    outbox = Outbox(2, on_room=lambda: asked.append(1))
    await outbox.put(_receipt("a"))
    await outbox.put(_receipt("b"))
    assert outbox.reserve() == 0  # full: marked starved
    await outbox.get()
    assert asked == [1]
