"""The README's walk-through as a person does it: `signalhub up`, `signalhub bridge --executor paper`,
`signalhub producer submit`, and the signal ends as a paper fill visible through ExecutionService."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import backoffice_pb2_grpc as rpc
from tests.conftest import REDIS_URL, run_module, scratch_database

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def demo_database() -> Iterator[str]:
    with scratch_database("signalhub_demo") as url:
        yield url


def _start(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return run_module("backoffice.cli", *args, env=env, cwd=cwd)


def _readme_example(containing: str) -> str:
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    (block,) = [block for block in blocks if containing in block]
    return str(block)


def _readme_command(containing: str) -> list[str]:
    """The README's walk-through command on the line with ``containing``: its arguments after signalhub."""
    lines = _readme_example(containing).replace("\\\n", " ").splitlines()
    (line,) = [line for line in lines if containing in line]
    program, *args = shlex.split(line, comments=True)
    assert program == ".venv/bin/signalhub"
    return args


def _run_readme_grpcurl_example(env: dict[str, str], cwd: Path, demo: dict[str, str]) -> None:
    """The README's GetSignalExecution example reads only keys demo.json has and, where grpcurl and jq
    are installed (they are optional), runs as written and finds the demo device."""
    example = _readme_example("ExecutionService/GetSignalExecution")
    keys = set(re.findall(r"jq -r \.(\w+) \.signalhub/demo\.json", example))
    assert keys and keys <= set(demo)
    if not (shutil.which("grpcurl", path=env.get("PATH")) and shutil.which("jq", path=env.get("PATH"))):
        return
    script = example.replace(".venv/bin/signalhub", f"{sys.executable} -m backoffice.cli")
    ran = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    # Parsed with protobuf's JSON mapping, which takes field names as written or in lowerCamelCase.
    (device,) = json_format.Parse(ran.stdout, pb.SignalExecution()).devices
    assert device.device_id == demo["device_id"] and device.instrument == "GOLD.m"


def _stop(process: subprocess.Popen[str]) -> tuple[str, str]:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        return process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate()


def test_a_demo_signal_goes_from_producer_to_paper_fill(tmp_path: Path, demo_database: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNALHUB_")}
    env.update(
        {
            "SIGNALHUB_DATABASE_URL": demo_database,
            "SIGNALHUB_REDIS_URL": REDIS_URL,
            "SIGNALHUB_BACKOFFICE_ADDRESS": "127.0.0.1:0",
            "SIGNALHUB_GATEWAY_ADDRESS": "127.0.0.1:0",
            "SIGNALHUB_METRICS_ADDRESS": "127.0.0.1:0",
            "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'proto'}",
        }
    )
    demo_file = tmp_path / ".signalhub" / "demo.json"
    up = _start(["up"], env, tmp_path)
    bridge = None
    try:
        deadline = time.monotonic() + 60
        while not demo_file.exists():
            assert up.poll() is None, _stop(up)
            assert time.monotonic() < deadline, "signalhub up did not write demo.json"
            time.sleep(0.2)
        demo = json.loads(demo_file.read_text())
        bridge = _start(["bridge", "--executor", "paper"], env, tmp_path)
        submitted = subprocess.run(
            [sys.executable, "-m", "backoffice.cli", *_readme_command("# terminal 3")],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert submitted.returncode == 0, submitted.stderr
        signal_id = json.loads(submitted.stdout)["id"]
        user = (("authorization", f"Bearer {demo['user_token']}"),)
        with grpc.insecure_channel(demo["backoffice"]) as channel:
            stub = rpc.ExecutionServiceStub(channel)
            deadline = time.monotonic() + 60
            while True:
                execution = stub.GetSignalExecution(pb.GetSignalExecutionRequest(signal_id=signal_id), metadata=user)
                states = [d.state for d in execution.devices]
                if states == [pb.DELIVERY_STATE_FILLED]:
                    break
                assert bridge.poll() is None, _stop(bridge)
                assert time.monotonic() < deadline, f"not filled: {execution}"
                time.sleep(0.3)
        (device,) = execution.devices
        assert device.device_id == demo["device_id"] and device.instrument == "GOLD.m"
        assert device.fill_price and device.broker_ticket and device.position_id
        assert {pb.DELIVERY_STATE_RECEIVED, pb.DELIVERY_STATE_PLACED, pb.DELIVERY_STATE_FILLED} <= {
            latency.stage for latency in device.latencies
        }
        _run_readme_grpcurl_example(env, tmp_path, demo)
    finally:
        outputs = [_stop(bridge)] if bridge is not None else []
        outputs.append(_stop(up))
    for out, err in outputs:
        for secret in (demo["device_secret"], demo["producer_secret"], demo["user_token"]):
            assert secret not in out and secret not in err
