"""``signalhub status`` reads real metrics: a device stream and some calls move the figures it prints."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from collections.abc import Iterator

import grpc
from prometheus_client import REGISTRY, generate_latest, start_http_server

from backoffice.cli import status
from tests.conftest import ROOT_DIR, KeyCredentials
from tests.gateway.support import stream


def figures() -> status.Scrape:
    scrape = status.Scrape()
    scrape.add(generate_latest(REGISTRY).decode())
    return scrape


async def test_a_stream_and_its_frames_move_the_figures(
    gateway_channel: grpc.aio.Channel, backoffice_channel: grpc.aio.Channel, device: KeyCredentials
) -> None:
    before = figures()
    async with stream(gateway_channel, device) as bridge:
        during = figures()
        await bridge.receipt(bridge.heartbeat())
        after = figures()
    assert during.total("signalhub_gateway_sessions") == before.total("signalhub_gateway_sessions") + 1
    counted = {"kind": "heartbeat", "status": "ACCEPTED"}
    assert (
        after.total("signalhub_gateway_frames_total", **counted)
        == before.total("signalhub_gateway_frames_total", **counted) + 1
    )
    with_unknown_token = (("authorization", "Bearer sht_not-a-token"),)
    with contextlib.suppress(grpc.aio.AioRpcError):
        await backoffice_channel.unary_unary("/signalhub.v1.AccountService/GetCurrentUser")(
            b"", metadata=with_unknown_token, timeout=5
        )
    assert figures().total("signalhub_auth_failures_total", reason="TOKEN_INVALID") >= 1
    lines = status.summary(figures())
    assert any(line.startswith("connected devices") for line in lines)
    assert any("heartbeat/ACCEPTED" in line for line in lines)
    assert any("TOKEN_INVALID" in line for line in lines)


def test_quantiles_interpolate_within_buckets() -> None:
    scrape = status.Scrape()
    scrape.add(
        "# TYPE t histogram\n"
        't_bucket{le="0.01"} 50\nt_bucket{le="0.02"} 90\nt_bucket{le="+Inf"} 100\nt_count 100\nt_sum 1.5\n'
    )
    assert scrape.quantile("t", 0.5) == 0.01
    assert abs((scrape.quantile("t", 0.7) or 0) - 0.015) < 1e-9
    assert scrape.quantile("t", 0.99) == 0.02  # past the last finite bound: that bound
    assert scrape.quantile("missing", 0.5) is None


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _status(*addresses: str) -> subprocess.CompletedProcess[str]:
    arguments = [argument for address in addresses for argument in ("--metrics", address)]
    return subprocess.run(
        [sys.executable, "-m", "backoffice.cli", "status", *arguments],
        cwd=ROOT_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )


@contextlib.contextmanager
def _endpoint() -> Iterator[str]:
    """A real metrics endpoint (this process's registry) on a port of its own."""
    server, thread = start_http_server(0, addr="127.0.0.1")
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join(timeout=5)


def test_every_endpoint_answering_exits_0() -> None:
    with _endpoint() as first, _endpoint() as second:
        done = _status(first, second)
    assert done.returncode == 0, done.stderr
    assert "connected devices" in done.stdout and "database pool" in done.stdout and done.stderr == ""


def test_an_endpoint_that_does_not_answer_is_named_and_the_exit_is_1() -> None:
    closed, also_closed = _closed_port(), _closed_port()
    with _endpoint() as answering:
        done = _status(answering, f"127.0.0.1:{closed}", f"127.0.0.1:{also_closed}")
    assert done.returncode == 1
    # The endpoint that answered is still summed; each silent one is one line of its own, named.
    assert "connected devices" in done.stdout and "database pool" in done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in done.stderr
    assert lines[0].startswith(f"signalhub: no metrics at 127.0.0.1:{closed}: ")
    assert lines[1].startswith(f"signalhub: no metrics at 127.0.0.1:{also_closed}: ")
    assert "refused" in lines[0].lower()


def test_no_endpoint_answering_prints_no_summary() -> None:
    closed = _closed_port()
    done = _status(f"127.0.0.1:{closed}")
    assert done.returncode == 1 and done.stdout == ""  # a screen of zeros would look like an idle system
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"signalhub: no metrics at 127.0.0.1:{closed}: ") and "refused" in line.lower()
