"""TLS between the EA bridge and the gateway. On real servers: a gateway serving TLS with a certificate from
a CA made here, which a `signalhub bridge --ca-file` trades through; a gateway that requires TLS and has no
certificate does not start. And the bridge's side: plaintext beyond loopback is refused before any
connection unless ``--insecure``, which warns."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, NoReturn

import grpc
import pytest
from sqlalchemy import select

from backoffice.bootstrap import Resources
from backoffice.cli import commands as cli
from backoffice.models import Delivery, DeliveryState
from backoffice.platform.config import ServerTls, Settings
from backoffice.platform.serving import TlsUnavailable
from gateway.bootstrap import GatewayServer
from gateway.bridge import BridgeConfig
from gateway.bridge import cli as bridge_cli
from gateway.bridge.cli import SECRET_ENV, Credentials, add_arguments, build_config
from gateway.bridge.config import PlaintextRefused
from signalhub.protocol import signing
from signalhub.protocol.wire import is_loopback
from signalhub.v1 import backoffice_pb2 as bpb
from tests.conftest import Stack, free_port, health, server_env, subscribe
from tests.gateway.bridge.scripted import REPO, ScriptedGateway, spawn
from tests.gateway.support import eventually, gateway
from tests.tls import make_server_identity

SECRET = bytes(range(100, 132))
SHOWN = signing.format_secret(SECRET)
# A documentation address (TEST-NET-1): never contacted, the refusal comes first.
REMOTE = "192.0.2.10:50052"


def _bridge_env(secret: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'proto'}", SECRET_ENV: secret}


def _json_lines(stderr: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.decode().splitlines() if line.strip()]


async def _stop(process: subprocess.Popen[bytes]) -> tuple[int, bytes]:
    """SIGINT the bridge, wait for it, and return its exit code and stderr."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        code = await asyncio.to_thread(process.wait, 20)
    finally:
        if process.poll() is None:
            process.kill()
    _, stderr = process.communicate(timeout=10)
    return code, stderr


# ------------------------------------------------------------------------------------------ real servers


