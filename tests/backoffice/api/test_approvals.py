"""ApprovalService through the stubs: subscriptions, AUTO and MANUAL approval, every sizing mode, symbol
maps, device subsets, and the deliveries (and wake-up hints) an approval creates."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import grpc
import pytest
from sqlalchemy import select, text, update

from backoffice.bootstrap import Resources
from backoffice.models import (
    ActorType,
    Approval,
    AuditEvent,
    Delivery,
    DeliveryState,
    Device,
    DeviceStatus,
    Producer,
    ProducerStatus,
)
from backoffice.platform import hints
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import backoffice_pb2_grpc as rpc
from tests.backoffice.api.test_signals import signal_request, submit, ts
from tests.conftest import KeyCredentials, UserCredentials, make_device, make_user, rpc_failure

GOLD_HELLO = {
    "balance": "10000",
    "equity": "9500",
    "symbols": {
        "GOLD.m": {
            "tick_size": "0.01",
            "tick_value": "1",
            "volume_min": "0.01",
            "volume_step": "0.01",
            "volume_max": "50",
        },
        "XAUUSD": {
            "tick_size": "0.01",
            "tick_value": "1",
            "volume_min": "0.10",
            "volume_step": "0.10",
            "volume_max": "50",
        },
    },
}


def subscribe_request(producer: KeyCredentials, **fields: Any) -> pb.SubscribeRequest:
    values: dict[str, Any] = {
        "request_id": str(uuid.uuid4()),
        "producer_id": str(producer.id),
        "mode": pb.SUBSCRIPTION_MODE_AUTO,
        "sizing": pb.SIZING_MODE_FIXED_VOLUME,
        "sizing_value": "0.25",
    }
    values.update(fields)
    return pb.SubscribeRequest(**values)


async def subscribe(channel: grpc.aio.Channel, user: UserCredentials, request: pb.SubscribeRequest) -> pb.Subscription:
    subscription: pb.Subscription = await rpc.ApprovalServiceStub(channel).Subscribe(
        request, metadata=user.metadata, timeout=5
    )
    return subscription


async def device_with(
    res: Resources,
    owner: UserCredentials,
    *,
    symbol_map: dict[str, str] | None = None,
    hello: dict[str, Any] | None = None,
) -> uuid.UUID:
    device = await make_device(res, owner)
    async with res.sessions.begin() as session:
        await session.execute(
            update(Device).where(Device.id == device.id).values(symbol_map=symbol_map or {}, last_hello=hello)
        )
    return device.id


async def deliveries(res: Resources, signal_id: str) -> dict[uuid.UUID, Delivery]:
    async with res.sessions() as session:
        rows = (await session.scalars(select(Delivery).where(Delivery.signal_id == uuid.UUID(signal_id)))).all()
    return {row.device_id: row for row in rows}


async def pending(channel: grpc.aio.Channel, user: UserCredentials) -> list[pb.Approval]:
    response = await rpc.ApprovalServiceStub(channel).ListPendingApprovals(
        pb.ListPendingApprovalsRequest(), metadata=user.metadata, timeout=5
    )
    return list(response.approvals)


async def approve(channel: grpc.aio.Channel, user: UserCredentials, signal_id: str, **fields: Any) -> pb.Approval:
    request = pb.ApproveSignalRequest(signal_id=signal_id, request_id=str(uuid.uuid4()), **fields)
    approval: pb.Approval = await rpc.ApprovalServiceStub(channel).ApproveSignal(
        request, metadata=user.metadata, timeout=5
    )
    return approval


async def expect_failure(call: Any) -> Any:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return rpc_failure(info.value)


@pytest.mark.parametrize(
    ("fields", "bad"),
    [
        ({"mode": pb.SUBSCRIPTION_MODE_UNSPECIFIED}, "mode"),
        ({"sizing": pb.SIZING_MODE_UNSPECIFIED}, "sizing"),
        ({"sizing_value": "0"}, "sizing_value"),
        ({"sizing_value": "abc"}, "sizing_value"),
        ({"max_volume": "-1"}, "max_volume"),
        ({"instruments": ["XAUUSD", "bad one"]}, "instruments[1]"),
        ({"producer_id": "nope"}, "producer_id"),
        ({"sizing": pb.SIZING_MODE_RISK_PERCENT, "sizing_value": "101"}, "sizing_value"),
    ],
)
async def test_subscribe_validation(
    backoffice_channel: grpc.aio.Channel,
    producer: KeyCredentials,
    user: UserCredentials,
    fields: dict[str, Any],
    bad: str,
) -> None:
    failure = await expect_failure(subscribe(backoffice_channel, user, subscribe_request(producer, **fields)))
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT and bad in failure.violations


async def test_subscribe_rules(
    backoffice_channel: grpc.aio.Channel, producer: KeyCredentials, user: UserCredentials, res: Resources
) -> None:
    ghost = KeyCredentials(uuid.uuid4(), "")
    assert (
        await expect_failure(subscribe(backoffice_channel, user, subscribe_request(ghost)))
    ).code == grpc.StatusCode.NOT_FOUND
    request = subscribe_request(producer, instruments=["XAUUSD", "XAUUSD"], max_volume="2")
    first = await subscribe(backoffice_channel, user, request)
    assert (
        list(first.instruments) == ["XAUUSD"]
        and first.max_volume == "2"
        and first.status == pb.SUBSCRIPTION_STATUS_ACTIVE
    )
    assert await subscribe(backoffice_channel, user, request) == first  # idempotent on request_id
    duplicate = await expect_failure(subscribe(backoffice_channel, user, subscribe_request(producer)))
    assert duplicate.code == grpc.StatusCode.ALREADY_EXISTS
    stub = rpc.ApprovalServiceStub(backoffice_channel)
    ended = await stub.Unsubscribe(pb.UnsubscribeRequest(id=first.id), metadata=user.metadata, timeout=5)
    assert ended.status == pb.SUBSCRIPTION_STATUS_UNSUBSCRIBED and ended.HasField("unsubscribe_time")
    assert (await stub.Unsubscribe(pb.UnsubscribeRequest(id=first.id), metadata=user.metadata, timeout=5)).status == (
        pb.SUBSCRIPTION_STATUS_UNSUBSCRIBED
    )
    again = await subscribe(backoffice_channel, user, subscribe_request(producer))
    listed = await stub.ListSubscriptions(
        pb.ListSubscriptionsRequest(status=pb.SUBSCRIPTION_STATUS_ACTIVE), metadata=user.metadata, timeout=5
    )
    assert [s.id for s in listed.subscriptions] == [again.id]
    async with res.sessions.begin() as session:
        await session.execute(update(Producer).where(Producer.id == producer.id).values(status=ProducerStatus.REVOKED))
    other = await make_user(res)
    revoked = await expect_failure(subscribe(backoffice_channel, other, subscribe_request(producer)))
    assert revoked.code == grpc.StatusCode.FAILED_PRECONDITION


async def _first_wake_naming(pubsub: Any, devices: set[uuid.UUID], within: float = 2.0) -> list[uuid.UUID] | None:
    """The devices woken by the first message on the wake channel that names any of ``devices``. Every server
    on this Redis publishes there (another xdist worker's, another run's), so the others are skipped."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while (left := deadline - loop.time()) > 0:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
        if message is not None and devices & set(woken := hints.woken(message["data"])):
            return woken
    return None


