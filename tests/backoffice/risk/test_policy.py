"""backoffice.risk.policy: validation names every bad field by its path and accepts nothing half-way; a
limit's key is what it is; a device without a policy has the empty one; an update keeps the set_at of a
limit it keeps and loads back typed."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from backoffice import risk
from backoffice.bootstrap import Resources
from backoffice.models import RiskAction, RiskMetric, RiskPeriod, Side
from signalhub.protocol.errors import InvalidArgument, NotFound
from tests.conftest import KeyCredentials, UserCredentials, make_device, make_user

NOW = datetime(2030, 1, 6, 12, tzinfo=UTC)
DEVICE = uuid.UUID(int=1)
DAILY = risk.LimitDraft(RiskPeriod.DAY, RiskMetric.LOSS, "", "5", RiskAction.CLOSE_ALL)
WEEKLY = risk.LimitDraft(RiskPeriod.WEEK, RiskMetric.DRAWDOWN, "250.50", "", RiskAction.STOP_OPENING)


def violations(draft: risk.PolicyDraft) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as info:
        risk.validate_policy(draft, DEVICE, NOW)
    return dict(info.value.violations)


def one_limit(**changes: object) -> risk.PolicyDraft:
    """A policy of one limit: DAILY with ``changes``."""
    return risk.PolicyDraft(limits=(replace(DAILY, **changes),))


@pytest.mark.parametrize(
    ("draft", "path"),
    [
        (one_limit(period=None), "policy.limits[0].period"),
        (one_limit(metric=None), "policy.limits[0].metric"),
        (one_limit(action=None), "policy.limits[0].action"),
        (risk.PolicyDraft(limits=(DAILY, replace(WEEKLY, max_amount=" "))), "policy.limits[1].max_amount"),
        (one_limit(max_amount="0"), "policy.limits[0].max_amount"),
        (one_limit(max_percent="NaN"), "policy.limits[0].max_percent"),
        (one_limit(max_percent="100.01"), "policy.limits[0].max_percent"),
        (one_limit(max_percent="-5"), "policy.limits[0].max_percent"),
        (risk.PolicyDraft(limits=(DAILY, WEEKLY, replace(DAILY, max_percent="5.00"))), "policy.limits[2]"),
        (risk.PolicyDraft(limits=(DAILY,) * 11), "policy.limits"),
        (risk.PolicyDraft(max_open_positions=-1), "policy.max_open_positions"),
        (risk.PolicyDraft(max_open_positions_per_instrument=-3), "policy.max_open_positions_per_instrument"),
        (risk.PolicyDraft(max_delay_seconds=-1), "policy.max_delay_seconds"),
        (risk.PolicyDraft(max_volume="0"), "policy.max_volume"),
        (risk.PolicyDraft(max_deviation="1e3"), "policy.max_deviation"),
        (risk.PolicyDraft(allowed_sides=(Side.BUY, None)), "policy.allowed_sides[1]"),
        (risk.PolicyDraft(allowed_sides=(Side.BUY, Side.SELL, Side.BUY)), "policy.allowed_sides"),
    ],
)
def test_each_bad_field_is_named_by_its_path(draft: risk.PolicyDraft, path: str) -> None:
    assert list(violations(draft)) == [path]


def test_a_percent_of_100_and_an_amount_with_it_are_fine() -> None:
    policy = risk.validate_policy(one_limit(max_amount="1000", max_percent="100"), DEVICE, NOW)
    assert (policy.limits[0].max_amount, policy.limits[0].max_percent) == (Decimal(1000), Decimal(100))


def test_every_bad_field_is_named_at_once() -> None:
    draft = risk.PolicyDraft(
        limits=(risk.LimitDraft(max_percent="150"), DAILY),
        max_open_positions=-1,
        max_volume="x",
        allowed_sides=(None,),
    )
    assert set(violations(draft)) == {
        "policy.limits[0].period",
        "policy.limits[0].metric",
        "policy.limits[0].action",
        "policy.limits[0].max_percent",
        "policy.max_open_positions",
        "policy.max_volume",
        "policy.allowed_sides[0]",
    }


def test_a_valid_draft_becomes_a_typed_policy() -> None:
    draft = risk.PolicyDraft(
        limits=(DAILY, WEEKLY),
        max_open_positions=3,
        max_open_positions_per_instrument=1,
        max_volume="0.50",
        max_deviation="0.8",
        max_delay_seconds=30,
        allowed_sides=(Side.SELL, Side.BUY),
    )
    policy = risk.validate_policy(draft, DEVICE, NOW)
    daily, weekly = policy.limits
    assert (daily.period, daily.metric, daily.max_amount, daily.max_percent, daily.action, daily.set_at) == (
        RiskPeriod.DAY,
        RiskMetric.LOSS,
        None,
        Decimal("5"),
        RiskAction.CLOSE_ALL,
        NOW,
    )
    assert (weekly.max_amount, weekly.max_percent) == (Decimal("250.50"), None)
    assert (policy.max_volume, policy.max_deviation, policy.max_delay_seconds) == (Decimal("0.50"), Decimal("0.8"), 30)
    assert policy.sides_in_order() == (Side.BUY, Side.SELL)
    assert not policy.is_empty
    assert risk.validate_policy(risk.PolicyDraft(), DEVICE, NOW).is_empty


def test_a_limits_key_is_what_it_is() -> None:
    key = risk.limit_key(RiskPeriod.DAY, RiskMetric.LOSS, None, Decimal("5"), RiskAction.CLOSE_ALL)
    assert key == risk.limit_key(RiskPeriod.DAY, RiskMetric.LOSS, None, Decimal("5.000"), RiskAction.CLOSE_ALL)
    assert len(key) == 64 and int(key, 16) >= 0
    others = {
        risk.limit_key(RiskPeriod.WEEK, RiskMetric.LOSS, None, Decimal("5"), RiskAction.CLOSE_ALL),
        risk.limit_key(RiskPeriod.DAY, RiskMetric.DRAWDOWN, None, Decimal("5"), RiskAction.CLOSE_ALL),
        risk.limit_key(RiskPeriod.DAY, RiskMetric.LOSS, Decimal("5"), None, RiskAction.CLOSE_ALL),
        risk.limit_key(RiskPeriod.DAY, RiskMetric.LOSS, None, Decimal("5"), RiskAction.STOP_OPENING),
        risk.limit_key(RiskPeriod.DAY, RiskMetric.LOSS, Decimal("1"), Decimal("5"), RiskAction.CLOSE_ALL),
    }
    assert key not in others and len(others) == 5


def test_a_stored_limit_reads_back_the_same() -> None:
    limit = risk.validate_policy(risk.PolicyDraft(limits=(WEEKLY,)), DEVICE, NOW).limits[0]
    stored = limit.to_json()
    assert stored == {
        "key": limit.key,
        "period": "WEEK",
        "metric": "DRAWDOWN",
        "max_amount": "250.50",
        "max_percent": None,
        "action": "STOP_OPENING",
        "set_at": NOW.isoformat(),
    }
    assert risk.Limit.from_json(stored) == limit


async def test_a_device_without_a_policy_has_the_empty_one(res: Resources, device: KeyCredentials) -> None:
    async with res.sessions() as session:
        policy = await risk.load_policy(session, device.id)
    assert policy == risk.Policy(device.id) and policy.is_empty and policy.updated_at is None
    assert policy.allows_side(Side.BUY) and policy.allows_side(Side.SELL)


async def test_an_update_keeps_the_set_at_of_the_limits_it_keeps(
    res: Resources, user: UserCredentials, device: KeyCredentials
) -> None:
    later = NOW + timedelta(days=3)
    async with res.sessions.begin() as session:
        await risk.update_policy(session, user.caller, device.id, risk.PolicyDraft(limits=(DAILY, WEEKLY)), now=NOW)
    kept = risk.LimitDraft(RiskPeriod.DAY, RiskMetric.LOSS, "", "5.0", RiskAction.CLOSE_ALL)  # the same limit
    changed = risk.LimitDraft(RiskPeriod.WEEK, RiskMetric.DRAWDOWN, "300", "", RiskAction.STOP_OPENING)
    draft = risk.PolicyDraft(limits=(changed, kept), max_volume="1.5", allowed_sides=(Side.SELL,))
    async with res.sessions.begin() as session:
        await risk.update_policy(session, user.caller, device.id, draft, now=later)
    other = await make_device(res, user)
    async with res.sessions() as session:
        loaded = await risk.load_policies(session, [device.id, other.id])
    policy = loaded[device.id]
    assert [(limit.period, limit.set_at) for limit in policy.limits] == [
        (RiskPeriod.WEEK, later),
        (RiskPeriod.DAY, NOW),
    ]
    assert policy.limits[1].key == risk.limit_key(
        RiskPeriod.DAY, RiskMetric.LOSS, None, Decimal(5), RiskAction.CLOSE_ALL
    )
    assert (policy.max_volume, policy.allowed_sides, policy.updated_at) == (Decimal("1.5"), {Side.SELL}, later)
    assert not policy.allows_side(Side.BUY)
    assert loaded[other.id] == risk.Policy(other.id)


async def test_only_the_owner_or_an_admin_reaches_a_policy(
    res: Resources, user: UserCredentials, admin: UserCredentials, device: KeyCredentials
) -> None:
    stranger = await make_user(res)
    async with res.sessions() as session:
        with pytest.raises(NotFound):
            await risk.get_policy(session, stranger.caller, device.id)
        with pytest.raises(NotFound):
            await risk.get_policy(session, user.caller, uuid.uuid4())
        assert (await risk.get_policy(session, admin.caller, device.id)).device_id == device.id
