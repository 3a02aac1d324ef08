"""AccountService through the stubs."""

from __future__ import annotations

import grpc

from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import backoffice_pb2_grpc as rpc
from tests.conftest import UserCredentials


async def test_get_current_user(
    backoffice_channel: grpc.aio.Channel, user: UserCredentials, admin: UserCredentials
) -> None:
    stub = rpc.AccountServiceStub(backoffice_channel)
    me = await stub.GetCurrentUser(pb.GetCurrentUserRequest(), metadata=user.metadata, timeout=5)
    assert me.id == str(user.id) and me.role == pb.ROLE_USER and me.create_time.seconds > 0
    boss = await stub.GetCurrentUser(pb.GetCurrentUserRequest(), metadata=admin.metadata, timeout=5)
    assert boss.id == str(admin.id) and boss.role == pb.ROLE_ADMIN
