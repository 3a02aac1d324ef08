"""The EA bridge SDK's entry point: a ``BridgeClient`` holds one signed ``DeviceGateway.Connect`` stream
(``stream``), opens sealed instructions, executes each delivery at most once through an ``Executor``
(``orders``), and reports back through a durable outbox (``ledger``, ``outbox``).

It reconnects after every session with capped exponential backoff and full jitter, moving to the next
gateway address each time (a replica that just failed is the least likely to work), and stops for good
only on ``stop()``, a revoked device key, credentials refused ``auth_failure_limit`` times in a row, or its
device taken by another bridge ``replaced_limit`` times in a row (with growing waits between).
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass

import grpc

from gateway.bridge.account import AccountReporter
from gateway.bridge.config import BridgeConfig, BridgeStats
from gateway.bridge.errors import CredentialsRefused, DeviceRevoked, DeviceTakenOver
from gateway.bridge.executors.base import Executor, ExecutorError
from gateway.bridge.ledger import Ledger
from gateway.bridge.orders import Orders
from gateway.bridge.outbox import LedgerStateStore, Outbox
from gateway.bridge.pacing import pause
from gateway.bridge.stream import SessionEnded, Stream
from signalhub.protocol.client import jittered_backoff
from signalhub.protocol.secret import Secret
from signalhub.protocol.wire import status_details

log = logging.getLogger("signalhub.bridge")


@dataclass(frozen=True)
class RpcErrorInfo:
    """The status code and ``google.rpc.ErrorInfo`` reason that ended a stream."""

    code: grpc.StatusCode
    reason: str
    message: str

    @classmethod
    def of(cls, error: grpc.aio.AioRpcError) -> RpcErrorInfo:
        return cls(error.code(), status_details(error).reason, error.details() or "")


class BridgeClient:
    """Runs until ``stop()`` (or a revoked key): connect, Hello, then execute instructions and report."""

    def __init__(self, config: BridgeConfig, secret: bytes, executor: Executor, *, seed: int | None = None) -> None:
        self.config = config
        self.executor = executor
        self.ledger = Ledger(config.ledger_path, config.device_id)
        self.stats = BridgeStats()
        self._rng = random.Random(seed)  # noqa: S311 - backoff jitter, not cryptography
        self._stopping = asyncio.Event()
        self._outbox = Outbox(self.ledger)
        account = AccountReporter(config, executor, self.stats)
        self._orders = Orders(config, executor, self._outbox, self.stats, self._stopping, account.traded)
        self._stream = Stream(
            config, Secret(secret), executor, self._outbox, self._orders, self.stats, self._stopping, account
        )

    def __repr__(self) -> str:
        return f"BridgeClient(device_id={self.config.device_id!r}, gateways={self.config.gateways!r})"

    @property
    def connected(self) -> asyncio.Event:
        """Set while a session is welcomed."""
        return self._stream.connected

    @property
    def address(self) -> str | None:
        """The gateway of the current (or last) session."""
        return self._stream.address

    def stop(self) -> None:
        """Ask ``run`` to finish: in-flight orders complete, their reports are flushed, then it returns."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self) -> None:
        """Serve until ``stop()``; raises DeviceRevoked (or LedgerError, ExecutorError) when it cannot go on."""
        await self._outbox.db(self.ledger.open)
        try:
            self.executor.keep_state_in(LedgerStateStore(self._outbox, f"executor:{type(self.executor).__name__}"))
            await self.executor.start()
            pruned = await self._outbox.db(self.ledger.prune, self.config.prune_after)
            if pruned:
                log.info("ledger pruned", extra={"removed": pruned})
            await self._orders.recover()
            await self._connect_loop()
        finally:
            await self._orders.finish()
            await self.executor.stop()
            await self._outbox.close()

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter (``attempt`` 0 for the first reconnect)."""
        return jittered_backoff(attempt + 1, self._rng.random(), self.config.backoff_base, self.config.backoff_cap)

    async def _connect_loop(self) -> None:
        """Open sessions until stopped: after each one, the next gateway, after a jittered backoff that
        grows while sessions fail and starts over after a healthy one. SESSION_REPLACED (another bridge
        took this device) waits replaced_backoff on top, doubling with each takeover in a row, and the
        replaced_limit-th in a row stops the bridge, so two bridges do not take turns forever; KEY_REVOKED
        stops at once, other refused credentials after auth_failure_limit in a row."""
        attempt = 0
        index = 0
        replaced = 0  # takeovers in a row
        refused = 0  # UNAUTHENTICATED in a row
        gateways = self.config.gateways
        while not self._stopping.is_set():
            address = gateways[index % len(gateways)]
            floor = 0.0
            try:
                healthy = await self._stream.run(address)
                if healthy:
                    attempt = 0
                replaced = refused = 0
                log.info("session ended", extra={"gateway": address})
            except grpc.aio.AioRpcError as exc:
                info = RpcErrorInfo.of(exc)
                if info.code == grpc.StatusCode.UNAUTHENTICATED:
                    refused += 1
                    self._check_credentials(info, address, refused)
                elif info.code == grpc.StatusCode.ABORTED and info.reason == "SESSION_REPLACED":
                    replaced += 1
                    floor = self._taken_over(address, replaced)
                else:
                    log.warning(
                        "stream failed",
                        extra={
                            "gateway": address,
                            "code": info.code.name,
                            "reason": info.reason or None,
                            "error": info.message,
                        },
                    )
            except (TimeoutError, SessionEnded, OSError, ExecutorError) as exc:
                log.warning("no session", extra={"gateway": address, "error": str(exc) or type(exc).__name__})
            except asyncio.InvalidStateError as exc:  # a write after the call ended
                log.warning("stream ended while writing", extra={"gateway": address, "error": str(exc)})
            if self._stopping.is_set():
                return
            index += 1  # try the next gateway: a replica that just failed is the least likely to work
            delay = floor + self._backoff(attempt)
            attempt += 1
            await pause(self._stopping, delay)

    def _check_credentials(self, info: RpcErrorInfo, address: str, refused: int) -> None:
        """KEY_REVOKED stops the bridge at once; any other refusal of the credentials after
        auth_failure_limit in a row (a wrong or rotated secret does not fix itself)."""
        device = self.config.device_id
        if info.reason == "KEY_REVOKED":
            log.error("this device's key was revoked; stopping for good", extra={"gateway": address})
            raise DeviceRevoked(f"device {device} was revoked: register a new device and use its credentials")
        log.warning(
            "the gateway refused this device's credentials",
            extra={"gateway": address, "reason": info.reason or None, "error": info.message, "in_a_row": refused},
        )
        if refused >= self.config.auth_failure_limit:
            raise CredentialsRefused(
                f"the gateways refused device {device}'s credentials {refused} times in a row "
                f"({info.reason or info.code.name}: {info.message}); check the device id and secret "
                "(a rotated secret needs the new credentials file) and this machine's clock"
            )

    def _taken_over(self, address: str, replaced: int) -> float:
        """The wait after the ``replaced``-th takeover in a row; at replaced_limit, DeviceTakenOver."""
        config = self.config
        if replaced >= config.replaced_limit:
            raise DeviceTakenOver(
                f"another bridge took device {config.device_id}'s stream {replaced} times in a row; stopping: "
                "run one bridge per device (stop the other one, or register a device for each terminal)"
            )
        floor: float = min(config.replaced_backoff * 2.0 ** (replaced - 1), config.replaced_backoff_cap)
        log.warning(
            "another bridge connected as this device; backing off",
            extra={"gateway": address, "seconds": floor, "in_a_row": replaced},
        )
        return floor
