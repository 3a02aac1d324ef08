"""No replay gets through, whatever Redis does: a signed call (a producer's SubmitSignal without a
request_id, a device's stream open) captured and sent again is refused NONCE_REPLAYED by a replica that
shares Redis, by one cut off from Redis, and after Redis restarted empty.

The servers run as processes on a Postgres and a Redis of the test's own: one back office and one gateway
on that Redis, one of each pointed at a Redis address where nothing answers."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from backoffice import bootstrap
from signalhub.protocol import signing
from signalhub.protocol.signing import CONNECT_METHOD
from signalhub.v1 import backoffice_pb2 as bpb
from signalhub.v1 import common_pb2
from tests.conftest import (
    KeyCredentials,
    free_port,
    make_device,
    make_producer,
    make_user,
    rpc_failure,
    server_env,
    settings_for,
)
from tests.gateway.support import DeviceStream
from tests.reliability.cluster import FAST_SETTINGS, ServerProcess
from tests.reliability.services import OwnedRedis, PostgresTemplate

SUBMIT = "/signalhub.v1.SignalService/SubmitSignal"


@dataclass(frozen=True)
class Captured:
    """A signed call as it went over the wire: its exact bytes and metadata."""

    body: bytes
    metadata: tuple[tuple[str, str], ...]


@dataclass
class Replicas:
    """Addresses of the back-office and gateway replicas, by whether they reach Redis."""

    backoffice: dict[str, str]
    gateway: dict[str, str]
    producer: KeyCredentials
    device: KeyCredentials
    redis: OwnedRedis


@contextlib.asynccontextmanager
async def replicas(template: PostgresTemplate, scratch: Path, tmp_path: Path) -> AsyncIterator[Replicas]:
    postgres = template.copy(scratch / "pgdata", tmp_path / "postgres.log")
    redis = OwnedRedis(tmp_path)
    await postgres.start()
    await redis.start()
    cut_off = f"redis://127.0.0.1:{free_port()}/0"  # nothing answers there
    processes: list[ServerProcess] = []
    try:
        async with bootstrap.resources(settings_for(postgres.url, SIGNALHUB_REDIS_URL=redis.url)) as res:
            user = await make_user(res)
            producer, device = await make_producer(res), await make_device(res, user)
        for redis_url, where in ((redis.url, "reaches"), (cut_off, "cut_off")):
            for kind in ("backoffice", "gateway"):
                address = f"127.0.0.1:{free_port()}"
                env = server_env(postgres.url, redis_url, **FAST_SETTINGS, **{f"{kind}_address": address})
                processes.append(ServerProcess(kind, f"{kind}-{where}", address, env, tmp_path / f"{kind}-{where}.log"))
        for process in processes:
            process.start()
        for process in processes:
            await process.serving()
        by = {p.name: p.address or "" for p in processes}
        yield Replicas(
            backoffice={"reaches": by["backoffice-reaches"], "cut_off": by["backoffice-cut_off"]},
            gateway={"reaches": by["gateway-reaches"], "cut_off": by["gateway-cut_off"]},
            producer=producer,
            device=device,
            redis=redis,
        )
    finally:
        for process in processes:
            process.stop()
        await redis.kill()
        await postgres.stop()


def signed_submit(producer: KeyCredentials) -> Captured:
    request = bpb.SubmitSignalRequest(instrument="XAUUSD", side=common_pb2.SIDE_BUY, entry_price="2034.15")
    request.signal_time.FromDatetime(datetime.now(UTC))
    body = request.SerializeToString()
    metadata = signing.signed_metadata(signing.parse_secret(producer.secret), SUBMIT, str(producer.id), body)
    return Captured(body, tuple(metadata))


async def send(address: str, call: Captured) -> str:
    """Send the captured bytes and metadata as they are: 'accepted', or the refusal's reason."""
    async with grpc.aio.insecure_channel(address) as channel:
        method = channel.unary_unary(SUBMIT, request_serializer=None, response_deserializer=bpb.Signal.FromString)
        try:
            await method(call.body, metadata=call.metadata, timeout=10)
        except grpc.aio.AioRpcError as error:
            return rpc_failure(error).reason
    return "accepted"


async def open_stream(address: str, device: KeyCredentials, metadata: tuple[tuple[str, str], ...]) -> str:
    """Open a device stream with ``metadata``: 'welcomed', or the refusal's reason."""
    async with grpc.aio.insecure_channel(address) as channel:
        opened = DeviceStream(channel, device, metadata=metadata)
        try:
            await opened.hello(frame_id=f"hello-{uuid.uuid4().hex[:8]}")
            return "welcomed"
        except AssertionError:
            assert opened.error is not None, "the stream ended without a status"
            return rpc_failure(opened.error).reason
        finally:
            await opened.close()


@pytest.mark.server_error_expected  # the replicas cut off from Redis log their hint listener's failures
async def test_no_replay_through_a_replica_cut_off_from_redis_or_after_redis_restarts_empty(
    template: PostgresTemplate, traversable_dir: Path, tmp_path: Path
) -> None:
    async with replicas(template, traversable_dir, tmp_path) as world:
        reaches, cut_off = world.backoffice["reaches"], world.backoffice["cut_off"]
        # Accepted where Redis answers, replayed where it does not; and the other way round.
        first = signed_submit(world.producer)
        assert await send(reaches, first) == "accepted"
        assert await send(cut_off, first) == "NONCE_REPLAYED"
        second = signed_submit(world.producer)
        assert await send(cut_off, second) == "accepted"
        assert await send(reaches, second) == "NONCE_REPLAYED"
        # A stream open, likewise, on the gateways.
        open_md = signing.signed_metadata(
            signing.parse_secret(world.device.secret), CONNECT_METHOD, str(world.device.id), b""
        )
        assert await open_stream(world.gateway["reaches"], world.device, tuple(open_md)) == "welcomed"
        assert await open_stream(world.gateway["cut_off"], world.device, tuple(open_md)) == "NONCE_REPLAYED"
        # Redis restarts empty between a call and its replay.
        third = signed_submit(world.producer)
        assert await send(reaches, third) == "accepted"
        await world.redis.kill()
        await world.redis.start()
        assert await send(reaches, third) == "NONCE_REPLAYED"
        assert await send(reaches, first) == "NONCE_REPLAYED"
        assert await open_stream(world.gateway["reaches"], world.device, tuple(open_md)) == "NONCE_REPLAYED"
        # Fresh calls go on being served on both sides.
        assert await send(reaches, signed_submit(world.producer)) == "accepted"
        assert await send(cut_off, signed_submit(world.producer)) == "accepted"
