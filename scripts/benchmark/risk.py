"""Risk limits on the uplink: what devices' AccountState frames cost the gateway, and how soon a CLOSE_ALL
limit that one of them crosses reaches the device as CloseOrders.

The gateway stores the newest state of each device and, in the same uplink transaction, measures the
limits of the devices' policies on it (``backoffice.risk.limits``); a batch without an AccountState
measures nothing. Policies are written straight into ``risk_policies``, as UpdateRiskPolicy stores them.

- Cost: every connected simulated bridge reports its account every 2 s for a window, its balance and
  equity moving a little around 10,000 and never near a limit; one device in ten has a policy with two
  limits of 10 %, so the batches carrying their states measure limits too, not only store the states. The
  figure is the gateway's CPU over the window per AccountState receipted, over the echo's CPU per frame
  for the same frames at the same pace (measured earlier in the run); over the echo's per frame in its
  burst beside it, as ``gateway_cpu_per_frame_over_echo`` is for acks, for the record only: a burst
  carries several frames per wake-up, these come one at a time.
- Reaction: fresh bridges (a user, a producer and devices registered for this, connected beside the
  others in a load process of their own), each with ten open positions written into the database as
  ``positions`` writes them and a CLOSE_ALL day-loss limit of 10 %, one after another: a first state at the
  Hello's balance (the day's reference), then the one whose equity is 11 % below it. The time runs from
  writing that frame to the arrival of the tenth CloseOrder at the device (the stopout and its ten close
  commands committed in the uplink's transaction, the device woken after the commit, the gateway's claim
  and the sealed push). The first device is reported apart (``_first``): the first stopout of a gateway
  process also prepares the statements every later one reuses."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backoffice import accounts, bootstrap, models
from backoffice import devices as device_domain
from backoffice.models import ActorType, RiskAction, RiskMetric, RiskPeriod, Role
from backoffice.platform import db
from backoffice.platform.auth import Caller
from backoffice.risk.policy import Limit

from .limits import ACCOUNT_STATE_INTERVAL
from .loadgen import LoadGenerator
from .meters import UPLINK_BATCH, UPLINK_COMMIT, CpuMeter, histogram_mean, histogram_sums
from .positions import FAR, Positions
from .report import ms, percentile, round_trips
from .simdevice import BALANCE, INSTRUMENT

if TYPE_CHECKING:
    from .scenarios import Run  # which imports this module


POLICY_EVERY = 10  # one connected device in this many has limits
PERCENT = Decimal(10)  # every limit here: 10 % of its reference
POSITIONS_PER_DEVICE = 10
CROSSING = BALANCE * (100 - PERCENT - 1) / 100  # equity 11 % under the day's reference: the limit is reached
SETTLE_SECONDS = 0.3  # after each device: its close results applied before the next one's frames


def fleet_limits(now: datetime) -> list[Limit]:
    """What one device in ten of the fleet has: a day's loss of 10 % closes all, a week's drawdown of
    10 % stops opening."""
    return [
        Limit.of(RiskPeriod.DAY, RiskMetric.LOSS, None, PERCENT, RiskAction.CLOSE_ALL, now),
        Limit.of(RiskPeriod.WEEK, RiskMetric.DRAWDOWN, None, PERCENT, RiskAction.STOP_OPENING, now),
    ]


def close_all_limit(now: datetime) -> list[Limit]:
    """What each fresh device has: a day's loss of 10 % closes all its positions."""
    return [Limit.of(RiskPeriod.DAY, RiskMetric.LOSS, None, PERCENT, RiskAction.CLOSE_ALL, now)]


async def set_policies(
    sessions: async_sessionmaker[AsyncSession], policies: Mapping[str, Sequence[Limit]], now: datetime
) -> None:
    """Each device's policy (its limits, nothing else limited), as UpdateRiskPolicy stores it."""
    rows = [
        {"device_id": uuid.UUID(device_id), "limits": [limit.to_json() for limit in limits], "updated_at": now}
        for device_id, limits in policies.items()
    ]
    async with sessions.begin() as session:
        await session.execute(insert(models.RiskPolicy), rows)


