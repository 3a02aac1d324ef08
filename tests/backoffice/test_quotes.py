"""One rule for a wire Quote, whoever sends it: a producer's SubmitQuotes and a device's Quote frame name
the same bad fields, each under its own prefix."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from backoffice import quotes, signals
from backoffice.models import ActorType
from gateway import uplink
from signalhub.protocol.errors import InvalidArgument
from signalhub.protocol.wire import SYMBOL_RE
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import common_pb2
from signalhub.v1 import gateway_pb2 as gpb
from tests.conftest import KeyCredentials, rpc_failure, signed_call

SUBMIT_QUOTES = "/signalhub.v1.SignalService/SubmitQuotes"


def quote(**fields: Any) -> common_pb2.Quote:
    now = Timestamp()
    now.FromDatetime(datetime.now(UTC))
    values: dict[str, Any] = {"instrument": "EURUSD", "bid": "1.10000", "ask": "1.10002", "quote_time": now}
    values.update(fields)
    return common_pb2.Quote(**{k: v for k, v in values.items() if v is not None})


BAD = [
    (quote(bid="2", ask="1"), {"bid"}),
    (quote(bid="0", ask="-1"), {"bid", "ask"}),
    (quote(bid="0.0000000000001"), {"bid"}),  # 13 decimals
    (quote(ask="1e3"), {"ask"}),
    (quote(quote_time=None), {"quote_time"}),
    (quote(quote_time=Timestamp(seconds=10**13)), {"quote_time"}),
    (quote(instrument="", bid="x"), {"instrument", "bid"}),
]


def test_a_good_quote_is_a_domain_quote_of_its_source() -> None:
    source = uuid.uuid4()
    parsed = quotes.parse_quote(
        quote(), "q", instrument=signals.INSTRUMENT_RE, source_type=ActorType.PRODUCER, source_id=source
    )
    assert (parsed.instrument, parsed.bid, parsed.ask) == ("EURUSD", Decimal("1.10000"), Decimal("1.10002"))
    assert (parsed.source_type, parsed.source_id) == (ActorType.PRODUCER, source)
    # The naming rule is the source's: a broker symbol is fine from a device, not from a producer.
    broker = quote(instrument="GOLD.m")
    with pytest.raises(InvalidArgument) as info:
        quotes.parse_quote(
            broker, "q", instrument=signals.INSTRUMENT_RE, source_type=ActorType.PRODUCER, source_id=source
        )
    assert [field for field, _ in info.value.violations] == ["q.instrument"]
    assert quotes.parse_quote(broker, "q", instrument=SYMBOL_RE, source_type=ActorType.DEVICE, source_id=source)


@pytest.mark.parametrize(("bad", "fields"), BAD)
async def test_producers_and_devices_hear_of_the_same_bad_fields(
    backoffice_channel: grpc.aio.Channel, producer: KeyCredentials, bad: common_pb2.Quote, fields: set[str]
) -> None:
    request = pb.SubmitQuotesRequest(quotes=[quote(), bad])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await signed_call(backoffice_channel, producer, SUBMIT_QUOTES, request, pb.SubmitQuotesResponse)
    failure = rpc_failure(info.value)
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(failure.violations) == {f"quotes[1].{f}" for f in fields}

    with pytest.raises(InvalidArgument) as decoded:
        uplink.decode(uuid.uuid4(), gpb.DeviceFrame(frame_id="f1", quote=bad))
    device_violations = dict(decoded.value.violations)
    assert set(device_violations) == {f"quote.{f}" for f in fields}
    # The same words, too: one rule, two prefixes.
    for field in fields - {"instrument"}:
        assert device_violations[f"quote.{field}"] == failure.violations[f"quotes[1].{field}"]
