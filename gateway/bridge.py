"""The EA bridge SDK: a ``BridgeClient`` holds one signed ``DeviceGateway.Connect`` stream, opens sealed
instructions, executes each delivery at most once through an ``Executor``, and reports back.

Nothing is lost and nothing happens twice, across reconnects and restarts, because of one SQLite file
(the ledger) that holds:

* every delivery and close command seen, with its state. A delivery is recorded (and acked RECEIVED)
  before anything else; ``executing`` is committed, fsync'd, before the order goes to the broker; the
  outcome and the frames reporting it are committed together. A repeated ``delivery_id`` is re-acked,
  never re-executed; one found ``executing`` after a crash, or whose placing failed in the terminal, is
  looked up at the broker (again, with backoff, while the terminal cannot answer), never re-placed.
* the outbox: every Ack, Fill and CloseResult frame, stored before it is sent and deleted only when its
  Receipt (ACCEPTED or DUPLICATE) arrives. Unreceipted frames are sent again after every reconnect.

Hello, Heartbeat and Quote frames also carry a unique frame_id and get a Receipt, but they describe the
moment and are not kept: an old heartbeat or quote sent again after a reconnect would only mislead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import sqlite3
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import timestamp_pb2
from google.protobuf.message import DecodeError

from gateway.executors import (
    CloseFailed,
    CloseRequest,
    Executor,
    ExecutorError,
    OrderFill,
    OrderRejected,
    OrderRequest,
    OrderSide,
)
from signalhub.protocol.errors import InvalidArgument
from signalhub.protocol.sealing import InstructionSealer, SealError
from signalhub.protocol.secret import Secret
from signalhub.protocol.signing import CONNECT_METHOD, signed_metadata
from signalhub.protocol.wire import SYMBOL_RE, parse_quote, status_details
from signalhub.v1 import common_pb2
from signalhub.v1 import gateway_pb2 as pb
from signalhub.v1 import gateway_pb2_grpc as rpc

log = logging.getLogger("signalhub.bridge")

BRIDGE_VERSION = "signalhub-bridge/0.1.0"
ERROR_DOMAIN = "signalhub.v1"
_T = TypeVar("_T")


def channel_options(max_message_bytes: int = 1024 * 1024) -> list[tuple[str, Any]]:
    """Client options matching ``backoffice.platform.serving.server_options``: pings every 30 s (the server allows
    one per 10 s, so it never answers too_many_pings), a subchannel of its own per client."""
    return [
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.enable_retries", 0),
    ]


def wire_decimal(value: Decimal) -> str:
    """A decimal string as the contract wants it: plain notation, never an exponent."""
    return format(value, "f")


def parse_decimal(text: str, field_name: str, *, optional: bool = False) -> Decimal | None:
    if not text:
        if optional:
            return None
        raise ValueError(f"{field_name} is empty")
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{field_name} is not a decimal: {text!r}") from None
    if not value.is_finite():
        raise ValueError(f"{field_name} is not a finite decimal")
    return value


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _now() -> datetime:
    return datetime.now(UTC)


def new_frame_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class RpcErrorInfo:
    """The status code and ``google.rpc.ErrorInfo`` reason that ended a stream."""

    code: grpc.StatusCode
    reason: str
    message: str

    @classmethod
    def of(cls, error: grpc.aio.AioRpcError) -> RpcErrorInfo:
        return cls(error.code(), status_details(error).reason, error.details() or "")


class BridgeError(Exception):
    """The bridge stopped for good."""


class DeviceRevoked(BridgeError):
    """The gateway said KEY_REVOKED: this device's key was revoked; reconnecting cannot help."""


class LedgerError(BridgeError):
    """The ledger file cannot be used (another device's ledger, or unreadable)."""


# ---------------------------------------------------------------------------------------------- ledger


class State:
    RECEIVED = "received"  # recorded and acked; not yet sent to the broker
    EXECUTING = "executing"  # committed before the order went out; the outcome is not recorded yet
    FILLED = "filled"
    REJECTED = "rejected"
    SUCCEEDED = "succeeded"  # close commands
    FAILED = "failed"  # close commands


@dataclass(frozen=True)
class OutFrame:
    """A durable uplink frame: ``subject`` names the delivery or command it reports on."""

    frame_id: str
    subject: str
    data: bytes  # the serialised DeviceFrame