async def test_auto_approval_delivers_to_every_active_device_with_symbol_map_and_hint(
    backoffice_channel: grpc.aio.Channel, producer: KeyCredentials, user: UserCredentials, res: Resources
) -> None:
    mapped = await device_with(res, user, symbol_map={"XAUUSD": "GOLD.m"}, hello=GOLD_HELLO)
    plain = await device_with(res, user, hello=GOLD_HELLO)
    revoked = await device_with(res, user)
    async with res.sessions.begin() as session:
        await session.execute(update(Device).where(Device.id == revoked).values(status=DeviceStatus.REVOKED))
    await subscribe(backoffice_channel, user, subscribe_request(producer, sizing_value="0.25"))
    pubsub = res.redis.pubsub()
    await pubsub.subscribe(hints.WAKE_CHANNEL)
    await pubsub.get_message(timeout=1)
    signal = await submit(backoffice_channel, producer, signal_request())
    rows = await deliveries(res, signal.id)
    assert set(rows) == {mapped, plain}
    assert rows[mapped].instrument == "GOLD.m" and rows[mapped].volume == Decimal("0.25")
    assert rows[plain].instrument == "XAUUSD" and rows[plain].volume == Decimal("0.20")  # XAUUSD steps by 0.10
    assert all(r.state is DeliveryState.PENDING and r.expire_time == rows[mapped].expire_time for r in rows.values())
    woken = await _first_wake_naming(pubsub, {mapped, plain})
    assert woken is not None  # one message wakes both devices
    assert sorted(woken) == sorted([mapped, plain])
    await pubsub.aclose()
    approvals = await rpc.ApprovalServiceStub(backoffice_channel).ListApprovals(
        pb.ListApprovalsRequest(signal_id=signal.id), metadata=user.metadata, timeout=5
    )
    (approval,) = approvals.approvals
    assert approval.status == pb.APPROVAL_STATUS_APPROVED and approval.auto_approved
    assert set(approval.device_ids) == {str(mapped), str(plain)}


