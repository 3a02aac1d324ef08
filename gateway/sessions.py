"""Device sessions: one per open stream, and the process's registry of them.

A session reads the device's frames (rate-limited) into a small inbox, answers them in order (the first
must be a Hello, answered by a Welcome), and writes whatever its outbox holds to the stream. Ending a
session from outside (takeover, revocation, shutdown, heartbeat missed) closes its outbox with a domain
error, which the servicer raises and the interceptor turns into the stream's status.

The registry holds the sessions of this process by device. A device has one session across all replicas:
the newest. Opening one sets ``sh:session:<device_id>`` to its id and the process's route (where the
device's wake-ups are sent: ``backoffice.platform.hints``) before anything pending is read, and publishes
a takeover on the device's hint channel; a replica holding an older session ends it (ABORTED,
SESSION_REPLACED) when that key no longer names it. Each new session checks the key once more after it is
registered, so two opens racing on two replicas still leave exactly the last writer of the key; the sweep
compares the keys again, so even a lost takeover message ends an old session within ten sweep intervals
(the sweep checks a tenth each round)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backoffice import positions
from backoffice.deliveries import ACCEPTED, DUPLICATE, DeviceReport, HeartbeatReport, Outcome, QuoteReport, Verdict
from backoffice.devices import hello, presence
from backoffice.platform import hints
from backoffice.platform.auth import SignedKey
from backoffice.platform.config import Settings
from backoffice.platform.metrics import FRAME_TO_RECEIPT, SESSIONS
from gateway import tracing, uplink
from gateway.outbox import Outbox, StreamFinished
from gateway.push import Pusher
from gateway.uplink import UplinkWriter
from signalhub.protocol.errors import (
    Aborted,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from signalhub.protocol.sealing import InstructionSealer
from signalhub.protocol.signing import AuthFailure
from signalhub.protocol.wire import check_text, timestamp
from signalhub.v1 import gateway_pb2 as pb

log = logging.getLogger("signalhub.gateway.sessions")


TAKEOVER_PREFIX = b"takeover:"  # + session id, on the device's hint channel
SESSION_KEY_TTL_SECONDS = 7 * 24 * 3600  # far beyond any stream's life (max_connection_age)
INBOX_SIZE = 64  # frames read ahead of the one being applied
MAX_GROUP = 64  # frames of one stream applied in one go
MISSED_HEARTBEATS = 3  # a device silent for this many heartbeat periods is gone
SECOND_HELLO = Outcome(
    Verdict.REJECTED,
    FailedPrecondition("a stream takes one Hello, its first frame", reason="HELLO_ALREADY_SENT"),
)


def replaced() -> Aborted:
    return Aborted("a newer stream of this device replaced this one", reason="SESSION_REPLACED")


def revoked() -> Unauthenticated:
    return Unauthenticated("this device key is revoked", reason=AuthFailure.KEY_REVOKED.value)


def shutting_down() -> Unavailable:
    return Unavailable("this gateway is shutting down; reconnect (to another replica)", reason="SERVER_SHUTTING_DOWN")


class TokenBucket:
    """``rate`` frames per second on average, ``burst`` at once."""

    def __init__(self, rate: float, burst: float) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._updated = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


@dataclass(frozen=True)
class Services:
    """What every session of the process shares."""

    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    writer: UplinkWriter
    pusher: Pusher


class DeviceSession:
    def __init__(self, key: SignedKey, services: Services, route: str) -> None:
        settings = services.settings
        self.device_id = key.id
        self.session_id = str(uuid.uuid4())
        self.key_value = hints.session_value(self.session_id, route)  # what the device's session key holds
        self.connected_at = datetime.now(UTC)
        # The sealing key derives from the secret that signed this stream's open (docs/contract.md).
        self.sealer = InstructionSealer(key.secret, str(key.id))
        self.outbox = Outbox(settings.session_queue_size, on_room=self.wake)
        self.welcomed = False
        self.hello_frame_id = ""  # the stream's one Hello
        # The broker symbols this device's quotes are taken for: its Hello's, its open positions', and those
        # of every delivery pushed to it since. Any other quote is refused: it would be stored and watched for
        # a symbol no position of this device can be on.
        self.quotable: set[str] = set()
        self.last_heard = time.monotonic()  # any frame from the device
        self.last_beat = time.monotonic()  # our last heartbeat
        self.seen_recorded = time.monotonic()  # devices.last_seen_at written
        self._services = services
        self._bucket = TokenBucket(settings.device_frame_rate, settings.device_frame_burst)
        self._inbox: asyncio.Queue[pb.DeviceFrame | None] = asyncio.Queue(INBOX_SIZE)

    def __repr__(self) -> str:
        return f"DeviceSession(device={self.device_id}, session={self.session_id})"

    def wake(self) -> None:
        """Something may be pending for the device: have the pusher read it (once welcomed)."""
        if self.welcomed and not self.outbox.closed:
            self._services.pusher.want(self)

    def end(self, error: BaseException | None = None) -> None:
        self.outbox.close(error)

    async def frames(self, requests: AsyncIterator[pb.DeviceFrame]) -> AsyncIterator[pb.GatewayFrame]:
        """The stream's outgoing frames, until the session ends (raising its error, if any)."""
        tasks = [
            asyncio.create_task(self._read(requests), name=f"read-{self.device_id}"),
            asyncio.create_task(self._answer(), name=f"answer-{self.device_id}"),
        ]
        try:
            while True:
                try:
                    frame = await self.outbox.get()
                except StreamFinished:
                    return
                yield frame
        finally:
            self.outbox.close(Unavailable("stream closed"))
            for task in tasks:
                task.cancel()

    async def _read(self, requests: AsyncIterator[pb.DeviceFrame]) -> None:
        try:
            async for frame in requests:
                self.last_heard = time.monotonic()
                if not self._bucket.take():
                    settings = self._services.settings
                    self.end(
                        ResourceExhausted(
                            f"more than {settings.device_frame_rate} frames/s "
                            f"(burst {settings.device_frame_burst}); slow down and reconnect",
                            reason="FRAME_RATE_EXCEEDED",
                        )
                    )
                    return
                await self._inbox.put(frame)
            await self._inbox.put(None)  # the device closed its side
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.end(exc)

    async def _answer(self) -> None:
        try:
            await self._open()
            finished = False
            while not finished:
                group: list[pb.DeviceFrame] = []
                frame = await self._inbox.get()
                while frame is not None:
                    group.append(frame)
                    if len(group) >= MAX_GROUP or self._inbox.empty():
                        break
                    frame = self._inbox.get_nowait()
                finished = frame is None
                await self._answer_group(group)
            self.outbox.close()  # the device is done: write what is left, then end cleanly
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.end(exc)

    async def _open(self) -> None:
        """Wait for the stream's Hello (within the configured time), store it, answer Welcome and its Receipt,
        then let the pusher send everything pending."""
        timeout = self._services.settings.hello_timeout_seconds
        try:
            first = await asyncio.wait_for(self._inbox.get(), timeout)
        except TimeoutError:
            raise FailedPrecondition(
                f"no Hello within {timeout:g} s of the stream opening", reason="HELLO_TIMEOUT"
            ) from None
        if first is None or first.WhichOneof("body") != "hello":
            raise FailedPrecondition("the first frame of a stream must be a Hello", reason="HELLO_REQUIRED")
        uplink.check_frame_id(first)
        self.hello_frame_id = first.frame_id
        outcome = await self._hello(first)
        settings = self._services.settings
        await self.outbox.put(
            pb.GatewayFrame(
                welcome=pb.Welcome(
                    device_id=str(self.device_id),
                    session_id=self.session_id,
                    server_time=timestamp(datetime.now(UTC)),
                    heartbeat_seconds=settings.heartbeat_seconds,
                )
            )
        )
        await self.outbox.put(uplink.receipt(first, outcome))
        self.welcomed = True
        self.wake()  # everything pending, oldest first

    async def _hello(self, frame: pb.DeviceFrame) -> Outcome:
        """Store a Hello; a malformed one raises InvalidArgument. The symbol count is told first, so a
        huge list costs nothing to refuse."""
        max_symbols = self._services.settings.max_hello_symbols
        hello.check_symbol_count(frame.hello, max_symbols)
        check_text(frame)
        record = hello.decode_hello(frame.hello, max_symbols)
        async with self._services.sessions.begin() as session:
            fresh = await presence.store_hello(session, self.device_id, frame.frame_id, record, datetime.now(UTC))
            self.quotable.update(await positions.held_symbols(session, self.device_id))
        self.quotable.update(record.symbols or {})
        self.seen_recorded = time.monotonic()
        return ACCEPTED if fresh else DUPLICATE

    async def _answer_group(self, frames: list[pb.DeviceFrame]) -> None:
        """Receipts for the frames, in order."""
        taken = time.monotonic()
        tolerance = timedelta(seconds=self._services.settings.signature_tolerance_seconds)
        not_after = datetime.now(UTC) + tolerance  # quotes and account states dated later are refused
        run: list[tuple[pb.DeviceFrame, DeviceReport | Outcome]] = []
        for frame in frames:
            if frame.WhichOneof("body") == "hello":
                # One Hello per stream, the first frame: a repeat of that frame is a DUPLICATE, any other
                # Hello is refused unread (each would rewrite the device's record and cost a decode).
                outcome = DUPLICATE if frame.frame_id == self.hello_frame_id else SECOND_HELLO
                run.append((frame, outcome))
                continue
            try:
                check_text(frame)
                report = uplink.decode(self.device_id, frame, not_after)
                if isinstance(report.report, QuoteReport) and report.report.quote.instrument not in self.quotable:
                    raise InvalidArgument(
                        [("quote.instrument", "not a symbol of this device's Hello or of its positions")],
                        reason="SYMBOL_NOT_HELD",
                    )
                # A heartbeat changes nothing in Postgres (last_seen_at is the sweep's): no transaction.
                run.append((frame, ACCEPTED if isinstance(report.report, HeartbeatReport) else report))
            except InvalidArgument as exc:
                run.append((frame, Outcome(Verdict.REJECTED, exc)))
        await self._answer_run(run)
        FRAME_TO_RECEIPT.observe(time.monotonic() - taken)

    async def _answer_run(self, run: list[tuple[pb.DeviceFrame, DeviceReport | Outcome]]) -> None:
        reports = [item for _, item in run if isinstance(item, DeviceReport)]
        outcomes = iter(await self._services.writer.submit(reports))
        for frame, item in run:
            outcome = next(outcomes) if isinstance(item, DeviceReport) else item
            if outcome.trace is not None and isinstance(item, DeviceReport):  # accepted and committed
                tracing.applied(item, outcome)
            await self.outbox.put(uplink.receipt(frame, outcome))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def heartbeat() -> pb.GatewayFrame:
    return pb.GatewayFrame(heartbeat=pb.Heartbeat(send_time=timestamp(datetime.now(UTC))))


