"""AccountService."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backoffice import models
from backoffice.api import wire
from backoffice.errors import NotFound
from backoffice.interceptors import current_caller
from signalhub.v1 import backoffice_pb2 as pb

ROLE_TO_WIRE = {models.Role.ADMIN: pb.ROLE_ADMIN, models.Role.USER: pb.ROLE_USER}


def encode_user(user: models.User) -> pb.User:
    return pb.User(
        id=str(user.id), email=user.email, role=ROLE_TO_WIRE[user.role], create_time=wire.timestamp(user.created_at)
    )


class AccountServicer:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def GetCurrentUser(self, request: pb.GetCurrentUserRequest, context: Any) -> pb.User:
        caller = current_caller()
        async with self._sessions() as session:
            user = await session.get(models.User, caller.id)
        if user is None:
            raise NotFound("user")
        return encode_user(user)
