"""The worker process (`signalhub serve worker`): the stop-loss / take-profit monitor
(``backoffice.monitor``), and periodic housekeeping: expiry of signals and approvals, idle devices,
purges, and the alerts about silent or disconnected devices that hold positions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete

from backoffice import alerts, quotes, signals
from backoffice.affiliates import accrual
from backoffice.affiliates.program import Program
from backoffice.bootstrap import Resources, open_redis
from backoffice.devices import presence
from backoffice.models import IdempotencyRecord
from backoffice.monitor import Monitor
from backoffice.platform.serving import cancel_and_wait

log = logging.getLogger("signalhub.worker")

# A retry comes within minutes; a day is generous, and keeps sealed copies of shown-once credentials short-lived.
IDEMPOTENCY_RETENTION = timedelta(days=1)


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


async def run(res: Resources, stop: asyncio.Event, interval_seconds: float = 30.0) -> None:
    """The monitor and the housekeeping rounds, until ``stop`` is set."""
    # The monitor blocks on the Redis stream between sweeps: a connection of its own, with room for that.
    stream = open_redis(res.settings, block_seconds=res.settings.monitor_sweep_seconds)
    monitor = asyncio.create_task(Monitor(res.sessions, stream, res.settings).run(stop), name="monitor")
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
        await cancel_and_wait([monitor])
        await stream.aclose()
