"""backoffice.risk.stopouts: which devices are stopped out (not reset, period not over), and a reset that
lifts one, resolves its alert and is audited once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from backoffice import risk
from backoffice.bootstrap import Resources
from backoffice.models import Alert, AuditEvent, Stopout
from signalhub.protocol.errors import FailedPrecondition, NotFound
from tests.backoffice.risk.support import add_stopouts, raise_stopout_alert, stopout_row, stopped_out
from tests.conftest import KeyCredentials, UserCredentials, make_device, make_user
from tests.gateway.support import row


async def test_a_device_is_stopped_out_while_one_of_its_stopouts_is_active(
    res: Resources, user: UserCredentials, device: KeyCredentials
) -> None:
    now = datetime.now(UTC)
    ended, lifted, lifetime, quiet = [await make_device(res, user) for _ in range(4)]
    await add_stopouts(
        res,
        stopout_row(device.id, now - timedelta(hours=1)),  # its day is not over
        stopout_row(ended.id, now - timedelta(days=2)),  # its day is over
        stopout_row(lifted.id, now - timedelta(hours=1), reset_time=now - timedelta(minutes=1)),
        stopout_row(lifetime.id, now - timedelta(days=400), end_time=None),  # a LIFETIME one never ends
    )
    everyone = [device.id, ended.id, lifted.id, lifetime.id, quiet.id]
    assert await stopped_out(res, everyone, now) == {device.id, lifetime.id}
    assert await stopped_out(res, everyone, now + timedelta(days=1)) == {lifetime.id}


async def test_a_reset_lifts_the_stopout_resolves_its_alert_and_is_audited(
    res: Resources, user: UserCredentials, device: KeyCredentials
) -> None:
    now = datetime.now(UTC)
    stopout = stopout_row(device.id, now - timedelta(minutes=5))
    await add_stopouts(res, stopout)
    alert_id = await raise_stopout_alert(res, stopout, now)
    stranger = await make_user(res)
    async with res.sessions.begin() as session:
        with pytest.raises(NotFound):
            await risk.reset_stopout(session, stranger.caller, stopout.id, now=now)
    async with res.sessions.begin() as session:
        reset = await risk.reset_stopout(session, user.caller, stopout.id, now=now)
        assert (reset.reset_time, reset.reset_by, risk.is_active(reset, now)) == (now, user.id, False)
    assert (await row(res, Alert, alert_id)).resolved_at == now
    assert (await row(res, Stopout, stopout.id)).reset_time == now
    assert not await stopped_out(res, [device.id], now)
    async with res.sessions() as session:
        audited = list(await session.scalars(select(AuditEvent).where(AuditEvent.object_id == stopout.id)))
    assert [(e.action, e.actor_id, e.details["device_id"]) for e in audited] == [
        ("ResetStopout", user.id, str(device.id))
    ]
    async with res.sessions.begin() as session:
        with pytest.raises(FailedPrecondition) as info:
            await risk.reset_stopout(session, user.caller, stopout.id, now=now)
    assert info.value.reason == "STOPOUT_NOT_ACTIVE"


async def test_a_stopout_whose_period_is_over_cannot_be_reset(
    res: Resources, user: UserCredentials, device: KeyCredentials
) -> None:
    now = datetime.now(UTC)
    [stopout_id] = await add_stopouts(res, stopout_row(device.id, now - timedelta(days=3)))
    async with res.sessions.begin() as session:
        with pytest.raises(FailedPrecondition):
            await risk.reset_stopout(session, user.caller, stopout_id, now=now)
    assert (await row(res, Stopout, stopout_id)).reset_time is None
