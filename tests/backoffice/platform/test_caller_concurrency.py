"""One caller's share of the back office's concurrent calls: past it, that caller's next call is refused at
once (RESOURCE_EXHAUSTED, CALLER_CONCURRENCY) while other callers are still served, and every call gives
its place back when it ends, however it ends. Calls are held in flight by a lock in the real Postgres."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import grpc
import pytest
from sqlalchemy.engine import make_url

from backoffice import accounts, bootstrap
from backoffice.bootstrap import Resources
from backoffice.platform.config import Settings
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import backoffice_pb2_grpc as rpc
from tests.conftest import KNOWN_SECRETS, UserCredentials, make_user, rpc_failure, serving

SHARE = 3


@asynccontextmanager
async def server_with_a_share(res: Resources) -> AsyncIterator[grpc.aio.Channel]:
    """A back office of its own admitting ``SHARE`` calls per caller and one more in all: without the
    share, one caller could hold every place."""
    settings = Settings(
        **{**res.settings.__dict__, "max_concurrent_rpcs": SHARE + 1, "max_concurrent_rpcs_per_caller": SHARE}
    )
    server = bootstrap.build_server(Resources(**{**res.__dict__, "settings": settings}))
    async with serving(server), grpc.aio.insecure_channel(server.bound_address) as channel:
        yield channel


@asynccontextmanager
async def referrals_locked(res: Resources) -> AsyncIterator[asyncpg.Connection]:
    """The referrals table locked against reads, so every GetCurrentUser (which reads the caller's
    referrer there, after authenticating) waits in flight until the lock is let go."""
    dsn = make_url(res.settings.database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    holder = await asyncpg.connect(dsn)
    try:
        async with holder.transaction():
            await holder.execute("LOCK TABLE referrals IN ACCESS EXCLUSIVE MODE")
            yield holder
    finally:
        await holder.close()


async def until_waiting(holder: asyncpg.Connection, count: int) -> None:
    """Until ``count`` calls wait for the referrals lock (a safety net of 20 s, no claim)."""
    for _ in range(400):
        # Inside a transaction the activity view is a snapshot taken at its first read: take a new one.
        await holder.execute("SELECT pg_stat_clear_snapshot()")
        waiting = await holder.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' "
            "AND query LIKE '%FROM referrals%'"
        )
        if waiting == count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{waiting} calls wait for the lock, not {count}")


def who_am_i(channel: grpc.aio.Channel, caller: UserCredentials, token: str = "") -> asyncio.Future[pb.User]:
    metadata = (("authorization", f"Bearer {token or caller.token}"),)
    return asyncio.ensure_future(
        rpc.AccountServiceStub(channel).GetCurrentUser(pb.GetCurrentUserRequest(), metadata=metadata, timeout=20)
    )


async def fill_the_share(
    res: Resources, channel: grpc.aio.Channel, greedy: UserCredentials, other: UserCredentials
) -> None:
    """``greedy`` holds its whole share in flight; its next call, by any of its tokens, is refused at once,
    while ``other`` is served; once the lock goes, the held calls finish."""
    async with res.sessions.begin() as session:
        _, second_token = await accounts.create_api_token(session, user_id=greedy.id, name="second")
    KNOWN_SECRETS.add(second_token)
    async with referrals_locked(res) as holder:
        held = [who_am_i(channel, greedy) for _ in range(SHARE)]
        await until_waiting(holder, SHARE)
        for token in (greedy.token, second_token):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await asyncio.wait_for(who_am_i(channel, greedy, token), 5)
            failure = rpc_failure(info.value)
            assert (failure.code, failure.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "CALLER_CONCURRENCY")
            assert failure.metadata["quota"] == "concurrent_rpcs_per_caller"
            assert failure.metadata["limit"] == str(SHARE)
        # Another user still has a place (its call reads no referral, so the lock does not hold it).
        listed = await rpc.DeviceServiceStub(channel).ListDevices(
            pb.ListDevicesRequest(), metadata=other.metadata, timeout=5
        )
        assert list(listed.devices) == []
        assert not any(call.done() for call in held)
    assert [(await call).id for call in held] == [str(greedy.id)] * SHARE


async def test_one_caller_cannot_hold_every_place(res: Resources) -> None:
    greedy, other = await make_user(res), await make_user(res)
    async with server_with_a_share(res) as channel:
        await fill_the_share(res, channel, greedy, other)


async def test_every_call_gives_its_place_back_however_it_ends(res: Resources) -> None:
    """Calls that fail (NOT_FOUND, INVALID_ARGUMENT) or are refused for the share give their place back
    too: afterwards the caller holds its whole share in flight again, and is refused only past it."""
    greedy, other = await make_user(res), await make_user(res)
    async with server_with_a_share(res) as channel:
        await fill_the_share(res, channel, greedy, other)
        devices = rpc.DeviceServiceStub(channel)
        for request in (pb.GetDeviceRequest(id=str(uuid.uuid4())), pb.GetDeviceRequest(id="not an id")):
            for _ in range(SHARE + 1):
                with pytest.raises(grpc.aio.AioRpcError):
                    await devices.GetDevice(request, metadata=greedy.metadata, timeout=5)
        await fill_the_share(res, channel, greedy, other)
