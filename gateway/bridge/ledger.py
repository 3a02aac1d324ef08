"""The bridge's durable memory: one SQLite file that makes every instruction execute at most once and every
report arrive, across reconnects and restarts. It holds:

* every delivery and close command seen, with its state. A delivery is recorded (and acked RECEIVED)
  before anything else; ``executing`` is committed, fsync'd, before the order goes to the broker; the
  outcome and the frames reporting it are committed together. A repeated ``delivery_id`` is re-acked,
  never re-executed; one found ``executing`` after a crash, or whose placing failed in the terminal, is
  looked up at the broker (again, with backoff, while the terminal cannot answer), never re-placed.
* the outbox: every Ack, Fill and CloseResult frame, stored before it is sent and deleted only when its
  Receipt (ACCEPTED or DUPLICATE) arrives. Unreceipted frames are sent again after every reconnect.

* what the executor asks to keep (``executor_state``): the paper broker's book and prices, so a restarted
  paper bridge can still close what it opened.

Hello, Heartbeat and Quote frames also carry a unique frame_id and get a Receipt, but they describe the
moment and are not kept: an old heartbeat or quote sent again after a reconnect would only mislead.

One bridge at a time: the ledger is held under an exclusive lock on ``<ledger>.lock`` (an OS lock, released
by the OS when the process dies), so a second bridge started on the same ledger stops at once, saying so,
instead of taking the device's stream from the first one over and over.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Literal

from gateway.bridge.errors import LedgerError
from gateway.bridge.executors.base import OrderFill, now
from signalhub.protocol.wire import decimal_text
from signalhub.v1 import gateway_pb2 as pb


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


# The two tables of instructions, each with its id column: deliveries and close commands are recorded,
# claimed and listed alike.
_Table = Literal["deliveries", "close_commands"]
_ID_COLUMN: dict[_Table, str] = {"deliveries": "delivery_id", "close_commands": "command_id"}

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
CREATE TABLE IF NOT EXISTS executor_state (name TEXT PRIMARY KEY, data BLOB NOT NULL, updated_at TEXT NOT NULL);
"""

FINAL_DELIVERY = (State.FILLED, State.REJECTED)
FINAL_CLOSE = (State.SUCCEEDED, State.FAILED)


def delivery_subject(delivery_id: str) -> str:
    return f"delivery:{delivery_id}"


def close_subject(command_id: str) -> str:
    return f"close:{command_id}"


