"""`signalhub producer ...` as a person runs it: a real process against this run's back office.

The back office serves on this test's event loop, so the command runs as an asyncio subprocess (a blocking
``subprocess.run`` would stop the server it is waiting for).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from backoffice import models
from backoffice.bootstrap import Resources
from backoffice.platform.serving import Server
from signalhub.protocol import signing
from tests.conftest import KeyCredentials, free_port

ROOT = Path(__file__).resolve().parents[3]
SECRET_ENV = "SIGNALHUB_PRODUCER_SECRET"


@dataclass(frozen=True)
class Done:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> dict[str, Any]:
        assert self.returncode == 0, self.stderr
        lines = self.stdout.strip().splitlines()
        assert len(lines) == 1, self.stdout  # one JSON object on one line
        value = json.loads(lines[0])
        assert isinstance(value, dict)
        return value


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNALHUB_")}
    path = [str(ROOT), str(ROOT / "proto")]
    if os.environ.get("PYTHONPATH"):
        path.append(os.environ["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(path)
    env.update(extra)
    return env


async def signalhub(*args: str, cwd: Path, env: dict[str, str]) -> Done:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "backoffice.cli",
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return Done(process.returncode, out.decode(), err.decode())


def as_producer(producer: KeyCredentials, server: Server) -> tuple[list[str], dict[str, str]]:
    """Arguments and environment for `--producer-id` with the secret in the environment."""
    return ["--producer-id", str(producer.id), "--target", server.bound_address], _env(**{SECRET_ENV: producer.secret})


def assert_no_secret(done: Done, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in done.stdout and secret not in done.stderr
        assert secret[4:] not in done.stdout and secret[4:] not in done.stderr


async def signals_of(res: Resources, producer: KeyCredentials) -> list[models.Signal]:
    async with res.sessions() as session:
        rows = await session.execute(select(models.Signal).where(models.Signal.producer_id == producer.id))
        return list(rows.scalars().all())


async def test_submit_prints_the_signal(
    backoffice_server: Server, producer: KeyCredentials, res: Resources, tmp_path: Path
) -> None:
    """Every submit option reaches the stored signal, printed as one JSON line; the same request again
    prints the same signal, and the same request id with another signal time is refused."""
    who, env = as_producer(producer, backoffice_server)
    request_id = str(uuid.uuid4())
    signal_time = datetime.now(UTC).replace(microsecond=0).isoformat()
    args = [
        "producer",
        "submit",
        *who,
        "--instrument",
        "XAUUSD",
        "--side",
        "buy",
        "--entry",
        "2034.15",
        "--stop-loss",
        "2020",
        "--take-profit",
        "2050",
        "--expire-seconds",
        "120",
        "--payload",
        '{"strategy": "breakout", "tags": ["gold"]}',
        "--request-id",
        request_id,
        "--signal-time",
        signal_time,
    ]
    done = await signalhub(*args, cwd=tmp_path, env=env)
    signal = done.json()
    assert signal["producer_id"] == str(producer.id) and signal["request_id"] == request_id
    assert (signal["instrument"], signal["side"], signal["status"]) == ("XAUUSD", "SIDE_BUY", "SIGNAL_STATUS_OPEN")
    assert (signal["entry_price"], signal["stop_loss"], signal["take_profit"]) == ("2034.15", "2020", "2050")
    assert signal["payload"] == {"strategy": "breakout", "tags": ["gold"]}
    assert "Traceback" not in done.stderr
    assert_no_secret(done, producer.secret)

    again = await signalhub(*args, cwd=tmp_path, env=env)  # the same request again: the same signal
    assert again.json()["id"] == signal["id"]
    moved = await signalhub(*args[:-2], cwd=tmp_path, env=env)  # the same id, a new signal_time: a conflict
    assert moved.returncode == 1 and moved.stderr.startswith("signalhub: ALREADY_EXISTS")
    assert "Traceback" not in moved.stderr
    assert [str(s.id) for s in await signals_of(res, producer)] == [signal["id"]]


async def test_cancel_and_quote(backoffice_server: Server, producer: KeyCredentials, tmp_path: Path) -> None:
    who, env = as_producer(producer, backoffice_server)
    submitted = await signalhub(
        "producer", "submit", *who, "--instrument", "EURUSD", "--side", "SELL", cwd=tmp_path, env=env
    )
    signal_id = submitted.json()["id"]
    cancelled = await signalhub(
        "producer", "cancel", *who, "--signal-id", signal_id, "--reason", "news", cwd=tmp_path, env=env
    )
    assert (cancelled.json()["id"], cancelled.json()["status"]) == (signal_id, "SIGNAL_STATUS_CANCELLED")
    assert cancelled.json()["cancel_reason"] == "news"
    quoted = await signalhub(
        "producer", "quote", *who, "--instrument", "EURUSD", "--bid", "1.0849", "--ask", "1.0851", cwd=tmp_path, env=env
    )
    assert quoted.json() == {"accepted_count": 1}


async def test_credentials_from_a_file_and_the_default_demo_json(
    backoffice_server: Server, producer: KeyCredentials, tmp_path: Path
) -> None:
    """--credentials names a file; without it, .signalhub/demo.json in the working directory is read."""
    credentials = {
        "backoffice": backoffice_server.bound_address,
        "gateway": "127.0.0.1:1",
        "producer_id": str(producer.id),
        "producer_secret": producer.secret,
    }
    explicit = tmp_path / "producer.json"
    explicit.write_text(json.dumps(credentials))
    done = await signalhub(
        "producer", "submit", "--credentials", str(explicit), "--instrument", "XAUUSD", "--side", "buy",
        cwd=tmp_path, env=_env(),
    )  # fmt: skip
    assert done.json()["producer_id"] == str(producer.id)
    assert_no_secret(done, producer.secret)

    state = tmp_path / ".signalhub"
    state.mkdir()
    (state / "demo.json").write_text(json.dumps(credentials))
    done = await signalhub(
        "producer", "quote", "--instrument", "XAUUSD", "--bid", "2034.1", "--ask", "2034.3", cwd=tmp_path, env=_env()
    )
    assert done.json() == {"accepted_count": 1}
    assert_no_secret(done, producer.secret)


async def test_a_bad_secret_is_one_line_exit_1_and_never_shown(
    backoffice_server: Server, producer: KeyCredentials, tmp_path: Path
) -> None:
    wrong = signing.format_secret(bytes(range(32)))
    who, _ = as_producer(producer, backoffice_server)
    done = await signalhub(
        "producer", "submit", *who, "--instrument", "XAUUSD", "--side", "buy", "--entry", "2034.15",
        cwd=tmp_path, env=_env(**{SECRET_ENV: wrong}),
    )  # fmt: skip
    assert done.returncode == 1
    assert "UNAUTHENTICATED SIGNATURE_INVALID" in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert done.stdout == ""
    assert_no_secret(done, wrong, producer.secret)


async def test_a_malformed_secret_is_refused_without_echoing_it(
    backoffice_server: Server, producer: KeyCredentials, tmp_path: Path
) -> None:
    malformed = "shs_" + "Z" * 40
    who, _ = as_producer(producer, backoffice_server)
    done = await signalhub(
        "producer", "submit", *who, "--instrument", "XAUUSD", "--side", "buy",
        cwd=tmp_path, env=_env(**{SECRET_ENV: malformed}),
    )  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "secret" in done.stderr and malformed not in done.stderr and "Z" * 40 not in done.stderr


async def test_a_rejected_signal_names_the_field(
    backoffice_server: Server, producer: KeyCredentials, res: Resources, tmp_path: Path
) -> None:
    who, env = as_producer(producer, backoffice_server)
    done = await signalhub(
        "producer", "submit", *who, "--instrument", "XAUUSD", "--side", "buy", "--entry", "2034.15",
        "--stop-loss", "2040", cwd=tmp_path, env=env,
    )  # fmt: skip
    assert done.returncode == 1 and done.stdout == ""
    assert "INVALID_ARGUMENT" in done.stderr and "stop_loss" in done.stderr and "Traceback" not in done.stderr
    assert await signals_of(res, producer) == []


async def test_without_credentials_it_says_what_to_do(
    backoffice_server: Server, producer: KeyCredentials, tmp_path: Path
) -> None:
    done = await signalhub(
        "producer", "quote", "--instrument", "X1", "--bid", "1", "--ask", "2", cwd=tmp_path, env=_env()
    )
    assert done.returncode == 1 and "no producer credentials" in done.stderr and "Traceback" not in done.stderr
    done = await signalhub(
        "producer", "quote", "--producer-id", str(producer.id), "--target", backoffice_server.bound_address,
        "--instrument", "X1", "--bid", "1", "--ask", "2", cwd=tmp_path, env=_env(),
    )  # fmt: skip
    assert done.returncode == 1 and SECRET_ENV in done.stderr and "Traceback" not in done.stderr


async def test_an_unreachable_back_office_is_unavailable_after_retries(
    producer: KeyCredentials, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there, and nothing else in this run is handed it
    done = await signalhub(
        "producer", "submit", "--producer-id", str(producer.id), "--target", f"127.0.0.1:{port}",
        "--instrument", "XAUUSD", "--side", "buy", cwd=tmp_path, env=_env(**{SECRET_ENV: producer.secret}),
    )  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("signalhub: UNAVAILABLE") and "after 5 attempts" in done.stderr
    assert_no_secret(done, producer.secret)
