"""The accounts, devices and producers a run creates (with the domain functions an admin's tools use),
their subscriptions (over ApprovalService), and the public API as the run's users and producers use it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc

from backoffice import accounts, bootstrap
from backoffice import devices as device_domain
from backoffice.models import ActorType, Role
from backoffice.platform.auth import Caller
from backoffice.producer import ProducerClient, RetryPolicy
from signalhub.v1 import backoffice_pb2 as bpb
from signalhub.v1 import backoffice_pb2_grpc as brpc

from .simdevice import INSTRUMENT
from .system import Stack


async def paced(count: int, rate: float, make: Callable[[int], Coroutine[Any, Any, None]]) -> None:
    """Start ``make(i)`` at ``rate`` per second (open loop), then wait for all."""
    began = time.monotonic()
    tasks: list[asyncio.Task[None]] = []
    for i in range(count):
        delay = began + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(make(i)))
    await asyncio.gather(*tasks)


@dataclass
class Submitted:
    """What a run of paced SubmitSignal calls saw: each call's seconds, the failures, how many calls."""

    calls: int
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


@dataclass
class Account:
    user_id: str
    token: str
    devices: list[str]

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)


@dataclass
class World:
    accounts: list[Account]
    devices: list[tuple[str, str]]  # (id, shs_ secret) in creation order
    manual: tuple[str, str]  # producer (id, secret) with MANUAL subscribers
    auto: tuple[str, str]  # producer with AUTO subscribers
    idle: tuple[str, str]  # producer without subscribers


async def provision(stack: Stack, users: int, devices: int) -> World:
    """What an admin's tools do (domain functions), then subscriptions over the public API: every user
    subscribes MANUAL to one producer and AUTO to another; the devices are dealt out over the users."""
    run = uuid.uuid4().hex[:8]
    made: list[Account] = []
    creds: list[tuple[str, str]] = []
    async with bootstrap.resources(stack.settings) as res:
        async with res.sessions.begin() as session:
            for i in range(users):
                user, token = await accounts.create_user(
                    session, email=f"bench-{run}-{i}@bench.signalhub", role=Role.USER
                )
                made.append(Account(str(user.id), token, []))
            producers = []
            for name in ("manual", "auto", "idle"):
                producer, secret = await accounts.create_producer(session, res.vault, name=f"bench {name} {run}")
                producers.append((str(producer.id), secret))
        for start in range(0, devices, 250):  # 250 devices a transaction
            async with res.sessions.begin() as session:
                for i in range(start, min(devices, start + 250)):
                    owner = made[i % users]
                    caller = Caller(ActorType.USER, uuid.UUID(owner.user_id), Role.USER)
                    device, secret = await device_domain.register_device(
                        session, res.vault, owner=caller, name=f"bench device {i}"
                    )
                    owner.devices.append(str(device.id))
                    creds.append((str(device.id), secret))
    async with grpc.aio.insecure_channel(stack.backoffice) as channel:
        approvals = brpc.ApprovalServiceStub(channel)
        gate = asyncio.Semaphore(16)

        async def subscribe(account: Account, producer_id: str, mode: bpb.SubscriptionMode.ValueType) -> None:
            request = bpb.SubscribeRequest(
                request_id=str(uuid.uuid4()),
                producer_id=producer_id,
                mode=mode,
                sizing=bpb.SIZING_MODE_FIXED_VOLUME,
                sizing_value="0.01",
            )
            async with gate:
                await approvals.Subscribe(request, metadata=account.metadata, timeout=30)

        await asyncio.gather(
            *(subscribe(a, producers[0][0], bpb.SUBSCRIPTION_MODE_MANUAL) for a in made),
            *(subscribe(a, producers[1][0], bpb.SUBSCRIPTION_MODE_AUTO) for a in made),
        )
    return World(made, creds, producers[0], producers[1], producers[2])


class Backoffice:
    """The public API as the bench's users and producers use it."""

    def __init__(self, stack: Stack, world: World) -> None:
        self.channel = grpc.aio.insecure_channel(stack.backoffice)
        self.approvals = brpc.ApprovalServiceStub(self.channel)
        self.approve_latencies: list[float] = []
        once = RetryPolicy(max_attempts=1)
        self.manual = ProducerClient(stack.backoffice, *world.manual, deadline_seconds=30)
        self.auto = ProducerClient(stack.backoffice, *world.auto, deadline_seconds=30)
        self.idle = ProducerClient(stack.backoffice, *world.idle, deadline_seconds=10, retry=once)

    async def close(self) -> None:
        for client in (self.manual, self.auto, self.idle):
            await client.close()
        await self.channel.close()

    @staticmethod
    async def signal(client: ProducerClient) -> str:
        """Submit a buy signal, valid for five minutes; its id."""
        submitted = await client.submit_signal(
            INSTRUMENT, "buy", signal_time=datetime.now(UTC), expire_time=timedelta(seconds=300)
        )
        return str(submitted.id)

    @staticmethod
    async def submits(client: ProducerClient, rate: float, seconds: float) -> Submitted:
        """``rate`` signed SubmitSignal calls a second for ``seconds`` (open loop), each timed."""
        submitted = Submitted(max(1, int(rate * seconds)))

        async def submit(_: int) -> None:
            began = time.perf_counter()
            try:
                await Backoffice.signal(client)
            except Exception as exc:
                submitted.failures.append(str(exc))
            else:
                submitted.latencies.append(time.perf_counter() - began)

        await paced(submitted.calls, rate, submit)
        return submitted

    async def approve(self, account: Account, signal_id: str, device_ids: Sequence[str] = ()) -> float:
        """Approve; returns the approval's decide_time (Unix seconds), the origin of the latency."""
        request = bpb.ApproveSignalRequest(signal_id=signal_id, request_id=str(uuid.uuid4()), device_ids=device_ids)
        began = time.perf_counter()
        approval = await self.approvals.ApproveSignal(request, metadata=account.metadata, timeout=30)
        self.approve_latencies.append(time.perf_counter() - began)
        return approval.decide_time.ToDatetime(tzinfo=UTC).timestamp()
