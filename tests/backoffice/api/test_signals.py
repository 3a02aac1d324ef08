"""SignalService through the stubs: signed submits, every validation rule, idempotency under
concurrency, visibility, cancellation, expiry and quotes."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import func, select

from backoffice import signals
from backoffice.bootstrap import Resources
from backoffice.models import ActorType, Approval, ApprovalStatus, AuditEvent, Signal
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import backoffice_pb2_grpc as rpc
from signalhub.v1 import common_pb2
from tests.conftest import KeyCredentials, UserCredentials, make_producer, rpc_failure, signed_call, subscribe

SERVICE = "/signalhub.v1.SignalService/"


def ts(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def signal_request(**fields: Any) -> pb.SubmitSignalRequest:
    values: dict[str, Any] = {
        "request_id": str(uuid.uuid4()),
        "instrument": "XAUUSD",
        "side": common_pb2.SIDE_BUY,
        "entry_price": "2034.15",
        "stop_loss": "2020.00",
        "take_profit": "2050.50",
        "signal_time": ts(datetime.now(UTC)),
    }
    values.update(fields)
    return pb.SubmitSignalRequest(**values)


async def submit(channel: grpc.aio.Channel, producer: KeyCredentials, request: pb.SubmitSignalRequest) -> pb.Signal:
    signal: pb.Signal = await signed_call(channel, producer, SERVICE + "SubmitSignal", request, pb.Signal)
    return signal


async def submit_error(channel: grpc.aio.Channel, producer: KeyCredentials, request: pb.SubmitSignalRequest) -> Any:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await submit(channel, producer, request)
    return rpc_failure(info.value)


async def count_signals(res: Resources, producer: KeyCredentials) -> int:
    async with res.sessions() as session:
        return int(await session.scalar(select(func.count()).where(Signal.producer_id == producer.id)) or 0)


async def test_submit_returns_the_stored_signal(backoffice_channel: grpc.aio.Channel, producer: KeyCredentials) -> None:
    payload = Struct()
    payload.update({"strategy": "breakout", "score": 0.82})
    request = signal_request(payload=payload)
    signal = await submit(backoffice_channel, producer, request)
    assert uuid.UUID(signal.id)
    assert signal.producer_id == str(producer.id)
    assert signal.request_id == request.request_id
    assert (signal.instrument, signal.side, signal.entry_price) == ("XAUUSD", common_pb2.SIDE_BUY, "2034.15")
    assert (signal.stop_loss, signal.take_profit) == ("2020.00", "2050.50")
    assert signal.status == pb.SIGNAL_STATUS_OPEN
    assert signal.expire_time.ToDatetime() - signal.signal_time.ToDatetime() == timedelta(seconds=60)
    assert signal.payload["strategy"] == "breakout"


@pytest.mark.parametrize(
    ("fields", "bad_field"),
    [
        ({"instrument": "xauusd"}, "instrument"),
        ({"instrument": "X"}, "instrument"),
        ({"instrument": "A" * 21}, "instrument"),
        ({"side": common_pb2.SIDE_UNSPECIFIED}, "side"),
        ({"entry_price": "abc"}, "entry_price"),
        ({"entry_price": "-1"}, "entry_price"),
        ({"entry_price": "NaN"}, "entry_price"),
        ({"entry_price": "1e400"}, "entry_price"),
        ({"stop_loss": "2040"}, "stop_loss"),  # BUY: stop below the entry
        ({"take_profit": "2030"}, "take_profit"),  # BUY: target above the entry
        ({"side": common_pb2.SIDE_SELL}, "stop_loss"),  # the BUY levels are wrong for a SELL
        ({"stop_loss": "0"}, "stop_loss"),
        ({"signal_time": -301}, "signal_time"),  # seconds from now, resolved when the test runs
        ({"signal_time": 301}, "signal_time"),
        ({"request_id": "not-a-uuid"}, "request_id"),
    ],
)
async def test_each_rule_is_invalid_argument_naming_the_field(
    backoffice_channel: grpc.aio.Channel,
    producer: KeyCredentials,
    res: Resources,
    fields: dict[str, Any],
    bad_field: str,
) -> None:
    if isinstance(fields.get("signal_time"), int):
        fields = {**fields, "signal_time": ts(datetime.now(UTC) + timedelta(seconds=fields["signal_time"]))}
    failure = await submit_error(backoffice_channel, producer, signal_request(**fields))
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_field in failure.violations
    assert await count_signals(res, producer) == 0


async def test_missing_signal_time_expire_before_signal_and_large_payload(
    backoffice_channel: grpc.aio.Channel, producer: KeyCredentials
) -> None:
    request = signal_request()
    request.ClearField("signal_time")
    assert "signal_time" in (await submit_error(backoffice_channel, producer, request)).violations
    now = datetime.now(UTC)
    early = signal_request(signal_time=ts(now), expire_time=ts(now - timedelta(seconds=1)))
    assert "expire_time" in (await submit_error(backoffice_channel, producer, early)).violations
    payload = Struct()
    payload.update({"blob": "x" * (signals.PAYLOAD_MAX_BYTES + 1)})
    assert "payload" in (await submit_error(backoffice_channel, producer, signal_request(payload=payload))).violations


async def test_sell_levels_and_market_orders(backoffice_channel: grpc.aio.Channel, producer: KeyCredentials) -> None:
    sell = await submit(
        backoffice_channel,
        producer,
        signal_request(side=common_pb2.SIDE_SELL, entry_price="1.1000", stop_loss="1.1050", take_profit="1.0900"),
    )
    assert sell.side == common_pb2.SIDE_SELL
    market = await submit(backoffice_channel, producer, signal_request(entry_price="", stop_loss="", take_profit=""))
    assert market.entry_price == "" and market.stop_loss == ""


async def test_all_violations_are_reported_together(
    backoffice_channel: grpc.aio.Channel, producer: KeyCredentials
) -> None:
    failure = await submit_error(
        backoffice_channel, producer, signal_request(instrument="bad", side=0, entry_price="x", stop_loss="y")
    )
    assert {"instrument", "side", "entry_price", "stop_loss"} <= set(failure.violations)


async def test_repeat_returns_the_same_signal_and_a_different_body_conflicts(
    backoffice_channel: grpc.aio.Channel, producer: KeyCredentials, res: Resources
) -> None:
    request = signal_request()
    first = await submit(backoffice_channel, producer, request)
    again = await submit(backoffice_channel, producer, request)
    assert again == first
    changed = signal_request(request_id=request.request_id, entry_price="2000")
    failure = await submit_error(backoffice_channel, producer, changed)
    assert (failure.code, failure.reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    assert await count_signals(res, producer) == 1


async def test_request_ids_are_per_producer(
    backoffice_channel: grpc.aio.Channel, producer: KeyCredentials, res: Resources
) -> None:
    other = await make_producer(res)
    request = signal_request()
    mine = await submit(backoffice_channel, producer, request)
    theirs = await submit(backoffice_channel, other, request)
    assert mine.id != theirs.id


async def test_hundred_concurrent_submits_with_one_id_make_one_signal(
    backoffice_channel: grpc.aio.Channel, producer: KeyCredentials, res: Resources
) -> None:
    request = signal_request()
    results = await asyncio.gather(*(submit(backoffice_channel, producer, request) for _ in range(100)))
    assert len({r.id for r in results}) == 1
    assert await count_signals(res, producer) == 1


async def test_cancel_by_producer_then_again_and_expired_is_failed_precondition(
    backoffice_channel: grpc.aio.Channel, producer: KeyCredentials, res: Resources
) -> None:
    signal = await submit(backoffice_channel, producer, signal_request())
    cancel = pb.CancelSignalRequest(id=signal.id, request_id=str(uuid.uuid4()), reason="changed my mind")
    cancelled = await signed_call(backoffice_channel, producer, SERVICE + "CancelSignal", cancel, pb.Signal)
    assert cancelled.status == pb.SIGNAL_STATUS_CANCELLED and cancelled.cancel_reason == "changed my mind"
    second = pb.CancelSignalRequest(id=signal.id, request_id=str(uuid.uuid4()))
    assert (await signed_call(backoffice_channel, producer, SERVICE + "CancelSignal", second, pb.Signal)).status == (
        pb.SIGNAL_STATUS_CANCELLED
    )
    now = datetime.now(UTC)
    short = await submit(
        backoffice_channel,
        producer,
        signal_request(signal_time=ts(now - timedelta(seconds=2)), expire_time=ts(now - timedelta(seconds=1))),
    )
    assert short.status == pb.SIGNAL_STATUS_EXPIRED
    late = pb.CancelSignalRequest(id=short.id, request_id=str(uuid.uuid4()))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await signed_call(backoffice_channel, producer, SERVICE + "CancelSignal", late, pb.Signal)
    assert rpc_failure(info.value).code == grpc.StatusCode.FAILED_PRECONDITION


async def test_cancel_rights(
    backoffice_channel: grpc.aio.Channel,
    producer: KeyCredentials,
    res: Resources,
    user: UserCredentials,
    admin: UserCredentials,
) -> None:
    signal = await submit(backoffice_channel, producer, signal_request())
    other = await make_producer(res)
    request = pb.CancelSignalRequest(id=signal.id, request_id=str(uuid.uuid4()))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await signed_call(backoffice_channel, other, SERVICE + "CancelSignal", request, pb.Signal)
    assert rpc_failure(info.value).code == grpc.StatusCode.NOT_FOUND
    stub = rpc.SignalServiceStub(backoffice_channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CancelSignal(request, metadata=user.metadata, timeout=5)
    assert rpc_failure(info.value).code == grpc.StatusCode.PERMISSION_DENIED
    cancelled = await stub.CancelSignal(request, metadata=admin.metadata, timeout=5)
    assert cancelled.status == pb.SIGNAL_STATUS_CANCELLED


async def test_visibility_payload_and_hidden_levels(
    backoffice_channel: grpc.aio.Channel,
    producer: KeyCredentials,
    user: UserCredentials,
    admin: UserCredentials,
) -> None:
    payload = Struct()
    payload.update({"secret_sauce": 1})
    signal = await submit(backoffice_channel, producer, signal_request(payload=payload))
    stub = rpc.SignalServiceStub(backoffice_channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetSignal(pb.GetSignalRequest(id=signal.id), metadata=user.metadata, timeout=5)
    assert rpc_failure(info.value).code == grpc.StatusCode.NOT_FOUND
    await rpc.ApprovalServiceStub(backoffice_channel).Subscribe(
        pb.SubscribeRequest(
            request_id=str(uuid.uuid4()),
            producer_id=str(producer.id),
            mode=pb.SUBSCRIPTION_MODE_MANUAL,
            sizing=pb.SIZING_MODE_FIXED_VOLUME,
            sizing_value="0.10",
        ),
        metadata=user.metadata,
        timeout=5,
    )
    seen = await stub.GetSignal(pb.GetSignalRequest(id=signal.id), metadata=user.metadata, timeout=5)
    assert seen.id == signal.id and seen.instrument == "XAUUSD"
    assert not seen.HasField("payload") and seen.stop_loss == "" and seen.take_profit == ""
    listed = await stub.ListSignals(
        pb.ListSignalsRequest(producer_id=str(producer.id)), metadata=user.metadata, timeout=5
    )
    assert [s.id for s in listed.signals] == [signal.id]
    full = await stub.GetSignal(pb.GetSignalRequest(id=signal.id), metadata=admin.metadata, timeout=5)
    assert full.payload["secret_sauce"] == 1 and full.stop_loss == "2020.00"


async def test_list_pages_newest_first(
    backoffice_channel: grpc.aio.Channel, admin: UserCredentials, res: Resources
) -> None:
    producer = await make_producer(res)
    ids = [(await submit(backoffice_channel, producer, signal_request())).id for _ in range(5)]
    stub = rpc.SignalServiceStub(backoffice_channel)
    seen: list[str] = []
    token = ""
    while True:
        page = await stub.ListSignals(
            pb.ListSignalsRequest(producer_id=str(producer.id), page_size=2, page_token=token),
            metadata=admin.metadata,
            timeout=5,
        )
        assert len(page.signals) <= 2
        seen.extend(s.id for s in page.signals)
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(ids))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ListSignals(pb.ListSignalsRequest(page_token="garbage!"), metadata=admin.metadata, timeout=5)
    assert "page_token" in rpc_failure(info.value).violations


async def test_signals_expire_on_time(
    backoffice_channel: grpc.aio.Channel, producer: KeyCredentials, res: Resources
) -> None:
    now = datetime.now(UTC)
    signal = await submit(
        backoffice_channel, producer, signal_request(signal_time=ts(now), expire_time=ts(now + timedelta(seconds=1)))
    )
    assert signal.status == pb.SIGNAL_STATUS_OPEN
    async with res.sessions.begin() as session:
        assert await signals.expire_due(session, now + timedelta(seconds=2)) >= 1
        row = await session.get(Signal, uuid.UUID(signal.id))
        assert row is not None and row.status.value == "EXPIRED"


async def test_submit_quotes(backoffice_channel: grpc.aio.Channel, producer: KeyCredentials, res: Resources) -> None:
    now = datetime.now(UTC)
    quotes = pb.SubmitQuotesRequest(
        quotes=[
            common_pb2.Quote(instrument="EURUSD", bid="1.1000", ask="1.1002", quote_time=ts(now)),
            common_pb2.Quote(
                instrument="EURUSD", bid="1.0990", ask="1.0992", quote_time=ts(now - timedelta(seconds=5))
            ),
        ]
    )
    response = await signed_call(
        backoffice_channel, producer, SERVICE + "SubmitQuotes", quotes, pb.SubmitQuotesResponse
    )
    assert response.accepted_count == 2
    from backoffice.models import Quote

    async with res.sessions() as session:
        stored = await session.get(Quote, ("EURUSD", ActorType.PRODUCER, producer.id))
    assert stored is not None and str(stored.bid) == "1.1000"  # the older quote did not overwrite
    bad = pb.SubmitQuotesRequest(quotes=[common_pb2.Quote(instrument="EURUSD", bid="2", ask="1", quote_time=ts(now))])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await signed_call(backoffice_channel, producer, SERVICE + "SubmitQuotes", bad, pb.SubmitQuotesResponse)
    assert "quotes[0].bid" in rpc_failure(info.value).violations


async def test_out_of_range_time_and_non_finite_payload_are_invalid_argument(
    backoffice_channel: grpc.aio.Channel, producer: KeyCredentials
) -> None:
    broken = signal_request(signal_time=Timestamp(seconds=10**13))
    assert "signal_time" in (await submit_error(backoffice_channel, producer, broken)).violations
    payload = Struct()
    payload.update({"score": float("nan")})
    assert "payload" in (await submit_error(backoffice_channel, producer, signal_request(payload=payload))).violations


@pytest.mark.parametrize("mode", [pb.SUBSCRIPTION_MODE_MANUAL, pb.SUBSCRIPTION_MODE_AUTO])
async def test_a_signal_is_stored_alike_for_manual_and_auto_subscribers(
    backoffice_channel: grpc.aio.Channel, res: Resources, user: UserCredentials, mode: Any
) -> None:
    """A signal only MANUAL subscribers follow is written in one call, one an AUTO subscriber takes after a
    read that plans its deliveries: either way the same rows, and a retry gets the first answer back while
    a different request under the same request_id is refused."""
    producer = await make_producer(res)
    await subscribe(backoffice_channel, user, producer, mode)
    request = signal_request()
    first = await submit(backoffice_channel, producer, request)
    assert await submit(backoffice_channel, producer, request) == first
    other = signal_request(request_id=request.request_id, instrument="EURUSD")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await signed_call(backoffice_channel, producer, SERVICE + "SubmitSignal", other, pb.Signal)
    assert rpc_failure(refused.value).code == grpc.StatusCode.ALREADY_EXISTS
    async with res.sessions() as session:
        stored = (await session.scalars(select(Signal).where(Signal.producer_id == producer.id))).one()
        approval = (await session.scalars(select(Approval).where(Approval.signal_id == stored.id))).one()
        audited = (await session.scalars(select(AuditEvent).where(AuditEvent.object_id == stored.id))).one()
    assert (str(stored.id), str(stored.request_id), stored.created_at) == (
        first.id,
        request.request_id,
        first.create_time.ToDatetime(tzinfo=UTC),
    )
    assert (stored.cancel_closes_positions, stored.payload) == (False, {})
    expected = ApprovalStatus.APPROVED if mode == pb.SUBSCRIPTION_MODE_AUTO else ApprovalStatus.PENDING
    assert (approval.user_id, approval.status) == (user.id, expected)
    assert (audited.actor_type, audited.actor_id, audited.action) == (ActorType.PRODUCER, producer.id, "SubmitSignal")
    assert (audited.request_id, audited.details) == (request.request_id, {"instrument": "XAUUSD", "side": "BUY"})