class _ExclusiveLock:
    """An exclusive, non-blocking OS lock on a file of its own (flock on POSIX, msvcrt on Windows, where
    MetaTrader runs): held while the ledger is open, dropped by the OS if the process dies. The file holds
    the holder's pid, for the message a second bridge gets."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if sys.platform == "win32":
                import msvcrt

                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise LedgerError(
                f"the ledger {self.path.with_suffix('')} is in use by another bridge (pid {holder}): "
                "one bridge per device and ledger; stop the other one first"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode("ascii"))
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None


class Ledger:
    """The bridge's durable memory: one SQLite file in WAL mode with ``synchronous=FULL`` (every commit is
    fsync'd before it returns). Not thread-safe: the bridge's ``Outbox`` calls it from one thread of its own."""

    def __init__(self, path: Path, device_id: str) -> None:
        self.path = path
        self.device_id = device_id
        self._db: sqlite3.Connection | None = None
        self._lock = _ExclusiveLock(path.with_name(path.name + ".lock"))

    def open(self) -> None:
        """Take the ledger's lock (LedgerError when another bridge holds it), then open the file, creating
        it owner-only; a ledger written for another device is refused."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()
        try:
            self._open()
        except BaseException:
            self._lock.release()
            raise

    def _open(self) -> None:
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
        self._lock.release()

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
        stamp = now().isoformat()
        db.executemany(
            "INSERT INTO outbox (frame_id, subject, frame, created_at) VALUES (?, ?, ?, ?)",
            [(f.frame_id, f.subject, f.data, stamp) for f in frames],
        )

    def store(self, frames: Sequence[OutFrame]) -> None:
        with self._transaction() as db:
            self._store(db, frames)

    # deliveries and close commands alike: recorded, claimed, listed by state

    def _record(self, table: _Table, key: str, instruction: bytes, frames: Sequence[OutFrame]) -> Recorded:
        """Record a new instruction as received, with the frames that answer it, or say what is known about a
        repeated one."""
        column, stamp = _ID_COLUMN[table], now().isoformat()
        with self._transaction() as db:
            row = db.execute(f"SELECT state FROM {table} WHERE {column} = ?", (key,)).fetchone()  # noqa: S608 - constants
            if row is not None:
                return Recorded(new=False, state=str(row[0]))
            db.execute(
                f"INSERT INTO {table} ({column}, instruction, state, received_at, updated_at)"  # noqa: S608 - constants
                " VALUES (?, ?, ?, ?, ?)",
                (key, instruction, State.RECEIVED, stamp, stamp),
            )
            self._store(db, frames)
        return Recorded(new=True, state=State.RECEIVED)

    def _claim(self, table: _Table, key: str) -> bool:
        """received -> executing, committed before the order goes out; False if it was not ``received``."""
        column = _ID_COLUMN[table]
        with self._transaction() as db:
            cursor = db.execute(
                f"UPDATE {table} SET state = ?, updated_at = ? WHERE {column} = ? AND state = ?",  # noqa: S608 - constants
                (State.EXECUTING, now().isoformat(), key, State.RECEIVED),
            )
            return cursor.rowcount == 1

    def _in(self, table: _Table, state: str) -> list[tuple[str, bytes]]:
        """(key, instruction) of every instruction in ``state``, oldest first."""
        rows = self.db.execute(
            f"SELECT {_ID_COLUMN[table]}, instruction FROM {table} WHERE state = ? ORDER BY received_at",  # noqa: S608 - constants
            (state,),
        ).fetchall()
        return [(str(r[0]), bytes(r[1])) for r in rows]

    # deliveries

    def record_delivery(self, delivery_id: str, instruction: bytes, ack: OutFrame) -> Recorded:
        """Record a new delivery with its RECEIVED ack, or say what is known about a repeated one."""
        return self._record("deliveries", delivery_id, instruction, [ack])

    def claim_delivery(self, delivery_id: str) -> bool:
        """received -> executing, committed before the order goes out; False if it was not ``received``."""
        return self._claim("deliveries", delivery_id)

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
                    decimal_text(fill.price) if fill else None,
                    decimal_text(fill.volume) if fill else None,
                    fill.fill_time.isoformat() if fill else None,
                    now().isoformat(),
                    delivery_id,
                ),
            )
            self._store(db, frames)

    def delivery_state(self, delivery_id: str) -> str | None:
        row = self.db.execute("SELECT state FROM deliveries WHERE delivery_id = ?", (delivery_id,)).fetchone()
        return None if row is None else str(row[0])

    def deliveries_in(self, state: str) -> list[tuple[str, bytes]]:
        return self._in("deliveries", state)

    # close commands

    def record_close(self, command_id: str, instruction: bytes) -> Recorded:
        return self._record("close_commands", command_id, instruction, ())

    def claim_close(self, command_id: str) -> bool:
        return self._claim("close_commands", command_id)

    def finish_close(self, command_id: str, result: pb.CloseResult, frame: OutFrame) -> None:
        state = State.SUCCEEDED if result.success else State.FAILED
        with self._transaction() as db:
            db.execute(
                "UPDATE close_commands SET state = ?, result = ?, updated_at = ? WHERE command_id = ?",
                (state, result.SerializeToString(), now().isoformat(), command_id),
            )
            self._store(db, [frame])

    def close_result(self, command_id: str) -> pb.CloseResult | None:
        row = self.db.execute("SELECT result FROM close_commands WHERE command_id = ?", (command_id,)).fetchone()
        if row is None or row[0] is None:
            return None
        return pb.CloseResult.FromString(bytes(row[0]))

    def closes_in(self, state: str) -> list[tuple[str, bytes]]:
        return self._in("close_commands", state)

    # what the executor keeps

    def executor_state(self, name: str) -> bytes | None:
        row = self.db.execute("SELECT data FROM executor_state WHERE name = ?", (name,)).fetchone()
        return None if row is None else bytes(row[0])

    def save_executor_state(self, name: str, data: bytes) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO executor_state (name, data, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at",
                (name, data, now().isoformat()),
            )

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
        cutoff = (now() - older_than).isoformat()
        with self._transaction() as db:
            removed = db.execute(
                f"DELETE FROM deliveries WHERE state IN {FINAL_DELIVERY!r} AND updated_at < ?"  # noqa: S608 - constants
                " AND NOT EXISTS (SELECT 1 FROM outbox WHERE outbox.subject = 'delivery:' || deliveries.delivery_id)",
                (cutoff,),
            ).rowcount
            removed += db.execute(
                f"DELETE FROM close_commands WHERE state IN {FINAL_CLOSE!r} AND updated_at < ?"  # noqa: S608 - constants
                " AND NOT EXISTS (SELECT 1 FROM outbox WHERE outbox.subject = 'close:' || close_commands.command_id)",
                (cutoff,),
            ).rowcount
        return removed