async def test_instrument_allow_list(
    backoffice_channel: grpc.aio.Channel, producer: KeyCredentials, user: UserCredentials, res: Resources
) -> None:
    await device_with(res, user)
    await subscribe(backoffice_channel, user, subscribe_request(producer, instruments=["EURUSD"]))
    gold = await submit(backoffice_channel, producer, signal_request())
    euro = await submit(
        backoffice_channel,
        producer,
        signal_request(instrument="EURUSD", entry_price="1.1", stop_loss="1.0", take_profit="1.2"),
    )
    assert await deliveries(res, gold.id) == {}
    assert len(await deliveries(res, euro.id)) == 1


@pytest.mark.parametrize(
    ("sizing", "value", "max_volume", "expected"),
    [
        (pb.SIZING_MODE_FIXED_VOLUME, "0.129", "", "0.12"),
        (pb.SIZING_MODE_BALANCE_RATIO, "0.00003", "", "0.30"),
        (pb.SIZING_MODE_BALANCE_RATIO, "0.01", "1.5", "1.50"),
        # 1% of 9500 equity = 95 at risk; 1.55 to the stop = 155 ticks of 1 per lot; 95 / 155 = 0.612 -> 0.61
        (pb.SIZING_MODE_RISK_PERCENT, "1", "", "0.61"),
    ],
)
async def test_sizing_modes_through_the_flow(
    backoffice_channel: grpc.aio.Channel,
    producer: KeyCredentials,
    user: UserCredentials,
    res: Resources,
    sizing: int,
    value: str,
    max_volume: str,
    expected: str,
) -> None:
    device = await device_with(res, user, symbol_map={"XAUUSD": "GOLD.m"}, hello=GOLD_HELLO)
    await subscribe(
        backoffice_channel, user, subscribe_request(producer, sizing=sizing, sizing_value=value, max_volume=max_volume)
    )
    signal = await submit(backoffice_channel, producer, signal_request(entry_price="2034.15", stop_loss="2032.60"))
    assert (await deliveries(res, signal.id))[device].volume == Decimal(expected)


async def test_sized_below_minimum_is_skipped_with_a_reason(
    backoffice_channel: grpc.aio.Channel, producer: KeyCredentials, user: UserCredentials, res: Resources
) -> None:
    device = await device_with(res, user, symbol_map={"XAUUSD": "GOLD.m"}, hello=GOLD_HELLO)
    await subscribe(backoffice_channel, user, subscribe_request(producer, sizing_value="0.001"))
    signal = await submit(backoffice_channel, producer, signal_request())
    row = (await deliveries(res, signal.id))[device]
    assert row.state is DeliveryState.SKIPPED and "minimum" in (row.state_reason or "")
    (approval,) = (
        await rpc.ApprovalServiceStub(backoffice_channel).ListApprovals(
            pb.ListApprovalsRequest(signal_id=signal.id), metadata=user.metadata, timeout=5
        )
    ).approvals
    assert "minimum" in approval.reason


