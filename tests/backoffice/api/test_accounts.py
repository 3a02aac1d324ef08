"""AccountService through the stubs: users, tokens shown once, producers, rotation with a grace period."""

from __future__ import annotations

import uuid

import grpc
import pytest
from sqlalchemy import select

from backoffice.bootstrap import Resources
from backoffice.models import ApiToken, AuditEvent
from backoffice.platform.auth import KeyKind
from signalhub.protocol import signing
from signalhub.protocol.signing import AuthFailure, SignatureError
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import backoffice_pb2_grpc as rpc
from tests.conftest import KeyCredentials, UserCredentials, rpc_failure

SUBMIT = "/signalhub.v1.SignalService/SubmitSignal"


async def expect_failure(call: object) -> object:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return rpc_failure(info.value)


async def test_get_current_user(
    backoffice_channel: grpc.aio.Channel, user: UserCredentials, admin: UserCredentials
) -> None:
    stub = rpc.AccountServiceStub(backoffice_channel)
    me = await stub.GetCurrentUser(pb.GetCurrentUserRequest(), metadata=user.metadata, timeout=5)
    assert me.id == str(user.id) and me.role == pb.ROLE_USER and me.create_time.seconds > 0
    boss = await stub.GetCurrentUser(pb.GetCurrentUserRequest(), metadata=admin.metadata, timeout=5)
    assert boss.id == str(admin.id) and boss.role == pb.ROLE_ADMIN


async def test_create_user_is_admin_only_validated_and_idempotent(
    backoffice_channel: grpc.aio.Channel, user: UserCredentials, admin: UserCredentials, res: Resources
) -> None:
    stub = rpc.AccountServiceStub(backoffice_channel)
    request = pb.CreateUserRequest(
        request_id=str(uuid.uuid4()), email=f"New.{uuid.uuid4().hex}@Example.com", role=pb.ROLE_USER
    )
    failure = await expect_failure(stub.CreateUser(request, metadata=user.metadata, timeout=5))
    assert failure.code == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    created = await stub.CreateUser(request, metadata=admin.metadata, timeout=5)
    assert created.user.email == request.email.lower() and created.api_token.startswith("sht_")
    assert await stub.CreateUser(request, metadata=admin.metadata, timeout=5) == created  # the first response again
    new_user = UserCredentials(uuid.UUID(created.user.id), created.api_token, user.role)
    assert (
        await stub.GetCurrentUser(pb.GetCurrentUserRequest(), metadata=new_user.metadata, timeout=5)
    ).id == created.user.id
    taken = pb.CreateUserRequest(request_id=str(uuid.uuid4()), email=request.email, role=pb.ROLE_USER)
    assert (await expect_failure(stub.CreateUser(taken, metadata=admin.metadata, timeout=5))).code == (  # type: ignore[attr-defined]
        grpc.StatusCode.ALREADY_EXISTS
    )
    bad = pb.CreateUserRequest(request_id=str(uuid.uuid4()), email="nope", role=pb.ROLE_USER, referral_code="FRIEND")
    failure = await expect_failure(stub.CreateUser(bad, metadata=admin.metadata, timeout=5))
    assert set(failure.violations) == {"email", "referral_code"}  # type: ignore[attr-defined]
    no_role = pb.CreateUserRequest(request_id=str(uuid.uuid4()), email="x@y.example")
    failure = await expect_failure(stub.CreateUser(no_role, metadata=admin.metadata, timeout=5))
    assert set(failure.violations) == {"role"}  # type: ignore[attr-defined]
    async with res.sessions() as session:
        audit = (
            await session.scalars(select(AuditEvent).where(AuditEvent.object_id == uuid.UUID(created.user.id)))
        ).all()
    assert [a.action for a in audit] == ["CreateUser"] and audit[0].actor_id == admin.id


async def test_api_tokens_created_listed_once_and_revoked(
    backoffice_channel: grpc.aio.Channel, user: UserCredentials, admin: UserCredentials, res: Resources
) -> None:
    stub = rpc.AccountServiceStub(backoffice_channel)
    created = await stub.CreateApiToken(
        pb.CreateApiTokenRequest(request_id=str(uuid.uuid4()), name="ci"), metadata=user.metadata, timeout=5
    )
    assert created.token.user_id == str(user.id) and created.token.name == "ci"
    second = UserCredentials(user.id, created.api_token, user.role)
    async with res.sessions() as session:
        stored = await session.get(ApiToken, uuid.UUID(created.token.id))
    assert stored is not None and created.api_token.encode() not in stored.token_hash
    stranger_token = await stub.CreateApiToken(
        pb.CreateApiTokenRequest(request_id=str(uuid.uuid4()), name="admin's"), metadata=admin.metadata, timeout=5
    )
    failure = await expect_failure(
        stub.RevokeApiToken(pb.RevokeApiTokenRequest(id=stranger_token.token.id), metadata=user.metadata, timeout=5)
    )
    assert failure.code == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    revoked = await stub.RevokeApiToken(
        pb.RevokeApiTokenRequest(id=created.token.id), metadata=user.metadata, timeout=5
    )
    assert revoked.HasField("revoke_time")
    failure = await expect_failure(stub.GetCurrentUser(pb.GetCurrentUserRequest(), metadata=second.metadata, timeout=5))
    assert failure.reason == "TOKEN_INVALID"  # type: ignore[attr-defined]
    # Admins may revoke anyone's token.
    await stub.RevokeApiToken(pb.RevokeApiTokenRequest(id=created.token.id), metadata=admin.metadata, timeout=5)


