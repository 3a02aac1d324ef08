"""RiskService through the generated stubs on real Postgres: the empty policy of a device that has none, a
whole policy replaced and read back (an unchanged limit keeps when it was set), every bad field named by
its path with nothing changed, idempotent updates, another user's device NOT_FOUND (an admin reaches
every one), stopouts listed newest first page by page (all, or only the active ones), and a reset that
lifts one, resolves its alert, is audited, and is refused the second time."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import grpc
import pytest
from sqlalchemy import func, select

from backoffice import risk
from backoffice.bootstrap import Resources
from backoffice.models import Alert, AuditEvent, RiskPeriod, RiskPolicy, Stopout
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import backoffice_pb2_grpc as rpc
from signalhub.v1 import common_pb2
from tests.backoffice.risk.support import add_stopouts, raise_stopout_alert, stopout_row, stopped_out
from tests.conftest import KeyCredentials, RpcFailure, UserCredentials, make_device, make_user, rpc_failure
from tests.gateway.support import row

DAILY_LOSS = pb.RiskLimit(
    period=pb.RISK_PERIOD_DAY, metric=pb.RISK_METRIC_LOSS, max_percent="5", action=pb.RISK_ACTION_CLOSE_ALL
)
WEEKLY_DRAWDOWN = pb.RiskLimit(
    period=pb.RISK_PERIOD_WEEK, metric=pb.RISK_METRIC_DRAWDOWN, max_amount="250.50", action=pb.RISK_ACTION_STOP_OPENING
)


def stub(channel: grpc.aio.Channel) -> rpc.RiskServiceStub:
    return rpc.RiskServiceStub(channel)


async def failure(call: object) -> RpcFailure:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return rpc_failure(info.value)


def full_policy(device_id: uuid.UUID) -> pb.RiskPolicy:
    return pb.RiskPolicy(
        device_id=str(device_id),
        limits=[DAILY_LOSS, WEEKLY_DRAWDOWN],
        max_open_positions=5,
        max_open_positions_per_instrument=2,
        max_volume="0.50",
        max_deviation="0.8",
        max_delay_seconds=30,
        allowed_sides=[common_pb2.SIDE_SELL, common_pb2.SIDE_BUY],
    )


async def stored_policy(res: Resources, device_id: uuid.UUID) -> risk.Policy:
    async with res.sessions() as session:
        return await risk.load_policy(session, device_id)


async def test_a_device_without_a_policy_has_the_empty_one(
    backoffice_channel: grpc.aio.Channel, user: UserCredentials, device: KeyCredentials
) -> None:
    policy = await stub(backoffice_channel).GetRiskPolicy(
        pb.GetRiskPolicyRequest(device_id=str(device.id)), metadata=user.metadata
    )
    assert policy == pb.RiskPolicy(device_id=str(device.id))


async def test_an_update_replaces_the_whole_policy_and_keeps_when_unchanged_limits_were_set(
    res: Resources, backoffice_channel: grpc.aio.Channel, user: UserCredentials, device: KeyCredentials
) -> None:
    risks = stub(backoffice_channel)
    updated = await risks.UpdateRiskPolicy(
        pb.UpdateRiskPolicyRequest(policy=full_policy(device.id)), metadata=user.metadata
    )
    expected = full_policy(device.id)
    del expected.allowed_sides[:]
    expected.allowed_sides.extend([common_pb2.SIDE_BUY, common_pb2.SIDE_SELL])  # in the enum's order
    assert updated == expected
    got = await risks.GetRiskPolicy(pb.GetRiskPolicyRequest(device_id=str(device.id)), metadata=user.metadata)
    assert got == expected
    first = await stored_policy(res, device.id)
    daily_set_at = first.limits[0].set_at
    assert first.limits[0].period is RiskPeriod.DAY and daily_set_at > datetime.now(UTC) - timedelta(minutes=1)

    changed = pb.RiskLimit()
    changed.CopyFrom(WEEKLY_DRAWDOWN)
    changed.max_amount = "300"
    replaced = pb.RiskPolicy(device_id=str(device.id), limits=[changed, DAILY_LOSS], max_volume="1")
    got = await risks.UpdateRiskPolicy(pb.UpdateRiskPolicyRequest(policy=replaced), metadata=user.metadata)
    assert got == replaced  # the whole policy: the caps it left out are gone
    second = await stored_policy(res, device.id)
    assert [limit.period for limit in second.limits] == [RiskPeriod.WEEK, RiskPeriod.DAY]
    assert second.limits[1].set_at == daily_set_at  # the same limit: still measured from when it was set
    assert second.limits[0].set_at > first.limits[1].set_at  # a changed limit is a new one
    assert second.limits[0].key != first.limits[1].key and second.limits[1].key == first.limits[0].key

    cleared = await risks.UpdateRiskPolicy(
        pb.UpdateRiskPolicyRequest(policy=pb.RiskPolicy(device_id=str(device.id))), metadata=user.metadata
    )
    assert cleared == pb.RiskPolicy(device_id=str(device.id))
    assert (await stored_policy(res, device.id)).is_empty


BAD_LIMITS = [
    (pb.RiskLimit(metric=pb.RISK_METRIC_LOSS, max_amount="1", action=pb.RISK_ACTION_CLOSE_ALL), "period"),
    (pb.RiskLimit(period=pb.RISK_PERIOD_DAY, max_amount="1", action=pb.RISK_ACTION_CLOSE_ALL), "metric"),
    (pb.RiskLimit(period=pb.RISK_PERIOD_DAY, metric=pb.RISK_METRIC_LOSS, max_amount="1", action=9), "action"),
    (pb.RiskLimit(period=pb.RISK_PERIOD_DAY, metric=pb.RISK_METRIC_LOSS, action=1), "max_amount"),
    (pb.RiskLimit(period=1, metric=1, max_amount="-3", action=1), "max_amount"),
    (pb.RiskLimit(period=1, metric=1, max_percent="100.5", action=1), "max_percent"),
    (pb.RiskLimit(period=1, metric=1, max_percent="abc", action=1), "max_percent"),
]


@pytest.mark.parametrize(
    ("limit", "field"), BAD_LIMITS, ids=[f"{field}-{i}" for i, (_, field) in enumerate(BAD_LIMITS)]
)
async def test_a_bad_limit_is_named_by_its_path_and_changes_nothing(
    res: Resources,
    backoffice_channel: grpc.aio.Channel,
    user: UserCredentials,
    device: KeyCredentials,
    limit: pb.RiskLimit,
    field: str,
) -> None:
    risks = stub(backoffice_channel)
    await risks.UpdateRiskPolicy(pb.UpdateRiskPolicyRequest(policy=full_policy(device.id)), metadata=user.metadata)
    before = await stored_policy(res, device.id)
    bad = pb.RiskPolicy(device_id=str(device.id), limits=[DAILY_LOSS, limit], max_open_positions=1)
    refused = await failure(risks.UpdateRiskPolicy(pb.UpdateRiskPolicyRequest(policy=bad), metadata=user.metadata))
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert list(refused.violations) == [f"policy.limits[1].{field}"]
    assert await stored_policy(res, device.id) == before


async def test_every_bad_field_is_named_at_once_and_nothing_changes(
    res: Resources, backoffice_channel: grpc.aio.Channel, user: UserCredentials, device: KeyCredentials
) -> None:
    risks = stub(backoffice_channel)
    bad = pb.RiskPolicy(
        device_id=str(device.id),
        limits=[DAILY_LOSS, DAILY_LOSS],
        max_open_positions=-1,
        max_open_positions_per_instrument=-1,
        max_volume="0",
        max_deviation="NaN",
        max_delay_seconds=-5,
        allowed_sides=[common_pb2.SIDE_UNSPECIFIED, 7],
    )
    refused = await failure(risks.UpdateRiskPolicy(pb.UpdateRiskPolicyRequest(policy=bad), metadata=user.metadata))
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(refused.violations) == {
        "policy.limits[1]",  # the same limit twice
        "policy.max_open_positions",
        "policy.max_open_positions_per_instrument",
        "policy.max_volume",
        "policy.max_deviation",
        "policy.max_delay_seconds",
        "policy.allowed_sides[0]",
        "policy.allowed_sides[1]",
    }
    # However long a list, it is one violation: the answer's details stay small.
    longest = pb.RiskPolicy(device_id=str(device.id), limits=[pb.RiskLimit()] * 5_000, allowed_sides=[9] * 5_000)
    refused = await failure(risks.UpdateRiskPolicy(pb.UpdateRiskPolicyRequest(policy=longest), metadata=user.metadata))
    assert set(refused.violations) == {"policy.limits", "policy.allowed_sides"}
    async with res.sessions() as session:
        assert await session.get(RiskPolicy, device.id) is None


async def test_an_update_with_a_request_id_happens_once(
    res: Resources, backoffice_channel: grpc.aio.Channel, user: UserCredentials, device: KeyCredentials
) -> None:
    risks = stub(backoffice_channel)
    request = pb.UpdateRiskPolicyRequest(request_id=str(uuid.uuid4()), policy=full_policy(device.id))
    first = await risks.UpdateRiskPolicy(request, metadata=user.metadata)
    stamped = (await stored_policy(res, device.id)).updated_at
    assert await risks.UpdateRiskPolicy(request, metadata=user.metadata) == first
    assert (await stored_policy(res, device.id)).updated_at == stamped  # the repeat changed nothing
    async with res.sessions() as session:
        audited = await session.scalar(
            select(func.count()).where(AuditEvent.object_id == device.id, AuditEvent.action == "UpdateRiskPolicy")
        )
    assert audited == 1
    other = pb.UpdateRiskPolicyRequest(request_id=request.request_id, policy=pb.RiskPolicy(device_id=str(device.id)))
    reused = await failure(risks.UpdateRiskPolicy(other, metadata=user.metadata))
    assert (reused.code, reused.reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    assert not (await stored_policy(res, device.id)).is_empty


async def test_another_users_device_is_not_found_and_an_admin_reaches_every_one(
    res: Resources,
    backoffice_channel: grpc.aio.Channel,
    user: UserCredentials,
    admin: UserCredentials,
    device: KeyCredentials,
) -> None:
    risks = stub(backoffice_channel)
    stranger = await make_user(res)
    for device_id in (str(device.id), str(uuid.uuid4())):
        calls = [
            risks.GetRiskPolicy(pb.GetRiskPolicyRequest(device_id=device_id), metadata=stranger.metadata),
            risks.UpdateRiskPolicy(
                pb.UpdateRiskPolicyRequest(policy=pb.RiskPolicy(device_id=device_id)), metadata=stranger.metadata
            ),
            risks.ListStopouts(pb.ListStopoutsRequest(device_id=device_id), metadata=stranger.metadata),
        ]
        for call in calls:
            assert (await failure(call)).code == grpc.StatusCode.NOT_FOUND
    malformed = await failure(
        risks.GetRiskPolicy(pb.GetRiskPolicyRequest(device_id="device-1"), metadata=user.metadata)
    )
    assert (malformed.code, list(malformed.violations)) == (grpc.StatusCode.INVALID_ARGUMENT, ["device_id"])
    malformed = await failure(
        risks.UpdateRiskPolicy(pb.UpdateRiskPolicyRequest(policy=pb.RiskPolicy(device_id="")), metadata=user.metadata)
    )
    assert (malformed.code, list(malformed.violations)) == (grpc.StatusCode.INVALID_ARGUMENT, ["policy.device_id"])
    async with res.sessions() as session:
        assert await session.get(RiskPolicy, device.id) is None  # the stranger changed nothing

    set_by_admin = await risks.UpdateRiskPolicy(
        pb.UpdateRiskPolicyRequest(policy=full_policy(device.id)), metadata=admin.metadata
    )
    assert set_by_admin.max_open_positions == 5
    got = await risks.GetRiskPolicy(pb.GetRiskPolicyRequest(device_id=str(device.id)), metadata=user.metadata)
    assert got == set_by_admin
    async with res.sessions() as session:
        [audited] = await session.scalars(
            select(AuditEvent).where(AuditEvent.object_id == device.id, AuditEvent.action == "UpdateRiskPolicy")
        )
    assert audited.actor_id == admin.id


async def test_stopouts_are_listed_newest_first_page_by_page(
    res: Resources, backoffice_channel: grpc.aio.Channel, user: UserCredentials, device: KeyCredentials
) -> None:
    now = datetime.now(UTC)
    rows = [
        stopout_row(device.id, now - timedelta(hours=1)),  # active
        stopout_row(device.id, now - timedelta(hours=2), reset_time=now - timedelta(minutes=30)),
        stopout_row(device.id, now - timedelta(hours=3), end_time=None),  # active (no end)
        stopout_row(device.id, now - timedelta(hours=4)),  # active
        stopout_row(device.id, now - timedelta(days=2)),  # its period is over
    ]
    newest_first = await add_stopouts(res, *rows)
    other_device = await make_device(res, user)
    await add_stopouts(res, stopout_row(other_device.id, now - timedelta(minutes=1)))
    risks = stub(backoffice_channel)

    async def pages(active_only: bool) -> list[list[pb.Stopout]]:
        found, token = [], ""
        while True:
            page = await risks.ListStopouts(
                pb.ListStopoutsRequest(
                    device_id=str(device.id), active_only=active_only, page_size=2, page_token=token
                ),
                metadata=user.metadata,
            )
            found.append(list(page.stopouts))
            token = page.next_page_token
            if not token:
                return found

    every = await pages(active_only=False)
    assert [len(page) for page in every] == [2, 2, 1]
    listed = [stopout for page in every for stopout in page]
    assert [s.id for s in listed] == [str(i) for i in newest_first]  # the other device's is not there
    by_id = {s.id: s for s in listed}
    assert [by_id[str(i)].active for i in newest_first] == [True, False, True, True, False]
    first = by_id[str(rows[0].id)]
    assert (first.device_id, first.reference, first.value, first.equity) == (
        str(device.id),
        "10000.00",
        "512.40",
        "9487.60",
    )
    assert first.limit == DAILY_LOSS
    assert first.trigger_time.ToDatetime(tzinfo=UTC) == rows[0].trigger_time
    assert first.HasField("end_time") and not first.HasField("reset_time")
    assert by_id[str(rows[1].id)].HasField("reset_time") and not by_id[str(rows[2].id)].HasField("end_time")

    active = [stopout for page in await pages(active_only=True) for stopout in page]
    assert [s.id for s in active] == [str(rows[0].id), str(rows[2].id), str(rows[3].id)]
    token = (
        await risks.ListStopouts(pb.ListStopoutsRequest(device_id=str(device.id), page_size=1), metadata=user.metadata)
    ).next_page_token
    switched = await failure(
        risks.ListStopouts(
            pb.ListStopoutsRequest(device_id=str(device.id), active_only=True, page_token=token), metadata=user.metadata
        )
    )
    assert (switched.code, list(switched.violations)) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_token"])


async def test_a_reset_lifts_a_stopout_once(
    res: Resources,
    backoffice_channel: grpc.aio.Channel,
    user: UserCredentials,
    admin: UserCredentials,
    device: KeyCredentials,
) -> None:
    now = datetime.now(UTC)
    stopout = stopout_row(device.id, now - timedelta(minutes=10))
    await add_stopouts(res, stopout)
    alert_id = await raise_stopout_alert(res, stopout, now)
    risks = stub(backoffice_channel)
    stranger = await make_user(res)
    hidden = await failure(risks.ResetStopout(pb.ResetStopoutRequest(id=str(stopout.id)), metadata=stranger.metadata))
    assert hidden.code == grpc.StatusCode.NOT_FOUND
    assert (await row(res, Alert, alert_id)).resolved_at is None

    request = pb.ResetStopoutRequest(id=str(stopout.id), request_id=str(uuid.uuid4()))
    reset = await risks.ResetStopout(request, metadata=user.metadata)
    assert (reset.id, reset.active, reset.HasField("reset_time")) == (str(stopout.id), False, True)
    assert await risks.ResetStopout(request, metadata=user.metadata) == reset  # a retry gets the same answer
    assert (await row(res, Alert, alert_id)).resolved_at is not None
    async with res.sessions() as session:
        audited = list(await session.scalars(select(AuditEvent).where(AuditEvent.object_id == stopout.id)))
    assert not await stopped_out(res, [device.id], datetime.now(UTC))
    assert [(e.action, e.actor_id, e.request_id) for e in audited] == [("ResetStopout", user.id, request.request_id)]
    again = await failure(risks.ResetStopout(pb.ResetStopoutRequest(id=str(stopout.id)), metadata=admin.metadata))
    assert (again.code, again.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "STOPOUT_NOT_ACTIVE")
    listed = await risks.ListStopouts(
        pb.ListStopoutsRequest(device_id=str(device.id), active_only=True), metadata=user.metadata
    )
    assert list(listed.stopouts) == []


async def test_an_admin_resets_anyones_stopout(
    res: Resources, backoffice_channel: grpc.aio.Channel, admin: UserCredentials, device: KeyCredentials
) -> None:
    [stopout_id] = await add_stopouts(res, stopout_row(device.id, datetime.now(UTC) - timedelta(minutes=1)))
    reset = await stub(backoffice_channel).ResetStopout(
        pb.ResetStopoutRequest(id=str(stopout_id)), metadata=admin.metadata
    )
    assert not reset.active
    async with res.sessions() as session:
        stored = await session.get_one(Stopout, stopout_id)
    assert stored.reset_by == admin.id


async def test_the_largest_values_the_wire_allows_are_stored_exactly(
    res: Resources, backoffice_channel: grpc.aio.Channel, user: UserCredentials, device: KeyCredentials
) -> None:
    largest = "99999999999999999999.999999999999"
    edge = pb.RiskLimit(
        period=pb.RISK_PERIOD_MONTH,
        metric=pb.RISK_METRIC_DRAWDOWN,
        max_amount=largest,
        max_percent="0.000000000001",
        action=pb.RISK_ACTION_STOP_OPENING,
    )
    policy = pb.RiskPolicy(
        device_id=str(device.id),
        limits=[edge],
        max_open_positions=2**31 - 1,
        max_open_positions_per_instrument=2**31 - 1,
        max_volume=largest,
        max_deviation="0.000000000001",
        max_delay_seconds=2**31 - 1,
    )
    risks = stub(backoffice_channel)
    assert await risks.UpdateRiskPolicy(pb.UpdateRiskPolicyRequest(policy=policy), metadata=user.metadata) == policy
    assert (
        await risks.GetRiskPolicy(pb.GetRiskPolicyRequest(device_id=str(device.id)), metadata=user.metadata) == policy
    )
    stored = await stored_policy(res, device.id)
    assert stored.max_volume == stored.limits[0].max_amount == Decimal(largest)
