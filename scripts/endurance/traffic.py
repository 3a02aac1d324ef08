"""The soak's steady traffic through the public API: every signal interval the AUTO producer submits a
signal (approved by rule for every account: one delivery per bridge) and the MANUAL producer submits one
that a few accounts approve over ApprovalService; each signal is cancelled with its positions closed a
little later, so the close orders and close results flow too and nothing piles up over a long run."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from backoffice.producer import ProducerClient
from scripts.benchmark.world import Backoffice, World

MAX_IN_FLIGHT = 50  # calls: a stalled back office holds at most this many, never an ever-growing pile


@dataclass
class Traffic:
    api: Backoffice
    world: World
    signal_seconds: float
    manual_accounts: int
    cancel_after_seconds: float
    counts: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)  # calls answered with an error, for good
    _open: list[tuple[float, str, str]] = field(default_factory=list)  # (submitted at, producer, signal id)
    _calls: set[asyncio.Task[None]] = field(default_factory=set)
    _turn: int = 0

    def _call(self, work: Coroutine[Any, Any, None]) -> None:
        if len(self._calls) >= MAX_IN_FLIGHT:
            self.counts["skipped (calls in flight)"] += 1
            work.close()  # never started
            return
        task = asyncio.create_task(work)
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def run(self) -> None:
        """Until cancelled: one round per signal interval."""
        while True:
            began = time.monotonic()
            self._call(self._auto())
            self._call(self._manual())
            due = [s for s in self._open if began - s[0] >= self.cancel_after_seconds]
            self._open = [s for s in self._open if began - s[0] < self.cancel_after_seconds]
            for _, producer, signal_id in due:
                self._call(self._cancel(producer, signal_id))
            await asyncio.sleep(max(0.0, began + self.signal_seconds - time.monotonic()))

    def _producer(self, name: str) -> ProducerClient:
        return self.api.auto if name == "auto" else self.api.manual

    async def _submit(self, producer: str) -> str | None:
        """A signal from the "auto" or "manual" producer, to be cancelled in its turn; None when it failed."""
        try:
            signal_id = await self.api.signal(self._producer(producer))
        except Exception as exc:
            self.failures.append(f"SubmitSignal ({producer.upper()}): {exc}")
            return None
        self.counts[f"{producer} signals"] += 1
        self._open.append((time.monotonic(), producer, signal_id))
        return signal_id

    async def _auto(self) -> None:
        await self._submit("auto")

    async def _manual(self) -> None:
        """A MANUAL signal, approved by the next few accounts in turn (all their devices)."""
        signal_id = await self._submit("manual")
        if signal_id is None:
            return
        accounts = self.world.accounts
        for _ in range(min(self.manual_accounts, len(accounts))):
            account = accounts[self._turn % len(accounts)]
            self._turn += 1
            try:
                await self.api.approve(account, signal_id)
            except Exception as exc:
                self.failures.append(f"ApproveSignal: {exc}")
                continue
            self.counts["approvals"] += 1

    async def _cancel(self, producer: str, signal_id: str) -> None:
        try:
            await self._producer(producer).cancel_signal(signal_id, "soak", close_positions=True)
        except Exception as exc:
            self.failures.append(f"CancelSignal: {exc}")
            return
        self.counts["cancels"] += 1

    async def stop(self) -> None:
        """Let the calls in flight finish (each has its deadline), then stop."""
        pending = [t for t in self._calls if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=60)
        for task in list(self._calls):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
