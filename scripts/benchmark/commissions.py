"""Commission accrual: how soon after a referred trader's bridge writes a Fill frame the affiliate's
commission for it exists.

The path measured: the gateway records the fill and queues it for accrual in the uplink's transaction
(the Postgres function ``apply_delivery_reports``), rings the commissions doorbell after the commit
(``backoffice.platform.hints.ring_commissions``), and the worker's accrual loop, blocked on that doorbell,
drains the queue at once (``backoffice.worker.accrue_commissions``; without a ring it drains every
``ACCRUAL_SWEEP_SECONDS``, reported beside the figures so that a reader sees they are not the sweep).

Set-up, with the domain functions an admin's tools use: an affiliate, a trader created with its referral
code, one device of the trader's and a fresh producer the trader follows AUTO (0.01 lots a signal). The
trader's bridge is a simulated one run in the bench's own process (``FillTimedDevice``, noting when it
wrote each Fill), connected beside the run's other bridges. The producer's signed SubmitSignal calls are
paced at ``RATE`` a second; each becomes one delivery, which the bridge fills at once. The bench polls the
commissions table every ``POLL_SECONDS`` (``CommissionWatch``): a commission counts as existing when the
poll that first returns it comes back, so a figure is at most one poll late, never early. The first fill
is reported apart (``fill_to_commission_first_ms``): the first accrual of a worker process also prepares
the statements every later one reuses."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backoffice import accounts, bootstrap, subscriptions
from backoffice import devices as device_domain
from backoffice.affiliates import referrals
from backoffice.models import ActorType, Commission, ExecutionEvent, Role, SizingMode, SubscriptionMode
from backoffice.platform import db
from backoffice.platform.auth import Caller
from backoffice.platform.config import Settings
from backoffice.producer import ProducerClient
from backoffice.worker import ACCRUAL_SWEEP_SECONDS
from signalhub.protocol.secret import Secret
from signalhub.v1 import gateway_pb2 as pb

from .meters import CpuMeter
from .options import Options
from .report import ms, percentile
from .simdevice import Samples, SimDevice
from .world import Backoffice, paced

if TYPE_CHECKING:
    from .scenarios import Run  # which imports this module

RATE = 5.0  # fills a second: the producer's signals, each one delivery to the trader's one device
QUICK_SAMPLES = 50
FULL_SAMPLES = 200
POLL_SECONDS = 0.01  # how often the bench looks for new commissions: the figures' resolution
GOAL_P99_MS = 2000.0  # "within a few seconds" of the fill, well inside the worker's sweep


@dataclass(frozen=True)
class Referred:
    """The scenario's parties: the affiliate, the trader it referred (with one device), and the producer the
    trader follows AUTO."""

    affiliate_id: str
    trader_id: str
    device_id: str
    device_secret: Secret  # the shs_ form, as the trader's bridge reads it
    producer_id: str
    producer_secret: Secret


async def referred_trader(settings: Settings) -> Referred:
    """An affiliate, a trader created with its referral code, a device of the trader's and a producer the
    trader follows AUTO at 0.01 lots a signal, made with the domain functions an admin's tools use (the
    referral attributed as ``accounts.create_user`` attributes it)."""
    tag = uuid.uuid4().hex[:8]
    async with bootstrap.resources(settings) as res, res.sessions.begin() as session:
        owner, _ = await accounts.create_user(session, email=f"bench-affiliate-{tag}@bench.signalhub", role=Role.USER)
        affiliate = await referrals.register(session, Caller(ActorType.USER, owner.id, Role.USER))
        trader, _ = await accounts.create_user(
            session,
            email=f"bench-referred-{tag}@bench.signalhub",
            role=Role.USER,
            referral_code=affiliate.referral_code,
        )
        caller = Caller(ActorType.USER, trader.id, Role.USER)
        device, device_secret = await device_domain.register_device(
            session, res.vault, owner=caller, name="bench referred device"
        )
        producer, producer_secret = await accounts.create_producer(session, res.vault, name=f"bench referrer {tag}")
        terms = subscriptions.SubscriptionTerms(
            producer_id=producer.id,
            mode=SubscriptionMode.AUTO,
            sizing=SizingMode.FIXED_VOLUME,
            sizing_value=Decimal("0.01"),
            max_volume=None,
            instruments=(),
        )
        await subscriptions.subscribe(session, caller, terms, request_id="")
        return Referred(
            str(affiliate.id),
            str(trader.id),
            str(device.id),
            Secret(device_secret.encode()),
            str(producer.id),
            Secret(producer_secret.encode()),
        )


@dataclass(frozen=True)
class WrittenFill:
    signal_id: str
    at: float  # time.time() as the frame was written


class FillTimedDevice(SimDevice):
    """A simulated bridge that also notes when it wrote each delivery's Fill frame, by delivery id: the
    moment the trader's fill leaves the bridge, the origin of this scenario's figures."""

    def __init__(self, device_id: str, shown: str, address: str, samples: Samples) -> None:
        super().__init__(device_id, shown, address, samples)
        self.fills_written: dict[str, WrittenFill] = {}

    async def _write(self, frame: pb.DeviceFrame, *, track: bool, fill_of: str | None = None) -> float:
        written = await super()._write(frame, track=track, fill_of=fill_of)
        if fill_of is not None and frame.WhichOneof("body") == "fill":
            self.fills_written.setdefault(frame.fill.delivery_id, WrittenFill(fill_of, written))
        return written


class CommissionWatch:
    """When each of an affiliate's commissions was first seen in the commissions table, by the delivery
    whose fill earned it (time.time() as the poll that first returned it came back)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], affiliate_id: str) -> None:
        self.sessions = sessions
        self.affiliate_id = uuid.UUID(affiliate_id)
        self.seen: dict[str, float] = {}

    async def poll(self) -> None:
        """One look at the affiliate's commissions; the new ones are noted with the time it came back."""
        query = (
            select(ExecutionEvent.delivery_id)
            .join(Commission, Commission.fill_event_id == ExecutionEvent.id)
            .where(Commission.affiliate_id == self.affiliate_id)
        )
        async with self.sessions() as session:
            delivery_ids = (await session.scalars(query)).all()
        now = time.time()
        for delivery_id in delivery_ids:
            self.seen.setdefault(str(delivery_id), now)

    async def follow(self, stop: asyncio.Event) -> None:
        """Poll every ``POLL_SECONDS`` until ``stop`` is set."""
        while not stop.is_set():
            await self.poll()
            await asyncio.sleep(POLL_SECONDS)

    async def wait_for(self, delivery_ids: set[str], within: float) -> bool:
        """Until a commission was seen for each of these deliveries (True) or ``within`` seconds passed
        (False); ``follow`` does the polling."""
        deadline = time.monotonic() + within
        while not delivery_ids <= self.seen.keys():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(POLL_SECONDS)
        return True