@dataclass(frozen=True)
class Recorded:
    """What the ledger knew about an instruction when it arrived."""

    new: bool
    state: str


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS deliveries (
    delivery_id TEXT PRIMARY KEY,
    instruction BLOB NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    broker_ticket TEXT,
    fill_price TEXT,
    fill_volume TEXT,
    fill_time TEXT,
    received_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS close_commands (
    command_id TEXT PRIMARY KEY,
    instruction BLOB NOT NULL,
    state TEXT NOT NULL,
    result BLOB,
    received_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    frame_id TEXT NOT NULL UNIQUE,
    subject TEXT NOT NULL,
    frame BLOB NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_outbox_subject ON outbox (subject);
"""

_FINAL_DELIVERY = (State.FILLED, State.REJECTED)
_FINAL_CLOSE = (State.SUCCEEDED, State.FAILED)


def delivery_subject(delivery_id: str) -> str:
    return f"delivery:{delivery_id}"


def close_subject(command_id: str) -> str:
    return f"close:{command_id}"


class Ledger:
    """The bridge's durable memory: one SQLite file in WAL mode with ``synchronous=FULL`` (every commit is
    fsync'd before it returns). Not thread-safe: ``BridgeClient`` calls it from one thread of its own."""

    def __init__(self, path: Path, device_id: str) -> None:
        self.path = path
        self.device_id = device_id
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # Owner-only whatever the umask, like the other state files: it records every order placed.
            # SQLite gives the -wal and -shm files the database file's mode.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            os.chmod(self.path, 0o600)
            db = sqlite3.connect(self.path, isolation_level=None, timeout=10)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key = 'device_id'").fetchone()
        except (sqlite3.Error, OSError) as exc:
            raise LedgerError(f"cannot open the ledger {self.path}: {exc}") from None
        if row is None:
            db.execute("INSERT INTO meta (key, value) VALUES ('device_id', ?)", (self.device_id,))
        elif row[0] != self.device_id:
            db.close()
            raise LedgerError(f"the ledger {self.path} belongs to device {row[0]}, not {self.device_id}")
        self._db = db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise LedgerError("the ledger is not open")
        return self._db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @staticmethod
    def _store(db: sqlite3.Connection, frames: Sequence[OutFrame]) -> None:
        now = _now().isoformat()
        db.executemany(
            "INSERT INTO outbox (frame_id, subject, frame, created_at) VALUES (?, ?, ?, ?)",
            [(f.frame_id, f.subject, f.data, now) for f in frames],
        )

    def store(self, frames: Sequence[OutFrame]) -> None:
        with self._transaction() as db:
            self._store(db, frames)

    # deliveries

    def record_delivery(self, delivery_id: str, instruction: bytes, ack: OutFrame) -> Recorded:
        """Record a new delivery with its RECEIVED ack, or say what is known about a repeated one."""
        now = _now().isoformat()
        with self._transaction() as db:
            row = db.execute("SELECT state FROM deliveries WHERE delivery_id = ?", (delivery_id,)).fetchone()
            if row is not None:
                return Recorded(new=False, state=str(row[0]))
            db.execute(
                "INSERT INTO deliveries (delivery_id, instruction, state, received_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (delivery_id, instruction, State.RECEIVED, now, now),
            )
            self._store(db, [ack])
        return Recorded(new=True, state=State.RECEIVED)

    def claim_delivery(self, delivery_id: str) -> bool:
        """received -> executing, committed before the order goes out; False if it was not ``received``."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE deliveries SET state = ?, updated_at = ? WHERE delivery_id = ? AND state = ?",
                (State.EXECUTING, _now().isoformat(), delivery_id, State.RECEIVED),
            )
            return cursor.rowcount == 1

    def finish_delivery(
        self, delivery_id: str, *, fill: OrderFill | None, reason: str | None, frames: Sequence[OutFrame]
    ) -> None:
        """The outcome and the frames that report it, in one transaction."""
        state = State.FILLED if fill is not None else State.REJECTED
        with self._transaction() as db:
            db.execute(
                "UPDATE deliveries SET state = ?, reason = ?, broker_ticket = ?, fill_price = ?, fill_volume = ?,"
                " fill_time = ?, updated_at = ? WHERE delivery_id = ?",
                (
                    state,
                    reason,
                    fill.broker_ticket if fill else None,
                    wire_decimal(fill.price) if fill else None,
                    wire_decimal(fill.volume) if fill else None,
                    fill.fill_time.isoformat() if fill else None,
                    _now().isoformat(),
                    delivery_id,
                ),
            )
            self._store(db, frames)

    def delivery_state(self, delivery_id: str) -> str | None:
        row = self.db.execute("SELECT state FROM deliveries WHERE delivery_id = ?", (delivery_id,)).fetchone()
        return None if row is None else str(row[0])

    def deliveries_in(self, state: str) -> list[tuple[str, bytes]]:
        rows = self.db.execute(
            "SELECT delivery_id, instruction FROM deliveries WHERE state = ? ORDER BY received_at", (state,)
        ).fetchall()
        return [(str(r[0]), bytes(r[1])) for r in rows]

    # close commands

    def record_close(self, command_id: str, instruction: bytes) -> Recorded:
        now = _now().isoformat()
        with self._transaction() as db:
            row = db.execute("SELECT state FROM close_commands WHERE command_id = ?", (command_id,)).fetchone()
            if row is not None:
                return Recorded(new=False, state=str(row[0]))
            db.execute(
                "INSERT INTO close_commands (command_id, instruction, state, received_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (command_id, instruction, State.RECEIVED, now, now),
            )
        return Recorded(new=True, state=State.RECEIVED)

    def claim_close(self, command_id: str) -> bool:
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE close_commands SET state = ?, updated_at = ? WHERE command_id = ? AND state = ?",
                (State.EXECUTING, _now().isoformat(), command_id, State.RECEIVED),
            )
            return cursor.rowcount == 1

    def finish_close(self, command_id: str, result: pb.CloseResult, frame: OutFrame) -> None:
        state = State.SUCCEEDED if result.success else State.FAILED
        with self._transaction() as db:
            db.execute(
                "UPDATE close_commands SET state = ?, result = ?, updated_at = ? WHERE command_id = ?",
                (state, result.SerializeToString(), _now().isoformat(), command_id),
            )
            self._store(db, [frame])

    def close_result(self, command_id: str) -> pb.CloseResult | None:
        row = self.db.execute("SELECT result FROM close_commands WHERE command_id = ?", (command_id,)).fetchone()
        if row is None or row[0] is None:
            return None
        return pb.CloseResult.FromString(bytes(row[0]))

    def closes_in(self, state: str) -> list[tuple[str, bytes]]:
        rows = self.db.execute(
            "SELECT command_id, instruction FROM close_commands WHERE state = ? ORDER BY received_at", (state,)
        ).fetchall()
        return [(str(r[0]), bytes(r[1])) for r in rows]

    # outbox

    def pending(self, subject: str | None = None) -> list[OutFrame]:
        """Unreceipted frames, oldest first (of one subject, or all)."""
        if subject is None:
            rows = self.db.execute("SELECT frame_id, subject, frame FROM outbox ORDER BY seq").fetchall()
        else:
            rows = self.db.execute(
                "SELECT frame_id, subject, frame FROM outbox WHERE subject = ? ORDER BY seq", (subject,)
            ).fetchall()
        return [OutFrame(str(r[0]), str(r[1]), bytes(r[2])) for r in rows]

    def receipted(self, frame_ids: Sequence[str]) -> int:
        with self._transaction() as db:
            cursor = db.executemany("DELETE FROM outbox WHERE frame_id = ?", [(f,) for f in frame_ids])
            return cursor.rowcount

    def prune(self, older_than: timedelta) -> int:
        """Forget finished instructions long past any re-send (nothing is sent after its expire_time)."""
        cutoff = (_now() - older_than).isoformat()
        with self._transaction() as db:
            removed = db.execute(
                f"DELETE FROM deliveries WHERE state IN {_FINAL_DELIVERY!r} AND updated_at < ?"  # noqa: S608 - constants
                " AND NOT EXISTS (SELECT 1 FROM outbox WHERE outbox.subject = 'delivery:' || deliveries.delivery_id)",
                (cutoff,),
            ).rowcount
            removed += db.execute(
                f"DELETE FROM close_commands WHERE state IN {_FINAL_CLOSE!r} AND updated_at < ?"  # noqa: S608 - constants
                " AND NOT EXISTS (SELECT 1 FROM outbox WHERE outbox.subject = 'close:' || close_commands.command_id)",
                (cutoff,),
            ).rowcount
        return removed


# ---------------------------------------------------------------------------------------------- client


@dataclass(frozen=True)
class BridgeConfig:
    """How a bridge reaches its gateways and paces itself. ``gateways`` are tried in turn: after a session
    ends, the next one is used (so a bridge moves off a replica that died)."""

    device_id: str
    gateways: tuple[str, ...]
    ledger_path: Path
    bridge_version: str = BRIDGE_VERSION
    tls: bool = False
    root_certificates: bytes | None = field(default=None, repr=False)
    connect_timeout: float = 5.0
    welcome_timeout: float = 10.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    replaced_backoff: float = 30.0  # after SESSION_REPLACED: another bridge holds this device
    healthy_after: float = 5.0  # a session this long (after Welcome) resets the backoff
    quote_interval: float = 1.0
    quote_refresh: float = 10.0  # an unchanged quote is sent again this often
    # An order whose outcome is unknown is looked up again after this, doubling up to the cap (and at
    # once after every reconnect), until the terminal answers.
    lookup_backoff_base: float = 1.0
    lookup_backoff_cap: float = 60.0
    max_concurrent_orders: int = 8
    drain_timeout: float = 10.0  # on stop: how long in-flight orders and unreceipted frames may take
    prune_after: timedelta = timedelta(days=30)
    max_message_bytes: int = 1024 * 1024

    def __post_init__(self) -> None:
        if not self.gateways:
            raise ValueError("at least one gateway address is needed")
        if self.max_concurrent_orders < 1:
            raise ValueError("max_concurrent_orders must be at least 1")


@dataclass
class BridgeStats:
    """Counters for logs, tests and the demo."""

    sessions: int = 0
    welcomes: int = 0
    instructions: int = 0
    refused: int = 0  # sealed instructions that did not open (never executed)
    repeated: int = 0  # instructions seen before (re-acked, never re-executed)
    filled: int = 0
    rejected: int = 0
    closed: int = 0
    close_failed: int = 0
    frames_sent: int = 0
    frames_resent: int = 0
    receipts: int = 0
    receipts_rejected: int = 0
    quotes_sent: int = 0
    lookups_failed: int = 0  # order lookups the terminal could not answer (the outcome stayed unknown)


class _SessionEnded(Exception):
    pass


@dataclass
class _Session:
    """One open stream."""

    address: str
    call: Any  # grpc.aio.StreamStreamCall[DeviceFrame, GatewayFrame]
    queue: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)
    queued: set[str] = field(default_factory=set)  # durable frame ids already queued on this stream
    ephemeral: set[str] = field(default_factory=set)  # hello/heartbeat/quote frame ids awaiting receipts
    session_id: str = ""
    heartbeat_seconds: int = 15
    last_heard: float = 0.0
    welcomed_at: float | None = None


class BridgeClient:
    """Runs until ``stop()`` (or a revoked key): connect, Hello, then execute instructions and report."""

    def __init__(self, config: BridgeConfig, secret: bytes, executor: Executor, *, seed: int | None = None) -> None:
        self.config = config
        self._secret = Secret(secret)
        self._sealer = InstructionSealer(secret, config.device_id)
        self.executor = executor
        self.ledger = Ledger(config.ledger_path, config.device_id)
        self.stats = BridgeStats()
        self._rng = random.Random(seed)  # noqa: S311 - backoff jitter, not cryptography
        self._db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bridge-ledger")
        self._stopping = asyncio.Event()
        self._session: _Session | None = None
        self._outbox_lock = asyncio.Lock()
        self._order_slots = asyncio.Semaphore(config.max_concurrent_orders)
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_quotes: dict[str, tuple[str, str, float]] = {}
        self.connected = asyncio.Event()  # set while a session is welcomed
        self._welcomed = asyncio.Event()  # set, and replaced, at every Welcome: wakes pending lookups
        self.address: str | None = None  # the gateway of the current (or last) session

    def __repr__(self) -> str:
        return f"BridgeClient(device_id={self.config.device_id!r}, gateways={self.config.gateways!r})"

    # -- plumbing

    async def _db(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_thread, lambda: fn(*args, **kwargs))

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        async def guarded() -> None:
            try:
                await coro
            except Exception:
                log.exception("instruction handling failed", extra={"task": name})

        task = asyncio.create_task(guarded(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stop(self) -> None:
        """Ask ``run`` to finish: in-flight orders complete, their reports are flushed, then it returns."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # -- the outbox

    async def _report(self, frames: Sequence[OutFrame], store: Callable[[], None] | None = None) -> None:
        """Commit (``store`` commits the frames with whatever else must be atomic), then queue for sending."""
        if store is None:
            await self._db(self.ledger.store, frames)
        else:
            await self._db(store)
        async with self._outbox_lock:
            session = self._session
            if session is not None:
                for frame in frames:
                    self._enqueue(session, frame)

    @staticmethod
    def _enqueue(session: _Session, frame: OutFrame, *, again: bool = False) -> None:
        if frame.frame_id in session.queued and not again:
            return
        session.queued.add(frame.frame_id)
        session.queue.put_nowait(frame.data)

    def _ephemeral(self, session: _Session, frame: pb.DeviceFrame) -> None:
        frame.frame_id = new_frame_id()
        session.ephemeral.add(frame.frame_id)
        session.queue.put_nowait(frame.SerializeToString())

    @staticmethod
    def _frame(subject: str, **body: Any) -> OutFrame:
        frame_id = new_frame_id()
        data = pb.DeviceFrame(frame_id=frame_id, **body).SerializeToString()
        return OutFrame(frame_id, subject, data)

    def _ack(self, delivery_id: str, stage: pb.AckStage.ValueType, reason: str = "") -> OutFrame:
        return self._frame(
            delivery_subject(delivery_id), ack=pb.Ack(delivery_id=delivery_id, stage=stage, reason=reason)
        )

    # -- deliveries

    async def _on_delivery(self, delivery: pb.Delivery) -> None:
        delivery_id = delivery.delivery_id
        if not delivery_id:
            log.warning("refused a delivery without an id")
            self.stats.refused += 1
            return
        ack = self._ack(delivery_id, pb.ACK_STAGE_RECEIVED)
        recorded = await self._db(self.ledger.record_delivery, delivery_id, delivery.SerializeToString(), ack)
        if not recorded.new:
            self.stats.repeated += 1
            log.info("repeated delivery re-acked", extra={"delivery_id": delivery_id, "state": recorded.state})
            await self._reack(delivery_id)
            return
        async with self._outbox_lock:
            if self._session is not None:
                self._enqueue(self._session, ack)
        log.info(
            "delivery received",
            extra={"delivery_id": delivery_id, "instrument": delivery.instrument, "attempt": delivery.attempt},
        )
        await self._execute(delivery)

    async def _reack(self, delivery_id: str) -> None:
        """The gateway sent a delivery again: it lacks our RECEIVED. Send what is still unreceipted now, or
        a fresh RECEIVED ack (answered DUPLICATE if it was only the receipt that got lost)."""
        pending = await self._db(self.ledger.pending, delivery_subject(delivery_id))
        if pending:
            async with self._outbox_lock:
                if self._session is not None:
                    for frame in pending:
                        self._enqueue(self._session, frame, again=True)
            return
        await self._report([self._ack(delivery_id, pb.ACK_STAGE_RECEIVED)])

    async def _refuse(self, delivery_id: str, reason: str) -> None:
        """Nothing was sent to the broker: record REJECTED with the reason and report it."""
        frame = self._ack(delivery_id, pb.ACK_STAGE_REJECTED, reason)
        await self._report(
            [frame], lambda: self.ledger.finish_delivery(delivery_id, fill=None, reason=reason, frames=[frame])
        )
        self.stats.rejected += 1
        log.info("delivery refused", extra={"delivery_id": delivery_id, "reason": reason})

    async def _execute(self, delivery: pb.Delivery) -> None:
        delivery_id = delivery.delivery_id
        try:
            order, entry, max_deviation = self._order_of(delivery)
        except ValueError as exc:
            await self._refuse(delivery_id, f"invalid: {exc}")
            return
        async with self._order_slots:
            if self._expired(delivery):
                await self._refuse(delivery_id, f"expired: expire_time {self._expiry(delivery)} has passed")
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
                    await self._refuse(
                        delivery_id,
                        f"max_deviation: market {wire_decimal(market)} is {wire_decimal(abs(market - entry))} from "
                        f"entry {wire_decimal(entry)} (max {wire_decimal(max_deviation)})",
                    )
                    return
            if self._expired(delivery):  # the price check may have taken a while
                await self._refuse(delivery_id, f"expired: expire_time {self._expiry(delivery)} has passed")
                return
            if not await self._db(self.ledger.claim_delivery, delivery_id):
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
                delay = min(self.config.lookup_backoff_cap, self.config.lookup_backoff_base * 2**attempt)
                log.warning(
                    "order outcome still unknown; looking it up again later",
                    extra={"delivery_id": delivery_id, "seconds": delay, "error": str(exc) or type(exc).__name__},
                )
                attempt += 1
                await self._pause(delay, self._welcomed)
                continue
            await self._placed_outcome(delivery_id, found, None if found else not_found)
            return

    async def _placed_outcome(self, delivery_id: str, fill: OrderFill | None, reason: str | None) -> None:
        if fill is None:
            frames = [self._ack(delivery_id, pb.ACK_STAGE_REJECTED, reason or "rejected")]
            self.stats.rejected += 1
        else:
            frames = [
                self._ack(delivery_id, pb.ACK_STAGE_PLACED),
                self._frame(
                    delivery_subject(delivery_id),
                    fill=pb.Fill(
                        delivery_id=delivery_id,
                        broker_ticket=fill.broker_ticket,
                        price=wire_decimal(fill.price),
                        volume=wire_decimal(fill.volume),
                        fill_time=_timestamp(fill.fill_time),
                    ),
                ),
            ]
            self.stats.filled += 1
        await self._report(
            frames, lambda: self.ledger.finish_delivery(delivery_id, fill=fill, reason=reason, frames=frames)
        )
        if fill is None:
            log.info("delivery rejected", extra={"delivery_id": delivery_id, "reason": reason})
        else:
            log.info(
                "delivery filled",
                extra={
                    "delivery_id": delivery_id,
                    "broker_ticket": fill.broker_ticket,
                    "price": wire_decimal(fill.price),
                    "volume": wire_decimal(fill.volume),
                },
            )

    @staticmethod
    def _expiry(delivery: pb.Delivery) -> datetime | None:
        if not delivery.HasField("expire_time"):
            return None
        return delivery.expire_time.ToDatetime(tzinfo=UTC)

    def _expired(self, delivery: pb.Delivery) -> bool:
        expiry = self._expiry(delivery)
        return expiry is not None and _now() >= expiry

    @staticmethod
    def _order_of(delivery: pb.Delivery) -> tuple[OrderRequest, Decimal | None, Decimal | None]:
        if delivery.side == common_pb2.SIDE_BUY:
            side = OrderSide.BUY
        elif delivery.side == common_pb2.SIDE_SELL:
            side = OrderSide.SELL
        else:
            raise ValueError("side is neither BUY nor SELL")
        if not delivery.instrument:
            raise ValueError("instrument is empty")
        volume = parse_decimal(delivery.volume, "volume")
        assert volume is not None
        if volume <= 0:
            raise ValueError("volume must be positive")
        entry = parse_decimal(delivery.entry_price, "entry_price", optional=True)
        max_deviation = parse_decimal(delivery.max_deviation, "max_deviation", optional=True)
        if max_deviation is not None and max_deviation < 0:
            raise ValueError("max_deviation must not be negative")
        order = OrderRequest(delivery.delivery_id, delivery.instrument, side, volume, entry)
        return order, entry, max_deviation

    # -- close orders

    async def _on_close(self, close: pb.CloseOrder) -> None:
        command_id = close.command_id
        if not command_id:
            log.warning("refused a close order without an id")
            self.stats.refused += 1
            return
        recorded = await self._db(self.ledger.record_close, command_id, close.SerializeToString())
        if not recorded.new:
            self.stats.repeated += 1
            await self._rereport_close(command_id, recorded.state)
            return
        log.info("close order received", extra={"command_id": command_id, "broker_ticket": close.broker_ticket})
        await self._execute_close(close)

    async def _rereport_close(self, command_id: str, state: str) -> None:
        pending = await self._db(self.ledger.pending, close_subject(command_id))
        if pending:
            async with self._outbox_lock:
                if self._session is not None:
                    for frame in pending:
                        self._enqueue(self._session, frame, again=True)
            return
        if state in _FINAL_CLOSE:
            result = await self._db(self.ledger.close_result, command_id)
            if result is not None:
                await self._report([self._frame(close_subject(command_id), close_result=result)])

    async def _execute_close(self, close: pb.CloseOrder) -> None:
        command_id = close.command_id
        try:
            volume = parse_decimal(close.volume, "volume", optional=True)
            if volume is not None and volume <= 0:
                raise ValueError("volume must be positive")
        except ValueError as exc:
            await self._close_outcome(command_id, pb.CloseResult(command_id=command_id, error=f"invalid: {exc}"))
            return
        async with self._order_slots:
            if not await self._db(self.ledger.claim_close, command_id):
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
                result = pb.CloseResult(
                    command_id=command_id,
                    success=True,
                    close_price=wire_decimal(done.close_price),
                    closed_volume=wire_decimal(done.closed_volume),
                )
            await self._close_outcome(command_id, result)

    async def _close_outcome(self, command_id: str, result: pb.CloseResult) -> None:
        frame = self._frame(close_subject(command_id), close_result=result)
        await self._report([frame], lambda: self.ledger.finish_close(command_id, result, frame))
        if result.success:
            self.stats.closed += 1
        else:
            self.stats.close_failed += 1
        log.info(
            "close order done",
            extra={"command_id": command_id, "success": result.success, "error": result.error or None},
        )

    # -- recovery after a restart

    async def _recover(self) -> None:
        """Finish what a previous run left: instructions recorded but not executed are executed now;
        ones caught in the middle of execution are looked up at the broker, never placed again."""
        for delivery_id, _ in await self._db(self.ledger.deliveries_in, State.EXECUTING):
            log.warning("delivery was interrupted; asking the terminal", extra={"delivery_id": delivery_id})
            reason = "interrupted: the bridge stopped while placing the order; not retried"
            self._spawn(self._settle(delivery_id, reason), f"delivery-{delivery_id}")
        for delivery_id, data in await self._db(self.ledger.deliveries_in, State.RECEIVED):
            log.info("resuming a recorded delivery", extra={"delivery_id": delivery_id})
            self._spawn(self._execute(pb.Delivery.FromString(data)), f"delivery-{delivery_id}")
        for command_id, _ in await self._db(self.ledger.closes_in, State.EXECUTING):
            log.warning("close order was interrupted", extra={"command_id": command_id})
            await self._close_outcome(
                command_id,
                pb.CloseResult(
                    command_id=command_id,
                    success=False,
                    error="interrupted: the bridge stopped while closing; check the terminal",
                ),
            )
        for command_id, data in await self._db(self.ledger.closes_in, State.RECEIVED):
            self._spawn(self._execute_close(pb.CloseOrder.FromString(data)), f"close-{command_id}")

    # -- the stream

    async def _hello(self) -> pb.DeviceFrame:
        account = await self.executor.account()
        symbols = await self.executor.symbols()
        return pb.DeviceFrame(
            hello=pb.Hello(
                bridge_version=self.config.bridge_version,
                account_currency=account.currency,
                balance=wire_decimal(account.balance),
                equity=wire_decimal(account.equity),
                symbols=[
                    pb.SymbolSpec(
                        name=s.name,
                        contract_size=wire_decimal(s.contract_size),
                        tick_size=wire_decimal(s.tick_size),
                        tick_value=wire_decimal(s.tick_value),
                        volume_min=wire_decimal(s.volume_min),
                        volume_step=wire_decimal(s.volume_step),
                        volume_max=wire_decimal(s.volume_max),
                    )
                    for s in symbols
                ],
            )
        )

    def _channel(self, address: str) -> grpc.aio.Channel:
        options = channel_options(self.config.max_message_bytes)
        if self.config.tls:
            credentials = grpc.ssl_channel_credentials(self.config.root_certificates)
            return grpc.aio.secure_channel(address, credentials, options=options)
        return grpc.aio.insecure_channel(address, options=options)

    async def _open(self, address: str) -> bool:
        """One session on ``address``; True when it was healthy (welcomed and up for a while)."""
        channel = self._channel(address)
        session: _Session | None = None
        tasks: list[asyncio.Task[None]] = []
        try:
            await asyncio.wait_for(channel.channel_ready(), self.config.connect_timeout)
            stub = rpc.DeviceGatewayStub(channel)
            metadata = signed_metadata(self._secret.reveal(), CONNECT_METHOD, self.config.device_id, b"")
            call = stub.Connect(metadata=metadata)
            session = _Session(address=address, call=call, last_heard=asyncio.get_running_loop().time())
            self.stats.sessions += 1
            hello = await self._hello()
            hello.frame_id = new_frame_id()
            session.ephemeral.add(hello.frame_id)
            await call.write(hello)
            await asyncio.wait_for(self._await_welcome(session), self.config.welcome_timeout)
            async with self._outbox_lock:
                # From here on, every stored frame is queued on this stream; the backlog goes first.
                self._session = session
                backlog = await self._db(self.ledger.pending)
                for frame in backlog:
                    self._enqueue(session, frame)
                self.stats.frames_resent += len(backlog)
            self.address = address
            self.connected.set()
            self._welcomed.set()
            self._welcomed = asyncio.Event()
            log.info(
                "connected",
                extra={"gateway": address, "session_id": session.session_id, "unreceipted": len(backlog)},
            )
            tasks = [
                asyncio.create_task(self._send_loop(session), name="bridge-send"),
                asyncio.create_task(self._read_loop(session), name="bridge-read"),
                asyncio.create_task(self._heartbeat_loop(session), name="bridge-heartbeat"),
                asyncio.create_task(self._quote_loop(session), name="bridge-quotes"),
                asyncio.create_task(self._wait_stop(), name="bridge-stop"),
            ]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if self._stopping.is_set():
                await self._drain(session)
            for task in done:
                error = None if task.cancelled() else task.exception()
                if error is not None:
                    raise error
            return self._healthy(session)
        finally:
            self.connected.clear()
            async with self._outbox_lock:
                if self._session is session:
                    self._session = None
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
            if session is not None:
                session.call.cancel()
            await channel.close()

    async def _wait_stop(self) -> None:
        await self._stopping.wait()

    def _healthy(self, session: _Session) -> bool:
        if session.welcomed_at is None:
            return False
        return asyncio.get_running_loop().time() - session.welcomed_at >= self.config.healthy_after

    async def _await_welcome(self, session: _Session) -> None:
        while True:
            frame = await session.call.read()
            if frame is grpc.aio.EOF:
                raise _SessionEnded("the gateway closed the stream before Welcome")
            session.last_heard = asyncio.get_running_loop().time()
            kind = frame.WhichOneof("body")
            if kind == "welcome":
                welcome = frame.welcome
                session.session_id = welcome.session_id
                session.heartbeat_seconds = max(1, welcome.heartbeat_seconds or 15)
                session.welcomed_at = asyncio.get_running_loop().time()
                self.stats.welcomes += 1
                if welcome.device_id and welcome.device_id != self.config.device_id:
                    raise _SessionEnded(f"welcomed as device {welcome.device_id}")
                return
            await self._dispatch(session, frame)

    async def _drain(self, session: _Session) -> None:
        """On stop: let in-flight orders finish and their reports be receipted, within drain_timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.drain_timeout
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.config.drain_timeout)
        while loop.time() < deadline and not session.call.done():
            if not await self._db(self.ledger.pending):
                return
            await asyncio.sleep(0.05)

    async def _send_loop(self, session: _Session) -> None:
        while True:
            data = await session.queue.get()
            await session.call.write(pb.DeviceFrame.FromString(data))
            self.stats.frames_sent += 1

    async def _read_loop(self, session: _Session) -> None:
        while True:
            frame = await session.call.read()
            if frame is grpc.aio.EOF:
                raise _SessionEnded("the gateway ended the stream")
            session.last_heard = asyncio.get_running_loop().time()
            await self._dispatch(session, frame)

    async def _dispatch(self, session: _Session, frame: pb.GatewayFrame) -> None:
        kind = frame.WhichOneof("body")
        if kind == "receipt":
            await self._on_receipt(session, frame.receipt)
        elif kind == "instruction":
            self._on_sealed(session, frame.instruction)
        elif kind in ("heartbeat", "welcome"):
            return
        else:
            log.warning("unknown frame from the gateway", extra={"gateway": session.address})

    async def _on_receipt(self, session: _Session, receipt: pb.Receipt) -> None:
        self.stats.receipts += 1
        if receipt.status == pb.RECEIPT_STATUS_REJECTED:
            self.stats.receipts_rejected += 1
            log.warning(
                "the gateway rejected a frame; dropped",
                extra={
                    "frame_id": receipt.frame_id,
                    "code": receipt.error.code,
                    "error": receipt.error.message,
                },
            )
        elif receipt.status not in (pb.RECEIPT_STATUS_ACCEPTED, pb.RECEIPT_STATUS_DUPLICATE):
            log.warning("receipt without a status ignored", extra={"frame_id": receipt.frame_id})
            return
        if receipt.frame_id in session.ephemeral:
            session.ephemeral.discard(receipt.frame_id)
            return
        await self._db(self.ledger.receipted, [receipt.frame_id])

    def _on_sealed(self, session: _Session, sealed: pb.SealedInstruction) -> None:
        self.stats.instructions += 1
        try:
            instruction = pb.Instruction.FromString(self._sealer.open(sealed.nonce, sealed.ciphertext))
            kind = instruction.WhichOneof("body")
            if kind is None:
                raise ValueError("empty instruction")
        except (SealError, DecodeError, ValueError) as exc:
            self.stats.refused += 1
            log.warning(
                "refused an instruction that does not open; not executed",
                extra={"gateway": session.address, "session_id": session.session_id, "error": str(exc)},
            )
            return
        if self._stopping.is_set():
            return  # not recorded, so the gateway sends it again to the next run
        if kind == "delivery":
            self._spawn(self._on_delivery(instruction.delivery), f"delivery-{instruction.delivery.delivery_id}")
        else:
            self._spawn(self._on_close(instruction.close), f"close-{instruction.close.command_id}")

    async def _heartbeat_loop(self, session: _Session) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(session.heartbeat_seconds)
            if loop.time() - session.last_heard > 3 * session.heartbeat_seconds + 5:
                raise _SessionEnded("the gateway went silent")
            self._ephemeral(session, pb.DeviceFrame(heartbeat=pb.Heartbeat(send_time=_timestamp(_now()))))

    async def _quote_loop(self, session: _Session) -> None:
        """Quotes for the instruments with open positions, at most one per instrument and interval."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.config.quote_interval)
            try:
                held = {p.instrument for p in await self.executor.positions()}
                for instrument in sorted(held):
                    price = await self.executor.quote(instrument)
                    if price is None:
                        continue
                    bid, ask = wire_decimal(price.bid), wire_decimal(price.ask)
                    last = self._last_quotes.get(instrument)
                    now = loop.time()
                    if last is not None and last[:2] == (bid, ask) and now - last[2] < self.config.quote_refresh:
                        continue
                    self._last_quotes[instrument] = (bid, ask, now)
                    quote = common_pb2.Quote(instrument=instrument, bid=bid, ask=ask, quote_time=_timestamp(price.time))
                    if not self._quotable(quote):
                        continue
                    self._ephemeral(session, pb.DeviceFrame(quote=quote))
                    self.stats.quotes_sent += 1
            except ExecutorError as exc:
                log.warning("no quotes from the terminal", extra={"error": str(exc)})

    def _quotable(self, quote: common_pb2.Quote) -> bool:
        """Whether the gateway takes ``quote`` (by its own rule). A terminal's price it would refuse is
        logged here, at most once per quote_refresh, instead of being sent to be refused."""
        try:
            parse_quote(quote, "quote", SYMBOL_RE)
        except InvalidArgument as exc:
            log.warning("not sent: a quote the gateway would refuse", extra={"violations": exc.violations})
            return False
        return True

    # -- the main loop

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter."""
        return self._rng.uniform(0, min(self.config.backoff_cap, self.config.backoff_base * 2**attempt))

    async def _pause(self, seconds: float, wake: asyncio.Event | None = None) -> None:
        """Sleep ``seconds``, or less: until stop() (or ``wake`` is set)."""
        events = [self._stopping] if wake is None else [self._stopping, wake]
        waits = [asyncio.ensure_future(event.wait()) for event in events]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def run(self) -> None:
        """Serve until ``stop()``; raises DeviceRevoked (or LedgerError, ExecutorError) when it cannot go on."""
        await self._db(self.ledger.open)
        try:
            await self.executor.start()
            pruned = await self._db(self.ledger.prune, self.config.prune_after)
            if pruned:
                log.info("ledger pruned", extra={"removed": pruned})
            await self._recover()
            await self._connect_loop()
        finally:
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=self.config.drain_timeout)
            for task in list(self._tasks):
                task.cancel()
            await self.executor.stop()
            await self._db(self.ledger.close)
            self._db_thread.shutdown(wait=True)

    async def _connect_loop(self) -> None:
        attempt = 0
        index = 0
        gateways = self.config.gateways
        while not self._stopping.is_set():
            address = gateways[index % len(gateways)]
            floor = 0.0
            try:
                healthy = await self._open(address)
                if healthy:
                    attempt = 0
                log.info("session ended", extra={"gateway": address})
            except grpc.aio.AioRpcError as exc:
                info = RpcErrorInfo.of(exc)
                if info.code == grpc.StatusCode.UNAUTHENTICATED and info.reason == "KEY_REVOKED":
                    log.error("this device's key was revoked; stopping for good", extra={"gateway": address})
                    raise DeviceRevoked(
                        f"device {self.config.device_id} was revoked: register a new device and use its credentials"
                    ) from None
                if info.code == grpc.StatusCode.ABORTED and info.reason == "SESSION_REPLACED":
                    log.warning(
                        "another bridge connected as this device; backing off",
                        extra={"gateway": address, "seconds": self.config.replaced_backoff},
                    )
                    floor = self.config.replaced_backoff
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
            except (TimeoutError, _SessionEnded, OSError, ExecutorError) as exc:
                log.warning("no session", extra={"gateway": address, "error": str(exc) or type(exc).__name__})
            except asyncio.InvalidStateError as exc:  # a write after the call ended
                log.warning("stream ended while writing", extra={"gateway": address, "error": str(exc)})
            if self._stopping.is_set():
                return
            index += 1  # try the next gateway: a replica that just failed is the least likely to work
            delay = floor + self._backoff(attempt)
            attempt += 1
            await self._pause(delay)