class SessionRegistry:
    def __init__(self, redis: Redis, services: Services, route: str) -> None:
        self._redis = redis
        self._services = services
        self.route = route  # this process's: its devices' wake-ups come on hints.route_channel(route)
        self._local: dict[uuid.UUID, DeviceSession] = {}
        self._streams = 0
        self._closing = False
        self._drained = asyncio.Event()
        self._drained.set()
        self._background: set[asyncio.Task[Any]] = set()

    def get(self, device_id: uuid.UUID) -> DeviceSession | None:
        return self._local.get(device_id)

    def sessions(self) -> list[DeviceSession]:
        return list(self._local.values())

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Count a stream for its whole life. The aio server does not reliably enforce a limit
        (grpc#30424), so the gateway caps its streams itself, before any work is spent on them."""
        if self._closing:
            raise shutting_down()
        if self._streams >= self._services.settings.max_streams:
            raise ResourceExhausted(
                "this gateway holds as many streams as it may; reconnect with backoff", reason="STREAM_LIMIT"
            )
        self._streams += 1
        self._drained.clear()
        SESSIONS.inc()
        try:
            yield
        finally:
            self._streams -= 1
            SESSIONS.dec()
            if self._streams == 0:
                self._drained.set()

    def open(self, key: SignedKey) -> DeviceSession:
        return DeviceSession(key, self._services, self.route)

    async def attach(self, session: DeviceSession) -> None:
        """Make ``session`` the device's one session: here at once, on other replicas via Redis."""
        older = self._local.get(session.device_id)
        self._local[session.device_id] = session
        if older is not None:
            older.end(replaced())
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(hints.session_key(session.device_id), session.key_value, ex=SESSION_KEY_TTL_SECONDS)
                pipe.publish(hints.device_channel(session.device_id), TAKEOVER_PREFIX + session.session_id.encode())
                pipe.get(hints.session_key(session.device_id))
                *_, current = await pipe.execute()
        except (RedisError, OSError) as exc:
            # Redis holds only what may be lost: this replica still keeps one session per device.
            log.warning("takeover not published", extra={"device_id": str(session.device_id), "error": str(exc)})
            return
        if current is not None and _text(current) != session.key_value:
            session.end(replaced())  # an even newer session opened meanwhile

    def detach(self, session: DeviceSession) -> None:
        if self._local.get(session.device_id) is session:
            del self._local[session.device_id]

    def on_takeover(self, device_id: uuid.UUID, session_id: str) -> None:
        """Another session of the device was opened somewhere; if ours is not the newest, it ends."""
        session = self._local.get(device_id)
        if session is None or session.session_id == session_id:
            return
        task = asyncio.create_task(self.check_current([session]))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def check_current(self, sessions: list[DeviceSession]) -> None:
        """End every session that ``sh:session:<device>`` no longer names."""
        if not sessions:
            return
        try:
            current = await self._redis.mget([hints.session_key(s.device_id) for s in sessions])
        except (RedisError, OSError) as exc:
            log.warning("session keys not read", extra={"error": str(exc)})
            return
        for session, value in zip(sessions, current, strict=True):
            if value is not None and _text(value) != session.key_value:
                session.end(replaced())

    def close_all(self, error: DomainError) -> None:
        """Refuse new streams and end every open one with ``error``."""
        self._closing = True
        for session in self.sessions():
            session.end(error)

    async def drained(self) -> None:
        """Returns once no stream is open."""
        await self._drained.wait()