def elapsed(began: Mapping[str, float], ended: Mapping[str, float]) -> list[float]:
    """Seconds from each key's start to its end, for the keys that have both, in ``began``'s order."""
    return [ended[key] - start for key, start in began.items() if key in ended]


async def fill_to_commission(run: Run) -> None:
    """The set-up, one fill to warm up, then ``QUICK_SAMPLES`` (``FULL_SAMPLES``) fills at ``RATE`` a
    second, the commissions table polled throughout; the figures as ``report_figures`` gives them."""

    count = QUICK_SAMPLES if run.options.quick else FULL_SAMPLES
    within = patience(run.options)
    where = f"{count} fills of a referred trader's bridge at {RATE:g}/s; {run.connected} other bridges connected"
    referred = await referred_trader(run.stack.settings)
    device = FillTimedDevice(referred.device_id, referred.device_secret.reveal().decode(), run.stack.gateway, Samples())
    producer = ProducerClient(
        run.stack.backoffice, referred.producer_id, referred.producer_secret.reveal().decode(), deadline_seconds=30
    )
    engine = db.create_engine(run.stack.settings, pool_size=2)
    watch = CommissionWatch(db.session_factory(engine), referred.affiliate_id)
    stop = asyncio.Event()
    following = asyncio.create_task(watch.follow(stop))

    async def submit(_: int) -> None:
        await Backoffice.signal(producer)

    try:
        await device.connect()
        await submit(0)
        if not await all_accrued(device, watch, 1, within):
            run.report.note(f"commissions: the first fill had no commission within {within:g} s")
        first = set(device.fills_written)
        meter = CpuMeter({**run.stack.pids, "worker": run.stack.worker_pid})
        await paced(count, RATE, submit)
        await all_accrued(device, watch, len(first) + count, within)
        meter.report(run.report, where)
    finally:
        stop.set()
        await following
        await producer.close()
        await device.close()
        await engine.dispose()
    report_figures(run, device, watch, first, count, where)


def patience(options: Options) -> float:
    """How long the scenario waits for the bridge's fills and their commissions: a run's usual wait and the
    worker's sweep on top, so that a fill only the sweep accrued still counts (and shows as such)."""
    return options.wait_seconds + ACCRUAL_SWEEP_SECONDS


async def all_accrued(device: FillTimedDevice, watch: CommissionWatch, fills: int, within: float) -> bool:
    """Until the bridge has written ``fills`` Fills and each has its commission (True), or ``within``
    seconds passed (False)."""
    deadline = time.monotonic() + within
    while len(device.fills_written) < fills:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(POLL_SECONDS)
    return await watch.wait_for(set(device.fills_written), deadline - time.monotonic())


def report_figures(
    run: Run, device: FillTimedDevice, watch: CommissionWatch, first: set[str], count: int, where: str
) -> None:
    """From each Fill written to its commission seen: p50, p99 (the goal) and the first fill's apart; to
    the Fill's receipt (the uplink's transaction that queued it for accrual, committed), p50; the worker's
    sweep beside them; and how many of the ``count`` fills had no commission in time."""
    written = {key: fill.at for key, fill in device.fills_written.items() if key not in first}
    latencies = elapsed(written, watch.seen)
    receipted = {
        key: device.samples.fills[(fill.signal_id, device.device_id)]
        for key, fill in device.fills_written.items()
        if (fill.signal_id, device.device_id) in device.samples.fills
    }
    warmup = elapsed({key: device.fills_written[key].at for key in first}, watch.seen)
    report = run.report
    report.add("fill_to_commission_p50_ms", ms(percentile(latencies, 50)), "ms", where)
    goal = f"{where}; goal: accrued within a few seconds of the fill, p99 <= {GOAL_P99_MS / 1000:g} s"
    report.add("fill_to_commission_p99_ms", ms(percentile(latencies, 99)), "ms", goal, at_most=GOAL_P99_MS)
    report.add(
        "fill_to_receipt_p50_ms",
        ms(percentile(elapsed(written, receipted), 50)),
        "ms",
        f"{where}; to the Fill's Receipt: queued",
    )
    report.add(
        "fill_to_commission_first_ms", ms(warmup[0] if warmup else None), "ms", "the scenario's first fill, not counted"
    )
    sweep = "the worker's accrual loop drains this often without a ring: the safety net, not the figure"
    report.add("commission_accrual_sweep_ms", ms(ACCRUAL_SWEEP_SECONDS), "ms", sweep)
    missing = f"{where}; no commission within {patience(run.options):g} s"
    report.add("fill_to_commission_missing", count - len(latencies), "fills", missing, at_most=0)
