"""Becoming an affiliate, referral codes and links, and attribution at CreateUser (once and for ever;
unknown codes, self-referral and cycles refused), through the stubs where the API reaches."""

from __future__ import annotations

import re
import uuid

import grpc
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from backoffice.affiliates import referrals
from backoffice.bootstrap import Resources
from backoffice.models import Affiliate, AuditEvent, Referral
from backoffice.platform.config import Settings
from signalhub.protocol.errors import FailedPrecondition
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import backoffice_pb2_grpc as rpc
from tests.backoffice.affiliates import support
from tests.backoffice.api.test_accounts import expect_failure
from tests.conftest import UserCredentials, make_user


async def test_register_gives_a_unique_unguessable_url_safe_code_once(
    backoffice_channel: grpc.aio.Channel, res: Resources, settings: Settings
) -> None:
    user = await make_user(res)
    request = pb.RegisterAffiliateRequest(request_id=support.new_id())
    first = await support.stub(backoffice_channel).RegisterAffiliate(request, metadata=user.metadata, timeout=5)
    assert first.user_id == str(user.id) and first.HasField("create_time")
    assert re.fullmatch(r"[A-Za-z0-9_-]{16}", first.referral_code)
    # Registering again (with the same request_id or a new one) gives the same affiliate back.
    assert await support.stub(backoffice_channel).RegisterAffiliate(request, metadata=user.metadata, timeout=5) == first
    again = pb.RegisterAffiliateRequest(request_id=support.new_id())
    assert await support.stub(backoffice_channel).RegisterAffiliate(again, metadata=user.metadata, timeout=5) == first
    others = {(await support.make_affiliate(backoffice_channel, res)).code for _ in range(5)}
    assert first.referral_code not in others and len(others) == 5
    link = await support.stub(backoffice_channel).GetReferralLink(
        pb.GetReferralLinkRequest(), metadata=user.metadata, timeout=5
    )
    assert link.referral_code == first.referral_code
    assert link.url == f"{settings.public_url}/signup?ref={first.referral_code}"
    async with res.sessions() as session:
        actions = (
            await session.scalars(select(AuditEvent.action).where(AuditEvent.object_id == uuid.UUID(first.id)))
        ).all()
    assert actions == ["RegisterAffiliate"]


async def test_a_user_who_is_no_affiliate_has_no_link(
    backoffice_channel: grpc.aio.Channel, user: UserCredentials
) -> None:
    failure = await expect_failure(
        support.stub(backoffice_channel).GetReferralLink(pb.GetReferralLinkRequest(), metadata=user.metadata, timeout=5)
    )
    assert failure.code == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]


async def test_create_user_with_a_code_is_attributed_once_and_for_ever(
    backoffice_channel: grpc.aio.Channel, res: Resources, admin: UserCredentials
) -> None:
    """The new user shows its referrer, the affiliate lists it, and the referral can never change."""
    affiliate = await support.make_affiliate(backoffice_channel, res)
    created = await support.create_user(backoffice_channel, admin, affiliate.code)
    assert created.user.referrer_affiliate_id == affiliate.id
    referred = UserCredentials(uuid.UUID(created.user.id), created.api_token, admin.role)
    me = await rpc.AccountServiceStub(backoffice_channel).GetCurrentUser(
        pb.GetCurrentUserRequest(), metadata=referred.metadata, timeout=5
    )
    assert me.referrer_affiliate_id == affiliate.id
    listed = await support.stub(backoffice_channel).ListReferrals(
        pb.ListReferralsRequest(), metadata=affiliate.user.metadata, timeout=5
    )
    assert [(r.referred_user_id, r.affiliate_id, r.commission_total) for r in listed.referrals] == [
        (created.user.id, affiliate.id, "0.00")
    ]
    # For ever: the referral row cannot be changed or deleted, and a second attribution is refused.
    other = await support.make_affiliate(backoffice_channel, res)
    async with res.sessions() as session:
        other_row = await session.get_one(Affiliate, uuid.UUID(other.id))
    for statement in ("UPDATE referrals SET affiliate_id = :other", "DELETE FROM referrals"):
        with pytest.raises(DBAPIError, match="never changed"):
            async with res.sessions.begin() as session:
                await session.execute(
                    text(statement + " WHERE referred_user_id = :user"),
                    {"other": other_row.id, "user": uuid.UUID(created.user.id)},
                )
    with pytest.raises(IntegrityError):
        async with res.sessions.begin() as session:
            await referrals.attribute(session, other_row, uuid.UUID(created.user.id))
    assert me.referrer_affiliate_id == affiliate.id
    # A user created without a code has no referrer.
    plain = await support.create_user(backoffice_channel, admin, "")
    assert plain.user.referrer_affiliate_id == ""


