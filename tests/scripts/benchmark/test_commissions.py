"""The commissions scenario of the benchmark (scripts/benchmark/commissions.py): its parties are an
affiliate and a trader it referred, following a producer AUTO; its bridge notes when it wrote each Fill;
and its watch sees a commission only once the worker's accrual has committed it, against the real servers."""

from __future__ import annotations

import asyncio
import time
import uuid

from sqlalchemy import select

from backoffice.affiliates import accrual
from backoffice.affiliates.program import Program
from backoffice.bootstrap import Resources
from backoffice.models import Referral, Subscription, SubscriptionMode, SubscriptionStatus
from backoffice.platform.config import Settings
from backoffice.platform.serving import Server
from backoffice.producer import ProducerClient
from scripts.benchmark import options
from scripts.benchmark.commissions import CommissionWatch, FillTimedDevice, elapsed, referred_trader
from scripts.benchmark.simdevice import Samples
from scripts.benchmark.world import Backoffice


def test_elapsed_pairs_each_start_with_its_end() -> None:
    began = {"a": 10.0, "b": 11.0, "c": 12.0}
    ended = {"c": 12.5, "a": 10.25, "z": 99.0}
    assert elapsed(began, ended) == [0.25, 0.5]  # b never ended, z never began
    assert elapsed({}, ended) == [] and elapsed(began, {}) == []


async def test_the_trader_is_referred_and_follows_the_producer_auto(settings: Settings, res: Resources) -> None:
    referred = await referred_trader(settings)
    async with res.sessions() as session:
        referral = await session.scalar(
            select(Referral).where(Referral.referred_user_id == uuid.UUID(referred.trader_id))
        )
        subscription = await session.scalar(
            select(Subscription).where(Subscription.user_id == uuid.UUID(referred.trader_id))
        )
    assert referral is not None and str(referral.affiliate_id) == referred.affiliate_id
    assert subscription is not None and str(subscription.producer_id) == referred.producer_id
    assert (subscription.mode, subscription.status) == (SubscriptionMode.AUTO, SubscriptionStatus.ACTIVE)
    shown = repr(referred)
    assert referred.device_secret.reveal().decode() not in shown
    assert referred.producer_secret.reveal().decode() not in shown


async def test_a_fill_is_timed_from_the_bridge_to_its_commission(
    settings: Settings, res: Resources, backoffice_server: Server, gateway_server: Server
) -> None:
    """A signal of the producer reaches the referred trader's bridge, which fills it and notes when; the
    watch sees no commission until the accrual (the worker's step) has run, then one, for that delivery."""
    referred = await referred_trader(settings)
    device = FillTimedDevice(
        referred.device_id, referred.device_secret.reveal().decode(), gateway_server.bound_address, Samples()
    )
    producer = ProducerClient(
        backoffice_server.bound_address, referred.producer_id, referred.producer_secret.reveal().decode()
    )
    watch = CommissionWatch(res.sessions, referred.affiliate_id)
    try:
        await device.connect()
        before = time.time()
        signal_id = await Backoffice.signal(producer)
        for _ in range(1500):  # 15 s at most
            if device.fills_written:
                break
            await asyncio.sleep(0.01)
        await device.drain(10)  # the Fill's receipt: the uplink's transaction queued it
    finally:
        await producer.close()
        await device.close()
    assert len(device.fills_written) == 1
    [(delivery_id, fill)] = device.fills_written.items()
    assert fill.signal_id == signal_id and before < fill.at < time.time()
    assert (signal_id, referred.device_id) in device.samples.fills  # receipted
    await watch.poll()
    assert watch.seen == {}  # queued, not yet accrued
    await accrual.drain(res.sessions, Program.from_settings(settings))
    await watch.poll()
    assert list(watch.seen) == [delivery_id]
    [latency] = elapsed({delivery_id: fill.at}, watch.seen)
    assert 0 < latency < 30


def test_only_names_the_scenario() -> None:
    assert options.parse_args(["--quick", "--only", "commissions"]).only == ("commissions",)