async def account_state_cost(run: Run, sessions: async_sessionmaker[AsyncSession]) -> None:
    """Every connected device reports its account every 2 s for ``options.account_seconds``; the gateway's
    CPU per AccountState receipted, and over the echo's per frame."""
    seconds, now = run.options.account_seconds, datetime.now(UTC)
    limited = [device_id for device_id, _ in run.world.devices[::POLICY_EVERY]]
    await set_policies(sessions, {device_id: fleet_limits(now) for device_id in limited}, now)
    await run.load.collect()
    metrics = run.stack.metrics.get("gateway")
    histograms = await histogram_sums(metrics, UPLINK_BATCH, UPLINK_COMMIT)
    meter = run.meter()
    written = await run.load.account_states(seconds, ACCOUNT_STATE_INTERVAL)
    samples = await run.load.collect()
    after = await histogram_sums(metrics, UPLINK_BATCH, UPLINK_COMMIT)
    receipted = len(samples.receipts)
    where = (
        f"{run.connected} devices, an AccountState every {ACCOUNT_STATE_INTERVAL:g} s each for {seconds:g} s,"
        f" {len(limited)} of them with limits"
    )
    used = meter.report(run.report, where, receipted)
    latencies = round_trips(samples.receipts)
    run.report.add("account_states_receipted", receipted, "frames", where)
    run.report.add("account_state_receipt_p50", ms(percentile(latencies, 50)), "ms", where)
    run.report.add("account_state_receipt_p99", ms(percentile(latencies, 99)), "ms", where)
    per_frame = used["gateway"] / receipted if "gateway" in used and receipted else None
    run.report.add("gateway_cpu_per_account_state", None if per_frame is None else 1e6 * per_frame, "us", where)
    # Over the echo's CPU per frame for the same frames at the same pace (each a wake-up of its own); the
    # burst's, where every wake-up carries several frames, beside it for the record.
    echo, burst = run.bare.get("echo_cpu_per_account_state"), run.bare.get("echo_cpu_per_frame")
    run.report.add(
        "gateway_cpu_per_account_state_over_echo",
        None if per_frame is None or not echo else per_frame / echo,
        "ratio",
        f"{where}; over the echo's for the same frames",
        at_most=2,
    )
    run.report.add(
        "gateway_cpu_per_account_state_over_echo_burst",
        None if per_frame is None or not burst else per_frame / burst,
        "ratio",
        f"{where}; over the echo's per frame in its burst",
    )
    batch = histogram_mean(histograms, after, UPLINK_BATCH)
    run.report.add("account_state_uplink_batch_mean", batch, "frames", where)
    commit = ms(histogram_mean(histograms, after, UPLINK_COMMIT))
    run.report.add("account_state_uplink_commit_ms_mean", commit, "ms", where)
    if receipted < written:
        run.report.note(f"account states: {written - receipted} of {written} had no receipt in time")
    if samples.rejected:
        run.report.note(f"account states: {samples.rejected} frames were answered REJECTED")


async def fresh_devices(run: Run, count: int) -> tuple[str, str, list[tuple[str, str]]]:
    """A user with ``count`` new devices and a producer of their positions' signals, made with the domain
    functions an admin's tools use: (user id, producer id, [(device id, shs_ secret)])."""
    tag = uuid.uuid4().hex[:8]
    async with bootstrap.resources(run.stack.settings) as res, res.sessions.begin() as session:
        user, _ = await accounts.create_user(session, email=f"bench-risk-{tag}@bench.signalhub", role=Role.USER)
        producer, _ = await accounts.create_producer(session, res.vault, name=f"bench risk {tag}")
        owner = Caller(ActorType.USER, user.id, Role.USER)
        made = []
        for i in range(count):
            device, secret = await device_domain.register_device(
                session, res.vault, owner=owner, name=f"bench risk device {i}"
            )
            made.append((str(device.id), secret))
        ids = str(user.id), str(producer.id)
    return *ids, made


@dataclass(frozen=True)
class Reaction:
    """Seconds from writing the crossing AccountState to its receipt (the uplink's transaction, with the
    stopout and its close commands, committed), to the first of the positions' CloseOrders, to the last."""

    receipt: float
    first: float
    last: float


