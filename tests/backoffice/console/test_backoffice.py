"""The console's call helper against the real back office: a call made with the person's own token, and
each refusal as one line and its field violations; a back office that does not answer, in fixed words."""

from __future__ import annotations

import grpc
import pytest

from backoffice.console.backoffice import BackOffice, Refused
from backoffice.console.config import ConsoleConfig
from backoffice.platform.serving import Server
from signalhub.protocol.secret import Secret
from signalhub.v1 import backoffice_pb2 as pb
from tests.conftest import UserCredentials, free_port


async def test_a_call_carries_the_persons_token(backoffice_server: Server, user: UserCredentials) -> None:
    backoffice = BackOffice(ConsoleConfig(backoffice_target=backoffice_server.bound_address))
    try:
        me = await backoffice.call(
            backoffice.accounts.GetCurrentUser, pb.GetCurrentUserRequest(), Secret(user.token.encode())
        )
        assert me.id == str(user.id)
        with pytest.raises(Refused) as refused:
            await backoffice.call(
                backoffice.accounts.GetCurrentUser, pb.GetCurrentUserRequest(), Secret(b"sht_" + b"Z" * 43)
            )
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED and refused.value.http_status == 401
        assert "ZZZZ" not in refused.value.text
    finally:
        await backoffice.close()


async def test_a_refusal_is_one_line_with_each_bad_field(backoffice_server: Server, user: UserCredentials) -> None:
    backoffice = BackOffice(ConsoleConfig(backoffice_target=backoffice_server.bound_address))
    token = Secret(user.token.encode())
    try:
        request = pb.RegisterDeviceRequest(name="x", mac_address="not a mac", symbol_map={"XAUUSD": "bad symbol!"})
        with pytest.raises(Refused) as refused:
            await backoffice.call(backoffice.devices.RegisterDevice, request, token)
        assert refused.value.http_status == 400 and "\n" not in refused.value.text
        assert refused.value.text.startswith("Invalid request")
        assert set(refused.value.violations) == {"mac_address", "symbol_map[XAUUSD]"}
        renamed = refused.value.renamed({"mac_address": "mac"})
        assert set(renamed.violations) == {"mac", "symbol_map[XAUUSD]"} and renamed.text == refused.value.text

        with pytest.raises(Refused) as missing:
            await backoffice.call(backoffice.devices.GetDevice, pb.GetDeviceRequest(id=str(user.id)), token)
        assert (missing.value.http_status, missing.value.text) == (404, "Device not found")
    finally:
        await backoffice.close()


async def test_a_back_office_that_does_not_answer_is_told_in_fixed_words() -> None:
    backoffice = BackOffice(ConsoleConfig(backoffice_target=f"127.0.0.1:{free_port()}", call_timeout_seconds=2))
    try:
        with pytest.raises(Refused) as refused:
            await backoffice.call(backoffice.accounts.GetCurrentUser, pb.GetCurrentUserRequest(), Secret(b"t"))
        assert refused.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        assert refused.value.text.startswith("The back office") and "127.0.0.1" not in refused.value.text
        assert refused.value.http_status in (503, 504)
    finally:
        await backoffice.close()