async def test_manual_pending_then_approve_with_override_and_subset(
    backoffice_channel: grpc.aio.Channel, producer: KeyCredentials, user: UserCredentials, res: Resources
) -> None:
    first = await device_with(res, user, hello=GOLD_HELLO)
    second = await device_with(res, user, hello=GOLD_HELLO)
    await subscribe(backoffice_channel, user, subscribe_request(producer, mode=pb.SUBSCRIPTION_MODE_MANUAL))
    signal = await submit(backoffice_channel, producer, signal_request())
    assert await deliveries(res, signal.id) == {}
    waiting = await pending(backoffice_channel, user)
    assert [a.signal_id for a in waiting] == [signal.id]
    assert waiting[0].status == pb.APPROVAL_STATUS_PENDING and waiting[0].HasField("expire_time")
    approval = await approve(backoffice_channel, user, signal.id, volume="0.35", device_ids=[str(second)])
    assert approval.status == pb.APPROVAL_STATUS_APPROVED and not approval.auto_approved
    assert approval.decided_by_user_id == str(user.id) and list(approval.device_ids) == [str(second)]
    rows = await deliveries(res, signal.id)
    assert set(rows) == {second} and rows[second].volume == Decimal("0.30")  # rounded to XAUUSD's 0.10 step
    assert first not in rows
    assert await pending(backoffice_channel, user) == []
    again = await approve(backoffice_channel, user, signal.id)
    assert again.id == approval.id and len(await deliveries(res, signal.id)) == 1  # approving twice is idempotent
    reject = rpc.ApprovalServiceStub(backoffice_channel).RejectSignal(
        pb.RejectSignalRequest(signal_id=signal.id, request_id=str(uuid.uuid4())), metadata=user.metadata, timeout=5
    )
    assert (await expect_failure(reject)).code == grpc.StatusCode.FAILED_PRECONDITION


