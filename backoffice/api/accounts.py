"""AccountService."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backoffice import accounts, models
from backoffice.affiliates import referrals
from backoffice.models import Role
from backoffice.platform import paging
from backoffice.platform.auth import require_admin
from backoffice.platform.interceptors import current_caller
from backoffice.platform.mutations import Mutations, Wake
from backoffice.platform.text import validate_name
from backoffice.platform.vault import Vault
from signalhub.protocol import wire
from signalhub.protocol.errors import NotFound
from signalhub.protocol.wire import parse_id
from signalhub.v1 import backoffice_pb2 as pb


def encode_user(user: models.User, referrer_affiliate_id: uuid.UUID | None) -> pb.User:
    return pb.User(
        id=str(user.id),
        email=user.email,
        role=wire.enum_to_wire(pb.Role, "ROLE", user.role),
        create_time=wire.timestamp(user.created_at),
        referrer_affiliate_id=str(referrer_affiliate_id or ""),
    )


def encode_api_token(token: models.ApiToken) -> pb.ApiToken:
    return pb.ApiToken(
        id=str(token.id),
        user_id=str(token.user_id),
        name=token.name,
        create_time=wire.timestamp(token.created_at),
        revoke_time=wire.timestamp(token.revoked_at),
        last_used_time=wire.timestamp(token.last_used_at),
    )


def encode_producer(producer: models.Producer) -> pb.Producer:
    return pb.Producer(
        id=str(producer.id),
        name=producer.name,
        status=wire.enum_to_wire(pb.ProducerStatus, "PRODUCER_STATUS", producer.status),
        create_time=wire.timestamp(producer.created_at),
        secret_rotate_time=wire.timestamp(producer.secret_rotated_at),
        revoke_time=wire.timestamp(producer.revoked_at),
    )


class AccountServicer:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        vault: Vault,
        secret_grace: timedelta,
        *,
        max_api_tokens_per_user: int,
    ) -> None:
        self._sessions = sessions
        self._vault = vault
        self._grace = secret_grace
        self._max_api_tokens = max_api_tokens_per_user
        self._mutations = Mutations(sessions, vault)

    async def CreateUser(self, request: pb.CreateUserRequest, context: Any) -> pb.CreateUserResponse:
        caller = current_caller()
        require_admin(caller)
        role = wire.enum_from_wire(pb.Role, "ROLE", request.role, Role, "role")

        async def create(session: AsyncSession, wake: Wake) -> pb.CreateUserResponse:
            user, token = await accounts.create_user(
                session, email=request.email, role=role, referral_code=request.referral_code, created_by=caller
            )
            referrer = await referrals.referrer_of(session, user.id)
            return pb.CreateUserResponse(user=encode_user(user, referrer), api_token=token)

        return await self._mutations.run(caller.id, request, pb.CreateUserResponse, create)

    async def GetCurrentUser(self, request: pb.GetCurrentUserRequest, context: Any) -> pb.User:
        caller = current_caller()
        async with self._sessions() as session:
            user = await session.get(models.User, caller.id)
            referrer = await referrals.referrer_of(session, caller.id)
        if user is None:
            raise NotFound("user")
        return encode_user(user, referrer)

    async def CreateApiToken(self, request: pb.CreateApiTokenRequest, context: Any) -> pb.CreateApiTokenResponse:
        caller = current_caller()
        name = validate_name(request.name or "api token", "name")

        async def create(session: AsyncSession, wake: Wake) -> pb.CreateApiTokenResponse:
            token, shown = await accounts.create_api_token(
                session, user_id=caller.id, name=name, created_by=caller, cap=self._max_api_tokens
            )
            return pb.CreateApiTokenResponse(token=encode_api_token(token), api_token=shown)

        return await self._mutations.run(caller.id, request, pb.CreateApiTokenResponse, create)

    async def RevokeApiToken(self, request: pb.RevokeApiTokenRequest, context: Any) -> pb.ApiToken:
        caller = current_caller()
        token_id = parse_id(request.id, "id")
        async with self._sessions.begin() as session:
            return encode_api_token(await accounts.revoke_api_token(session, caller, token_id))

    async def CreateProducer(self, request: pb.CreateProducerRequest, context: Any) -> pb.CreateProducerResponse:
        caller = current_caller()
        require_admin(caller)

        async def create(session: AsyncSession, wake: Wake) -> pb.CreateProducerResponse:
            producer, secret = await accounts.create_producer(
                session, self._vault, name=request.name, created_by=caller
            )
            return pb.CreateProducerResponse(producer=encode_producer(producer), secret=secret)

        return await self._mutations.run(caller.id, request, pb.CreateProducerResponse, create)

    async def RotateProducerSecret(
        self, request: pb.RotateProducerSecretRequest, context: Any
    ) -> pb.RotateProducerSecretResponse:
        caller = current_caller()
        require_admin(caller)
        producer_id = parse_id(request.id, "id")

        async def rotate(session: AsyncSession, wake: Wake) -> pb.RotateProducerSecretResponse:
            producer, secret = await accounts.rotate_producer_secret(
                session, self._vault, caller, producer_id, grace=self._grace, request_id=request.request_id
            )
            return pb.RotateProducerSecretResponse(producer=encode_producer(producer), secret=secret)

        return await self._mutations.run(caller.id, request, pb.RotateProducerSecretResponse, rotate)

    async def RevokeProducer(self, request: pb.RevokeProducerRequest, context: Any) -> pb.Producer:
        caller = current_caller()
        producer_id = parse_id(request.id, "id")
        async with self._sessions.begin() as session:
            return encode_producer(await accounts.revoke_producer(session, caller, producer_id))

    async def ListProducers(self, request: pb.ListProducersRequest, context: Any) -> pb.ListProducersResponse:
        caller = current_caller()
        async with self._sessions() as session:
            found, token = await accounts.list_producers(session, caller, paging.requested(request))
        return pb.ListProducersResponse(producers=[encode_producer(p) for p in found], next_page_token=token)

    async def ListUsers(self, request: pb.ListUsersRequest, context: Any) -> pb.ListUsersResponse:
        caller = current_caller()
        async with self._sessions() as session:
            found, token = await accounts.list_users(session, caller, paging.requested(request), email=request.email)
        return pb.ListUsersResponse(users=[encode_user(u, referrer) for u, referrer in found], next_page_token=token)
