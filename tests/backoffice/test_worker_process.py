"""`signalhub serve worker` run alone, as a deployment runs it: it serves its own metrics (the monitor's,
the alerts', its event-loop lag) on SIGNALHUB_METRICS_ADDRESS, and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from backoffice.bootstrap import Resources
from backoffice.cli import status
from backoffice.platform.config import Settings
from tests.backoffice.monitor.support import instrument
from tests.conftest import ROOT_DIR, KeyCredentials, UserCredentials, run_module, server_env
from tests.gateway.support import Book, eventually


def _scrape(address: str) -> status.Scrape | None:
    """The worker's metrics, or None while its endpoint does not answer yet."""
    scrape = status.Scrape()
    try:
        scrape.add(status.fetch(address))
    except OSError:
        return None
    return scrape


async def test_the_worker_alone_serves_its_monitors_metrics(
    res: Resources, settings: Settings, user: UserCredentials, device: KeyCredentials, tmp_path: Path
) -> None:
    book = await Book.open(res, user.id)
    await book.position(device.id, signal_instrument=instrument(), entry="100", stop_loss="90", take_profit="110")
    env = server_env(settings.database_url, settings.redis_url)
    address = env["SIGNALHUB_METRICS_ADDRESS"]
    worker = run_module("backoffice.cli", "serve", "worker", env=env, cwd=ROOT_DIR, output=tmp_path / "worker.log")
    try:

        async def watching() -> bool:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            scrape = await asyncio.to_thread(_scrape, address)
            return scrape is not None and scrape.total("signalhub_monitor_positions_watched") >= 1

        # The monitor in that process loaded the open position, and its endpoint says so.
        await eventually(watching, "the worker's metrics to show the watched position", within=30)
        scrape = _scrape(address)
        assert scrape is not None
        exported = {name for name, _ in scrape.values}
        assert {"signalhub_event_loop_lag_seconds", "signalhub_monitor_quotes_total"} <= exported
        assert status.run([address]).unanswered == []
    finally:
        worker.send_signal(signal.SIGTERM)
        await asyncio.to_thread(worker.wait, 30)
    assert worker.returncode == 0, (tmp_path / "worker.log").read_text()
