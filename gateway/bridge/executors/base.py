"""What a bridge trades through: the ``Executor`` interface and the values it speaks in.

Prices and volumes are ``Decimal`` everywhere; an implementation converts at its own boundary.
Implementations: ``paper.PaperExecutor`` (a simulated broker) and ``mt5.Mt5Executor`` (a MetaTrader 5
terminal).
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Protocol

# What the package re-exports (gateway.bridge.executors, then gateway.bridge): written once, here.
__all__ = [
    "AccountInfo",
    "CloseFailed",
    "CloseFill",
    "CloseRequest",
    "Executor",
    "ExecutorError",
    "HeldPosition",
    "OrderFill",
    "OrderRejected",
    "OrderRequest",
    "OrderSide",
    "Price",
    "StateStore",
    "SymbolInfo",
    "close_comment",
    "order_comment",
]


class OrderSide(enum.StrEnum):
    BUY = "BUY"
    SELL = "SELL"


@dataclass(frozen=True)
class AccountInfo:
    """The trading account, as sent in Hello (currency, balance, equity) and AccountState (all but the
    currency; margin and free margin only when the terminal knows them)."""

    currency: str
    balance: Decimal
    equity: Decimal
    margin: Decimal | None = None
    free_margin: Decimal | None = None


@dataclass(frozen=True)
class SymbolInfo:
    """One broker symbol's trading specification, as sent in Hello."""

    name: str
    contract_size: Decimal
    tick_size: Decimal
    tick_value: Decimal
    volume_min: Decimal
    volume_step: Decimal
    volume_max: Decimal


@dataclass(frozen=True)
class Price:
    instrument: str
    bid: Decimal
    ask: Decimal
    time: datetime


@dataclass(frozen=True)
class OrderRequest:
    """A market order for one delivery; ``entry_price`` is the signal's (None: at market)."""

    delivery_id: str
    instrument: str
    side: OrderSide
    volume: Decimal
    entry_price: Decimal | None = None


@dataclass(frozen=True)
class OrderFill:
    broker_ticket: str
    price: Decimal
    volume: Decimal
    fill_time: datetime


@dataclass(frozen=True)
class CloseRequest:
    """Close ``volume`` lots (None: all) of the position ``broker_ticket``."""

    command_id: str
    broker_ticket: str
    volume: Decimal | None = None


@dataclass(frozen=True)
class CloseFill:
    close_price: Decimal
    closed_volume: Decimal


@dataclass(frozen=True)
class HeldPosition:
    broker_ticket: str
    instrument: str
    side: OrderSide
    volume: Decimal


class ExecutorError(Exception):
    """The executor cannot work at all (missing package, terminal not running, login failed)."""


class OrderRejected(Exception):
    """The broker (or the simulation) refused an order; ``reason`` is reported in Ack REJECTED."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CloseFailed(Exception):
    """A close did not happen; ``reason`` is reported in CloseResult.error."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StateStore(Protocol):
    """Where an executor keeps what it must remember across restarts (the bridge's ledger)."""

    async def load(self) -> bytes | None: ...

    async def save(self, data: bytes) -> None: ...


class Executor(ABC):
    """What a BridgeClient needs from a trading terminal. Every method may be called from one event loop;
    implementations that block (MetaTrader5) run their calls on a thread of their own."""

    @abstractmethod
    async def start(self) -> None:
        """Connect to the terminal (idempotent); raises ExecutorError when that is impossible."""

    @abstractmethod
    async def account(self) -> AccountInfo: ...

    @abstractmethod
    async def symbols(self) -> list[SymbolInfo]: ...

    @abstractmethod
    async def quote(self, instrument: str) -> Price | None:
        """The current bid/ask, or None when the terminal has no price for the instrument."""

    @abstractmethod
    async def market_price(self, order: OrderRequest) -> Decimal | None:
        """The price ``order`` would be filled at now (BUY: ask, SELL: bid), or None when unknown."""

    @abstractmethod
    async def place_order(self, order: OrderRequest) -> OrderFill:
        """Place a market order; raises OrderRejected with the broker's reason."""

    @abstractmethod
    async def find_order(self, delivery_id: str) -> OrderFill | None:
        """The fill of an order placed earlier for ``delivery_id`` (after a crash in the middle of
        placing it), or None when no such order is known."""

    @abstractmethod
    async def close_position(self, request: CloseRequest) -> CloseFill:
        """Close (part of) a position; raises CloseFailed with the reason."""

    @abstractmethod
    async def positions(self) -> list[HeldPosition]: ...

    async def find_close(self, command_id: str) -> CloseFill | None:
        """The close made earlier for ``command_id`` (after a crash in the middle of it), or None when the
        terminal knows it made none; raises ExecutorError when it cannot tell (by default: an executor that
        keeps no record of closes by command)."""
        raise ExecutorError(f"this terminal cannot look up close {command_id}")

    async def stop(self) -> None:
        """Release the terminal (nothing to release by default)."""
        return None

    def keep_state_in(self, store: StateStore) -> None:
        """Called before ``start`` with the ledger's store: an executor that is its own broker (the paper
        one) keeps its book there; one that trades through a terminal has the terminal for that."""
        return None


def order_comment(delivery_id: str) -> str:
    """What ties a broker order to its delivery: 31 characters at most (MetaTrader's comment limit)."""
    return "sh" + delivery_id.replace("-", "")[:29]


def close_comment(command_id: str) -> str:
    """What ties a broker's closing deal to its close command, within MetaTrader's 31 characters."""
    return ("sh-close-" + command_id.replace("-", ""))[:31]


def now() -> datetime:
    """The time of a fill made now (aware, UTC)."""
    return datetime.now(UTC)