async def test_reject_then_approve_fails(
    backoffice_channel: grpc.aio.Channel, producer: KeyCredentials, user: UserCredentials, res: Resources
) -> None:
    await device_with(res, user)
    await subscribe(backoffice_channel, user, subscribe_request(producer, mode=pb.SUBSCRIPTION_MODE_MANUAL))
    signal = await submit(backoffice_channel, producer, signal_request())
    stub = rpc.ApprovalServiceStub(backoffice_channel)
    request = pb.RejectSignalRequest(signal_id=signal.id, request_id=str(uuid.uuid4()), reason="too risky")
    rejected = await stub.RejectSignal(request, metadata=user.metadata, timeout=5)
    assert rejected.status == pb.APPROVAL_STATUS_REJECTED and rejected.reason == "too risky"
    assert await stub.RejectSignal(request, metadata=user.metadata, timeout=5) == rejected
    failure = await expect_failure(approve(backoffice_channel, user, signal.id))
    assert (failure.code, failure.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ALREADY_REJECTED")
    assert await deliveries(res, signal.id) == {}


async def test_expired_or_cancelled_signal_cannot_be_approved(
    backoffice_channel: grpc.aio.Channel,
    producer: KeyCredentials,
    user: UserCredentials,
    admin: UserCredentials,
    res: Resources,
) -> None:
    await device_with(res, user)
    await subscribe(backoffice_channel, user, subscribe_request(producer, mode=pb.SUBSCRIPTION_MODE_MANUAL))
    now = datetime.now(UTC)
    short = await submit(
        backoffice_channel, producer, signal_request(signal_time=ts(now), expire_time=ts(now + timedelta(seconds=1)))
    )
    await asyncio.sleep(1.1)
    failure = await expect_failure(approve(backoffice_channel, user, short.id))
    assert (failure.code, failure.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SIGNAL_NOT_OPEN")
    cancelled = await submit(backoffice_channel, producer, signal_request())
    await rpc.SignalServiceStub(backoffice_channel).CancelSignal(
        pb.CancelSignalRequest(id=cancelled.id, request_id=str(uuid.uuid4())), metadata=admin.metadata, timeout=5
    )
    assert (
        await expect_failure(approve(backoffice_channel, user, cancelled.id))
    ).code == grpc.StatusCode.FAILED_PRECONDITION
    assert await pending(backoffice_channel, user) == []
    assert await deliveries(res, short.id) == {} and await deliveries(res, cancelled.id) == {}


async def test_approve_with_someone_elses_device_is_not_found(
    backoffice_channel: grpc.aio.Channel, producer: KeyCredentials, user: UserCredentials, res: Resources
) -> None:
    stranger = await make_user(res)
    theirs = await device_with(res, stranger)
    await device_with(res, user)
    await subscribe(backoffice_channel, user, subscribe_request(producer, mode=pb.SUBSCRIPTION_MODE_MANUAL))
    signal = await submit(backoffice_channel, producer, signal_request())
    failure = await expect_failure(approve(backoffice_channel, user, signal.id, device_ids=[str(theirs)]))
    assert failure.code == grpc.StatusCode.NOT_FOUND
    assert await deliveries(res, signal.id) == {}


async def test_concurrent_approvals_make_one_set_of_deliveries(
    backoffice_channel: grpc.aio.Channel, producer: KeyCredentials, user: UserCredentials, res: Resources
) -> None:
    await device_with(res, user)
    await device_with(res, user)
    await subscribe(backoffice_channel, user, subscribe_request(producer, mode=pb.SUBSCRIPTION_MODE_MANUAL))
    signal = await submit(backoffice_channel, producer, signal_request())
    results = await asyncio.gather(*(approve(backoffice_channel, user, signal.id) for _ in range(10)))
    assert len({r.id for r in results}) == 1
    assert len(await deliveries(res, signal.id)) == 2


async def test_unsubscribed_user_cannot_approve(
    backoffice_channel: grpc.aio.Channel, producer: KeyCredentials, user: UserCredentials, res: Resources
) -> None:
    signal = await submit(backoffice_channel, producer, signal_request())
    assert (await expect_failure(approve(backoffice_channel, user, signal.id))).code == grpc.StatusCode.NOT_FOUND


async def test_subscribing_after_arrival_can_still_approve(
    backoffice_channel: grpc.aio.Channel, producer: KeyCredentials, user: UserCredentials, res: Resources
) -> None:
    await device_with(res, user)
    signal = await submit(backoffice_channel, producer, signal_request())
    await subscribe(backoffice_channel, user, subscribe_request(producer, mode=pb.SUBSCRIPTION_MODE_MANUAL))
    approval = await approve(backoffice_channel, user, signal.id)
    assert approval.status == pb.APPROVAL_STATUS_APPROVED and len(await deliveries(res, signal.id)) == 1


async def test_an_approval_made_on_arrival_or_on_approval_is_decided_alike(
    backoffice_channel: grpc.aio.Channel, producer: KeyCredentials, res: Resources
) -> None:
    """ApproveSignal decides one way whether the subscriber's approval was made when the signal came or is
    made now (it subscribed after): the approval, its deliveries (sized, mapped, one skipped with its
    reason) and its audit row are the same, and the idempotency record answers a retry while a different
    request under the same request_id is refused."""
    small = {**GOLD_HELLO, "balance": "1", "equity": "1"}
    users = [await make_user(res), await make_user(res)]
    terms = {"mode": pb.SUBSCRIPTION_MODE_MANUAL, "sizing": pb.SIZING_MODE_RISK_PERCENT, "sizing_value": "1"}
    for owner in users:
        await device_with(res, owner, symbol_map={"XAUUSD": "GOLD.m"}, hello=GOLD_HELLO)
        await device_with(res, owner, hello=small)
    await subscribe(backoffice_channel, users[0], subscribe_request(producer, **terms))
    signal = await submit(backoffice_channel, producer, signal_request())
    await subscribe(backoffice_channel, users[1], subscribe_request(producer, **terms))
    signal_id = uuid.UUID(signal.id)
    request = pb.ApproveSignalRequest(signal_id=signal.id, request_id=str(uuid.uuid4()))
    stub = rpc.ApprovalServiceStub(backoffice_channel)
    answers = [await stub.ApproveSignal(request, metadata=owner.metadata, timeout=5) for owner in users]
    assert await stub.ApproveSignal(request, metadata=users[0].metadata, timeout=5) == answers[0]
    other = pb.ApproveSignalRequest(signal_id=signal.id, request_id=request.request_id, volume="1")
    refused = await expect_failure(stub.ApproveSignal(other, metadata=users[0].metadata, timeout=5))
    assert (refused.code, refused.reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")

    async with res.sessions() as session:
        decided = {
            a.user_id: a for a in (await session.scalars(select(Approval).where(Approval.signal_id == signal_id))).all()
        }
        audited = {
            e.actor_id: e
            for e in (await session.scalars(select(AuditEvent).where(AuditEvent.action == "ApproveSignal"))).all()
            if e.object_id == signal_id
        }
    made = await deliveries(res, signal.id)

    def approval_facts(owner: UserCredentials) -> tuple[Any, ...]:
        row = decided[owner.id]
        return (row.status, row.automatic, row.volume, row.decided_by == owner.id, row.reason, len(row.device_ids))

    def delivery_facts(owner: UserCredentials) -> list[tuple[Any, ...]]:
        row = decided[owner.id]
        return sorted(
            (d.instrument, d.side, d.volume, d.entry_price, d.expire_time, d.state, d.state_reason, d.attempt)
            for d in made.values()
            if d.approval_id == row.id and d.created_at == row.decided_at
        )

    assert approval_facts(users[0]) == approval_facts(users[1])
    assert decided[users[0].id].reason and decided[users[0].id].reason.startswith("test device: ")
    assert delivery_facts(users[0]) == delivery_facts(users[1]) and len(delivery_facts(users[0])) == 2
    assert {d.state for d in made.values()} == {DeliveryState.PENDING, DeliveryState.SKIPPED}
    for owner, answer in zip(users, answers, strict=True):
        assert answer.decide_time.ToDatetime(tzinfo=UTC) == decided[owner.id].decided_at
        assert answer.create_time.ToDatetime(tzinfo=UTC) == decided[owner.id].created_at
        assert list(answer.device_ids) == [str(d) for d in decided[owner.id].device_ids]
    for owner in users:
        event = audited[owner.id]
        assert (event.actor_type, event.object_type, event.request_id) == (ActorType.USER, "signal", request.request_id)
        assert event.details == {"approval_id": str(decided[owner.id].id), "deliveries": 2}


async def test_approvals_racing_cancels_neither_deadlock_nor_leave_a_delivery_to_send(
    backoffice_channel: grpc.aio.Channel,
    producer: KeyCredentials,
    user: UserCredentials,
    admin: UserCredentials,
    res: Resources,
) -> None:
    """ApproveSignal's write locks the signal before the approval, as CancelSignal does: raced
    against each other, each call either succeeds or is refused as the contract says (never INTERNAL), and
    a cancelled signal is left with no delivery still to be sent."""
    await device_with(res, user, hello=GOLD_HELLO)
    await subscribe(backoffice_channel, user, subscribe_request(producer, mode=pb.SUBSCRIPTION_MODE_MANUAL))
    signals = [await submit(backoffice_channel, producer, signal_request()) for _ in range(12)]
    stub = rpc.SignalServiceStub(backoffice_channel)
    deadlocks_before = await deadlocks(res)

    async def cancel(signal_id: str) -> Any:
        request = pb.CancelSignalRequest(id=signal_id, request_id=str(uuid.uuid4()))
        return await stub.CancelSignal(request, metadata=admin.metadata, timeout=10)

    outcomes = await asyncio.gather(
        *(call for s in signals for call in (approve(backoffice_channel, user, s.id), cancel(s.id))),
        return_exceptions=True,
    )
    refused = [rpc_failure(o) for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert not [o for o in outcomes if isinstance(o, Exception) and not isinstance(o, grpc.aio.AioRpcError)]
    assert {(f.code, f.reason) for f in refused} <= {(grpc.StatusCode.FAILED_PRECONDITION, "SIGNAL_NOT_OPEN")}
    for signal in signals:
        assert all(d.state is not DeliveryState.PENDING for d in (await deliveries(res, signal.id)).values())
    await asyncio.sleep(1.5)  # backends report their counts to pg_stat_database within a second of idling
    assert await deadlocks(res) == deadlocks_before


async def deadlocks(res: Resources) -> int:
    """The deadlocks Postgres has detected in this test's database so far."""
    async with res.sessions() as session:
        await session.execute(text("SELECT pg_stat_clear_snapshot()"))
        found = await session.scalar(text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"))
    return int(found or 0)


async def test_pending_approvals_come_with_their_signals_as_get_signal_shows_them(
    backoffice_channel: grpc.aio.Channel, producer: KeyCredentials, user: UserCredentials, res: Resources
) -> None:
    """What a person deciding needs in one call: each pending approval's signal, as GetSignal shows it to
    them (its hidden levels withheld: no position of theirs came from it)."""
    await device_with(res, user, hello=GOLD_HELLO)
    await subscribe(backoffice_channel, user, subscribe_request(producer, mode=pb.SUBSCRIPTION_MODE_MANUAL))
    first = await submit(backoffice_channel, producer, signal_request())
    second = await submit(backoffice_channel, producer, signal_request())
    listing = await rpc.ApprovalServiceStub(backoffice_channel).ListPendingApprovals(
        pb.ListPendingApprovalsRequest(), metadata=user.metadata, timeout=5
    )
    assert [a.signal_id for a in listing.approvals] == [first.id, second.id]
    signals = rpc.SignalServiceStub(backoffice_channel)
    for approval in listing.approvals:
        got = await signals.GetSignal(pb.GetSignalRequest(id=approval.signal_id), metadata=user.metadata, timeout=5)
        assert approval.signal == got and got.stop_loss == ""
    decided = await approve(backoffice_channel, user, first.id)
    assert not decided.HasField("signal")  # the caller knows it
    listed = await rpc.ApprovalServiceStub(backoffice_channel).ListApprovals(
        pb.ListApprovalsRequest(signal_id=first.id), metadata=user.metadata, timeout=5
    )
    assert [a.signal.id for a in listed.approvals] == [first.id]


async def test_a_request_id_is_recorded_when_the_approval_was_made_before(
    backoffice_channel: grpc.aio.Channel, producer: KeyCredentials, user: UserCredentials, res: Resources
) -> None:
    """Approving an approved signal answers the approval, and its request_id is then taken: reused for
    another signal, or for one that does not exist, it is ALREADY_EXISTS, as for any request_id."""
    await device_with(res, user, hello=GOLD_HELLO)
    await subscribe(backoffice_channel, user, subscribe_request(producer, mode=pb.SUBSCRIPTION_MODE_MANUAL))
    first, second = [await submit(backoffice_channel, producer, signal_request()) for _ in range(2)]
    stub = rpc.ApprovalServiceStub(backoffice_channel)
    approved = await approve(backoffice_channel, user, first.id)
    reused = str(uuid.uuid4())
    again = pb.ApproveSignalRequest(signal_id=first.id, request_id=reused)
    assert await stub.ApproveSignal(again, metadata=user.metadata, timeout=5) == approved
    for signal_id in (second.id, str(uuid.uuid4())):
        other = pb.ApproveSignalRequest(signal_id=signal_id, request_id=reused)
        refused = await expect_failure(stub.ApproveSignal(other, metadata=user.metadata, timeout=5))
        assert (refused.code, refused.reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    assert len(await deliveries(res, second.id)) == 0
