"""One id follows a signal through the logs: with logging at DEBUG, one signal runs end to end (the
producer SDK, the back office and gateway servers, the EA bridge SDK on a paper broker) and is then
cancelled with its position closed; every JSON line about it carries its id as ``trace``, the lines of
a call carry that call's request id, and the lines about a device carry its id."""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from backoffice.producer import ProducerClient
from gateway.bridge import BridgeConfig, PaperConfig, PaperExecutor
from gateway.bridge.executors.base import SymbolInfo
from gateway.bridge.executors.paper import DEFAULT_SYMBOLS
from signalhub.protocol.logs import JsonFormatter
from tests.backoffice.api.test_approvals import subscribe, subscribe_request
from tests.conftest import Stack
from tests.gateway.support import eventually, running_bridge


class Lines(logging.Handler):
    """Every record, formatted as production formats it, parsed back."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.entries: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.entries.append(json.loads(self.format(record)))

    def about(self, trace: str) -> list[dict[str, Any]]:
        return [e for e in self.entries if e.get("trace") == trace]


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    ours = logging.getLogger("signalhub")
    previous = ours.level
    ours.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    yield handler
    logging.getLogger().removeHandler(handler)
    ours.setLevel(previous)


def one(entries: list[dict[str, Any]], message: str) -> dict[str, Any]:
    found = [e for e in entries if e["message"] == message]
    assert len(found) == 1, f"{message!r}: {len(found)} lines in {[e['message'] for e in entries]}"
    return found[0]


@contextlib.asynccontextmanager
async def bridged(stack: Stack, tmp_path: Path, prefix: str, seed: int) -> AsyncIterator[tuple[str, ProducerClient]]:
    """A paper bridge on the stack's device, connected, trading a symbol of its own that the user follows
    by rule, and the producer's client to send it signals."""
    symbol = prefix + uuid.uuid4().hex[:8].upper()
    spec = SymbolInfo(symbol, Decimal(100), Decimal("0.01"), Decimal(1), Decimal("0.01"), Decimal("0.01"), Decimal(100))
    executor = PaperExecutor(PaperConfig(seed=seed, symbols=(*DEFAULT_SYMBOLS, spec)))
    executor.set_price(symbol, Decimal("2034.15"))
    await subscribe(stack.backoffice_channel, stack.user, subscribe_request(stack.producer, sizing_value="0.10"))
    config = BridgeConfig(str(stack.device.id), (stack.gateway.bound_address,), tmp_path / "ledger.db")
    async with running_bridge(config, stack.device, executor), stack.producer_client() as signals:
        yield symbol, signals


async def test_one_trace_follows_a_signal_from_submit_to_fill_and_close(
    stack: Stack, tmp_path: Path, lines: Lines
) -> None:
    """Submit (with a request id), the AUTO approval's deliveries, the delivery sent, its acks, the fill,
    the position opened, then the cancel's close command, the close order's result and the position
    closed: all under the signal's id, with request_id and device_id where there is one."""
    request_id = str(uuid.uuid4())
    async with bridged(stack, tmp_path, "TRC", seed=3) as (symbol, signals):
        signal = await signals.submit_signal(symbol, "buy", entry_price="2034.15", request_id=request_id)
        await eventually(lambda: "position opened" in {e["message"] for e in lines.about(signal.id)}, "a fill")
        await signals.cancel_signal(signal.id, "traced", close_positions=True)
        await eventually(lambda: "position closed" in {e["message"] for e in lines.about(signal.id)}, "a close")

    traced = lines.about(signal.id)
    device_id = str(stack.device.id)
    submit = one(traced, "signal accepted")
    assert submit["request_id"] == request_id and "device_id" not in submit
    created = one(traced, "deliveries created")
    assert (created["deliveries"], created["approval"], created["request_id"]) == (1, "rule", request_id)
    rpc = [e for e in traced if e["message"] == "rpc" and e["method"].endswith("/SubmitSignal")]
    assert [e["request_id"] for e in rpc] == [request_id], "the call's own rpc line carries the trace too"
    sent = one(traced, "delivery sent")
    delivery_id = sent["delivery_id"]
    acks = [e for e in traced if e["message"] == "ack recorded"]
    assert [e["stage"] for e in acks] == ["RECEIVED", "PLACED"]
    fill = one(traced, "fill recorded")
    opened = one(traced, "position opened")
    for entry in (sent, *acks, fill, opened):
        assert entry["device_id"] == device_id and entry["delivery_id"] == delivery_id, entry
    # Frames are answered in the stream's context: its request id, the same on every frame of the stream.
    stream_ids = {e["request_id"] for e in (*acks, fill)}
    assert len(stream_ids) == 1 and request_id not in stream_ids
    assert (sent["level"], acks[0]["level"], fill["level"], opened["level"]) == ("DEBUG", "DEBUG", "INFO", "INFO")

    queued = one(traced, "close command queued")
    result = one(traced, "close result recorded")
    closed = one(traced, "position closed")
    assert queued["position_id"] == opened["position_id"] == closed["position_id"]
    assert queued["command_id"] == result["command_id"] == closed["command_id"] and result["success"] is True
    assert {queued["device_id"], result["device_id"], closed["device_id"]} == {device_id}
    cancelled = one(traced, "signal cancelled")
    assert cancelled["request_id"] != request_id and queued["request_id"] == cancelled["request_id"]
    order = [e["message"] for e in traced if e["message"] != "rpc"]
    assert order.index("signal accepted") < order.index("delivery sent") < order.index("fill recorded")
    assert order.index("fill recorded") < order.index("close command queued") < order.index("position closed")


async def test_per_frame_lines_are_not_made_at_info(stack: Stack, tmp_path: Path) -> None:
    """At INFO (production's default), the lifecycle lines are written and the per-frame ones are not
    even formatted: the gateway checks the level before building them."""
    handler = Lines()
    handler.setLevel(logging.DEBUG)  # the handler would take them: the loggers must not make them
    logging.getLogger().addHandler(handler)
    try:
        async with bridged(stack, tmp_path, "TRI", seed=5) as (symbol, signals):
            signal = await signals.submit_signal(symbol, "buy", entry_price="2034.15")
            await eventually(lambda: "position opened" in {e["message"] for e in handler.about(signal.id)}, "a fill")
    finally:
        logging.getLogger().removeHandler(handler)
    messages = {e["message"] for e in handler.about(signal.id)}
    assert {"signal accepted", "deliveries created", "fill recorded", "position opened"} <= messages
    assert not messages & {"delivery sent", "ack recorded"}