async def test_unknown_codes_and_self_referral_are_invalid(
    backoffice_channel: grpc.aio.Channel, res: Resources, admin: UserCredentials
) -> None:
    affiliate = await support.make_affiliate(backoffice_channel, res)
    async with res.sessions() as session:
        email = (await session.scalars(text("SELECT email FROM users WHERE id = :id"), {"id": affiliate.user.id})).one()
    local, _, domain = email.partition("@")
    for code, address in [
        ("not-a-code", None),
        (affiliate.code.swapcase(), None),  # codes are exact
        (affiliate.code, f"{local.upper()}+second@{domain}"),  # the affiliate's own mailbox
    ]:
        failure = await expect_failure(support.create_user(backoffice_channel, admin, code, address))
        assert failure.code == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert set(failure.violations) == {"referral_code"}  # type: ignore[attr-defined]
    async with res.sessions() as session:
        count = await session.scalar(
            select(text("count(*)")).select_from(Referral).where(Referral.affiliate_id == uuid.UUID(affiliate.id))
        )
    assert count == 0


async def test_self_referral_and_cycles_are_refused_where_attribution_happens(
    backoffice_channel: grpc.aio.Channel, res: Resources, admin: UserCredentials
) -> None:
    """Through the API a referred user is always new, so neither can happen there; ``attribute`` (what
    CreateUser calls) refuses both anyway, for any path that may attribute later."""
    first = await support.make_affiliate(backoffice_channel, res)
    second_user = await support.create_user(backoffice_channel, admin, first.code)  # first referred second
    second = await support.stub(backoffice_channel).RegisterAffiliate(
        pb.RegisterAffiliateRequest(),
        metadata=UserCredentials(uuid.UUID(second_user.user.id), second_user.api_token, admin.role).metadata,
        timeout=5,
    )
    third_user = await support.create_user(backoffice_channel, admin, second.referral_code)  # second referred third
    third = await support.stub(backoffice_channel).RegisterAffiliate(
        pb.RegisterAffiliateRequest(),
        metadata=UserCredentials(uuid.UUID(third_user.user.id), third_user.api_token, admin.role).metadata,
        timeout=5,
    )
    async with res.sessions.begin() as session:
        rows = {a.id: a for a in (await session.scalars(select(Affiliate))).all()}
        first_row, third_row = rows[uuid.UUID(first.id)], rows[uuid.UUID(third.id)]
        with pytest.raises(FailedPrecondition) as refused:
            await referrals.attribute(session, first_row, first.user.id)
        assert refused.value.reason == "SELF_REFERRAL"
        with pytest.raises(FailedPrecondition) as refused:  # first -> second -> third -> first
            await referrals.attribute(session, third_row, first.user.id)
        assert refused.value.reason == "REFERRAL_CYCLE"
        outsider = await make_user(res)
        assert (await referrals.attribute(session, third_row, outsider.id)).affiliate_id == third_row.id
        await session.rollback()


def test_a_new_code_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    """A code is typed after an option (``--referral-code CODE``): a leading dash would read as an option."""
    drawn = iter(["-dash-first", "_then-fine"])
    monkeypatch.setattr(referrals.secrets, "token_urlsafe", lambda n: next(drawn))
    assert referrals.new_code() == "_then-fine"
    monkeypatch.undo()
    codes = [referrals.new_code() for _ in range(2000)]
    assert not [c for c in codes if c.startswith("-")] and {len(c) for c in codes} == {16}
