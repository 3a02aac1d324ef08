"""`signalhub risk get|set|stopouts|reset` as a device's owner runs it: a real process against a real back
office, the API token from the environment, one JSON object out, one line on stderr when refused."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from backoffice import risk
from backoffice.bootstrap import Resources
from backoffice.models import RiskAction, RiskMetric, RiskPeriod, Side
from backoffice.platform.serving import Server
from tests.backoffice.cli.support import signalhub
from tests.backoffice.risk.support import add_stopouts, stopout_row
from tests.conftest import ROOT_DIR, KeyCredentials, UserCredentials, make_user


async def risk_command(*args: str, token: str | None, target: str, cwd: Path = ROOT_DIR) -> tuple[int, Any, str]:
    return await signalhub("risk", *args, token=token, target=target, cwd=cwd)


async def test_set_get_stopouts_and_reset(
    res: Resources, backoffice_server: Server, user: UserCredentials, device: KeyCredentials
) -> None:
    target, token, device_id = backoffice_server.bound_address, user.token, str(device.id)
    code, empty, _ = await risk_command("get", "--device", device_id, token=token, target=target)
    assert code == 0 and empty["limits"] == [] and empty["max_open_positions"] == 0 and empty["device_id"] == device_id

    code, policy, err = await risk_command(
        "set",
        "--device",
        device_id,
        "--limit",
        "period=day,metric=loss,percent=5,action=close-all",
        "--limit",
        "period=lifetime, metric=drawdown, amount=1500, percent=20, action=stop-opening",
        "--max-open-positions",
        "4",
        "--max-open-positions-per-instrument",
        "1",
        "--max-volume",
        "0.50",
        "--max-deviation",
        "0.8",
        "--max-delay-seconds",
        "45",
        "--allowed-sides",
        "sell",
        token=token,
        target=target,
    )
    assert code == 0, err
    assert policy["limits"] == [
        {
            "period": "RISK_PERIOD_DAY",
            "metric": "RISK_METRIC_LOSS",
            "max_amount": "",
            "max_percent": "5",
            "action": "RISK_ACTION_CLOSE_ALL",
        },
        {
            "period": "RISK_PERIOD_LIFETIME",
            "metric": "RISK_METRIC_DRAWDOWN",
            "max_amount": "1500",
            "max_percent": "20",
            "action": "RISK_ACTION_STOP_OPENING",
        },
    ]
    assert (policy["max_volume"], policy["max_delay_seconds"], policy["allowed_sides"]) == ("0.50", 45, ["SIDE_SELL"])
    async with res.sessions() as session:
        stored = await risk.load_policy(session, device.id)
    assert [(limit.period, limit.metric, limit.action) for limit in stored.limits] == [
        (RiskPeriod.DAY, RiskMetric.LOSS, RiskAction.CLOSE_ALL),
        (RiskPeriod.LIFETIME, RiskMetric.DRAWDOWN, RiskAction.STOP_OPENING),
    ]
    assert (stored.max_open_positions, stored.max_open_positions_per_instrument) == (4, 1)
    assert stored.allowed_sides == {Side.SELL}
    code, got, _ = await risk_command("get", "--device", device_id, token=token, target=target)
    assert code == 0 and got == policy

    now = datetime.now(UTC)
    older, newer = stopout_row(device.id, now - timedelta(hours=2)), stopout_row(device.id, now - timedelta(hours=1))
    await add_stopouts(res, older, newer)
    code, listed, _ = await risk_command("stopouts", "--device", device_id, token=token, target=target)
    assert code == 0 and [s["id"] for s in listed["stopouts"]] == [str(newer.id), str(older.id)]
    code, reset, _ = await risk_command("reset", str(newer.id), token=token, target=target)
    assert code == 0 and (reset["id"], reset["active"]) == (str(newer.id), False)
    code, active, _ = await risk_command("stopouts", "--device", device_id, "--active", token=token, target=target)
    assert code == 0 and [s["id"] for s in active["stopouts"]] == [str(older.id)]
    code, out, err = await risk_command("reset", str(newer.id), token=token, target=target)
    assert (code, out) == (1, None)
    assert err.startswith("signalhub: FAILED_PRECONDITION STOPOUT_NOT_ACTIVE: ") and len(err.splitlines()) == 1


async def test_refusals_are_one_line_naming_the_code_once(
    res: Resources, backoffice_server: Server, user: UserCredentials, device: KeyCredentials, tmp_path: Path
) -> None:
    target, device_id = backoffice_server.bound_address, str(device.id)
    code, out, err = await risk_command(
        "set",
        "--device",
        device_id,
        "--limit",
        "period=day,metric=loss,action=close-all",
        token=user.token,
        target=target,
    )
    assert (code, out) == (1, None) and len(err.splitlines()) == 1
    assert err.startswith("signalhub: INVALID_ARGUMENT: ") and "policy.limits[0].max_amount" in err
    assert err.count("INVALID_ARGUMENT") == 1
    async with res.sessions() as session:
        assert (await risk.load_policy(session, device.id)).is_empty  # nothing changed

    code, _, err = await risk_command(
        "set", "--device", device_id, "--limit", "period=fortnight", token=user.token, target=target
    )
    assert code == 2 and "period='fortnight'" in err  # refused before anything is sent
    stranger = await make_user(res)
    code, _, err = await risk_command("get", "--device", device_id, token=stranger.token, target=target)
    assert code == 1 and err == "signalhub: NOT_FOUND: device not found\n" and stranger.token not in err
    code, _, err = await risk_command("reset", str(uuid.uuid4()), token=user.token, target=target)
    assert code == 1 and err.startswith("signalhub: NOT_FOUND")
    code, _, err = await risk_command("get", "--device", device_id, token=None, target=target, cwd=tmp_path)
    assert code == 1 and "SIGNALHUB_API_TOKEN" in err
    (tmp_path / "demo.json").write_text(json.dumps({"user_token": user.token}))
    code, got, _ = await risk_command(
        "get", "--device", device_id, "--credentials", str(tmp_path / "demo.json"), token=None, target=target
    )
    assert code == 0 and got["device_id"] == device_id
