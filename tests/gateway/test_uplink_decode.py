"""Decoding device frames: a value the protobuf runtime cannot turn into a time is a named bad field; an
AccountState's rule, field by field."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from backoffice.deliveries import AccountStateReport, DeviceReport
from gateway import uplink
from signalhub.protocol.errors import InvalidArgument
from signalhub.v1 import common_pb2
from signalhub.v1 import gateway_pb2 as pb


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        (
            pb.DeviceFrame(
                frame_id="f1",
                fill=pb.Fill(
                    delivery_id=str(uuid.uuid4()),
                    broker_ticket="T1",
                    price="1.1",
                    volume="0.1",
                    fill_time=Timestamp(seconds=10**13),
                ),
            ),
            "fill.fill_time",
        ),
        (
            pb.DeviceFrame(
                frame_id="f2",
                quote=common_pb2.Quote(instrument="EURUSD", bid="1", ask="2", quote_time=Timestamp(nanos=-5)),
            ),
            "quote.quote_time",
        ),
        (
            pb.DeviceFrame(frame_id="f3", heartbeat=pb.Heartbeat(send_time=Timestamp(seconds=-(10**13)))),
            "heartbeat.send_time",
        ),
    ],
)
def test_bad_times_are_invalid_argument(frame: pb.DeviceFrame, field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        uplink.decode(uuid.uuid4(), frame)
    assert field in dict(info.value.violations)


NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def _account_state(**fields: str) -> pb.DeviceFrame:
    frame = pb.DeviceFrame(frame_id="s1", account_state=pb.AccountState(**fields))
    frame.account_state.state_time.FromDatetime(NOW)
    return frame


def test_an_account_state_decodes_to_its_report() -> None:
    """Balance and equity may be zero, margin and free margin may be absent, free margin may be negative."""
    device_id = uuid.uuid4()
    full = uplink.decode(device_id, _account_state(balance="0", equity="12.5", margin="3.25", free_margin="-0.75"), NOW)
    assert full == DeviceReport(
        device_id, "s1", AccountStateReport(Decimal(0), Decimal("12.5"), Decimal("3.25"), Decimal("-0.75"), NOW)
    )
    bare = uplink.decode(device_id, _account_state(balance="10000.00", equity="0.00"))
    assert bare.report == AccountStateReport(Decimal("10000.00"), Decimal(0), None, None, NOW)


@pytest.mark.parametrize(
    ("fields", "bad"),
    [
        ({"balance": "-0.01", "equity": "1"}, {"account_state.balance"}),
        ({"balance": "1", "equity": "-5"}, {"account_state.equity"}),
        ({"equity": "1"}, {"account_state.balance"}),
        ({"balance": "1"}, {"account_state.equity"}),
        ({"balance": "1", "equity": "1", "margin": "-1"}, {"account_state.margin"}),
        ({"balance": "1", "equity": "1", "free_margin": "1e3"}, {"account_state.free_margin"}),
        (
            {"balance": "Infinity", "equity": "1.0000000000001", "margin": "x"},
            {"account_state.balance", "account_state.equity", "account_state.margin"},
        ),
    ],
)
def test_each_bad_account_state_field_is_named(fields: dict[str, str], bad: set[str]) -> None:
    with pytest.raises(InvalidArgument) as info:
        uplink.decode(uuid.uuid4(), _account_state(**fields))
    assert {path for path, _ in info.value.violations} == bad


def test_an_account_state_needs_a_time_no_later_than_allowed() -> None:
    undated = pb.DeviceFrame(frame_id="s2", account_state=pb.AccountState(balance="1", equity="1"))
    with pytest.raises(InvalidArgument) as info:
        uplink.decode(uuid.uuid4(), undated)
    assert dict(info.value.violations) == {"account_state.state_time": "is required"}
    with pytest.raises(InvalidArgument) as info:
        uplink.decode(uuid.uuid4(), _account_state(balance="1", equity="1"), NOW - timedelta(seconds=1))
    assert [path for path, _ in info.value.violations] == ["account_state.state_time"]
    assert uplink.decode(uuid.uuid4(), _account_state(balance="1", equity="1"), NOW).report is not None
