"""The device stream, hunted by hypothesis: hostile frames after a good Hello, hostile Hellos, raw bytes
that are not a frame, and stream opens with and without a valid signature. A frame the gateway can read
gets a Receipt (REJECTED for bad input) and the stream stays up; bytes that are not a frame end the stream
INVALID_ARGUMENT; nothing is ever UNKNOWN, INTERNAL or UNAVAILABLE, and the gateway keeps SERVING."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given
from hypothesis import strategies as st

from signalhub.protocol import signing
from signalhub.v1 import gateway_pb2 as pb
from tests.conftest import KeyCredentials, rpc_failure
from tests.gateway.support import HELLO, WAIT, signed
from tests.hostile import HUNT, assert_proper_status, messages, raw_bytes, timestamp_headers

CONNECT = "/signalhub.v1.DeviceGateway/Connect"
GOOD_HELLO = pb.DeviceFrame(frame_id="hello-1", hello=HELLO).SerializeToString()


@dataclass
class Exchange:
    """What came back on one stream: every frame the gateway sent, and how the stream ended."""

    frames: list[pb.GatewayFrame]
    error: grpc.aio.AioRpcError | None

    @property
    def receipts(self) -> list[pb.Receipt]:
        return [f.receipt for f in self.frames if f.WhichOneof("body") == "receipt"]


async def exchange(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...], frames: list[bytes]) -> Exchange:
    """Open a stream and write ``frames`` as raw bytes in lockstep: each write waits for its Receipt (or
    the end of the stream) before the next. A client that writes after the server has ended the stream
    gets a locally made INTERNAL from grpc instead of the server's status; lockstep reads the real one."""
    call = channel.stream_stream(CONNECT, response_deserializer=pb.GatewayFrame.FromString)(
        metadata=metadata, timeout=WAIT
    )
    received: list[pb.GatewayFrame] = []
    try:
        for frame in frames:
            await call.write(frame)
            while True:
                answer = await call.read()
                if answer is grpc.aio.EOF:
                    return Exchange(received, None)
                received.append(answer)  # type: ignore[arg-type]
                if received[-1].WhichOneof("body") == "receipt":
                    break
        await call.done_writing()
        while (answer := await call.read()) is not grpc.aio.EOF:
            received.append(answer)  # type: ignore[arg-type]
    except grpc.aio.AioRpcError as error:
        return Exchange(received, error)
    return Exchange(received, None)


def hostile_frame(known: list[str]) -> st.SearchStrategy[bytes]:
    return messages(pb.DeviceFrame.DESCRIPTOR, known).map(lambda m: m.SerializeToString())


@HUNT
@given(data=st.data())
async def test_hostile_frames_after_a_hello_get_receipts_or_a_proper_status(
    gateway_channel: grpc.aio.Channel, device: KeyCredentials, data: st.DataObject
) -> None:
    frames = data.draw(st.lists(hostile_frame([str(device.id)]), min_size=1, max_size=6))
    result = await exchange(gateway_channel, signed(device), [GOOD_HELLO, *frames])
    if result.error is not None:
        assert_proper_status(result.error)
    else:
        # Every frame after the Hello is answered, in order (a Hello sent again is answered too).
        assert len(result.receipts) == 1 + len(frames), result.receipts


@HUNT
@given(data=st.data())
async def test_hostile_hellos_and_raw_bytes_get_a_proper_status(
    gateway_channel: grpc.aio.Channel, device: KeyCredentials, data: st.DataObject
) -> None:
    first = data.draw(hostile_frame([str(device.id)]) | raw_bytes(pb.DeviceFrame.DESCRIPTOR))
    later = data.draw(st.lists(raw_bytes(pb.DeviceFrame.DESCRIPTOR), max_size=2))
    result = await exchange(gateway_channel, signed(device), [first, *later])
    if result.error is not None:
        assert_proper_status(result.error)


@HUNT
@given(
    auth=st.sampled_from(["none", "foreign", "garbage", "odd-timestamp"]),
    frame=hostile_frame([]),
    timestamp=timestamp_headers(sendable=True),
)
async def test_a_stream_without_a_valid_signature_is_unauthenticated(
    gateway_channel: grpc.aio.Channel, device: KeyCredentials, auth: str, frame: bytes, timestamp: str
) -> None:
    metadata = {
        "none": (),
        "foreign": signed(device, secret=signing.parse_secret("shs_" + "B" * 42 + "A")),
        "garbage": (("x-sh-key-id", "x"), ("x-sh-signature", "v1=?"), ("x-sh-timestamp", "-"), ("x-sh-nonce", "!")),
        "odd-timestamp": tuple(
            (key, timestamp if key == signing.HEADER_TIMESTAMP else value) for key, value in signed(device)
        ),
    }[auth]
    result = await exchange(gateway_channel, metadata, [GOOD_HELLO, frame])
    assert result.error is not None and result.error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert_proper_status(result.error)


async def test_bytes_that_are_not_a_frame_end_the_stream_invalid_argument(
    gateway_channel: grpc.aio.Channel, device: KeyCredentials
) -> None:
    result = await exchange(gateway_channel, signed(device), [GOOD_HELLO, b"\xff\xff\xff"])
    assert result.error is not None
    failure = rpc_failure(result.error)
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT and failure.reason == "MALFORMED_MESSAGE"


@pytest.mark.parametrize(
    "frame",
    [
        pb.DeviceFrame(frame_id="nul\x00id", heartbeat=pb.Heartbeat()),
        pb.DeviceFrame(frame_id="f-ack", ack=pb.Ack(delivery_id="x", stage=pb.ACK_STAGE_REJECTED, reason="no\x00")),
        pb.DeviceFrame(frame_id="f-fill", fill=pb.Fill(delivery_id="x", broker_ticket="T\x00", price="1", volume="1")),
        pb.DeviceFrame(frame_id="f-hello", hello=pb.Hello(bridge_version="1\x00")),
    ],
    ids=["frame_id", "ack.reason", "fill.broker_ticket", "hello.bridge_version"],
)
async def test_a_nul_in_a_frame_is_rejected_and_the_stream_stays_up(
    gateway_channel: grpc.aio.Channel, device: KeyCredentials, frame: pb.DeviceFrame
) -> None:
    beat = pb.DeviceFrame(frame_id="after", heartbeat=pb.Heartbeat())
    beat.heartbeat.send_time.GetCurrentTime()
    result = await exchange(
        gateway_channel, signed(device), [GOOD_HELLO, frame.SerializeToString(), beat.SerializeToString()]
    )
    assert result.error is None, result.error
    rejected, after = result.receipts[1:]
    assert rejected.frame_id == frame.frame_id and rejected.status == pb.RECEIPT_STATUS_REJECTED
    assert "NUL" in rejected.error.message or any(d for d in rejected.error.details)
    assert after.frame_id == "after" and after.status == pb.RECEIPT_STATUS_ACCEPTED


async def test_the_gateway_keeps_serving(gateway_channel: grpc.aio.Channel) -> None:
    answer = await health_pb2_grpc.HealthStub(gateway_channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
