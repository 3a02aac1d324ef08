"""Decoding device frames: a value the protobuf runtime cannot turn into a time is a named bad field."""

from __future__ import annotations

import uuid

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

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
