"""How values read on a page, and which violations belong to a field."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from backoffice.console import formats
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import common_pb2


def test_enum_values_read_as_words() -> None:
    assert formats.label(pb.POSITION_STATUS_CLOSED_ERROR, pb.PositionStatus) == "Closed error"
    assert formats.css(pb.POSITION_STATUS_CLOSED_ERROR, pb.PositionStatus) == "closed-error"
    assert formats.label(common_pb2.SIDE_BUY, common_pb2.Side) == "Buy"
    assert formats.label(99, pb.PositionStatus) == "99"
    assert formats.enum_options(pb.RiskAction, "None")[0] == ("", "None")
    assert ("RISK_ACTION_CLOSE_ALL", "Close all") in formats.enum_options(pb.RiskAction)


def test_timestamps_read_in_utc_and_unset_reads_empty() -> None:
    assert formats.when(timestamp_pb2.Timestamp(seconds=1_700_000_000)) == "2023-11-14 22:13:20 UTC"
    assert formats.when(timestamp_pb2.Timestamp()) == ""
    assert formats.iso(timestamp_pb2.Timestamp()) == ""


def test_a_field_owns_the_violations_at_and_below_its_path() -> None:
    errors = {"symbol_map[XAU US]": "bad symbol", "symbol_map[EUR]": "bad too", "name": "required", "names": "x"}
    assert formats.for_field(errors, "symbol_map") == "bad symbol; bad too"
    assert formats.for_field(errors, "name") == "required"
    assert formats.for_field(errors, "volume") == ""
