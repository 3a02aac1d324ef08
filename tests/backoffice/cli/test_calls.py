"""What every user command does alike (backoffice.cli.calls), through a real process: where the API token and
the back office's address come from, and a refusal as one line that never holds a secret."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path

from backoffice.bootstrap import Resources
from backoffice.models import Device
from backoffice.platform.config import Settings
from backoffice.platform.serving import Server
from tests.backoffice.cli.support import one_line, signalhub
from tests.backoffice.cli.test_commands import ROOT, _env
from tests.conftest import KeyCredentials, UserCredentials, make_user


async def test_what_create_user_prints_is_a_credentials_file(
    settings: Settings, res: Resources, backoffice_server: Server, tmp_path: Path
) -> None:
    """`signalhub admin create-user ... > me.json`, then `--credentials me.json`: the new user acts."""
    me = tmp_path / "me.json"
    with me.open("w") as stdout:
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "backoffice.cli", "admin", "create-user", "--email", f"{uuid.uuid4().hex}@cli.test"],
            env=_env(settings), cwd=ROOT, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    created = json.loads(me.read_text())
    code, answer, err = await signalhub(
        "devices", "register", "--name", "mine", "--out", str(tmp_path / "device.json"), "--credentials", str(me),
        token=None, target=backoffice_server.bound_address,
    )  # fmt: skip
    assert code == 0, err
    async with res.sessions() as session:
        device = await session.get(Device, uuid.UUID(answer["device"]["id"]))
    assert device is not None and str(device.user_id) == created["user_id"]


async def test_a_demo_file_gives_admin_commands_its_admin_token_and_the_others_its_user_token(
    backoffice_server: Server, user: UserCredentials, admin: UserCredentials, device: KeyCredentials, tmp_path: Path
) -> None:
    """The demo file `signalhub up` writes (user_token, admin_token, backoffice) is read when no file is named,
    and its address is used when no --target is given."""
    demo = tmp_path / ".signalhub" / "demo.json"
    demo.parent.mkdir()
    demo.write_text(
        json.dumps(
            {"user_token": user.token, "admin_token": admin.token, "backoffice": backoffice_server.bound_address}
        )
    )
    code, listed, err = await signalhub("devices", "list", token=None, target=None, cwd=tmp_path)
    assert code == 0, err
    assert [d["id"] for d in listed["devices"]] == [str(device.id)]  # the user's own, not everyone's
    code, audited, err = await signalhub(
        "admin", "audit", "--object", str(device.id), token=None, target=None, cwd=tmp_path
    )
    assert code == 0, err  # the admin's token: a user's is refused (below)
    assert [e["action"] for e in audited["audit_events"]] == ["RegisterDevice"]

    demo.write_text(json.dumps({"user_token": user.token, "backoffice": backoffice_server.bound_address}))
    code, _, err = await signalhub("admin", "audit", token=None, target=None, cwd=tmp_path)
    assert code == 1 and err == (
        "signalhub: .signalhub/demo.json has no API token: it needs api_token (or a demo file's admin_token)\n"
    )
    code, _, err = await signalhub("admin", "audit", token=user.token, target=None, cwd=tmp_path)
    assert code == 1 and one_line(err, "PERMISSION_DENIED"), err


async def test_the_environment_wins_over_the_file(
    res: Resources, backoffice_server: Server, user: UserCredentials, device: KeyCredentials, tmp_path: Path
) -> None:
    credentials = tmp_path / "user.json"
    credentials.write_text(json.dumps({"api_token": user.token, "backoffice": backoffice_server.bound_address}))
    code, listed, _ = await signalhub("devices", "list", "--credentials", str(credentials), token=None, target=None)
    assert code == 0 and [d["id"] for d in listed["devices"]] == [str(device.id)]
    stranger = await make_user(res)
    code, listed, err = await signalhub(
        "devices", "list", "--credentials", str(credentials), token=stranger.token, target=None
    )  # the token from the environment, the address still from the file
    assert code == 0 and listed == {"devices": []}, err


async def test_no_token_is_one_line_without_any_secret(
    backoffice_server: Server, device: KeyCredentials, tmp_path: Path
) -> None:
    target = backoffice_server.bound_address
    code, out, err = await signalhub("signals", "list", token=None, target=target, cwd=tmp_path)
    assert (code, out) == (1, None) and len(err.splitlines()) == 1
    assert "no API token: set SIGNALHUB_API_TOKEN, or pass --credentials FILE" in err
    bridge_file = tmp_path / "device.json"  # a device's credentials are not a user's
    bridge_file.write_text(json.dumps({"device_id": str(device.id), "device_secret": device.secret}))
    code, _, err = await signalhub("signals", "list", "--credentials", str(bridge_file), token=None, target=target)
    assert code == 1 and f"{bridge_file} has no API token: it needs api_token (or a demo file's user_token)" in err
    assert device.secret not in err and device.secret[4:] not in err
    bridge_file.write_text("{not json")
    code, _, err = await signalhub("signals", "list", "--credentials", str(bridge_file), token=None, target=target)
    assert code == 1 and err == f"signalhub: {bridge_file} is not a JSON file\n"


async def test_an_unreachable_back_office_is_one_line(user: UserCredentials) -> None:
    code, out, err = await signalhub("signals", "list", "--timeout", "2", token=user.token, target="127.0.0.1:1")
    assert (code, out) == (1, None) and one_line(err, "UNAVAILABLE"), err
    assert user.token not in err
