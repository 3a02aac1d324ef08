"""ExecutionService through the stubs. The rows the approval flow and the gateway write are made here
directly with the ORM, so the read-model is tested on exactly the conventions the gateway follows."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import grpc
import pytest

from backoffice.bootstrap import Resources
from backoffice.models import (
    ApprovalStatus,
    Delivery,
    DeliveryState,
    EventKind,
    ExecutionEvent,
    Position,
    PositionStatus,
    Side,
)
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import backoffice_pb2_grpc as rpc
from signalhub.v1 import common_pb2
from tests.conftest import (
    KeyCredentials,
    UserCredentials,
    approval_row,
    make_device,
    make_producer,
    make_user,
    rpc_failure,
    signal_row,
    subscription_row,
)

MS = timedelta(milliseconds=1)


@dataclass
class World:
    """Rows made for one test; ``at`` is the approval time every offset counts from."""

    res: Resources
    producer_id: uuid.UUID
    at: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5))
    _subscriptions: dict[uuid.UUID, uuid.UUID] = field(default_factory=dict)
    _approvals: dict[tuple[uuid.UUID, uuid.UUID], uuid.UUID] = field(default_factory=dict)
    _created: int = 0

    async def subscribe(self, user: UserCredentials) -> uuid.UUID:
        if user.id not in self._subscriptions:
            subscription = subscription_row(user.id, self.producer_id)
            await self._add(subscription)
            self._subscriptions[user.id] = subscription.id
        return self._subscriptions[user.id]

    async def signal(self, side: Side, entry: str | None) -> uuid.UUID:
        signal = signal_row(
            self.producer_id,
            self.at - timedelta(seconds=1),
            self.at + timedelta(minutes=1),
            side=side,
            entry_price=Decimal(entry) if entry else None,
        )
        await self._add(signal)
        return signal.id

    async def delivery(
        self,
        user: UserCredentials,
        device_id: uuid.UUID,
        signal_id: uuid.UUID,
        side: Side,
        *,
        state: DeliveryState,
        reason: str | None = None,
    ) -> uuid.UUID:
        key = (user.id, signal_id)
        if key not in self._approvals:
            approval = approval_row(
                signal_id,
                await self.subscribe(user),
                user.id,
                ApprovalStatus.APPROVED,
                decided_by=user.id,
                decided_at=self.at,
            )
            await self._add(approval)
            self._approvals[key] = approval.id
        self._created += 1
        delivery = Delivery(
            id=uuid.uuid4(),
            approval_id=self._approvals[key],
            signal_id=signal_id,
            device_id=device_id,
            instrument="GOLD.m",
            side=side,
            volume=Decimal("0.10"),
            expire_time=self.at + timedelta(minutes=1),
            state=state,
            state_reason=reason,
            attempt=1,
            # Distinct creation times, in the order made, so "newest first" is well defined.
            created_at=self.at + self._created * MS,
        )
        await self._add(delivery)
        return delivery.id

    async def event(
        self,
        delivery_id: uuid.UUID,
        device_id: uuid.UUID,
        kind: EventKind,
        stage: DeliveryState | None,
        after: timedelta,
        *,
        event_time: datetime | None = None,
        **body: Any,
    ) -> uuid.UUID:
        event = ExecutionEvent(
            id=uuid.uuid4(),
            device_id=device_id,
            frame_id=None if kind is EventKind.SENT else uuid.uuid4().hex,
            kind=kind,
            delivery_id=delivery_id,
            stage=stage.value if stage else None,
            body=body,
            event_time=event_time or self.at + after,
            received_at=self.at + after,
        )
        await self._add(event)
        return event.id

    async def position(self, delivery_id: uuid.UUID, device_id: uuid.UUID, signal_id: uuid.UUID) -> uuid.UUID:
        position = Position(
            id=uuid.uuid4(),
            device_id=device_id,
            signal_id=signal_id,
            delivery_id=delivery_id,
            instrument="GOLD.m",
            signal_instrument="XAUUSD",
            side=Side.BUY,
            volume=Decimal("0.10"),
            entry_price=Decimal("2000.80"),
            broker_ticket="T-1",
            status=PositionStatus.OPEN,
        )
        await self._add(position)
        return position.id

    async def _add(self, row: object) -> None:
        async with self.res.sessions.begin() as session:
            session.add(row)


def stub(channel: grpc.aio.Channel) -> rpc.ExecutionServiceStub:
    return rpc.ExecutionServiceStub(channel)


async def get(channel: grpc.aio.Channel, who: UserCredentials, signal_id: uuid.UUID | str) -> pb.SignalExecution:
    request = pb.GetSignalExecutionRequest(signal_id=str(signal_id))
    return await stub(channel).GetSignalExecution(request, metadata=who.metadata, timeout=5)


async def failure(call: Any) -> tuple[grpc.StatusCode, set[str]]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    found = rpc_failure(info.value)
    return found.code, set(found.violations)


def by_delivery(execution: pb.SignalExecution | pb.ListExecutionsResponse) -> dict[str, pb.DeviceExecution]:
    items = execution.devices if isinstance(execution, pb.SignalExecution) else execution.executions
    return {e.delivery_id: e for e in items}


def latencies(execution: pb.DeviceExecution) -> list[tuple[int, timedelta]]:
    return [(s.stage, s.latency.ToTimedelta()) for s in execution.latencies]


@dataclass
class Scene:
    world: World
    owner: UserCredentials
    other: UserCredentials
    first: KeyCredentials
    second: KeyCredentials
    foreign: KeyCredentials
    buy: uuid.UUID
    sell: uuid.UUID
    filled: uuid.UUID
    rejected: uuid.UUID
    sold: uuid.UUID
    foreign_delivery: uuid.UUID
    position: uuid.UUID
    events: list[uuid.UUID]


@pytest.fixture
async def scene(res: Resources) -> Scene:
    producer = await make_producer(res)
    world = World(res, producer.id)
    owner, other = await make_user(res), await make_user(res)
    first, second, foreign = await make_device(res, owner), await make_device(res, owner), await make_device(res, other)
    buy = await world.signal(Side.BUY, "2000.50")
    sell = await world.signal(Side.SELL, "1.1000")

    filled = await world.delivery(owner, first.id, buy, Side.BUY, state=DeliveryState.FILLED)
    # Written out of order: the read-model must sort by the time the server recorded them.
    fill = await world.event(
        filled,
        first.id,
        EventKind.FILL,
        DeliveryState.FILLED,
        300 * MS,
        event_time=world.at + 250 * MS,
        price="2000.80",
        volume="0.10",
        broker_ticket="T-1",
    )
    sent = await world.event(filled, first.id, EventKind.SENT, DeliveryState.SENT, 10 * MS, attempt=1)
    placed = await world.event(filled, first.id, EventKind.ACK, DeliveryState.PLACED, 120 * MS)
    received = await world.event(filled, first.id, EventKind.ACK, DeliveryState.RECEIVED, 50 * MS)
    resent = await world.event(filled, first.id, EventKind.SENT, DeliveryState.SENT, 2000 * MS, attempt=2)
    position = await world.position(filled, first.id, buy)

    rejected = await world.delivery(
        owner, second.id, buy, Side.BUY, state=DeliveryState.REJECTED, reason="market closed"
    )
    await world.event(rejected, second.id, EventKind.SENT, DeliveryState.SENT, 20 * MS, attempt=1)
    await world.event(rejected, second.id, EventKind.ACK, DeliveryState.REJECTED, 80 * MS, reason="market closed")

    sold = await world.delivery(owner, first.id, sell, Side.SELL, state=DeliveryState.FILLED)
    await world.event(sold, first.id, EventKind.FILL, DeliveryState.FILLED, 400 * MS, price="1.0990", volume="0.10")

    foreign_delivery = await world.delivery(other, foreign.id, buy, Side.BUY, state=DeliveryState.SENT)
    await world.event(foreign_delivery, foreign.id, EventKind.SENT, DeliveryState.SENT, 15 * MS, attempt=1)
    return Scene(
        world,
        owner,
        other,
        first,
        second,
        foreign,
        buy,
        sell,
        filled,
        rejected,
        sold,
        foreign_delivery,
        position,
        [sent, received, placed, fill, resent],
    )


async def test_signal_execution_reports_state_events_latencies_and_slippage(
    backoffice_channel: grpc.aio.Channel, scene: Scene
) -> None:
    execution = await get(backoffice_channel, scene.owner, scene.buy)
    assert execution.signal_id == str(scene.buy)
    found = by_delivery(execution)
    assert set(found) == {str(scene.filled), str(scene.rejected)}

    filled = found[str(scene.filled)]
    assert filled.device_id == str(scene.first.id) and filled.signal_id == str(scene.buy) and filled.approval_id
    assert filled.state == pb.DELIVERY_STATE_FILLED and filled.attempt == 1
    assert (filled.instrument, filled.side, filled.volume) == ("GOLD.m", common_pb2.SIDE_BUY, "0.10")
    assert (filled.entry_price, filled.fill_price, filled.filled_volume) == ("2000.50", "2000.80", "0.10")
    assert filled.slippage == "0.30"  # BUY filled above the entry: worse for the trader
    assert (filled.broker_ticket, filled.position_id) == ("T-1", str(scene.position))
    assert filled.approve_time.ToDatetime(tzinfo=UTC) == scene.world.at
    assert filled.expire_time.ToDatetime(tzinfo=UTC) == scene.world.at + timedelta(minutes=1)
    # First time each stage was reached (the re-send at 2 s does not move SENT), in stage order.
    assert latencies(filled) == [
        (pb.DELIVERY_STATE_SENT, 10 * MS),
        (pb.DELIVERY_STATE_RECEIVED, 50 * MS),
        (pb.DELIVERY_STATE_PLACED, 120 * MS),
        (pb.DELIVERY_STATE_FILLED, 300 * MS),
    ]
    assert filled.latencies[3].reach_time.ToDatetime(tzinfo=UTC) == scene.world.at + 300 * MS

    assert [e.id for e in filled.events] == [str(e) for e in scene.events]  # oldest first
    sent, _, _, fill, resent = filled.events
    assert (sent.type, sent.stage, sent.attempt, sent.frame_id) == (
        pb.EXECUTION_EVENT_TYPE_SENT,
        pb.DELIVERY_STATE_SENT,
        1,
        "",
    )
    assert resent.attempt == 2
    assert (fill.type, fill.stage, fill.price, fill.volume, fill.broker_ticket) == (
        pb.EXECUTION_EVENT_TYPE_FILL,
        pb.DELIVERY_STATE_FILLED,
        "2000.80",
        "0.10",
        "T-1",
    )
    assert fill.frame_id and fill.delivery_id == str(scene.filled)
    assert fill.event_time.ToDatetime(tzinfo=UTC) == scene.world.at + 250 * MS
    assert fill.create_time.ToDatetime(tzinfo=UTC) == scene.world.at + 300 * MS

    rejected = found[str(scene.rejected)]
    assert rejected.state == pb.DELIVERY_STATE_REJECTED and rejected.reason == "market closed"
    assert (rejected.fill_price, rejected.slippage, rejected.position_id, rejected.broker_ticket) == ("", "", "", "")
    assert latencies(rejected) == [(pb.DELIVERY_STATE_SENT, 20 * MS), (pb.DELIVERY_STATE_REJECTED, 80 * MS)]
    assert rejected.events[1].reason == "market closed"


async def test_slippage_sign_for_sell(backoffice_channel: grpc.aio.Channel, scene: Scene, res: Resources) -> None:
    sold = by_delivery(await get(backoffice_channel, scene.owner, scene.sell))[str(scene.sold)]
    assert (sold.side, sold.entry_price, sold.fill_price) == (common_pb2.SIDE_SELL, "1.1000", "1.0990")
    assert sold.slippage == "0.0010"  # SELL filled below the entry: worse for the trader

    better = await scene.world.delivery(scene.owner, scene.second.id, scene.sell, Side.SELL, state=DeliveryState.FILLED)
    await scene.world.event(better, scene.second.id, EventKind.FILL, DeliveryState.FILLED, 500 * MS, price="1.1005")
    better_buy = await scene.world.delivery(
        scene.owner,
        scene.second.id,
        await scene.world.signal(Side.BUY, "2000.50"),
        Side.BUY,
        state=DeliveryState.FILLED,
    )
    await scene.world.event(
        better_buy, scene.second.id, EventKind.FILL, DeliveryState.FILLED, 500 * MS, price="2000.25"
    )
    listed = by_delivery(
        await stub(backoffice_channel).ListExecutions(
            pb.ListExecutionsRequest(device_id=str(scene.second.id)), metadata=scene.owner.metadata
        )
    )
    assert listed[str(better)].slippage == "-0.0005"
    assert listed[str(better_buy)].slippage == "-0.25"


async def test_market_signal_has_no_slippage(backoffice_channel: grpc.aio.Channel, scene: Scene) -> None:
    market = await scene.world.signal(Side.BUY, None)
    delivery = await scene.world.delivery(scene.owner, scene.first.id, market, Side.BUY, state=DeliveryState.FILLED)
    await scene.world.event(delivery, scene.first.id, EventKind.FILL, DeliveryState.FILLED, 90 * MS, price="2001.00")
    found = by_delivery(await get(backoffice_channel, scene.owner, market))[str(delivery)]
    assert (found.entry_price, found.fill_price, found.slippage) == ("", "2001.00", "")


async def test_each_user_sees_only_deliveries_to_their_devices(
    backoffice_channel: grpc.aio.Channel, scene: Scene, admin: UserCredentials, res: Resources
) -> None:
    theirs = by_delivery(await get(backoffice_channel, scene.other, scene.buy))
    assert set(theirs) == {str(scene.foreign_delivery)}
    everyone = by_delivery(await get(backoffice_channel, admin, scene.buy))
    assert set(everyone) == {str(scene.filled), str(scene.rejected), str(scene.foreign_delivery)}

    # The other user sees the SELL signal (subscribed to its producer) but has no delivery of it.
    assert list((await get(backoffice_channel, scene.other, scene.sell)).devices) == []

    stranger = await make_user(res)
    for signal_id in (scene.buy, uuid.uuid4()):  # someone else's and absent answer alike
        code, _ = await failure(get(backoffice_channel, stranger, signal_id))
        assert code == grpc.StatusCode.NOT_FOUND
    code, fields = await failure(get(backoffice_channel, stranger, "signal-1"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == {"signal_id"}

    listed = await stub(backoffice_channel).ListExecutions(
        pb.ListExecutionsRequest(device_id=str(scene.foreign.id)), metadata=scene.owner.metadata
    )
    assert list(listed.executions) == [] and listed.next_page_token == ""
    nothing = await stub(backoffice_channel).ListExecutions(pb.ListExecutionsRequest(), metadata=stranger.metadata)
    assert list(nothing.executions) == []


async def test_list_executions_pages_newest_first_with_filters(
    backoffice_channel: grpc.aio.Channel, scene: Scene, admin: UserCredentials
) -> None:
    executions = stub(backoffice_channel)
    newest_first = [str(scene.sold), str(scene.rejected), str(scene.filled)]
    seen: list[str] = []
    token = ""
    while True:
        page = await executions.ListExecutions(
            pb.ListExecutionsRequest(page_size=1, page_token=token), metadata=scene.owner.metadata
        )
        assert len(page.executions) == 1
        seen.append(page.executions[0].delivery_id)
        token = page.next_page_token
        if not token:
            break
    assert seen == newest_first

    full = (await executions.ListExecutions(pb.ListExecutionsRequest(), metadata=scene.owner.metadata)).executions
    assert [e.delivery_id for e in full] == newest_first
    assert by_delivery(await get(backoffice_channel, scene.owner, scene.buy))[str(scene.filled)] == full[2]

    async def ids(who: UserCredentials, **filters: Any) -> list[str]:
        response = await executions.ListExecutions(pb.ListExecutionsRequest(**filters), metadata=who.metadata)
        return [e.delivery_id for e in response.executions]

    assert await ids(scene.owner, signal_id=str(scene.buy)) == [str(scene.rejected), str(scene.filled)]
    assert await ids(scene.owner, device_id=str(scene.first.id)) == [str(scene.sold), str(scene.filled)]
    assert await ids(scene.owner, state=pb.DELIVERY_STATE_REJECTED) == [str(scene.rejected)]
    assert await ids(scene.owner, signal_id=str(scene.buy), state=pb.DELIVERY_STATE_FILLED) == [str(scene.filled)]
    assert await ids(admin, signal_id=str(scene.buy)) == [
        str(scene.foreign_delivery),
        str(scene.rejected),
        str(scene.filled),
    ]

    first = await executions.ListExecutions(pb.ListExecutionsRequest(page_size=1), metadata=scene.owner.metadata)
    changed = pb.ListExecutionsRequest(page_size=1, page_token=first.next_page_token, signal_id=str(scene.buy))
    code, fields = await failure(executions.ListExecutions(changed, metadata=scene.owner.metadata))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == {"page_token"}
    code, fields = await failure(
        executions.ListExecutions(pb.ListExecutionsRequest(device_id="nope"), metadata=scene.owner.metadata)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == {"device_id"}
