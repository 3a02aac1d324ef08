"""`signalhub positions list|close|protect` as a user runs it: a real process, the API token from the
environment (or a credentials file), one JSON object out, one line on stderr when refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from backoffice.bootstrap import Resources
from backoffice.platform.serving import Server
from tests.backoffice.cli.support import signalhub
from tests.conftest import ROOT_DIR, KeyCredentials, UserCredentials
from tests.gateway.support import Book


async def positions(*args: str, token: str | None, target: str, cwd: Path = ROOT_DIR) -> tuple[int, Any, str]:
    return await signalhub("positions", *args, token=token, target=target, cwd=cwd)


@pytest.fixture
async def book(res: Resources, user: UserCredentials) -> Book:
    return await Book.open(res, user.id)


async def test_list_protect_and_close(
    backoffice_server: Server, user: UserCredentials, device: KeyCredentials, book: Book
) -> None:
    position_id = str(await book.position(device.id, volume="0.30", signal_instrument="CLI1"))
    target = backoffice_server.bound_address
    code, listed, _ = await positions(
        "list", "--instrument", "CLI1", "--status", "open", token=user.token, target=target
    )
    assert code == 0 and [p["id"] for p in listed["positions"]] == [position_id]
    code, protected, _ = await positions(
        "protect", "--id", position_id, "--stop-loss", "2031", "--take-profit", "none", token=user.token, target=target
    )
    assert code == 0 and (protected["stop_loss"], protected["take_profit"]) == ("2031", "")
    code, command, _ = await positions(
        "close", "--id", position_id, "--volume", "0.10", token=user.token, target=target
    )
    assert code == 0 and (command["volume"], command["reason"]) == ("0.10", "CLOSE_REASON_MANUAL")
    code, out, err = await positions("close", "--id", position_id, token=user.token, target=target)
    assert (code, out) == (1, None)
    assert err.startswith("signalhub: FAILED_PRECONDITION POSITION_NOT_OPEN") and len(err.splitlines()) == 1


async def test_refusals_are_one_line_and_the_token_comes_from_a_file(
    backoffice_server: Server, user: UserCredentials, tmp_path: Path
) -> None:
    target = backoffice_server.bound_address
    code, _, err = await positions(
        "protect", "--id", "00000000-0000-0000-0000-000000000001", token=user.token, target=target
    )
    assert code == 1 and "nothing to change" in err
    code, _, err = await positions(
        "close", "--id", "00000000-0000-0000-0000-000000000001", "--volume", "0.1", token=user.token, target=target
    )
    assert code == 1 and err.startswith("signalhub: NOT_FOUND") and user.token not in err
    code, _, err = await positions("list", token=None, target=target, cwd=tmp_path)
    assert code == 1 and "SIGNALHUB_API_TOKEN" in err
    (tmp_path / "demo.json").write_text(json.dumps({"user_token": user.token}))
    code, listed, _ = await positions("list", "--credentials", str(tmp_path / "demo.json"), token=None, target=target)
    assert code == 0 and "positions" in listed
    code, _, err = await positions("list", token="sht_wrong", target=target)
    assert code == 1 and err.startswith("signalhub: UNAUTHENTICATED")
    assert grpc.StatusCode.UNAUTHENTICATED.name in err
