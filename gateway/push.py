"""Pushing instructions: the streams that were woken (a hint, the sweep, a new stream, room freed in an
outbox) are served in batches. One transaction claims what is due for up to ``max_devices`` devices
(``backoffice.deliveries.claim``: marked SENT before anything goes out), then each instruction is sealed
for its stream and put into the room its outbox reserved. Nothing here waits on a slow device.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backoffice import deliveries
from backoffice.platform.metrics import APPROVAL_TO_DELIVERY, PUSHED
from backoffice.platform.serving import cancel_and_wait
from gateway import tracing
from gateway.outbox import Outbox
from signalhub.protocol.sealing import InstructionSealer
from signalhub.protocol.wire import decimal_text, enum_to_wire, timestamp
from signalhub.v1 import common_pb2
from signalhub.v1 import gateway_pb2 as pb

log = logging.getLogger("signalhub.gateway.push")

RETRY_SECONDS = 1.0  # after a failed read of what is pending


class Recipient(Protocol):
    """A stream instructions can be pushed to (gateway.sessions.DeviceSession)."""

    @property
    def device_id(self) -> uuid.UUID: ...

    @property
    def connected_at(self) -> datetime: ...

    @property
    def outbox(self) -> Outbox: ...

    @property
    def sealer(self) -> InstructionSealer: ...

    @property
    def quotable(self) -> set[str]: ...


def instruction(order: deliveries.Order) -> pb.Instruction:
    """The plaintext of a sealed instruction. A signal's stop-loss, take-profit and payload are not in
    ``order`` at all, so they cannot leak into it."""
    if isinstance(order, deliveries.DeliveryOrder):
        return pb.Instruction(
            delivery=pb.Delivery(
                delivery_id=str(order.id),
                signal_id=str(order.signal_id),
                instrument=order.instrument,
                side=enum_to_wire(common_pb2.Side, "SIDE", order.side),
                volume=decimal_text(order.volume),
                entry_price=decimal_text(order.entry_price),
                max_deviation=decimal_text(order.max_deviation),
                expire_time=timestamp(order.expire_time),
                attempt=order.attempt,
            )
        )
    return pb.Instruction(
        close=pb.CloseOrder(
            command_id=str(order.id),
            position_id=str(order.position_id),
            broker_ticket=order.broker_ticket,
            volume=decimal_text(order.volume),
            reason=enum_to_wire(common_pb2.CloseReason, "CLOSE_REASON", order.reason),
        )
    )


def sealed(sealer: InstructionSealer, order: deliveries.Order) -> pb.GatewayFrame:
    nonce, ciphertext = sealer.seal(instruction(order).SerializeToString())
    return pb.GatewayFrame(instruction=pb.SealedInstruction(nonce=nonce, ciphertext=ciphertext))


class Pusher:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        ack_timeout_seconds: float,
        max_close_attempts: int = deliveries.DEFAULT_CLOSE_ATTEMPTS,
        workers: int = 2,
        max_devices: int = 500,
    ) -> None:
        self._sessions = sessions
        self._ack_timeout = timedelta(seconds=ack_timeout_seconds)
        self._max_close_attempts = max_close_attempts
        self._workers = workers
        self._max_devices = max_devices
        # Woken streams by device; waking one twice before it is served costs nothing more.
        self._due: dict[uuid.UUID, Recipient] = {}
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def want(self, recipient: Recipient) -> None:
        self._due[recipient.device_id] = recipient
        self._ready.set()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work(), name=f"pusher-{i}") for i in range(self._workers)]

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)

    async def _work(self) -> None:
        while True:
            await self._ready.wait()
            batch: list[Recipient] = []
            while self._due and len(batch) < self._max_devices:
                device_id = next(iter(self._due))
                batch.append(self._due.pop(device_id))
            if not self._due:
                self._ready.clear()
            try:
                await self._push(batch)
            except Exception:  # the sweep wakes these streams again; the worker must keep going
                log.exception("push round failed")

    def _retry(self, batch: list[Recipient]) -> None:
        for recipient in batch:
            if not recipient.outbox.closed:
                self.want(recipient)

    async def _push(self, batch: list[Recipient]) -> None:
        """Claim what is due for a batch of sessions in one transaction, as much as each outbox has room for,
        seal it per device and queue it; sessions that may have more are asked for again."""
        rooms = {r.device_id: (r, r.outbox.reserve()) for r in batch}
        requests = [
            deliveries.ClaimRequest(device_id, room, recipient.connected_at)
            for device_id, (recipient, room) in rooms.items()
            if room > 0
        ]
        try:
            if requests:
                claim = await deliveries.claim(
                    self._sessions, requests, datetime.now(UTC), self._ack_timeout, self._max_close_attempts
                )
            else:
                claim = deliveries.Claim({}, frozenset())
        except BaseException:
            for recipient, room in rooms.values():
                recipient.outbox.release(room)
            # Try these streams again soon: a new stream's re-sends are not something the sweep finds.
            asyncio.get_running_loop().call_later(RETRY_SECONDS, self._retry, batch)
            raise
        traced = tracing.log.isEnabledFor(logging.DEBUG)  # per-frame lines only when asked for
        for device_id, (recipient, room) in rooms.items():
            orders = claim.orders.get(device_id, [])
            pushed_at = datetime.now(UTC)
            for order in orders:
                recipient.outbox.fill(sealed(recipient.sealer, order))
                if traced:
                    tracing.sent(device_id, order)
                if isinstance(order, deliveries.DeliveryOrder):
                    recipient.quotable.add(order.instrument)  # a fill would put a position on it
                    PUSHED.labels("delivery").inc()
                    if order.attempt == 1:
                        APPROVAL_TO_DELIVERY.observe((pushed_at - order.created_at).total_seconds())
                else:
                    PUSHED.labels("close").inc()
            recipient.outbox.release(room - len(orders))
            if device_id in claim.more:
                self.want(recipient)
