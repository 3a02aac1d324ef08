"""The README's walk-through as a person does it: `signalhub up`, `signalhub bridge --executor paper`,
`signalhub producer submit`, and the signal ends as a paper fill visible through ExecutionService; the
console `up` started answers at the URL it printed; each server's log is in its own file; and a second
`up` on the same addresses says in one line that they are taken."""

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
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import backoffice_pb2_grpc as rpc
from tests.conftest import REDIS_URL, run_module, scratch_database

ROOT = Path(__file__).resolve().parents[1]
GRPCURL_EXAMPLE = "ExecutionService/GetSignalExecution"


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


def _stop(process: subprocess.Popen[str]) -> tuple[str, str]:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        return process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate()


@dataclass(frozen=True)
class Demo:
    """The README's walk-through, run once for the module: `signalhub up` and a paper bridge serving, and
    the demo signal the README's producer command submitted, filled."""

    env: dict[str, str]
    cwd: Path
    credentials: dict[str, str]
    execution: pb.SignalExecution


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """Runs the walk-through; on the way out, stops both processes and checks that neither printed a
    secret of the demo file."""
    cwd = tmp_path_factory.mktemp("demo")
    with scratch_database("signalhub_demo") as database_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNALHUB_")}
        env.update(
            {
                "SIGNALHUB_DATABASE_URL": database_url,
                "SIGNALHUB_REDIS_URL": REDIS_URL,
                "SIGNALHUB_BACKOFFICE_ADDRESS": "127.0.0.1:0",
                "SIGNALHUB_GATEWAY_ADDRESS": "127.0.0.1:0",
                "SIGNALHUB_METRICS_ADDRESS": "127.0.0.1:0",
                "SIGNALHUB_CONSOLE_ADDRESS": "127.0.0.1:0",
                "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'proto'}",
            }
        )
        demo_file = cwd / ".signalhub" / "demo.json"
        up = _start(["up"], env, cwd)
        bridge = None
        credentials: dict[str, str] = {}
        try:
            deadline = time.monotonic() + 60
            while not demo_file.exists():
                assert up.poll() is None, _stop(up)
                assert time.monotonic() < deadline, "signalhub up did not write demo.json"
                time.sleep(0.2)
            credentials = json.loads(demo_file.read_text())
            bridge = _start(["bridge", "--executor", "paper"], env, cwd)
            execution = _submit_and_wait_for_the_fill(env, cwd, credentials, bridge)
            yield Demo(env, cwd, credentials, execution)
        finally:
            outputs = [_stop(bridge)] if bridge is not None else []
            outputs.append(_stop(up))
        for out, err in outputs:
            for key in ("device_secret", "producer_secret", "user_token"):
                assert credentials[key] not in out and credentials[key] not in err, f"{key} was printed"


def _submit_and_wait_for_the_fill(
    env: dict[str, str], cwd: Path, credentials: dict[str, str], bridge: subprocess.Popen[str]
) -> pb.SignalExecution:
    submitted = subprocess.run(
        [sys.executable, "-m", "backoffice.cli", *_readme_command("# terminal 3")],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert submitted.returncode == 0, submitted.stderr
    signal_id = json.loads(submitted.stdout)["id"]
    user = (("authorization", f"Bearer {credentials['user_token']}"),)
    with grpc.insecure_channel(credentials["backoffice"]) as channel:
        stub = rpc.ExecutionServiceStub(channel)
        deadline = time.monotonic() + 60
        while True:
            execution = stub.GetSignalExecution(pb.GetSignalExecutionRequest(signal_id=signal_id), metadata=user)
            if [d.state for d in execution.devices] == [pb.DELIVERY_STATE_FILLED]:
                return execution
            assert bridge.poll() is None, _stop(bridge)
            assert time.monotonic() < deadline, f"not filled: {execution}"
            time.sleep(0.3)


def test_a_demo_signal_goes_from_producer_to_paper_fill(demo: Demo) -> None:
    (device,) = demo.execution.devices
    assert device.device_id == demo.credentials["device_id"] and device.instrument == "GOLD.m"
    assert device.fill_price and device.broker_ticket and device.position_id
    assert {pb.DELIVERY_STATE_RECEIVED, pb.DELIVERY_STATE_PLACED, pb.DELIVERY_STATE_FILLED} <= {
        latency.stage for latency in device.latencies
    }


def test_the_readme_grpcurl_example_reads_only_keys_the_demo_file_has(demo: Demo) -> None:
    keys = set(re.findall(r"jq -r \.(\w+) \.signalhub/demo\.json", _readme_example(GRPCURL_EXAMPLE)))
    assert keys and keys <= set(demo.credentials)


def test_the_readme_grpcurl_example_runs_as_written(demo: Demo) -> None:
    """grpcurl and jq are optional tools for looking at the servers by hand (the README says so)."""
    missing = [tool for tool in ("grpcurl", "jq") if not shutil.which(tool, path=demo.env.get("PATH"))]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed: the README's optional grpcurl example is not run")
    script = _readme_example(GRPCURL_EXAMPLE).replace(".venv/bin/signalhub", f"{sys.executable} -m backoffice.cli")
    ran = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        env=demo.env,
        cwd=demo.cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    # Parsed with protobuf's JSON mapping, which takes field names as written or in lowerCamelCase.
    (device,) = json_format.Parse(ran.stdout, pb.SignalExecution()).devices
    assert device.device_id == demo.credentials["device_id"] and device.instrument == "GOLD.m"


def test_up_serves_the_console_at_the_url_it_printed(demo: Demo) -> None:
    url = demo.credentials["console"]
    with urllib.request.urlopen(url + "signin", timeout=10) as page:  # noqa: S310 - the test's own loopback URL
        body = page.read().decode()
        assert page.status == 200 and "Content-Security-Policy" in page.headers
    assert "API token" in body and demo.credentials["user_token"] not in body


def test_up_writes_each_servers_json_log_owner_only(demo: Demo) -> None:
    logs = demo.cwd / ".signalhub" / "logs"
    lines = [json.loads(line) for line in (logs / "backoffice.log").read_text().splitlines() if line.strip()]
    assert any(line["logger"] == "signalhub.rpc" for line in lines)  # the calls the walk-through made
    gateway = (logs / "gateway.log").read_text()
    assert "signalhub.gateway" in gateway and "signalhub.rpc" not in gateway
    for path in logs.iterdir():
        assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
        text = path.read_text()
        for key in ("device_secret", "producer_secret", "user_token", "admin_token"):
            assert demo.credentials[key] not in text, f"{key} in {path.name}"


def test_a_second_up_on_the_same_addresses_says_they_are_taken(demo: Demo, tmp_path: Path) -> None:
    env = {**demo.env, "SIGNALHUB_BACKOFFICE_ADDRESS": demo.credentials["backoffice"]}
    second = subprocess.run(
        [sys.executable, "-m", "backoffice.cli", "up", "--state-dir", str(tmp_path / "state")],
        env=env,
        cwd=demo.cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1
    assert second.stderr.strip() == (
        f"signalhub: {demo.credentials['backoffice']} (back office) is taken by another signalhub "
        "(is `signalhub up` running already?); stop it, or set the address variables"
    )
