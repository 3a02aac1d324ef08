"""The one text rule at the edge (signalhub.protocol.wire.check_text): a NUL character in any string is
refused by its path, and what the rule reads is bounded by the message's item count, not left to it."""

from __future__ import annotations

import pytest
from google.protobuf import struct_pb2

from signalhub.protocol.errors import InvalidArgument
from signalhub.protocol.wire import MAX_ITEMS, check_text
from signalhub.v1 import backoffice_pb2, gateway_pb2


def _refused(message: object) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        check_text(message)  # type: ignore[arg-type]
    return caught.value


def test_a_nul_is_named_by_its_path_in_lists_maps_and_structs() -> None:
    request = backoffice_pb2.ApproveSignalRequest(device_ids=["a", "b\x00"])
    assert [path for path, _ in _refused(request).violations] == ["device_ids[1]"]
    payload = struct_pb2.Struct()
    payload.update({"k\x00": 1, "nested": {"v": "x\x00"}})
    found = _refused(backoffice_pb2.SubmitSignalRequest(payload=payload))
    assert found.reason == "NUL_CHARACTER" and len(found.violations) == 2
    hello = gateway_pb2.Hello(symbols=[gateway_pb2.SymbolSpec(name="A"), gateway_pb2.SymbolSpec(name="B\x00")])
    assert [p for p, _ in _refused(gateway_pb2.DeviceFrame(hello=hello)).violations] == ["hello.symbols[1].name"]


def test_text_without_nul_passes() -> None:
    check_text(backoffice_pb2.ApproveSignalRequest(device_ids=["a"] * MAX_ITEMS))


@pytest.mark.parametrize(
    "message",
    [
        # Half a million empty ids and one NUL: refused by the count, before the items are read.
        backoffice_pb2.ApproveSignalRequest(device_ids=[""] * 500_000 + ["\x00"]),
        gateway_pb2.DeviceFrame(hello=gateway_pb2.Hello(symbols=[gateway_pb2.SymbolSpec()] * (MAX_ITEMS + 1))),
        # Items are counted across the whole message, nested lists included.
        gateway_pb2.DeviceFrame(
            hello=gateway_pb2.Hello(symbols=[gateway_pb2.SymbolSpec(name="A")] * (MAX_ITEMS // 2 + 1) * 2)
        ),
    ],
)
def test_too_many_items_are_refused_unread(message: object) -> None:
    assert _refused(message).reason == "TOO_MANY_ITEMS"
