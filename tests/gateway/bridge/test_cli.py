"""`signalhub bridge` (gateway/bridge/cli.py): credentials, refusing secrets on the command line, and a real
run until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from backoffice.cli import commands as cli
from gateway.bridge.cli import (
    SECRET_ENV,
    Credentials,
    CredentialsError,
    add_arguments,
    build_config,
    load_credentials,
)
from signalhub.protocol import signing
from signalhub.v1 import gateway_pb2 as pb
from tests.gateway.bridge.scripted import REPO, ScriptedGateway, delivery, spawn
from tests.gateway.support import eventually

SECRET = bytes(range(100, 132))
SHOWN = signing.format_secret(SECRET)


def _write(path: Path, data: dict[str, str], mode: int = 0o600) -> Path:
    path.write_text(json.dumps(data))
    path.chmod(mode)
    return path


def test_credentials_from_the_demo_file(tmp_path: Path) -> None:
    device_id = str(uuid.uuid4())
    path = _write(tmp_path / "demo.json", {"device_id": device_id, "device_secret": SHOWN, "gateway": "127.0.0.1:6000"})
    found = load_credentials(path, None, None, {})
    assert (found.device_id, found.secret, found.gateways) == (device_id, SECRET, ("127.0.0.1:6000",))
    several = load_credentials(path, None, ["10.0.0.1:1", "10.0.0.2:2"], {})
    assert several.gateways == ("10.0.0.1:1", "10.0.0.2:2")
    assert SHOWN not in repr(found)


def test_credentials_from_device_id_and_environment(tmp_path: Path) -> None:
    found = load_credentials(None, "dev-1", None, {SECRET_ENV: SHOWN})
    assert (found.device_id, found.secret, found.gateways) == ("dev-1", SECRET, ("127.0.0.1:50052",))
    with pytest.raises(CredentialsError, match=SECRET_ENV):
        load_credentials(None, "dev-1", None, {})
    with pytest.raises(CredentialsError, match="not both"):
        load_credentials(tmp_path / "x.json", "dev-1", None, {SECRET_ENV: SHOWN})


def test_bad_credentials_never_echo_the_secret(tmp_path: Path) -> None:
    broken = SHOWN[:-1] + "!"
    with pytest.raises(CredentialsError) as info:
        load_credentials(None, "dev-1", None, {SECRET_ENV: broken})
    assert broken not in str(info.value) and "malformed" in str(info.value)
    path = _write(tmp_path / "demo.json", {"device_id": "d", "device_secret": broken})
    with pytest.raises(CredentialsError) as info:
        load_credentials(path, None, None, {})
    assert broken not in str(info.value)
    with pytest.raises(CredentialsError, match="no credentials file"):
        load_credentials(tmp_path / "absent.json", None, None, {})
    with pytest.raises(CredentialsError, match="HOST:PORT"):
        load_credentials(None, "d", ["nohost"], {SECRET_ENV: SHOWN})


def test_readable_credentials_file_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _write(tmp_path / "demo.json", {"device_id": "d", "device_secret": SHOWN}, mode=0o644)
    with caplog.at_level(logging.WARNING, "signalhub.bridge"):
        load_credentials(path, None, None, {})
    assert any("readable by other users" in r.getMessage() for r in caplog.records)


def test_a_secret_on_the_command_line_is_refused_without_echo(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="signalhub bridge")
    add_arguments(parser)
    for flag in ("--secret", "--device-secret"):
        with pytest.raises(SystemExit) as info:
            parser.parse_args([flag, SHOWN])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert SECRET_ENV in err and SHOWN not in err


def test_the_account_state_interval_is_an_option(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="signalhub bridge")
    add_arguments(parser)
    credentials = Credentials("d", SECRET, ("127.0.0.1:50052",))
    assert build_config(parser.parse_args([]), credentials).account_state_interval == 2.0
    chosen = parser.parse_args(["--account-state-interval", "0.5"])
    assert build_config(chosen, credentials).account_state_interval == 0.5
    for bad in ("0", "-1", "soon", "inf"):
        with pytest.raises(SystemExit) as info:
            parser.parse_args(["--account-state-interval", bad])
        assert info.value.code == 2 and "--account-state-interval" in capsys.readouterr().err


def test_mt5_off_windows_is_a_clear_error(tmp_path: Path) -> None:
    if sys.platform == "win32":
        pytest.skip("the MetaTrader5 package exists on Windows")
    path = _write(tmp_path / "demo.json", {"device_id": "d", "device_secret": SHOWN})
    with pytest.raises(SystemExit) as info:
        cli.main(["bridge", "--executor", "mt5", "--credentials", str(path)])
    assert str(info.value.code) == "signalhub bridge: MetaTrader5 is only available on Windows: use --executor paper"


async def test_runs_until_ctrl_c_with_json_logs_and_no_secret(tmp_path: Path) -> None:
    """`signalhub bridge` as a process: it fills a delivery, stops cleanly on SIGINT, logs JSON lines that
    never hold the secret, and keeps its ledger in .signalhub by default."""
    device_id = str(uuid.uuid4())
    gateway = ScriptedGateway(device_id, SECRET)
    await gateway.start()
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'proto'}",
        SECRET_ENV: SHOWN,
    }
    command = [sys.executable, "-m", "backoffice.cli", "bridge", "--device-id", device_id]
    command += ["--gateway", gateway.address, "--paper-latency-ms", "1"]
    process = spawn(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        await eventually(lambda: bool(gateway.of_kind("hello")), what="the bridge to connect")
        instruction = delivery()
        gateway.push(instruction)
        await eventually(lambda: bool(gateway.fills(instruction.delivery.delivery_id)))
        await eventually(lambda: len(gateway.acks(instruction.delivery.delivery_id)) == 2)
        assert [a.stage for a in gateway.acks(instruction.delivery.delivery_id)] == [
            pb.ACK_STAGE_RECEIVED,
            pb.ACK_STAGE_PLACED,
        ]
        # A second bridge on the same ledger (the default one, here) stops at once with one line.
        second = await asyncio.to_thread(
            subprocess.run, command, env=env, cwd=tmp_path, capture_output=True, timeout=60
        )
        assert second.returncode == 1
        assert second.stderr.decode().strip().splitlines()[-1].startswith("signalhub bridge: the ledger ")
        assert "in use by another bridge (pid " in second.stderr.decode()
        process.send_signal(signal.SIGINT)
        code = await asyncio.to_thread(process.wait, 20)
    finally:
        if process.poll() is None:
            process.kill()
        await gateway.stop()
    stdout, stderr = process.communicate(timeout=10)
    assert code == 0, stderr.decode()
    lines = [json.loads(line) for line in stderr.decode().splitlines() if line.strip()]
    messages = [line["message"] for line in lines]
    assert "bridge starting" in messages and "delivery filled" in messages and "bridge stopped" in messages
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    started = messages.index("bridge starting")
    assert {line.get("device_id") for line in lines[started:]} == {device_id}  # on every line of the bridge
    output = stdout + stderr
    assert SHOWN.encode() not in output and SHOWN[4:].encode() not in output
    assert (tmp_path / ".signalhub" / f"bridge-{device_id}.db").exists()  # the default ledger
