"""One session on a gateway's ``DeviceGateway.Connect`` stream: open it signed, say Hello, wait for Welcome,
then send (outbox, heartbeats, quotes, account states) and read (receipts, sealed instructions) until it
ends.

Instructions arrive sealed with a key derived from this device's secret; one that does not open is
refused and never executed. A gateway silent for three heartbeats ends the session.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from gateway.bridge import frames
from gateway.bridge.account import AccountReporter
from gateway.bridge.config import BridgeConfig, BridgeStats, channel_options
from gateway.bridge.executors.base import Executor, ExecutorError
from gateway.bridge.orders import Orders
from gateway.bridge.outbox import Outbox, Uplink
from signalhub.protocol.client import gateway_silence_limit
from signalhub.protocol.errors import InvalidArgument
from signalhub.protocol.sealing import InstructionSealer, SealError
from signalhub.protocol.secret import Secret
from signalhub.protocol.signing import CONNECT_METHOD, signed_metadata
from signalhub.protocol.wire import SYMBOL_RE, decimal_text, parse_quote, timestamp
from signalhub.v1 import common_pb2
from signalhub.v1 import gateway_pb2 as pb
from signalhub.v1 import gateway_pb2_grpc as rpc

log = logging.getLogger("signalhub.bridge")
TEARDOWN_SECONDS = 5.0  # at most this long for a session's tasks, and then its channel, to stop


class SessionEnded(Exception):
    """The session ended without a gRPC status to say why (EOF, silence, a wrong Welcome)."""


@dataclass
class Session:
    """One open stream."""

    address: str
    call: Any  # grpc.aio.StreamStreamCall[DeviceFrame, GatewayFrame]
    uplink: Uplink = field(default_factory=Uplink)
    session_id: str = ""
    heartbeat_seconds: int = 15
    last_heard: float = 0.0
    welcomed_at: float | None = None
    awaiting: dict[str, float] = field(default_factory=dict)  # frame id -> when sent, until its receipt


class Stream:
    """Opens sessions, one at a time, and serves each until it ends. ``connected`` is set while a session
    is welcomed; ``address`` is the gateway of the current (or last) one."""

    def __init__(
        self,
        config: BridgeConfig,
        secret: Secret,
        executor: Executor,
        outbox: Outbox,
        orders: Orders,
        stats: BridgeStats,
        stopping: asyncio.Event,
        account: AccountReporter,
    ) -> None:
        self.config = config
        self._secret = secret
        self._sealer = InstructionSealer(secret.reveal(), config.device_id)
        self.executor = executor
        self.outbox = outbox
        self.orders = orders
        self.stats = stats
        self._stopping = stopping
        self._account = account
        self._last_quotes: dict[str, tuple[str, str, float]] = {}
        self.connected = asyncio.Event()
        self.address: str | None = None

    def _channel(self, address: str) -> grpc.aio.Channel:
        options = channel_options(self.config.max_message_bytes)
        if self.config.tls:
            credentials = grpc.ssl_channel_credentials(self.config.root_certificates)
            return grpc.aio.secure_channel(address, credentials, options=options)
        return grpc.aio.insecure_channel(address, options=options)

    async def run(self, address: str) -> bool:
        """One session on ``address``; True when it was healthy (welcomed and up for a while), which is
        what resets the reconnect backoff. Opens the stream signed with the device's secret, sends Hello
        and waits for Welcome, then queues the outbox's backlog and serves until the stream ends or the
        bridge stops (then in-flight orders are drained first). Raises what ended the session: an
        AioRpcError carrying the gateway's status, or SessionEnded, TimeoutError, OSError."""
        channel = self._channel(address)
        session: Session | None = None
        tasks: list[asyncio.Task[None]] = []
        try:
            await asyncio.wait_for(channel.channel_ready(), self.config.connect_timeout)
            stub = rpc.DeviceGatewayStub(channel)
            metadata = signed_metadata(self._secret.reveal(), CONNECT_METHOD, self.config.device_id, b"")
            call = stub.Connect(metadata=metadata)
            session = Session(address=address, call=call, last_heard=asyncio.get_running_loop().time())
            self.stats.sessions += 1
            account = await self.executor.account()
            hello = frames.hello(self.config.bridge_version, account, await self.executor.symbols())
            session.uplink.mark_ephemeral(hello)
            # Bounded too: a write into a connection that damage left half-open may never complete.
            await asyncio.wait_for(call.write(hello), self.config.welcome_timeout)
            await asyncio.wait_for(self._await_welcome(session), self.config.welcome_timeout)
            # The session's first account state, once welcomed: written before the Welcome, it could race a
            # gateway refusing the open, and gRPC then reports INTERNAL instead of why it refused.
            opening = self._account.opening_state(account)
            if opening is not None:
                session.uplink.put_ephemeral(opening)
            backlog = await self.outbox.attach(session.uplink)
            self.stats.frames_resent += backlog
            self.address = address
            self.connected.set()
            self.orders.welcomed()
            log.info("connected", extra={"gateway": address, "session_id": session.session_id, "unreceipted": backlog})
            tasks = [
                asyncio.create_task(self._send_loop(session), name="bridge-send"),
                asyncio.create_task(self._read_loop(session), name="bridge-read"),
                asyncio.create_task(self._heartbeat_loop(session), name="bridge-heartbeat"),
                asyncio.create_task(self._quote_loop(session), name="bridge-quotes"),
                asyncio.create_task(self._account.run(session.uplink), name="bridge-account"),
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
            if session is not None:
                await self.outbox.detach(session.uplink)
            await self._end(session, channel, tasks)

    async def _end(self, session: Session | None, channel: grpc.aio.Channel, tasks: list[asyncio.Task[None]]) -> None:
        """Cancel the session's tasks, the call and the channel, each wait bounded: a task or a close stuck
        in a damaged connection must not keep the bridge from its next session (it is left behind, logged)."""
        for task in tasks:
            task.cancel()
        if tasks:
            stopped, stuck = await asyncio.wait(tasks, timeout=TEARDOWN_SECONDS)
            for task in stopped:  # their errors were seen (the first one ended the session): retrieved
                _ = task.cancelled() or task.exception()
            if stuck:
                log.warning("session tasks did not stop; left behind", extra={"tasks": [t.get_name() for t in stuck]})
        if session is not None:
            session.call.cancel()
        try:
            await asyncio.wait_for(channel.close(), TEARDOWN_SECONDS)
        except TimeoutError:
            log.warning("the channel did not close; left behind", extra={"gateway": session and session.address})

    async def _wait_stop(self) -> None:
        await self._stopping.wait()

    def _healthy(self, session: Session) -> bool:
        if session.welcomed_at is None:
            return False
        return asyncio.get_running_loop().time() - session.welcomed_at >= self.config.healthy_after

    async def _await_welcome(self, session: Session) -> None:
        while True:
            frame = await self._next(session, "the gateway closed the stream before Welcome")
            if frame.WhichOneof("body") == "welcome":
                welcome = frame.welcome
                session.session_id = welcome.session_id
                session.heartbeat_seconds = max(1, welcome.heartbeat_seconds or 15)
                session.welcomed_at = asyncio.get_running_loop().time()
                self.stats.welcomes += 1
                if welcome.device_id and welcome.device_id != self.config.device_id:
                    raise SessionEnded(f"welcomed as device {welcome.device_id}")
                return
            await self._dispatch(session, frame)

    async def _drain(self, session: Session) -> None:
        """On stop: let in-flight orders finish and their reports be receipted, within drain_timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.drain_timeout
        await self.orders.wait_in_flight()
        while loop.time() < deadline and not session.call.done():
            if not await self.outbox.pending():
                return
            await asyncio.sleep(0.05)

    async def _send_loop(self, session: Session) -> None:
        while True:
            data = await session.uplink.queue.get()
            frame = pb.DeviceFrame.FromString(data)
            await session.call.write(frame)
            session.awaiting.setdefault(frame.frame_id, asyncio.get_running_loop().time())
            self.stats.frames_sent += 1

    async def _read_loop(self, session: Session) -> None:
        while True:
            await self._dispatch(session, await self._next(session, "the gateway ended the stream"))

    async def _next(self, session: Session, ended: str) -> pb.GatewayFrame:
        """The next frame; the session ends (SessionEnded, saying ``ended``) at the end of the stream, and
        also on bytes that are not a GatewayFrame (grpc hands those over as None): a connection whose bytes
        were damaged is left for a new one, never the end of the bridge."""
        frame = await session.call.read()
        if frame is grpc.aio.EOF:
            raise SessionEnded(ended)
        if not isinstance(frame, pb.GatewayFrame):
            raise SessionEnded("a frame from the gateway did not parse")
        session.last_heard = asyncio.get_running_loop().time()
        return frame

    async def _dispatch(self, session: Session, frame: pb.GatewayFrame) -> None:
        kind = frame.WhichOneof("body")
        if kind == "receipt":
            await self._on_receipt(session, frame.receipt)
        elif kind == "instruction":
            self._on_sealed(session, frame.instruction)
        elif kind in ("heartbeat", "welcome"):
            return
        else:
            log.warning("unknown frame from the gateway", extra={"gateway": session.address})

    async def _on_receipt(self, session: Session, receipt: pb.Receipt) -> None:
        """A receipt ends a durable frame's life in the outbox (ACCEPTED, DUPLICATE, and REJECTED too:
        the gateway will never take that frame, so it is logged and dropped rather than resent forever)."""
        self.stats.receipts += 1
        session.awaiting.pop(receipt.frame_id, None)
        if receipt.status == pb.RECEIPT_STATUS_REJECTED:
            self.stats.receipts_rejected += 1
            log.warning(
                "the gateway rejected a frame; dropped",
                extra={"frame_id": receipt.frame_id, "code": receipt.error.code, "error": receipt.error.message},
            )
        elif receipt.status not in (pb.RECEIPT_STATUS_ACCEPTED, pb.RECEIPT_STATUS_DUPLICATE):
            log.warning("receipt without a status ignored", extra={"frame_id": receipt.frame_id})
            return
        if receipt.frame_id in session.uplink.ephemeral:
            session.uplink.ephemeral.discard(receipt.frame_id)
            return
        await self.outbox.receipted(receipt.frame_id)

    def _on_sealed(self, session: Session, sealed: pb.SealedInstruction) -> None:
        self.stats.instructions += 1
        try:
            instruction = pb.Instruction.FromString(self._sealer.open(sealed.nonce, sealed.ciphertext))
            if instruction.WhichOneof("body") is None:
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
        self.orders.handle(instruction)

    async def _heartbeat_loop(self, session: Session) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(session.heartbeat_seconds)
            limit = gateway_silence_limit(session.heartbeat_seconds)
            if loop.time() - session.last_heard > limit:
                raise SessionEnded("the gateway went silent")
            # A stream that swallowed a frame (its receipt never came) is broken even though it still carries
            # others: a new one sends the outbox again, and the gateway answers what it has as DUPLICATE.
            if session.awaiting and loop.time() - min(session.awaiting.values()) > limit:
                raise SessionEnded("a frame was never receipted")
            session.uplink.put_ephemeral(frames.heartbeat())

    async def _quote_loop(self, session: Session) -> None:
        """Quotes for the instruments with open positions (the gateway watches their hidden stop-loss and
        take-profit with them), at most one per instrument and interval; an unchanged quote only every
        quote_refresh. A terminal that cannot answer is logged, and asked again next interval."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.config.quote_interval)
            try:
                held = {p.instrument for p in await self.executor.positions()}
                for instrument in sorted(held):
                    price = await self.executor.quote(instrument)
                    if price is None:
                        continue
                    bid, ask = decimal_text(price.bid), decimal_text(price.ask)
                    last = self._last_quotes.get(instrument)
                    now = loop.time()
                    if last is not None and last[:2] == (bid, ask) and now - last[2] < self.config.quote_refresh:
                        continue
                    self._last_quotes[instrument] = (bid, ask, now)
                    quote = common_pb2.Quote(instrument=instrument, bid=bid, ask=ask, quote_time=timestamp(price.time))
                    if not self._quotable(quote):
                        continue
                    session.uplink.put_ephemeral(pb.DeviceFrame(quote=quote))
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
