"""The one way a servicer changes state: one transaction, run once per ``request_id`` (when the request
carries one), and the devices to wake (and the positions the monitor should re-read) told through Redis
only after the commit, so whoever the hint wakes always reads what was committed."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from google.protobuf.message import Message
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backoffice.platform import hints, idempotency
from backoffice.platform.vault import Vault

ResponseT = TypeVar("ResponseT", bound=Message)


@dataclass
class Wake:
    """What to hint once the transaction has committed: devices, by hint, and positions the monitor
    should re-read."""

    devices: dict[bytes, list[uuid.UUID]] = field(default_factory=dict)
    positions: list[uuid.UUID] = field(default_factory=list)

    def add(self, device_ids: tuple[uuid.UUID, ...] | list[uuid.UUID], message: bytes = hints.WAKE) -> None:
        self.devices.setdefault(message, []).extend(device_ids)

    def add_positions(self, position_ids: tuple[uuid.UUID, ...] | list[uuid.UUID]) -> None:
        self.positions.extend(position_ids)


@dataclass(frozen=True)
class Mutations:
    sessions: async_sessionmaker[AsyncSession]
    vault: Vault
    redis: Redis | None = None  # None where no mutation ever wakes a device

    async def run(
        self,
        caller_id: uuid.UUID,
        request: Message,
        response_type: type[ResponseT],
        action: Callable[[AsyncSession, Wake], Awaitable[ResponseT]],
    ) -> ResponseT:
        """``action(session, wake)`` inside one transaction, once per (caller, method, request_id); then
        the hints it asked for. A repeated request returns the first response and wakes nobody."""
        wake = Wake()
        async with self.sessions.begin() as session:
            response = await idempotency.run_once(
                session, self.vault, caller_id, request, response_type, lambda: action(session, wake)
            )
        await self.publish(wake)
        return response

    async def publish(self, wake: Wake) -> None:
        for message, device_ids in wake.devices.items():
            if device_ids:
                assert self.redis is not None, "a mutation woke devices without Redis wired in"
                await hints.publish(self.redis, device_ids, message)
        if wake.positions:
            assert self.redis is not None, "a mutation changed positions without Redis wired in"
            await hints.publish_monitor(self.redis, [hints.positions_entry(wake.positions)])
