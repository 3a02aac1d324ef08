"""Sessions: one per device across replicas (the newest wins), revocation within a second wherever the
stream is, the stream cap, heartbeats, last_seen_at, and a graceful shutdown."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import grpc
import pytest
from sqlalchemy import update

from backoffice.bootstrap import Resources
from backoffice.models import Device, DeviceStatus
from backoffice.platform import hints
from gateway import sweeper
from signalhub.v1 import gateway_pb2 as pb
from tests.conftest import KeyCredentials, UserCredentials, make_device
from tests.gateway.support import DeviceStream, eventually, gateway, row, stream


async def _revoke(res: Resources, device: KeyCredentials) -> None:
    async with res.sessions.begin() as session:
        await session.execute(
            update(Device)
            .where(Device.id == device.id)
            .values(status=DeviceStatus.REVOKED, revoked_at=datetime.now(UTC))
        )


async def test_a_second_stream_replaces_the_first_on_one_replica(res: Resources, device: KeyCredentials) -> None:
    async with gateway(res) as (_, channel), stream(channel, device) as first, stream(channel, device) as second:
        failure = await first.failure()
        assert (failure.code, failure.reason) == (grpc.StatusCode.ABORTED, "SESSION_REPLACED")
        assert (await second.receipt(second.heartbeat())).status == pb.RECEIPT_STATUS_ACCEPTED
        assert second.welcome is not None and first.welcome is not None
        assert second.welcome.session_id != first.welcome.session_id


async def test_a_second_stream_replaces_the_first_across_replicas(res: Resources, device: KeyCredentials) -> None:
    slow_sweep = {"sweep_interval_seconds": 60.0}  # only the takeover message can end the first stream
    async with (
        gateway(res, **slow_sweep) as (_, one),
        gateway(res, **slow_sweep) as (_, two),
        stream(one, device) as first,
        stream(two, device) as second,
    ):
        failure = await first.failure()
        assert (failure.code, failure.reason) == (grpc.StatusCode.ABORTED, "SESSION_REPLACED")
        assert (await second.receipt(second.heartbeat())).status == pb.RECEIPT_STATUS_ACCEPTED
        # And back: the newest always wins.
        async with stream(one, device) as third:
            failure = await second.failure()
            assert failure.reason == "SESSION_REPLACED"
            assert (await third.receipt(third.heartbeat())).status == pb.RECEIPT_STATUS_ACCEPTED


async def test_revocation_ends_the_stream_within_a_second_on_the_replica_holding_it(
    res: Resources, device: KeyCredentials
) -> None:
    slow_sweep = {"sweep_interval_seconds": 60.0}  # the hint, not the sweep
    # Two replicas get the hint; the one holding the stream ends it.
    async with gateway(res, **slow_sweep), gateway(res, **slow_sweep) as (_, two):
        async with stream(two, device) as held:
            await _revoke(res, device)
            revoked_at = time.monotonic()
            await hints.publish(res.redis, [device.id], hints.REVOKED)
            failure = await held.failure()
            assert held.ended_at is not None and held.ended_at - revoked_at < 1.0
        assert (failure.code, failure.reason) == (grpc.StatusCode.UNAUTHENTICATED, "KEY_REVOKED")


async def test_the_sweep_ends_a_revoked_stream_even_without_the_hint(res: Resources, device: KeyCredentials) -> None:
    async with gateway(res) as (_, channel), stream(channel, device) as held:
        await _revoke(res, device)
        failure = await held.failure()
    assert failure.reason == "KEY_REVOKED"


async def test_streams_beyond_the_cap_are_refused(
    res: Resources, device: KeyCredentials, user: UserCredentials
) -> None:
    other = await make_device(res, user)
    async with gateway(res, max_streams=1) as (_, channel), stream(channel, device):
        refused = DeviceStream(channel, other)
        failure = await refused.failure()
        assert (failure.code, failure.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "STREAM_LIMIT")


async def test_shutdown_tells_every_stream_to_reconnect_elsewhere(res: Resources, device: KeyCredentials) -> None:
    async with gateway(res) as (server, channel):
        held = DeviceStream(channel, device)
        await held.hello()
        await server.stop()
        failure = await held.failure()
        assert (failure.code, failure.reason) == (grpc.StatusCode.UNAVAILABLE, "SERVER_SHUTTING_DOWN")


async def test_heartbeats_both_ways_and_last_seen(
    res: Resources, device: KeyCredentials, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sweeper, "LAST_SEEN_EVERY", 0.3)
    async with gateway(res, heartbeat_seconds=1) as (_, channel), stream(channel, device) as held:
        frame = await held.next(2.5, heartbeats=True)
        assert frame.WhichOneof("body") == "heartbeat"
        seen = (await row(res, Device, device.id)).last_seen_at
        await held.receipt(held.heartbeat())

        async def seen_again() -> bool:
            return bool((await row(res, Device, device.id)).last_seen_at > seen)

        await eventually(seen_again, "last_seen_at to move on")


async def test_a_silent_device_is_let_go(res: Resources, device: KeyCredentials) -> None:
    async with gateway(res, heartbeat_seconds=1) as (_, channel), stream(channel, device) as held:
        failure = await held.failure(6.0)
    assert (failure.code, failure.reason) == (grpc.StatusCode.UNAVAILABLE, "HEARTBEAT_MISSED")