async def test_producer_create_rotate_revoke(
    backoffice_channel: grpc.aio.Channel, user: UserCredentials, admin: UserCredentials, res: Resources
) -> None:
    stub = rpc.AccountServiceStub(backoffice_channel)
    create = pb.CreateProducerRequest(request_id=str(uuid.uuid4()), name="breakout bot")
    failure = await expect_failure(stub.CreateProducer(create, metadata=user.metadata, timeout=5))
    assert failure.code == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    created = await stub.CreateProducer(create, metadata=admin.metadata, timeout=5)
    assert created.producer.status == pb.PRODUCER_STATUS_ACTIVE
    old = KeyCredentials(uuid.UUID(created.producer.id), created.secret)
    rotate = pb.RotateProducerSecretRequest(id=created.producer.id, request_id=str(uuid.uuid4()))
    rotated = await stub.RotateProducerSecret(rotate, metadata=admin.metadata, timeout=5)
    assert rotated.secret != created.secret and rotated.producer.HasField("secret_rotate_time")
    assert (await stub.RotateProducerSecret(rotate, metadata=admin.metadata, timeout=5)).secret == rotated.secret
    new = KeyCredentials(old.id, rotated.secret)
    for key in (old, new):  # the old secret keeps working for the grace period
        md = signing.signed_metadata(signing.parse_secret(key.secret), SUBMIT, str(key.id), b"")
        assert (await res.verifier.verify(KeyKind.PRODUCER, SUBMIT, md, b"")).id == old.id
    revoked = await stub.RevokeProducer(
        pb.RevokeProducerRequest(id=created.producer.id), metadata=admin.metadata, timeout=5
    )
    assert revoked.status == pb.PRODUCER_STATUS_REVOKED
    md = signing.signed_metadata(signing.parse_secret(new.secret), SUBMIT, str(new.id), b"")
    with pytest.raises(SignatureError) as info:
        await res.verifier.verify(KeyKind.PRODUCER, SUBMIT, md, b"")
    assert info.value.reason is AuthFailure.KEY_REVOKED
    again = pb.RotateProducerSecretRequest(id=created.producer.id, request_id=str(uuid.uuid4()))
    failure = await expect_failure(stub.RotateProducerSecret(again, metadata=admin.metadata, timeout=5))
    assert failure.code == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    async with res.sessions() as session:
        actions = (
            await session.scalars(
                select(AuditEvent.action).where(AuditEvent.object_id == old.id).order_by(AuditEvent.created_at)
            )
        ).all()
    assert set(actions) == {"CreateProducer", "RotateProducerSecret", "RevokeProducer"}


async def test_producers_listed_all_for_admins_active_for_users(
    backoffice_channel: grpc.aio.Channel, user: UserCredentials, admin: UserCredentials
) -> None:
    """Admins see every producer, newest first and paged; users only the active ones (whom they may follow)."""
    stub = rpc.AccountServiceStub(backoffice_channel)
    made = []
    for n in range(3):
        request = pb.CreateProducerRequest(request_id=str(uuid.uuid4()), name=f"listed {n}")
        made.append((await stub.CreateProducer(request, metadata=admin.metadata, timeout=5)).producer)
    await stub.RevokeProducer(pb.RevokeProducerRequest(id=made[1].id), metadata=admin.metadata, timeout=5)

    async def every(who: UserCredentials) -> list[pb.Producer]:
        found: list[pb.Producer] = []
        token = ""
        while True:
            page = await stub.ListProducers(
                pb.ListProducersRequest(page_size=2, page_token=token), metadata=who.metadata, timeout=5
            )
            found.extend(page.producers)
            if not (token := page.next_page_token):
                return found

    seen_by_admin = [p.id for p in await every(admin) if p.id in {m.id for m in made}]
    assert seen_by_admin == [made[2].id, made[1].id, made[0].id]  # newest first, the revoked one too
    seen_by_user = {p.id: p for p in await every(user)}
    assert made[1].id not in seen_by_user and {made[0].id, made[2].id} <= set(seen_by_user)
    assert seen_by_user[made[2].id].name == "listed 2"


async def test_users_listed_by_admins_only_and_found_by_email(
    backoffice_channel: grpc.aio.Channel, user: UserCredentials, admin: UserCredentials
) -> None:
    stub = rpc.AccountServiceStub(backoffice_channel)
    refused = await expect_failure(stub.ListUsers(pb.ListUsersRequest(), metadata=user.metadata, timeout=5))
    assert refused.code == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    email = f"Listed.{uuid.uuid4().hex}@Example.com"
    created = await stub.CreateUser(
        pb.CreateUserRequest(request_id=str(uuid.uuid4()), email=email, role=pb.ROLE_USER),
        metadata=admin.metadata,
        timeout=5,
    )
    [found] = (await stub.ListUsers(pb.ListUsersRequest(email=email), metadata=admin.metadata, timeout=5)).users
    assert found == created.user
    page = await stub.ListUsers(pb.ListUsersRequest(page_size=1), metadata=admin.metadata, timeout=5)
    assert len(page.users) == 1 and page.next_page_token  # more than one user: paged