async def one_stopout(run: Run, load: LoadGenerator, device_id: str, position_ids: Sequence[str]) -> Reaction | None:
    """The day's reference, then the state that crosses the limit: how soon its receipt and the positions'
    CloseOrders arrived (None when they did not all arrive in time)."""
    wait = run.options.wait_seconds
    await load.account_state(device_id, BALANCE, BALANCE)
    await load.drain(wait)
    await load.collect()
    written = await load.account_state(device_id, BALANCE, CROSSING)
    deadline = time.monotonic() + wait
    arrived: dict[str, float] = {}
    while len(arrived) < len(position_ids) and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
        arrived = await load.closes(position_ids)
    await load.drain(wait)
    receipted = [r for w, r in (await load.collect()).receipts if w == written]
    await asyncio.sleep(SETTLE_SECONDS)
    if written is None or not receipted or len(arrived) < len(position_ids):
        run.report.note(
            f"stopout: {len(arrived)} of {len(position_ids)} CloseOrders reached the device within {wait:g} s"
        )
        return None
    return Reaction(receipted[0] - written, min(arrived.values()) - written, max(arrived.values()) - written)


async def stopout_to_close(run: Run, sessions: async_sessionmaker[AsyncSession]) -> None:
    """``options.stopout_samples`` fresh devices (and one before them, reported apart), each with ten open
    positions and a CLOSE_ALL day-loss limit, cross it one after another; p50 and p99 from the crossing
    AccountState written to the tenth CloseOrder at the device, and the p50 of its receipt and of the
    first CloseOrder beside them."""
    count, now = run.options.stopout_samples + 1, datetime.now(UTC)
    where = (
        f"{count - 1} fresh devices one after another, each with {POSITIONS_PER_DEVICE} open positions and"
        f" a CLOSE_ALL day-loss limit of {PERCENT:g} %; {run.connected} other devices connected"
    )
    user_id, producer_id, devices = await fresh_devices(run, count)
    await set_policies(sessions, {device_id: close_all_limit(now) for device_id, _ in devices}, now)
    book = Positions(run, user_id, devices[0][0], producer_id)
    load = LoadGenerator(run.stack.gateway, devices, 1)
    reactions: list[Reaction] = []
    first: Reaction | None = None
    try:
        await book.open()
        held = {
            device_id: await book.add(INSTRUMENT, [FAR[0]] * POSITIONS_PER_DEVICE, FAR[1], device_id=device_id)
            for device_id, _ in devices
        }
        connected, errors = await load.connect()
        if connected < count:
            run.report.note(f"stopout: only {connected} of {count} fresh devices connected: {errors[:2]}")
        await load.collect()
        meter = CpuMeter(run.stack.pids, load.pids)
        for i, (device_id, _) in enumerate(devices):
            reaction = await one_stopout(run, load, device_id, held[device_id])
            if i == 0:
                first = reaction
            elif reaction is not None:
                reactions.append(reaction)
        meter.report(run.report, where)
    finally:
        await load.close()
        await book.close()
    report, last = run.report, [r.last for r in reactions]
    report.add("account_state_to_stopout_receipt_p50", ms(percentile([r.receipt for r in reactions], 50)), "ms", where)
    report.add("account_state_to_first_close_order_p50", ms(percentile([r.first for r in reactions], 50)), "ms", where)
    report.add("account_state_to_last_close_order_p50", ms(percentile(last, 50)), "ms", where)
    report.add("account_state_to_last_close_order_p99", ms(percentile(last, 99)), "ms", where, at_most=100)
    report.add(
        "account_state_to_last_close_order_first",
        ms(None if first is None else first.last),
        "ms",
        "the first device, before those measured",
    )


async def risk_limits(run: Run) -> None:
    """Both parts, the cost then the reaction (see the module's docstring)."""
    engine = db.create_engine(run.stack.settings, pool_size=2)
    try:
        sessions = db.session_factory(engine)
        await account_state_cost(run, sessions)
        await stopout_to_close(run, sessions)
    finally:
        await engine.dispose()
