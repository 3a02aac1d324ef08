"""Risk limits measured on account states (backoffice.risk.limits) on real Postgres: a loss or drawdown
reached records exactly one stopout (also when two replicas measure the same state at once), raises one
alert, and with CLOSE_ALL queues exactly one close command per open position; a period's end lifts it and
the next period measures again; after a reset the limit measures afresh."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from backoffice.bootstrap import Resources
from backoffice.devices.account_states import AccountStateIn
from backoffice.models import (
    Alert,
    AlertKind,
    CloseCommand,
    CloseReason,
    RiskAction,
    RiskMetric,
    RiskPeriod,
    RiskPolicy,
    Stopout,
)
from backoffice.risk.limits import act_on, record_states
from backoffice.risk.policy import Limit
from tests.backoffice.risk.support import stopped_out
from tests.conftest import KeyCredentials, UserCredentials, make_device
from tests.gateway.support import Book

D = Decimal
NOON = datetime(2026, 12, 9, 12, 0, tzinfo=UTC)  # a Wednesday


async def _limit(
    res: Resources,
    device_id: uuid.UUID,
    metric: RiskMetric = RiskMetric.LOSS,
    *,
    percent: str | None = "5",
    amount: str | None = None,
    action: RiskAction = RiskAction.STOP_OPENING,
    period: RiskPeriod = RiskPeriod.DAY,
) -> Limit:
    limit = Limit.of(period, metric, D(amount) if amount else None, D(percent) if percent else None, action, NOON)
    async with res.sessions.begin() as session:
        session.add(RiskPolicy(device_id=device_id, limits=[limit.to_json()]))
    return limit


_STATE_TIMES = itertools.count()


async def _state(
    res: Resources, device_id: uuid.UUID, balance: str, equity: str, now: datetime = NOON
) -> list[uuid.UUID]:
    async with res.sessions.begin() as session:
        return await _report(session, device_id, balance, equity, now)


async def _report(
    session: AsyncSession, device_id: uuid.UUID, balance: str, equity: str, now: datetime
) -> list[uuid.UUID]:
    """The device reports this state (each later than the last, so each is stored and measured), applied as
    an uplink batch applies it at ``now``: the stopouts it recorded."""
    state_time = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=next(_STATE_TIMES))
    state = AccountStateIn(device_id, D(balance), D(equity), None, None, state_time, uuid.uuid4().hex)
    recorded = await record_states(session, [state], now)
    return (await act_on(session, recorded.reached, now)).stopouts


async def _stopouts(res: Resources, device_id: uuid.UUID) -> list[Stopout]:
    async with res.sessions() as session:
        query = select(Stopout).where(Stopout.device_id == device_id).order_by(Stopout.trigger_time)
        return list(await session.scalars(query))


async def test_a_day_loss_records_one_stopout_and_one_alert(res: Resources, device: KeyCredentials) -> None:
    await _limit(res, device.id)
    assert await _state(res, device.id, "10000", "10000") == []
    assert await _state(res, device.id, "10000", "9600") == []  # 4 %: not yet
    assert len(await _state(res, device.id, "10000", "9450")) == 1  # 5.5 % of the day's 10,000
    assert await _state(res, device.id, "10000", "9300") == []  # reached already: still one
    (stopout,) = await _stopouts(res, device.id)
    assert (stopout.reference, stopout.value, stopout.equity) == (D(10000), D(550), D(9450))
    assert stopout.period_start == datetime(2026, 12, 9, tzinfo=UTC)
    assert stopout.end_time == datetime(2026, 12, 10, tzinfo=UTC)
    async with res.sessions() as session:
        alerts = list(await session.scalars(select(Alert).where(Alert.subject_id == stopout.id)))
    assert [a.kind for a in alerts] == [AlertKind.RISK_STOPOUT]


async def test_a_drawdown_measures_from_the_periods_highest_equity(res: Resources, device: KeyCredentials) -> None:
    await _limit(res, device.id, RiskMetric.DRAWDOWN, percent=None, amount="300", period=RiskPeriod.WEEK)
    for equity in ("10000", "10500", "10250"):
        assert await _state(res, device.id, "10000", equity) == []
    assert len(await _state(res, device.id, "10000", "10150")) == 1  # 350 below the high of 10,500
    (stopout,) = await _stopouts(res, device.id)
    assert (stopout.reference, stopout.value) == (D(10500), D(350))
    assert stopout.period_start == datetime(2026, 12, 7, tzinfo=UTC)  # the Monday


async def test_close_all_queues_one_close_command_per_open_position(
    res: Resources, user: UserCredentials, device: KeyCredentials
) -> None:
    book = await Book.open(res, user.id)
    held = [await book.position(device.id) for _ in range(3)]
    await _limit(res, device.id, action=RiskAction.CLOSE_ALL)
    await _state(res, device.id, "10000", "10000")
    assert len(await _state(res, device.id, "10000", "9000")) == 1
    await _state(res, device.id, "10000", "8000")  # deeper: nothing more
    async with res.sessions() as session:
        commands = list(await session.scalars(select(CloseCommand).where(CloseCommand.device_id == device.id)))
    assert sorted(c.position_id for c in commands) == sorted(held)
    assert {c.reason for c in commands} == {CloseReason.RISK_LIMIT}


async def test_two_replicas_measuring_the_same_state_record_one_stopout(res: Resources, device: KeyCredentials) -> None:
    await _limit(res, device.id)
    await _state(res, device.id, "10000", "10000")
    found = await asyncio.gather(*(_state(res, device.id, "10000", "9000") for _ in range(4)))
    assert sum(len(f) for f in found) == 1
    assert len(await _stopouts(res, device.id)) == 1


async def test_the_periods_end_lifts_it_and_the_next_period_measures_again(
    res: Resources, device: KeyCredentials
) -> None:
    await _limit(res, device.id)
    await _state(res, device.id, "10000", "10000")
    await _state(res, device.id, "10000", "9400")
    await _state(res, device.id, "9400", "9400")  # the losing positions closed: the loss is in the balance
    assert await stopped_out(res, [device.id], NOON) == {device.id}
    assert await stopped_out(res, [device.id], NOON + timedelta(days=1)) == set()
    # Tomorrow measures from the last balance known when the day began: 9,400.
    tomorrow = NOON + timedelta(days=1)
    assert await _state(res, device.id, "9400", "9400", tomorrow) == []
    assert len(await _state(res, device.id, "9400", "8900", tomorrow)) == 1
    assert [s.reference for s in await _stopouts(res, device.id)] == [D(10000), D(9400)]


async def test_after_a_reset_the_limit_measures_afresh(res: Resources, device: KeyCredentials) -> None:
    await _limit(res, device.id)
    await _state(res, device.id, "10000", "10000")
    (stopout_id,) = await _state(res, device.id, "10000", "9400")
    async with res.sessions.begin() as session:
        await session.execute(update(Stopout).where(Stopout.id == stopout_id).values(reset_time=NOON))
    later = NOON + timedelta(minutes=5)
    assert await _state(res, device.id, "10000", "9400", later) == []  # measured from 9,400 now
    assert len(await _state(res, device.id, "10000", "8900", later)) == 1  # 500 more: 5.3 % of 9,400
    assert len(await _stopouts(res, device.id)) == 2


async def test_calendar_periods_in_utc(res: Resources, user: UserCredentials) -> None:
    """Days, weeks from Monday and months in UTC, whatever the session's time zone; LIFETIME from when the
    limit was set, without an end."""
    set_at = NOON - timedelta(days=40)
    expected = {
        RiskPeriod.DAY: (datetime(2026, 12, 9, tzinfo=UTC), datetime(2026, 12, 10, tzinfo=UTC)),
        RiskPeriod.WEEK: (datetime(2026, 12, 7, tzinfo=UTC), datetime(2026, 12, 14, tzinfo=UTC)),
        RiskPeriod.MONTH: (datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)),
        RiskPeriod.LIFETIME: (set_at, None),
    }
    for period, bounds in expected.items():
        device = await make_device(res, user)
        limit = Limit.of(period, RiskMetric.LOSS, D(100), None, RiskAction.STOP_OPENING, set_at)
        async with res.sessions.begin() as session:
            session.add(RiskPolicy(device_id=device.id, limits=[limit.to_json()]))
        async with res.sessions.begin() as session:  # the session's time zone is not the periods'
            await session.execute(text("SET LOCAL TIME ZONE 'America/New_York'"))
            await _report(session, device.id, "1000", "1000", NOON)
            await _report(session, device.id, "1000", "800", NOON)
        (stopout,) = await _stopouts(res, device.id)
        assert (stopout.period_start, stopout.end_time) == bounds, period
