"""The trading account's state, sent to the gateway, which measures risk limits on it: at the start of
every session (right behind its Hello, so the gateway takes it just after the Welcome), after every fill
and close result the bridge reports, and, while positions are open, whenever equity moved since the last
state sent, at most every ``account_state_interval`` seconds.

AccountState frames are ephemeral, like quotes: a lost one is not sent again (the next one replaces it).
A state the gateway would refuse (by the contract's own rule) is logged and not sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from decimal import Decimal

from gateway.bridge import frames
from gateway.bridge.config import BridgeConfig, BridgeStats
from gateway.bridge.executors.base import AccountInfo, Executor, ExecutorError
from gateway.bridge.outbox import Uplink
from signalhub.protocol.account_state import parse_account_state
from signalhub.protocol.errors import InvalidArgument
from signalhub.v1 import gateway_pb2 as pb

log = logging.getLogger("signalhub.bridge")


class AccountReporter:
    """Reads the account from the executor and sends its state on the current session."""

    def __init__(self, config: BridgeConfig, executor: Executor, stats: BridgeStats) -> None:
        self._interval = config.account_state_interval
        self._executor = executor
        self._stats = stats
        self._traded = asyncio.Event()
        self._last_equity: Decimal | None = None  # of the last state sent

    def traded(self) -> None:
        """A fill or a close result was reported: the account's state follows it at once."""
        self._traded.set()

    def opening_state(self, account: AccountInfo) -> pb.DeviceFrame | None:
        """The state a session starts with (``account`` as its Hello said it, read just now), or None when
        the gateway would refuse it."""
        frame = self._checked(account)
        if frame is not None:
            self._sent(account)
        return frame

    async def run(self, uplink: Uplink) -> None:
        """One session's states after its first, until it ends: one after each trade (one traded between
        sessions included), and while positions are open one whenever equity moved, checked every interval
        after the last state sent or checked. A terminal that cannot answer is logged, and asked again
        later."""
        loop = asyncio.get_running_loop()
        checked = loop.time()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._traded.wait(), max(0.0, checked + self._interval - loop.time()))
            if self._traded.is_set():
                self._traded.clear()
                await self._send(uplink, moved_only=False)
            else:
                await self._send(uplink, moved_only=True)
            checked = loop.time()

    async def _send(self, uplink: Uplink, *, moved_only: bool) -> None:
        """Queue the account's state; with ``moved_only``, only while positions are open and only when
        equity differs from the last state sent."""
        try:
            if moved_only and not await self._executor.positions():
                return
            account = await self._executor.account()
        except ExecutorError as exc:
            log.warning("no account state from the terminal", extra={"error": str(exc)})
            return
        if moved_only and account.equity == self._last_equity:
            return
        frame = self._checked(account)
        if frame is not None:
            uplink.put_ephemeral(frame)
            self._sent(account)

    def _checked(self, account: AccountInfo) -> pb.DeviceFrame | None:
        """The state as a frame, read now; None (logged) when the gateway would refuse it."""
        frame = frames.account_state(account, datetime.now(UTC))
        try:
            parse_account_state(frame.account_state)
        except InvalidArgument as exc:
            log.warning("not sent: an account state the gateway would refuse", extra={"violations": exc.violations})
            return None
        return frame

    def _sent(self, account: AccountInfo) -> None:
        self._last_equity = account.equity
        self._stats.account_states_sent += 1
