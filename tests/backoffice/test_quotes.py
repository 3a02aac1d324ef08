"""One rule for a wire Quote, whoever sends it: a producer's SubmitQuotes and a device's Quote frame name
the same bad fields, each under its own prefix."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import select

from backoffice import quotes, signals, worker
from backoffice.bootstrap import Resources
from backoffice.models import ActorType, Quote
from backoffice.monitor import Monitor
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


async def test_the_monitors_sweep_reads_every_quote_stored_since_a_time(
    res: Resources, producer: KeyCredentials
) -> None:
    """Read a page at a time, nothing stored since is left out however many there are."""
    since = datetime.now(UTC)
    names = [f"SWEEP{uuid.uuid4().hex[:6].upper()}{n}" for n in range(7)]
    for n, name in enumerate(names):
        stored_at = since + timedelta(milliseconds=10 * (n + 1))
        async with res.sessions.begin() as session:
            seen = quotes.QuoteIn(name, Decimal(1), Decimal(2), stored_at, ActorType.PRODUCER, producer.id)
            await quotes.store_latest(session, [seen], stored_at)
    async with res.sessions() as session:
        found = await quotes.received_since(session, since, page=3)
    read = [q.feed.instrument for q in found if q.feed.instrument in names]
    assert list(dict.fromkeys(read)) == names  # in order; a page may repeat the previous one's last


async def test_stale_quotes_are_purged_by_the_worker_and_forgotten_by_the_monitor(
    res: Resources, producer: KeyCredentials
) -> None:
    """A source that stops quoting a symbol leaves no row for ever (the worker purges rows not renewed for
    quote_retention_seconds), and no entry in the monitor's memory (pruned once stale)."""
    now = datetime.now(UTC)
    old, kept = f"OLD{uuid.uuid4().hex[:6].upper()}", f"NEW{uuid.uuid4().hex[:6].upper()}"
    long_ago = now - timedelta(seconds=res.settings.quote_retention_seconds + 60)
    async with res.sessions.begin() as session:
        for name, at in ((old, long_ago), (kept, now)):
            await quotes.store_latest(
                session, [quotes.QuoteIn(name, Decimal(1), Decimal(2), at, ActorType.PRODUCER, producer.id)], at
            )
    done = await worker.run_once(res)
    assert done["quotes_purged"] >= 1
    async with res.sessions() as session:
        left = set(await session.scalars(select(Quote.instrument).where(Quote.instrument.in_([old, kept]))))
    assert left == {kept}

    monitor = Monitor(res.sessions, res.redis, res.settings)
    stale = quotes.Seen(quotes.Feed(old, producer_id=producer.id), Decimal(1), Decimal(2), long_ago, long_ago)
    fresh = quotes.Seen(quotes.Feed(kept, producer_id=producer.id), Decimal(1), Decimal(2), now, now)
    await monitor.read_quotes([stale, fresh])
    monitor.latest[stale.feed] = stale  # as if read while it was fresh
    monitor.prune(now)
    assert set(monitor.latest) == {fresh.feed}