async def test_a_bridge_with_a_private_ca_trades_through_a_gateway_serving_tls(stack: Stack, tmp_path: Path) -> None:
    """`signalhub bridge --ca-file` connects to a gateway serving TLS (a certificate for 127.0.0.1 signed by
    a CA made here), receives an AUTO signal's instruction and fills it; the gateway records the fill."""
    identity = make_server_identity(tmp_path / "tls")
    await subscribe(stack.backoffice_channel, stack.user, stack.producer, bpb.SUBSCRIPTION_MODE_AUTO)
    async with gateway(stack.res, gateway_tls=identity.settings("GATEWAY")) as (server, _):
        assert server.tls
        command = [sys.executable, "-m", "backoffice.cli", "bridge", "--device-id", str(stack.device.id)]
        command += ["--gateway", server.bound_address, "--ca-file", str(identity.ca_certificate)]
        command += ["--paper-latency-ms", "1", "--ledger", str(tmp_path / "ledger.db")]
        process = spawn(
            command, env=_bridge_env(stack.device.secret), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            await eventually(
                lambda: server.registry.get(stack.device.id) is not None or process.poll() is not None,
                what="the bridge to connect over TLS",
            )
            assert process.poll() is None, "the bridge exited"
            async with stack.producer_client() as signals:
                await signals.submit_signal("XAUUSD", "buy", entry_price="2034.15")

            async def filled() -> bool:
                async with stack.res.sessions() as session:
                    states = await session.scalars(select(Delivery.state).where(Delivery.device_id == stack.device.id))
                    return list(states) == [DeliveryState.FILLED]

            await eventually(filled, what="the gateway to record the fill")
        finally:
            code, stderr = await _stop(process)
    assert code == 0, stderr.decode()
    [starting] = [line for line in _json_lines(stderr) if line["message"] == "bridge starting"]
    assert starting["tls"] is True
    assert not [line for line in _json_lines(stderr) if line["level"] == "WARNING"]


async def test_a_gateway_serving_tls_refuses_plaintext_and_unknown_authorities(res: Resources, tmp_path: Path) -> None:
    """What the bridge test above relies on: only a client trusting the gateway's CA gets through."""
    identity = make_server_identity(tmp_path / "tls")
    async with gateway(res, gateway_tls=identity.settings("GATEWAY")) as (server, _):
        assert (
            await health(server.bound_address, tls=True, root_certificates=identity.ca_certificate.read_bytes())
            == "SERVING"
        )
        assert (await health(server.bound_address, deadline=2.0)).startswith("unreachable")
        assert (await health(server.bound_address, tls=True, root_certificates=None)).startswith("unreachable")


async def test_a_gateway_that_requires_tls_serves_only_with_its_certificate(res: Resources, tmp_path: Path) -> None:
    required = ServerTls("GATEWAY", required=True)
    settings = dataclasses.replace(res.settings, gateway_tls=required)
    with pytest.raises(TlsUnavailable, match="SIGNALHUB_GATEWAY_REQUIRE_TLS is set"):
        GatewayServer(dataclasses.replace(res, settings=settings), "127.0.0.1:0")

    identity = make_server_identity(tmp_path / "tls")
    async with gateway(res, gateway_tls=identity.settings("GATEWAY", required=True)) as (server, _):
        assert (
            await health(server.bound_address, tls=True, root_certificates=identity.ca_certificate.read_bytes())
            == "SERVING"
        )


async def test_signalhub_serve_gateway_requiring_tls_without_cert_and_key_exits_with_one_line(
    settings: Settings, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{free_port()}"
    env = server_env(settings.database_url, settings.redis_url, gateway_address=address, gateway_require_tls="1")
    command = [sys.executable, "-m", "backoffice.cli", "serve", "gateway"]
    process = spawn(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        code = await asyncio.to_thread(process.wait, 60)
    finally:
        if process.poll() is None:
            process.kill()
    _, stderr = process.communicate(timeout=10)
    assert code != 0
    assert stderr.decode().splitlines() == [
        "signalhub: SIGNALHUB_GATEWAY_REQUIRE_TLS is set, but SIGNALHUB_GATEWAY_TLS_CERT and "
        "SIGNALHUB_GATEWAY_TLS_KEY are not: refusing to serve plaintext"
    ]
    assert (await health(address)).startswith("unreachable")


# -------------------------------------------------------------------------------------- the bridge's side


def _refuse_to_connect(*_: Any, **__: Any) -> NoReturn:
    raise AssertionError("a channel was opened")


def test_plaintext_beyond_loopback_is_refused_before_any_connection(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(SECRET_ENV, SHOWN)
    monkeypatch.setattr(grpc.aio, "insecure_channel", _refuse_to_connect)
    monkeypatch.setattr(grpc.aio, "secure_channel", _refuse_to_connect)
    monkeypatch.setattr(bridge_cli, "BridgeClient", _refuse_to_connect)
    ledger = tmp_path / "ledger.db"
    argv = ["bridge", "--device-id", "d", "--gateway", "127.0.0.1:50052", "--gateway", REMOTE]
    with pytest.raises(SystemExit) as info:
        cli.main([*argv, "--ledger", str(ledger)])
    message = str(info.value.code)
    assert message.startswith(f"signalhub bridge: refusing plaintext to {REMOTE} (not a loopback address)")
    assert "--tls" in message and "--ca-file" in message and "--insecure" in message
    assert "127.0.0.1" not in message and "\n" not in message
    assert not ledger.exists()


async def test_a_refused_bridge_process_exits_non_zero_with_one_line(tmp_path: Path) -> None:
    """As a process: one line on stderr, no traceback. 0.0.0.0 is not loopback by the bridge's rule, and
    were it ever contacted, it would be this machine."""
    address = f"0.0.0.0:{free_port()}"
    command = [sys.executable, "-m", "backoffice.cli", "bridge", "--device-id", "d", "--gateway", address]
    process = spawn(command, env=_bridge_env(SHOWN), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        code = await asyncio.to_thread(process.wait, 30)
    finally:
        if process.poll() is None:
            process.kill()
    _, stderr = process.communicate(timeout=10)
    assert code == 1
    [line] = stderr.decode().splitlines()
    assert line.startswith(f"signalhub bridge: refusing plaintext to {address}")
    assert not (tmp_path / ".signalhub" / "bridge-d.db").exists()


async def test_insecure_warns_once_and_still_connects(tmp_path: Path) -> None:
    device_id = str(uuid.uuid4())
    scripted = ScriptedGateway(device_id, SECRET)
    await scripted.start()
    command = [sys.executable, "-m", "backoffice.cli", "bridge", "--device-id", device_id, "--insecure"]
    command += ["--gateway", scripted.address, "--paper-latency-ms", "1"]
    process = spawn(command, env=_bridge_env(SHOWN), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        await eventually(lambda: bool(scripted.of_kind("hello")), what="the bridge to connect")
    finally:
        code, stderr = await _stop(process)
        await scripted.stop()
    assert code == 0, stderr.decode()
    warnings = [line for line in _json_lines(stderr) if line["level"] == "WARNING"]
    assert len(warnings) == 1
    assert "read and alter" in warnings[0]["message"] and warnings[0]["gateways"] == [scripted.address]


def _options(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="signalhub bridge")
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_channel_options_decide_tls(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No connection here: only the configuration each set of options makes."""
    remote = Credentials("d", SECRET, (REMOTE,))
    local = Credentials("d", SECRET, ("127.0.0.1:50052", "[::1]:50052", "localhost:50052"))
    ca_file = make_server_identity(tmp_path / "tls").ca_certificate

    plain = build_config(_options(), local)
    assert (plain.tls, plain.insecure) == (False, False)
    with pytest.raises(PlaintextRefused) as info:
        build_config(_options(), remote)
    assert info.value.addresses == (REMOTE,)

    tls = build_config(_options("--tls"), remote)
    assert (tls.tls, tls.root_certificates) == (True, None)
    private = build_config(_options("--ca-file", str(ca_file)), local)  # TLS to loopback when asked
    assert (private.tls, private.root_certificates) == (True, ca_file.read_bytes())

    with caplog.at_level(logging.WARNING, "signalhub.bridge"):
        insecure = build_config(_options("--insecure"), remote)
    assert (insecure.tls, insecure.insecure) == (False, True)
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "read and alter" in warning.getMessage()

    with pytest.raises(bridge_cli.ChannelOptionsError, match="cannot be combined"):
        build_config(_options("--insecure", "--tls"), remote)
    with pytest.raises(bridge_cli.ChannelOptionsError, match="cannot read --ca-file"):
        build_config(_options("--ca-file", str(tmp_path / "absent.pem")), remote)


def test_the_sdk_refuses_plaintext_beyond_loopback_unless_insecure(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.db"
    with pytest.raises(PlaintextRefused) as info:
        BridgeConfig("d", ("127.0.0.1:1", REMOTE), ledger)
    assert info.value.addresses == (REMOTE,)
    assert BridgeConfig("d", (REMOTE,), ledger, tls=True).tls
    assert BridgeConfig("d", (REMOTE,), ledger, insecure=True).insecure
    assert not BridgeConfig("d", ("127.0.0.1:1",), ledger).tls


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:50052", True),
        ("127.255.0.1:50052", True),
        ("[::1]:50052", True),
        ("localhost:50052", True),
        ("0.0.0.0:50052", False),
        ("[::]:50052", False),
        ("[::ffff:10.0.0.1]:50052", False),
        ("192.168.1.2:50052", False),
        ("localhost.example.com:50052", False),
        ("127.0.0.1.example.com:50052", False),
        ("gateway.example.com:50052", False),
    ],
)
def test_which_gateway_addresses_are_loopback(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback
