"""``signalhub affiliate ...`` as a person runs it: a real process calling this run's back office with a
bearer token from the environment, and ``check`` over this run's database."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc

from backoffice.bootstrap import Resources
from backoffice.platform.config import Settings
from backoffice.platform.serving import Server
from tests.backoffice.affiliates import support
from tests.backoffice.cli.test_commands import ROOT, _env
from tests.conftest import UserCredentials, make_user


async def signalhub(*args: str, env: dict[str, str], cwd: Path = ROOT) -> tuple[int, str, str]:
    """Run the command without blocking this event loop, which serves the back office it calls."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "backoffice.cli", "affiliate", *args, env=env, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_affiliate_commands(
    settings: Settings,
    res: Resources,
    backoffice_server: Server,
    backoffice_channel: grpc.aio.Channel,
    admin: UserCredentials,
    tmp_path: Path,
) -> None:
    """An affiliate's commands, an admin's, refusals as one line, and check; no token is ever printed."""
    me = await make_user(res)
    target = ("--target", backoffice_server.bound_address)
    as_me = _env(settings, SIGNALHUB_API_TOKEN=me.token)
    code, out, err = await signalhub("register", *target, env=as_me, cwd=tmp_path)
    assert code == 0, err
    affiliate = json.loads(out)
    assert affiliate["user_id"] == str(me.id)
    code, out, _ = await signalhub("link", *target, env=as_me, cwd=tmp_path)
    assert json.loads(out)["url"].endswith(f"?ref={affiliate['referral_code']}")
    trader = await support.make_trader(
        backoffice_channel, res, admin, support.Affiliate(me, affiliate["id"], affiliate["referral_code"])
    )
    (fill,) = await support.record_fills(res, trader, ["0.4"])
    await support.accrue(res)
    code, out, _ = await signalhub("commissions", "--status", "pending", *target, env=as_me, cwd=tmp_path)
    (commission,) = json.loads(out)["commissions"]
    assert (commission["amount"], commission["execution_event_id"]) == ("2.00", str(fill))
    method = tmp_path / "method.json"
    method.write_text(json.dumps({"method": "bank", "iban": "DE89370400440532013000"}))
    code, out, err = await signalhub(
        "request-payout", "--amount", "50.00", "--method-file", str(method), *target, env=as_me, cwd=tmp_path
    )
    assert code == 1 and out == "" and err.count("\n") == 1
    assert "FAILED_PRECONDITION INSUFFICIENT_BALANCE" in err
    # Admin commands need an admin's token: the user's is refused, one line.
    code, _, err = await signalhub("reverse-fill", str(fill), "--reason", "cancelled", *target, env=as_me, cwd=tmp_path)
    assert code == 1 and "PERMISSION_DENIED" in err
    as_admin = _env(settings, SIGNALHUB_API_TOKEN=admin.token)
    code, out, err = await signalhub(
        "reverse-fill", str(fill), "--reason", "cancelled", *target, env=as_admin, cwd=tmp_path
    )
    assert code == 0, err
    assert (json.loads(out)["status"], json.loads(out)["reverse_reason"]) == ("COMMISSION_STATUS_VOIDED", "cancelled")
    code, out, _ = await signalhub("stats", "--affiliate-id", affiliate["id"], *target, env=as_admin, cwd=tmp_path)
    assert json.loads(out)["commission_pending"] == "0.00"
    await support.release(res, datetime.now(UTC) + timedelta(days=60))
    code, out, err = await signalhub("check", env=_env(settings), cwd=tmp_path)
    assert code == 0, err
    assert json.loads(out)["problems"] == []
    for text in (out, err):
        assert me.token not in text and admin.token not in text
    # Without any token there is nothing to call with.
    code, _, err = await signalhub("link", *target, env=_env(settings), cwd=tmp_path)
    assert code == 1 and "SIGNALHUB_API_TOKEN" in err
