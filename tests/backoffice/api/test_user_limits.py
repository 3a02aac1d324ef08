"""What one user may hold at once, through the stubs on the real Postgres: devices not revoked, API tokens
not revoked and active subscriptions are capped per user; one more is RESOURCE_EXHAUSTED naming the quota
and its limit, and changes nothing; concurrent creations for one user never pass the cap."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import grpc
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from backoffice import bootstrap
from backoffice.bootstrap import Resources
from backoffice.models import ApiToken, AuditEvent, Device, DeviceStatus, Subscription, SubscriptionStatus
from backoffice.platform.config import ConfigError, Settings
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import backoffice_pb2_grpc as rpc
from tests.conftest import RpcFailure, UserCredentials, make_producer, make_user, rpc_failure, serving

CAP = 3
RACERS = 8


@asynccontextmanager
async def capped(res: Resources) -> AsyncIterator[grpc.aio.Channel]:
    """A back office of its own whose per-user caps are all ``CAP``, and a channel to it."""
    settings = Settings(
        **{
            **res.settings.__dict__,
            "max_devices_per_user": CAP,
            "max_api_tokens_per_user": CAP,
            "max_subscriptions_per_user": CAP,
        }
    )
    server = bootstrap.build_server(Resources(**{**res.__dict__, "settings": settings}))
    async with serving(server), grpc.aio.insecure_channel(server.bound_address) as channel:
        yield channel


async def refused(call: Awaitable[object]) -> RpcFailure:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return rpc_failure(info.value)


def assert_limit(failure: RpcFailure, reason: str, quota: str) -> None:
    assert (failure.code, failure.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, reason)
    assert failure.metadata["quota"] == quota and failure.metadata["limit"] == str(CAP)


async def register(
    channel: grpc.aio.Channel, owner: UserCredentials, request_id: str = ""
) -> pb.RegisterDeviceResponse:
    request = pb.RegisterDeviceRequest(request_id=request_id or str(uuid.uuid4()), name="terminal")
    return await rpc.DeviceServiceStub(channel).RegisterDevice(request, metadata=owner.metadata, timeout=20)


async def create_token(channel: grpc.aio.Channel, owner: UserCredentials) -> pb.CreateApiTokenResponse:
    request = pb.CreateApiTokenRequest(request_id=str(uuid.uuid4()), name="script")
    return await rpc.AccountServiceStub(channel).CreateApiToken(request, metadata=owner.metadata, timeout=20)


async def follow(channel: grpc.aio.Channel, owner: UserCredentials, producer_id: uuid.UUID) -> pb.Subscription:
    request = pb.SubscribeRequest(
        request_id=str(uuid.uuid4()),
        producer_id=str(producer_id),
        mode=pb.SUBSCRIPTION_MODE_MANUAL,
        sizing=pb.SIZING_MODE_FIXED_VOLUME,
        sizing_value="0.10",
    )
    return await rpc.ApprovalServiceStub(channel).Subscribe(request, metadata=owner.metadata, timeout=20)


async def scalar(res: Resources, query: Any) -> int:
    async with res.sessions() as session:
        return int(await session.scalar(query) or 0)


def live_devices(user_id: uuid.UUID) -> Any:
    return select(func.count()).where(Device.user_id == user_id, Device.status != DeviceStatus.REVOKED)


def live_tokens(user_id: uuid.UUID) -> Any:
    return select(func.count()).where(ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None))


def active_subscriptions(user_id: uuid.UUID) -> Any:
    return select(func.count()).where(Subscription.user_id == user_id, Subscription.status == SubscriptionStatus.ACTIVE)


def audited(user_id: uuid.UUID, action: str) -> Any:
    return select(func.count()).where(AuditEvent.actor_id == user_id, AuditEvent.action == action)


async def test_one_device_past_the_cap_is_refused_and_changes_nothing(res: Resources) -> None:
    owner, neighbour = await make_user(res), await make_user(res)
    async with capped(res) as channel:
        first_request = str(uuid.uuid4())
        first = await register(channel, owner, first_request)
        for _ in range(CAP - 1):
            await register(channel, owner)
        assert_limit(await refused(register(channel, owner)), "DEVICE_LIMIT", "devices_per_user")
        assert await scalar(res, live_devices(owner.id)) == CAP
        assert await scalar(res, audited(owner.id, "RegisterDevice")) == CAP
        # A retry of a call that succeeded still gets its first answer: the cap refuses only new devices.
        again = await register(channel, owner, first_request)
        assert again.device.id == first.device.id and again.secret == first.secret
        # The cap is the owner's: another user registers as before.
        await register(channel, neighbour)
        # A revoked device no longer counts.
        await rpc.DeviceServiceStub(channel).RevokeDevice(
            pb.RevokeDeviceRequest(id=first.device.id), metadata=owner.metadata, timeout=5
        )
        await register(channel, owner)
    assert await scalar(res, live_devices(owner.id)) == CAP


async def test_one_api_token_past_the_cap_is_refused_and_changes_nothing(res: Resources) -> None:
    owner = await make_user(res)  # holds its initial token
    async with capped(res) as channel:
        made = [await create_token(channel, owner) for _ in range(CAP - 1)]
        assert_limit(await refused(create_token(channel, owner)), "API_TOKEN_LIMIT", "api_tokens_per_user")
        assert await scalar(res, live_tokens(owner.id)) == CAP
        assert await scalar(res, audited(owner.id, "CreateApiToken")) == CAP - 1
        await rpc.AccountServiceStub(channel).RevokeApiToken(
            pb.RevokeApiTokenRequest(id=made[0].token.id), metadata=owner.metadata, timeout=5
        )
        await create_token(channel, owner)
    assert await scalar(res, live_tokens(owner.id)) == CAP


async def test_one_subscription_past_the_cap_is_refused_and_changes_nothing(res: Resources) -> None:
    owner = await make_user(res)
    producers = [await make_producer(res) for _ in range(CAP + 1)]
    async with capped(res) as channel:
        followed = [await follow(channel, owner, p.id) for p in producers[:CAP]]
        failure = await refused(follow(channel, owner, producers[CAP].id))
        assert_limit(failure, "SUBSCRIPTION_LIMIT", "subscriptions_per_user")
        assert await scalar(res, active_subscriptions(owner.id)) == CAP
        assert await scalar(res, audited(owner.id, "Subscribe")) == CAP
        await rpc.ApprovalServiceStub(channel).Unsubscribe(
            pb.UnsubscribeRequest(id=followed[0].id), metadata=owner.metadata, timeout=5
        )
        await follow(channel, owner, producers[CAP].id)
    assert await scalar(res, active_subscriptions(owner.id)) == CAP


async def race(res: Resources, table: str, calls: list[Callable[[], Awaitable[object]]]) -> list[str]:
    """Run ``calls`` at once with ``table`` held against inserts, and let them go only when every one waits
    on a lock: at the insert (each counted what the user held, and found room) or, with the user's row
    locked before counting, behind the one that holds it. Without that lock all of them would count
    before any insert, so the cap would be passed every time. The outcome of each: OK or the reason."""
    dsn = make_url(res.settings.database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    holder = await asyncpg.connect(dsn)
    try:
        held = holder.transaction()
        await held.start()
        await holder.execute(f"LOCK TABLE {table} IN SHARE MODE")
        running = [asyncio.ensure_future(call()) for call in calls]
        for _ in range(400):  # a safety net, no claim: they queue within milliseconds
            # Inside a transaction the activity view is a snapshot taken at its first read: take a new one.
            await holder.execute("SELECT pg_stat_clear_snapshot()")
            waiting = await holder.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = "
                "'Lock' AND (query LIKE $1 OR query LIKE '%FOR NO KEY UPDATE%')",
                f"INSERT INTO {table}%",
            )
            if waiting == len(calls):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"only {waiting} of {len(calls)} calls reached the lock")
        await held.rollback()
    finally:
        await holder.close()
    outcomes = await asyncio.gather(*running, return_exceptions=True)
    return [
        "OK" if not isinstance(o, BaseException) else rpc_failure(o).reason  # type: ignore[arg-type]
        for o in outcomes
    ]


async def test_concurrent_registrations_never_pass_the_device_cap(res: Resources) -> None:
    owner = await make_user(res)
    async with capped(res) as channel:
        outcomes = await race(res, "devices", [lambda: register(channel, owner) for _ in range(RACERS)])
    assert sorted(outcomes) == ["DEVICE_LIMIT"] * (RACERS - CAP) + ["OK"] * CAP
    assert await scalar(res, live_devices(owner.id)) == CAP


async def test_concurrent_token_creations_never_pass_the_token_cap(res: Resources) -> None:
    owner = await make_user(res)
    async with capped(res) as channel:
        # Authenticating refreshes a token's last use at most once a minute: do it now, not under the lock.
        await rpc.AccountServiceStub(channel).GetCurrentUser(pb.GetCurrentUserRequest(), metadata=owner.metadata)
        outcomes = await race(res, "api_tokens", [lambda: create_token(channel, owner) for _ in range(RACERS)])
    assert sorted(outcomes) == ["API_TOKEN_LIMIT"] * (RACERS - CAP + 1) + ["OK"] * (CAP - 1)
    assert await scalar(res, live_tokens(owner.id)) == CAP


async def test_concurrent_subscriptions_never_pass_the_subscription_cap(res: Resources) -> None:
    owner = await make_user(res)
    producers = [await make_producer(res) for _ in range(RACERS)]
    async with capped(res) as channel:
        calls = [lambda p=p: follow(channel, owner, p.id) for p in producers]  # type: ignore[misc]
        outcomes = await race(res, "subscriptions", calls)
    assert sorted(outcomes) == ["OK"] * CAP + ["SUBSCRIPTION_LIMIT"] * (RACERS - CAP)
    assert await scalar(res, active_subscriptions(owner.id)) == CAP


def test_the_caps_are_settings_with_defaults_and_bounds() -> None:
    env = {"SIGNALHUB_MASTER_KEY": "A" * 43 + "="}
    defaults = Settings.from_env(env)
    assert (
        defaults.max_devices_per_user,
        defaults.max_api_tokens_per_user,
        defaults.max_subscriptions_per_user,
        defaults.max_concurrent_rpcs_per_caller,
    ) == (20, 20, 50, 50)
    chosen = Settings.from_env(
        env
        | {
            "SIGNALHUB_MAX_DEVICES_PER_USER": "5",
            "SIGNALHUB_MAX_API_TOKENS_PER_USER": "6",
            "SIGNALHUB_MAX_SUBSCRIPTIONS_PER_USER": "7",
            "SIGNALHUB_MAX_CONCURRENT_RPCS_PER_CALLER": "8",
        }
    )
    assert (
        chosen.max_devices_per_user,
        chosen.max_api_tokens_per_user,
        chosen.max_subscriptions_per_user,
        chosen.max_concurrent_rpcs_per_caller,
    ) == (5, 6, 7, 8)
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env | {"SIGNALHUB_MAX_DEVICES_PER_USER": "0", "SIGNALHUB_MAX_API_TOKENS_PER_USER": "x"})
    assert "MAX_DEVICES_PER_USER" in str(info.value) and "MAX_API_TOKENS_PER_USER" in str(info.value)
