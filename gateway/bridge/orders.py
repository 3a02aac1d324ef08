"""What a bridge does with each instruction: a Delivery becomes at most one market order, a CloseOrder at
most one close, and each outcome is committed with the frames that report it (see ``ledger``).

A delivery is refused, before anything goes to the broker, when it is malformed, past its expire_time, or
further than max_deviation from the market. An order whose outcome is unknown (the terminal failed while
placing it) is never placed again: it is looked up at the broker until the terminal answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from functools import partial
from typing import Any

from gateway.bridge import frames
from gateway.bridge.config import BridgeConfig, BridgeStats
from gateway.bridge.executors.base import (
    CloseFailed,
    CloseFill,
    CloseRequest,
    Executor,
    ExecutorError,
    OrderFill,
    OrderRejected,
    OrderRequest,
)
from gateway.bridge.ledger import FINAL_CLOSE, Recorded, State, close_subject, delivery_subject
from gateway.bridge.outbox import Outbox
from gateway.bridge.pacing import pause
from signalhub.protocol.client import backoff_ceiling
from signalhub.protocol.wire import decimal_text
from signalhub.v1 import gateway_pb2 as pb

log = logging.getLogger("signalhub.bridge")

# The reports of an instruction a previous run claimed and the terminal then knew nothing of: at most once,
# so never executed again (an order still in flight at the broker would be doubled), and reported as such.
# The Ack reason for an order refused because the market moved beyond the delivery's max_deviation.
PRICE_DEVIATION = "PRICE_DEVIATION"
INTERRUPTED_PLACING = "interrupted: the bridge stopped while placing the order; not retried"
INTERRUPTED_CLOSING = "interrupted: the bridge stopped before the terminal closed"


class Orders:
    """Executes instructions through ``executor``, each in a task of its own, at most
    ``max_concurrent_orders`` at the broker at once."""

    def __init__(
        self,
        config: BridgeConfig,
        executor: Executor,
        outbox: Outbox,
        stats: BridgeStats,
        stopping: asyncio.Event,
        on_trade: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self.executor = executor
        self.outbox = outbox
        self.stats = stats
        self._stopping = stopping
        self._on_trade = on_trade  # told after each fill and close result reported: the account changed
        self._slots = asyncio.Semaphore(config.max_concurrent_orders)
        self.tasks: set[asyncio.Task[None]] = set()
        self._welcomed = asyncio.Event()  # set, and replaced, at every Welcome: wakes pending lookups

    # -- tasks

    def handle(self, instruction: pb.Instruction) -> None:
        """Start executing an instruction that opened (a delivery or a close order)."""
        if instruction.WhichOneof("body") == "delivery":
            self._spawn(self._on_delivery(instruction.delivery), f"delivery-{instruction.delivery.delivery_id}")
        else:
            self._spawn(self._on_close(instruction.close), f"close-{instruction.close.command_id}")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        async def guarded() -> None:
            try:
                await coro
            except Exception:
                log.exception("instruction handling failed", extra={"task": name})

        task = asyncio.create_task(guarded(), name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def wait_in_flight(self) -> None:
        """Let the instructions in hand finish, for at most drain_timeout."""
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=self.config.drain_timeout)

    async def finish(self) -> None:
        """On the way out: wait as ``wait_in_flight`` does, then cancel what is still running (the ledger
        says what it was, and the next run picks it up)."""
        await self.wait_in_flight()
        for task in list(self.tasks):
            task.cancel()

    def welcomed(self) -> None:
        """A session was welcomed: orders whose outcome is unknown are looked up again now."""
        self._welcomed.set()
        self._welcomed = asyncio.Event()

    async def _admit(self, kind: str, instruction_id: str, record: Callable[[], Recorded]) -> Recorded | None:
        """Record an instruction in the ledger (``record``), counting a repeated one; None, the instruction
        refused and never executed, when it carries no id."""
        if not instruction_id:
            log.warning("refused a %s without an id", kind)
            self.stats.refused += 1
            return None
        recorded = await self.outbox.db(record)
        if not recorded.new:
            self.stats.repeated += 1
        return recorded

    # -- deliveries

    async def _on_delivery(self, delivery: pb.Delivery) -> None:
        delivery_id = delivery.delivery_id
        ack = frames.ack(delivery_id, pb.ACK_STAGE_RECEIVED)
        record = partial(self.outbox.ledger.record_delivery, delivery_id, delivery.SerializeToString(), ack)
        recorded = await self._admit("delivery", delivery_id, record)
        if recorded is None:
            return
        if not recorded.new:
            log.info("repeated delivery re-acked", extra={"delivery_id": delivery_id, "state": recorded.state})
            await self._reack(delivery_id)
            return
        await self.outbox.send([ack])
        log.info(
            "delivery received",
            extra={"delivery_id": delivery_id, "instrument": delivery.instrument, "attempt": delivery.attempt},
        )
        await self._execute(delivery)

    async def _reack(self, delivery_id: str) -> None:
        """The gateway sent a delivery again: it lacks our RECEIVED. Send what is still unreceipted now, or
        a fresh RECEIVED ack (answered DUPLICATE if it was only the receipt that got lost)."""
        if not await self.outbox.resend(delivery_subject(delivery_id)):
            await self.outbox.report([frames.ack(delivery_id, pb.ACK_STAGE_RECEIVED)])

    async def _refuse(self, delivery_id: str, reason: str) -> None:
        """Nothing was sent to the broker: record REJECTED with the reason and report it."""
        frame = frames.ack(delivery_id, pb.ACK_STAGE_REJECTED, reason)
        await self.outbox.report(
            [frame], lambda: self.outbox.ledger.finish_delivery(delivery_id, fill=None, reason=reason, frames=[frame])
        )
        self.stats.rejected += 1
        log.info("delivery refused", extra={"delivery_id": delivery_id, "reason": reason})

    def _expired(self, delivery: pb.Delivery) -> bool:
        expiry = frames.expiry(delivery)
        return expiry is not None and datetime.now(UTC) >= expiry

    async def _execute(self, delivery: pb.Delivery) -> None:
        """Refuse the delivery, or claim it (``executing``, committed) and place its order. The checks run
        inside an order slot, just before placing, so a queue of orders cannot place a stale one."""
        delivery_id = delivery.delivery_id
        try:
            order, entry, max_deviation = frames.order_of(delivery)
        except ValueError as exc:
            await self._refuse(delivery_id, f"invalid: {exc}")
            return
        async with self._slots:
            if self._expired(delivery):
                await self._refuse(delivery_id, f"expired: expire_time {frames.expiry(delivery)} has passed")
                return
            try:
                market = await self.executor.market_price(order)
            except ExecutorError as exc:
                await self._refuse(delivery_id, f"terminal: {exc}")
                return
            if max_deviation is not None and entry is not None:
                if market is None:
                    await self._refuse(delivery_id, f"no_quote: no price for {order.instrument} to check max_deviation")
                    return
                if abs(market - entry) > max_deviation:
                    log.info(
                        "the market moved beyond max_deviation",
                        extra={
                            "delivery_id": delivery_id,
                            "market": decimal_text(market),
                            "entry": decimal_text(entry),
                            "max_deviation": decimal_text(max_deviation),
                        },
                    )
                    await self._refuse(delivery_id, PRICE_DEVIATION)  # the contract's reason, as it is
                    return
            if self._expired(delivery):  # the price check may have taken a while
                await self._refuse(delivery_id, f"expired: expire_time {frames.expiry(delivery)} has passed")
                return
            if not await self.outbox.db(self.outbox.ledger.claim_delivery, delivery_id):
                return  # not ours to place (already claimed)
            unknown = await self._place(order)
        if unknown is not None:  # outside the order slot: the terminal may take long to answer
            await self._settle(delivery_id, unknown)

    async def _place(self, order: OrderRequest) -> str | None:
        """Place the order and record its outcome. When the outcome is unknown (the terminal failed, so
        the order may or may not be with the broker), nothing is recorded: returns what to report should
        the terminal then know no such order."""
        try:
            fill = await self.executor.place_order(order)
        except OrderRejected as exc:
            await self._placed_outcome(order.delivery_id, None, f"broker: {exc.reason}")
        except Exception as exc:
            log.exception("order outcome unknown; asking the terminal", extra={"delivery_id": order.delivery_id})
            return f"terminal error: {exc}"
        else:
            await self._placed_outcome(order.delivery_id, fill, None)
        return None

    async def _settle(self, delivery_id: str, not_found: str) -> None:
        """Find out what became of an order whose outcome is unknown: the delivery stays ``executing`` in
        the ledger while the terminal is asked, at once, then with bounded backoff and after every
        reconnect, until it answers. Its answer is the outcome (REJECTED with ``not_found`` when it knows
        no such order): a guess could report a trade that was made as one that was not. Stopping leaves
        the delivery ``executing``, and the next run asks again."""
        attempt = 0
        while not self._stopping.is_set():
            try:
                found = await self.executor.find_order(delivery_id)
            except Exception as exc:
                self.stats.lookups_failed += 1
                delay = backoff_ceiling(attempt + 1, self.config.lookup_backoff_base, self.config.lookup_backoff_cap)
                log.warning(
                    "order outcome still unknown; looking it up again later",
                    extra={"delivery_id": delivery_id, "seconds": delay, "error": str(exc) or type(exc).__name__},
                )
                attempt += 1
                await pause(self._stopping, delay, self._welcomed)
                continue
            await self._placed_outcome(delivery_id, found, None if found else not_found)
            return

    async def _placed_outcome(self, delivery_id: str, fill: OrderFill | None, reason: str | None) -> None:
        if fill is None:
            reports = [frames.ack(delivery_id, pb.ACK_STAGE_REJECTED, reason or "rejected")]
            self.stats.rejected += 1
        else:
            reports = [frames.ack(delivery_id, pb.ACK_STAGE_PLACED), frames.fill(delivery_id, fill)]
            self.stats.filled += 1
        await self.outbox.report(
            reports, lambda: self.outbox.ledger.finish_delivery(delivery_id, fill=fill, reason=reason, frames=reports)
        )
        if fill is None:
            log.info("delivery rejected", extra={"delivery_id": delivery_id, "reason": reason})
        else:
            self._on_trade()
            log.info(
                "delivery filled",
                extra={
                    "delivery_id": delivery_id,
                    "broker_ticket": fill.broker_ticket,
                    "price": decimal_text(fill.price),
                    "volume": decimal_text(fill.volume),
                },
            )

    # -- close orders

    async def _on_close(self, close: pb.CloseOrder) -> None:
        command_id = close.command_id
        record = partial(self.outbox.ledger.record_close, command_id, close.SerializeToString())
        recorded = await self._admit("close order", command_id, record)
        if recorded is None:
            return
        if not recorded.new:
            await self._rereport_close(command_id, recorded.state)
            return
        log.info("close order received", extra={"command_id": command_id, "broker_ticket": close.broker_ticket})
        await self._execute_close(close)

    async def _rereport_close(self, command_id: str, state: str) -> None:
        if await self.outbox.resend(close_subject(command_id)):
            return
        if state in FINAL_CLOSE:
            result = await self.outbox.db(self.outbox.ledger.close_result, command_id)
            if result is not None:
                await self.outbox.report([frames.close_result(result)])

    async def _execute_close(self, close: pb.CloseOrder) -> None:
        """Execute a close order at most once: a malformed volume fails at once; otherwise the command is
        claimed (``executing``, committed) inside an order slot before the terminal is asked, and whatever
        the terminal says, its own failure included, becomes the CloseResult reported."""
        command_id = close.command_id
        try:
            volume = frames.parse_decimal(close.volume, "volume", optional=True)
            if volume is not None and volume <= 0:
                raise ValueError("volume must be positive")
        except ValueError as exc:
            await self._close_outcome(pb.CloseResult(command_id=command_id, error=f"invalid: {exc}"))
            return
        async with self._slots:
            if not await self.outbox.db(self.outbox.ledger.claim_close, command_id):
                return
            request = CloseRequest(command_id, close.broker_ticket, volume)
            try:
                done = await self.executor.close_position(request)
            except CloseFailed as exc:
                result = pb.CloseResult(command_id=command_id, success=False, error=exc.reason)
            except Exception as exc:
                log.exception("close failed in the terminal", extra={"command_id": command_id})
                result = pb.CloseResult(command_id=command_id, success=False, error=f"terminal error: {exc}")
            else:
                result = _closed(command_id, done)
            await self._close_outcome(result)

    async def _close_outcome(self, result: pb.CloseResult) -> None:
        command_id = result.command_id
        frame = frames.close_result(result)
        await self.outbox.report([frame], lambda: self.outbox.ledger.finish_close(command_id, result, frame))
        self._on_trade()
        if result.success:
            self.stats.closed += 1
        else:
            self.stats.close_failed += 1
        log.info(
            "close order done",
            extra={"command_id": command_id, "success": result.success, "error": result.error or None},
        )

    async def _interrupted_close(self, command_id: str) -> pb.CloseResult:
        """What became of a close the previous run claimed but never recorded: the terminal's close when it
        made one (a stop right after the broker closed must not report a failure for a closed position),
        failed when it made none, and failed with "check the terminal" when it cannot tell. Never closed
        again: a close is executed at most once."""
        try:
            done = await self.executor.find_close(command_id)
        except Exception as exc:
            log.warning(
                "the terminal cannot say whether it closed", extra={"command_id": command_id, "error": str(exc)}
            )
            return pb.CloseResult(
                command_id=command_id,
                success=False,
                error="interrupted: the bridge stopped while closing; check the terminal",
            )
        if done is None:
            return pb.CloseResult(command_id=command_id, success=False, error=INTERRUPTED_CLOSING)
        return _closed(command_id, done)

    # -- recovery after a restart

    async def recover(self) -> None:
        """Finish what a previous run left: instructions recorded but not executed are executed now;
        ones caught in the middle of execution are looked up at the broker, never placed again."""
        ledger = self.outbox.ledger
        for delivery_id, _ in await self.outbox.db(ledger.deliveries_in, State.EXECUTING):
            log.warning("delivery was interrupted; asking the terminal", extra={"delivery_id": delivery_id})
            self._spawn(self._settle(delivery_id, INTERRUPTED_PLACING), f"delivery-{delivery_id}")
        for delivery_id, data in await self.outbox.db(ledger.deliveries_in, State.RECEIVED):
            log.info("resuming a recorded delivery", extra={"delivery_id": delivery_id})
            self._spawn(self._execute(pb.Delivery.FromString(data)), f"delivery-{delivery_id}")
        for command_id, _ in await self.outbox.db(ledger.closes_in, State.EXECUTING):
            log.warning("close order was interrupted; asking the terminal", extra={"command_id": command_id})
            await self._close_outcome(await self._interrupted_close(command_id))
        for command_id, data in await self.outbox.db(ledger.closes_in, State.RECEIVED):
            self._spawn(self._execute_close(pb.CloseOrder.FromString(data)), f"close-{command_id}")


def _closed(command_id: str, done: CloseFill) -> pb.CloseResult:
    """The CloseResult of a close the terminal made."""
    return pb.CloseResult(
        command_id=command_id,
        success=True,
        close_price=decimal_text(done.close_price),
        closed_volume=decimal_text(done.closed_volume),
    )
