"""`signalhub devices list|register|rotate|revoke` as a user runs it: a real process against this run's back
office; the secret goes to an owner-only file the bridge reads, never to the terminal."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from sqlalchemy import func, select

from backoffice.bootstrap import Resources
from backoffice.models import Device, DeviceStatus
from backoffice.platform.serving import Server
from gateway.bridge import cli as bridge_cli
from tests.backoffice.api.test_devices import verify
from tests.backoffice.cli.support import one_line, signalhub
from tests.conftest import KeyCredentials, UserCredentials, make_user


async def devices_of(res: Resources, owner: UserCredentials) -> int:
    async with res.sessions() as session:
        return int(await session.scalar(select(func.count()).where(Device.user_id == owner.id)) or 0)


def shows_no_secret(answer: object, err: str, secret: str) -> bool:
    """Neither the answer nor stderr holds a device secret, in any form."""
    return all("shs_" not in text and secret[4:] not in text for text in (json.dumps(answer), err))


async def test_register_writes_the_credentials_the_bridge_reads(
    res: Resources, backoffice_server: Server, user: UserCredentials, tmp_path: Path
) -> None:
    target, token, out = backoffice_server.bound_address, user.token, tmp_path / "bridge" / "device.json"
    code, answer, err = await signalhub(
        "devices", "register", "--name", "vps 1", "--symbol-map", "XAUUSD=GOLD.m", "--out", str(out),
        "--gateway", "127.0.0.1:6000", token=token, target=target,
    )  # fmt: skip
    assert code == 0, err
    assert set(answer) == {"device", "credentials_file"} and answer["credentials_file"] == str(out.resolve())
    device_id = answer["device"]["id"]
    assert (answer["device"]["user_id"], answer["device"]["symbol_map"]) == (str(user.id), {"XAUUSD": "GOLD.m"})
    assert out.stat().st_mode & 0o777 == 0o600
    found = bridge_cli.load_credentials(out, None, None, {})
    assert (found.device_id, found.gateways) == (device_id, ("127.0.0.1:6000",))
    secret = json.loads(out.read_text())["device_secret"]
    assert shows_no_secret(answer, err, secret)
    await verify(res, device_id, secret)  # the secret the device got

    # An existing file is refused before anything is registered; --force overwrites it.
    before, written = await devices_of(res, user), out.read_text()
    code, answer, err = await signalhub(
        "devices", "register", "--name", "vps 2", "--out", str(out), token=token, target=target
    )
    assert (code, answer) == (1, None) and len(err.splitlines()) == 1 and "--force" in err
    assert await devices_of(res, user) == before and out.read_text() == written
    code, answer, err = await signalhub(
        "devices", "register", "--name", "vps 2", "--out", str(out), "--force", token=token, target=target
    )
    assert code == 0, err
    assert json.loads(out.read_text())["device_id"] == answer["device"]["id"] != device_id
    assert bridge_cli.load_credentials(out, None, None, {}).gateways == (bridge_cli.DEFAULT_GATEWAY,)
    assert await devices_of(res, user) == before + 1


async def test_rotate_list_and_revoke(
    res: Resources, backoffice_server: Server, user: UserCredentials, device: KeyCredentials, tmp_path: Path
) -> None:
    target, token, device_id = backoffice_server.bound_address, user.token, str(device.id)
    rotated = tmp_path / "rotated.json"
    code, answer, err = await signalhub(
        "devices", "rotate", device_id, "--out", str(rotated), token=token, target=target
    )
    assert code == 0, err
    assert answer["device"]["id"] == device_id and answer["device"]["secret_rotate_time"]
    secret = json.loads(rotated.read_text())["device_secret"]
    assert shows_no_secret(answer, err, secret) and rotated.stat().st_mode & 0o777 == 0o600
    assert secret != device.secret
    await verify(res, device_id, secret)

    code, listed, _ = await signalhub("devices", "list", "--status", "active", token=token, target=target)
    assert code == 0 and [d["id"] for d in listed["devices"]] == [device_id]
    code, revoked, _ = await signalhub("devices", "revoke", device_id, token=token, target=target)
    assert code == 0 and revoked["status"] == "DEVICE_STATUS_REVOKED"
    code, listed, _ = await signalhub("devices", "list", "--status", "revoked", token=token, target=target)
    assert [d["id"] for d in listed["devices"]] == [device_id]

    # A refused rotation leaves no file behind; an existing file is refused before the call.
    refused = tmp_path / "refused.json"
    code, _, err = await signalhub("devices", "rotate", device_id, "--out", str(refused), token=token, target=target)
    assert code == 1 and one_line(err, "FAILED_PRECONDITION"), err
    assert not refused.exists()
    code, _, err = await signalhub("devices", "rotate", device_id, "--out", str(rotated), token=token, target=target)
    assert code == 1 and "exists" in err and json.loads(rotated.read_text())["device_secret"] == secret


async def test_another_users_device_is_not_found(
    res: Resources, backoffice_server: Server, device: KeyCredentials, tmp_path: Path
) -> None:
    target, stranger = backoffice_server.bound_address, await make_user(res)
    out = tmp_path / "theirs.json"
    code, _, err = await signalhub(
        "devices", "rotate", str(device.id), "--out", str(out), token=stranger.token, target=target
    )
    assert code == 1 and one_line(err, "NOT_FOUND") and stranger.token not in err, err
    assert not out.exists()
    code, _, err = await signalhub("devices", "revoke", str(device.id), token=stranger.token, target=target)
    assert code == 1 and one_line(err, "NOT_FOUND"), err
    code, listed, _ = await signalhub("devices", "list", token=stranger.token, target=target)
    assert code == 0 and listed == {"devices": []}
    async with res.sessions() as session:
        stored = await session.get(Device, device.id)
    assert stored is not None and stored.status is DeviceStatus.ACTIVE and stored.secret_rotated_at is None


async def test_the_gateway_comes_from_the_callers_credentials_file(
    backoffice_server: Server, user: UserCredentials, tmp_path: Path
) -> None:
    """A demo file names the gateway next to the back office: the device's credentials name it too."""
    demo = tmp_path / "demo.json"
    demo.write_text(
        json.dumps({"user_token": user.token, "backoffice": backoffice_server.bound_address, "gateway": "10.1.2.3:7"})
    )
    out = tmp_path / f"{uuid.uuid4().hex}.json"
    code, _, err = await signalhub(
        "devices", "register", "--name", "demo vps", "--out", str(out), "--credentials", str(demo),
        token=None, target=None,
    )  # fmt: skip
    assert code == 0, err
    assert bridge_cli.load_credentials(out, None, None, {}).gateways == ("10.1.2.3:7",)
