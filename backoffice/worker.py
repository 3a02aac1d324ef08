"""The worker process (`signalhub serve worker`): the stop-loss / take-profit monitor
(``backoffice.monitor``), commission accrual as soon as a gateway says fills were queued, and periodic
housekeeping: expiry of signals and approvals, idle devices, purges, the alerts about silent or
disconnected devices that hold positions, and the commissions again (for a hint that was lost)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

from redis.exceptions import RedisError
from sqlalchemy import delete

from backoffice import alerts, quotes, signals
from backoffice.affiliates import accrual
from backoffice.affiliates.program import Program
from backoffice.bootstrap import Resources, open_redis
from backoffice.devices import presence
from backoffice.models import IdempotencyRecord
from backoffice.monitor import Monitor
from backoffice.platform import hints
from backoffice.platform.serving import cancel_and_wait

log = logging.getLogger("signalhub.worker")

# A retry comes within minutes; a day is generous, and keeps sealed copies of shown-once credentials short-lived.
IDEMPOTENCY_RETENTION = timedelta(days=1)
ACCRUAL_SWEEP_SECONDS = 5.0  # the accrual loop drains the queue this often even when no gateway rang


async def run_once(res: Resources) -> dict[str, int]:
    """One housekeeping round: one transaction for the housekeeping (the alerts it raised are announced
    after the commit), then the affiliate commissions in transactions of their own."""
    settings = res.settings
    async with res.sessions.begin() as session:
        nonces = await res.nonces.purge_expired(session)
        cutoff = datetime.now(UTC) - IDEMPOTENCY_RETENTION
        result = await session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.created_at < cutoff))
        records = int(result.rowcount)  # type: ignore[attr-defined]
        inactive = await presence.mark_idle_devices_inactive(session, datetime.now(UTC))
        expired = await signals.expire_due(session, datetime.now(UTC))
        quotes_purged = await quotes.purge_stale(
            session, datetime.now(UTC) - timedelta(seconds=settings.quote_retention_seconds)
        )
        raised = await alerts.watch_devices(
            session,
            datetime.now(UTC),
            silent_after=timedelta(seconds=settings.device_silent_alert_seconds),
            disconnected_after=timedelta(seconds=settings.disconnected_alert_seconds),
        )
    alerts.announce(raised)
    # Each in transactions of its own: fills are accrued a batch at a time, releases an affiliate at a time.
    fills = await accrual.drain(res.sessions, Program.from_settings(res.settings))
    released = await accrual.release_due(res.sessions, datetime.now(UTC))
    return {
        "nonces_purged": nonces,
        "idempotency_records_purged": records,
        "devices_marked_inactive": inactive,
        "signals_expired": expired,
        "quotes_purged": quotes_purged,
        "fills_accrued": fills,
        "commissions_released": released,
        "alerts_raised": len(raised),
    }


async def accrue_commissions(res: Resources, stop: asyncio.Event, sweep: float = ACCRUAL_SWEEP_SECONDS) -> None:
    """Accrue the queued fills' commissions as soon as a gateway rings the doorbell, and every ``sweep``
    seconds anyway, until ``stop`` is set. Without Redis it simply drains every ``sweep``."""
    doorbell = open_redis(res.settings, block_seconds=sweep)  # blocks between rings: a connection of its own
    program = Program.from_settings(res.settings)
    try:
        while not stop.is_set():
            try:
                await hints.wait_for_commissions(doorbell, sweep)
            except (RedisError, OSError) as exc:
                log.warning("commissions doorbell unreachable; accruing every sweep", extra={"error": str(exc)})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), sweep)
            try:
                accrued = await accrual.drain(res.sessions, program)
            except Exception:  # retried at the next ring or sweep; the worker keeps going
                log.exception("commission accrual failed")
                continue
            if accrued:
                log.info("commissions accrued", extra={"fills": accrued})
    finally:
        await doorbell.aclose()


async def run(res: Resources, stop: asyncio.Event, interval_seconds: float = 30.0) -> None:
    """The monitor, the commission accrual and the housekeeping rounds, until ``stop`` is set."""
    # The monitor blocks on the Redis stream between sweeps: a connection of its own, with room for that.
    stream = open_redis(res.settings, block_seconds=res.settings.monitor_sweep_seconds)
    monitor = asyncio.create_task(Monitor(res.sessions, stream, res.settings).run(stop), name="monitor")
    accruing = asyncio.create_task(accrue_commissions(res, stop), name="commissions")
    try:
        while not stop.is_set():
            try:
                done = await run_once(res)
                if any(done.values()):
                    log.info("housekeeping", extra=done)
            except Exception:  # a failed round is retried next round; the worker keeps going
                log.exception("housekeeping round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_seconds)
    finally:
        await cancel_and_wait([monitor, accruing])
        await stream.aclose()
