"""Real EA bridges (``gateway.bridge.BridgeClient``) in a process of their own, so a test can SIGKILL them,
each trading on a paper broker whose book outlives the bridge, as a MetaTrader terminal's does.

``python -m tests.reliability.bridges SPEC`` runs one BridgeClient per device named in the JSON file SPEC
until SIGTERM, and keeps writing their counters to the spec's ``stats`` file. ``BridgeHost`` is how a
test starts, kills and reads such a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from gateway.bridge import BridgeClient, BridgeConfig, PaperConfig, PaperExecutor
from gateway.bridge.executors.base import (
    CloseFill,
    CloseRequest,
    HeldPosition,
    OrderFill,
    OrderRequest,
    OrderSide,
    StateStore,
)
from signalhub.protocol import logs, signing

STATS_EVERY = 0.2  # seconds

_BOOK = """
CREATE TABLE IF NOT EXISTS orders (
    n INTEGER PRIMARY KEY, delivery_id TEXT NOT NULL, ticket TEXT NOT NULL, instrument TEXT NOT NULL,
    side TEXT NOT NULL, volume TEXT NOT NULL, price TEXT NOT NULL, fill_time TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS closes (
    n INTEGER PRIMARY KEY, command_id TEXT NOT NULL, ticket TEXT NOT NULL, volume TEXT NOT NULL, price TEXT NOT NULL
);
"""


class DurablePaperBroker(PaperExecutor):
    """The paper broker with its book in SQLite: every order placed and every close, one row each (never
    deduplicated, so a test counts what was executed twice), read back when the bridge starts again so a
    lookup after a crash finds the order and a close finds its position."""

    def __init__(self, path: Path, config: PaperConfig) -> None:
        super().__init__(config)
        self._book = sqlite3.connect(path, isolation_level=None)
        self._book.execute("PRAGMA journal_mode=WAL")
        self._book.executescript(_BOOK)
        # The parent keeps its book in memory; a terminal's survives the bridge, so it is filled in here.
        for delivery_id, ticket, instrument, side, volume, price, fill_time in self._book.execute(
            "SELECT delivery_id, ticket, instrument, side, volume, price, fill_time FROM orders ORDER BY n"
        ):
            fill = OrderFill(ticket, Decimal(price), Decimal(volume), _parse_time(fill_time))
            self._orders.setdefault(delivery_id, fill)
            self._positions[ticket] = HeldPosition(ticket, instrument, OrderSide(side), Decimal(volume))
            self._entry[ticket] = Decimal(price)
            self._mid.setdefault(instrument, Decimal(price))  # a terminal always has a price
        for command_id, ticket, volume, price in self._book.execute(
            "SELECT command_id, ticket, volume, price FROM closes ORDER BY n"
        ):
            self._closed.setdefault(command_id, CloseFill(Decimal(price), Decimal(volume)))
            held = self._positions.get(ticket)
            if held is not None and Decimal(volume) >= held.volume:
                del self._positions[ticket]

    def keep_state_in(self, store: StateStore) -> None:
        """Not in the bridge's ledger: this broker's book is its SQLite file alone, as a terminal's is its own.
        Two records would disagree after a SIGKILL between their writes (the ledger saying closed, the book
        not), and the test counts the book."""

    async def place_order(self, order: OrderRequest) -> OrderFill:
        fill = await super().place_order(order)
        self._book.execute(
            "INSERT INTO orders (delivery_id, ticket, instrument, side, volume, price, fill_time) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                order.delivery_id,
                fill.broker_ticket,
                order.instrument,
                order.side.value,
                str(fill.volume),
                str(fill.price),
                fill.fill_time.isoformat(),
            ),
        )
        return fill

    async def close_position(self, request: CloseRequest) -> CloseFill:
        done = await super().close_position(request)
        self._book.execute(
            "INSERT INTO closes (command_id, ticket, volume, price) VALUES (?, ?, ?, ?)",
            (request.command_id, request.broker_ticket, str(done.closed_volume), str(done.close_price)),
        )
        return done


def _parse_time(text: str) -> Any:
    from datetime import datetime

    return datetime.fromisoformat(text)


@dataclass(frozen=True)
class BridgeSpec:
    """One device's bridge: its credentials, its ledger and its broker's book."""

    device_id: str
    secret: str
    ledger: str
    book: str


def _config(spec: BridgeSpec, gateways: list[str]) -> BridgeConfig:
    # Quick reconnects and lookups: the suite measures recovery, and a test waits for it.
    return BridgeConfig(
        spec.device_id,
        tuple(gateways),
        Path(spec.ledger),
        backoff_base=0.1,
        backoff_cap=1.0,
        replaced_backoff=1.0,
        healthy_after=1.0,
        lookup_backoff_base=0.2,
        lookup_backoff_cap=1.0,
        connect_timeout=2.0,
        welcome_timeout=5.0,
        drain_timeout=3.0,
    )


async def _host(spec: dict[str, Any]) -> None:
    """Run every bridge of the spec until SIGTERM, writing their counters every STATS_EVERY seconds."""
    gateways = list(spec["gateways"])
    bridges = [BridgeSpec(**item) for item in spec["bridges"]]
    clients = [
        BridgeClient(
            _config(b, gateways),
            signing.parse_secret(b.secret),
            DurablePaperBroker(Path(b.book), PaperConfig(seed=n, latency=0.01, latency_jitter=0.02)),
        )
        for n, b in enumerate(bridges)
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, _log_task_stacks, clients)
    tasks = [asyncio.create_task(c.run(), name=f"bridge-{c.config.device_id}") for c in clients]
    stats_path = Path(spec["stats"])
    try:
        while not stop.is_set():
            _write_stats(stats_path, clients)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), STATS_EVERY)
            for task in tasks:
                if task.done() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
    finally:
        for client in clients:
            client.stop()
        await asyncio.wait(tasks, timeout=10)
        _write_stats(stats_path, clients)


def _log_task_stacks(clients: list[BridgeClient]) -> None:
    """On SIGUSR1: where every task of this process waits, and which bridges hold no session (a test
    that waited in vain for them asks, so its failure says where they hang)."""
    log = logging.getLogger("tests.reliability.bridges")
    log.warning("not connected", extra={"devices": [c.config.device_id for c in clients if not c.connected.is_set()]})
    for task in asyncio.all_tasks():
        stack = io.StringIO()
        task.print_stack(limit=12, file=stack)
        log.warning("task", extra={"task": task.get_name(), "stack": stack.getvalue()})


def _write_stats(path: Path, clients: list[BridgeClient]) -> None:
    stats = {
        c.config.device_id: {**asdict(c.stats), "connected": c.connected.is_set(), "address": c.address}
        for c in clients
    }
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(stats))
    os.replace(temporary, path)


class BridgeHost:
    """A test's handle on one bridge process: start it, SIGKILL it, read what it and its brokers did."""

    def __init__(self, workdir: Path, gateways: list[str], bridges: list[BridgeSpec], env: dict[str, str]) -> None:
        self.workdir = workdir
        self.bridges = bridges
        self.spec_path = workdir / "bridges.json"
        self.stats_path = workdir / "bridge-stats.json"
        self.log_path = workdir / "bridges.log"
        self.env = env
        self.process: subprocess.Popen[str] | None = None
        spec = {"gateways": gateways, "bridges": [asdict(b) for b in bridges], "stats": str(self.stats_path)}
        self.spec_path.write_text(json.dumps(spec))
        self.spec_path.chmod(0o600)  # it holds the devices' secrets
        self.starts = 0
        self._earlier: list[dict[str, dict[str, Any]]] = []  # the counters of processes that were killed

    def start(self) -> None:
        from tests.conftest import ROOT_DIR, run_module

        self.stats_path.unlink(missing_ok=True)
        self.process = run_module(
            "tests.reliability.bridges", str(self.spec_path), env=self.env, cwd=ROOT_DIR, output=self.log_path
        )
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL: no drain, no flush; whatever the ledger committed is all the next run has."""
        assert self.process is not None
        self._earlier.append(self.stats())
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        from tests.reliability.cluster import stop_process

        stop_process(self.process)

    def where_they_wait(self) -> str:
        """The bridge process's task stacks (it logs them on SIGUSR1) and its last log lines."""
        if self.process is None or self.process.poll() is not None:
            return "(no bridge process running)"
        self.process.send_signal(signal.SIGUSR1)
        time.sleep(1.0)  # a moment to write them
        return self.log_path.read_text(errors="replace")[-12000:]

    def stats(self) -> dict[str, dict[str, Any]]:
        """The current process's counters per device ({} before it wrote any)."""
        try:
            return dict(json.loads(self.stats_path.read_text()))
        except (OSError, ValueError):
            return {}

    def total(self, counter: str) -> int:
        """A counter summed over every device and every process this host ran."""
        return sum(int(d.get(counter, 0)) for run in (*self._earlier, self.stats()) for d in run.values())

    def connected(self, addresses: set[str] | None = None) -> bool:
        """Every bridge holds a welcomed session (on one of ``addresses``, if given). A bridge process
        that died of something fails the test here, with its last log lines."""
        if self.process is not None and self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise AssertionError(f"the bridge process exited with {self.process.returncode}:\n{tail}")
        stats = self.stats()
        return len(stats) == len(self.bridges) and all(
            d["connected"] and (addresses is None or d["address"] in addresses) for d in stats.values()
        )

    def orders(self) -> Counter[str]:
        """How many orders every broker placed per delivery_id (a correct bridge: one each)."""
        return self._count("SELECT delivery_id FROM orders")

    def closes(self) -> Counter[str]:
        """How many closes every broker made per close command id (a correct bridge: one each)."""
        return self._count("SELECT command_id FROM closes")

    def book(self) -> dict[str, tuple[str, str]]:
        """delivery_id -> (broker ticket, fill price) of the first order placed for it."""
        found: dict[str, tuple[str, str]] = {}
        for bridge in self.bridges:
            with contextlib.closing(sqlite3.connect(bridge.book)) as db:
                rows = db.execute("SELECT delivery_id, ticket, price FROM orders ORDER BY n")
                for delivery_id, ticket, price in rows:
                    found.setdefault(delivery_id, (ticket, price))
        return found

    def unreceipted(self) -> int:
        """Frames still waiting in every bridge's outbox for their receipt."""
        total = 0
        for bridge in self.bridges:
            if Path(bridge.ledger).exists():
                with contextlib.closing(sqlite3.connect(bridge.ledger)) as db:
                    total += int(db.execute("SELECT count(*) FROM outbox").fetchone()[0])
        return total

    def _count(self, query: str) -> Counter[str]:
        counts: Counter[str] = Counter()
        for bridge in self.bridges:
            if Path(bridge.book).exists():
                with contextlib.closing(sqlite3.connect(bridge.book)) as db:
                    counts.update(row[0] for row in db.execute(query))
        return counts


if __name__ == "__main__":
    handler = logging.StreamHandler()
    handler.setFormatter(logs.JsonFormatter())
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    asyncio.run(_host(json.loads(Path(sys.argv[1]).read_text())))
