"""SignalService."""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backoffice import approvals, quotes, signals
from backoffice.models import ActorType, Side, SignalStatus
from backoffice.platform import hints, idempotency
from backoffice.platform.interceptors import current_caller
from backoffice.platform.mutations import Mutations, Wake
from backoffice.platform.vault import Vault
from backoffice.signals import SignalView
from signalhub.protocol import wire
from signalhub.protocol.errors import InvalidArgument
from signalhub.protocol.logs import trace_var
from signalhub.protocol.wire import parse_id, parse_optional_id
from signalhub.v1 import backoffice_pb2 as pb
from signalhub.v1 import common_pb2

log = logging.getLogger("signalhub.signals")


def encode_signal(view: SignalView) -> pb.Signal:
    signal = view.signal
    message = pb.Signal(
        id=str(signal.id),
        producer_id=str(signal.producer_id),
        request_id=str(signal.request_id) if signal.request_id else "",
        instrument=signal.instrument,
        side=wire.enum_to_wire(common_pb2.Side, "SIDE", signal.side),
        entry_price=wire.decimal_text(signal.entry_price),
        signal_time=wire.timestamp(signal.signal_time),
        expire_time=wire.timestamp(signal.expire_time),
        status=wire.enum_to_wire(pb.SignalStatus, "SIGNAL_STATUS", view.status),
        create_time=wire.timestamp(signal.created_at),
        cancel_time=wire.timestamp(signal.cancelled_at),
        cancel_reason=signal.cancel_reason or "",
    )
    if view.show_levels:
        message.stop_loss = wire.decimal_text(signal.stop_loss)
        message.take_profit = wire.decimal_text(signal.take_profit)
        message.trailing_distance = wire.decimal_text(signal.trailing_distance)
        message.breakeven_trigger = wire.decimal_text(signal.breakeven_trigger)
        message.breakeven_offset = wire.decimal_text(signal.breakeven_offset)
    if view.show_payload:
        message.payload.CopyFrom(wire.dict_to_struct(signal.payload))
    return message


class SignalServicer:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], vault: Vault, redis: Redis, tolerance_seconds: int
    ) -> None:
        self._sessions = sessions
        self._redis = redis
        self._vault = vault
        self._mutations = Mutations(sessions, vault, redis)
        self._tolerance = tolerance_seconds

    async def SubmitSignal(self, request: pb.SubmitSignalRequest, context: Any) -> pb.Signal:
        """Validate and store a producer's signal once per request_id, open its approvals, and wake the devices
        of AUTO subscribers after the commit (``signals.submit``). A request that fails validation may still
        be the retry of a stored one (its signal_time may have left the tolerance window since): it gets the
        first answer."""
        caller = current_caller()
        key = idempotency.key_of(request)
        now = datetime.now(UTC)
        try:
            draft = self._draft(request, now)
        except InvalidArgument:
            replayed = await idempotency.replay(self._sessions, self._vault, caller.id, key, pb.Signal) if key else None
            if replayed is None:
                raise
            submitted = approvals.Decision(replayed, (), repeated=True)
        else:
            submitted = await signals.submit(
                self._sessions,
                self._vault,
                caller.id,
                key,
                draft,
                now,
                lambda row: encode_signal(signals.view_for_producer(row, now)),
            )
        await self._mutations.publish(Wake(devices={hints.WAKE: list(submitted.woken_devices)}))
        signal = submitted.response
        trace_var.set(signal.id)  # this call's lines, the rpc line included, carry the signal's trace
        log.info(
            "signal accepted",
            extra={
                "instrument": signal.instrument,
                "side": common_pb2.Side.Name(signal.side),
                "repeated": submitted.repeated,
            },
        )
        if submitted.woken_devices:
            log.info("deliveries created", extra={"deliveries": len(submitted.woken_devices), "approval": "rule"})
        return signal

    def _draft(self, request: pb.SubmitSignalRequest, now: datetime) -> signals.SignalDraft:
        return signals.draft(
            instrument=request.instrument,
            side=wire.optional_enum_from_wire(common_pb2.Side, "SIDE", request.side, Side, "side"),
            entry_price=request.entry_price,
            stop_loss=request.stop_loss,
            take_profit=request.take_profit,
            signal_time=wire.parse_timestamp(request.signal_time, request.HasField("signal_time"), "signal_time"),
            expire_time=wire.parse_timestamp(request.expire_time, request.HasField("expire_time"), "expire_time"),
            payload=wire.struct_to_dict(request.payload),
            payload_bytes=request.payload.ByteSize(),
            now=now,
            tolerance_seconds=self._tolerance,
            trailing_distance=request.trailing_distance,
            breakeven_trigger=request.breakeven_trigger,
            breakeven_offset=request.breakeven_offset,
        )

    async def CancelSignal(self, request: pb.CancelSignalRequest, context: Any) -> pb.Signal:
        caller = current_caller()
        signal_id = parse_id(request.id, "id")

        async def cancel(session: AsyncSession, wake: Wake) -> pb.Signal:
            done = await signals.cancel(
                session,
                caller,
                signal_id,
                reason=request.reason,
                request_id=request.request_id,
                close_positions=request.close_positions,
            )
            wake.add(done.woken_devices)
            wake.add_positions(done.closing_positions)
            return encode_signal(signals.view_for_producer(done.signal))

        signal = await self._mutations.run(caller.id, request, pb.Signal, cancel)
        trace_var.set(signal.id)
        log.info("signal cancelled", extra={"close_positions": request.close_positions})
        return signal

    async def SubmitQuotes(self, request: pb.SubmitQuotesRequest, context: Any) -> pb.SubmitQuotesResponse:
        caller = current_caller()
        if len(request.quotes) > signals.MAX_QUOTES:
            raise InvalidArgument([("quotes", f"at most {signals.MAX_QUOTES} quotes per call")])
        not_after = datetime.now(UTC) + timedelta(seconds=self._tolerance)
        decoded = [
            quotes.parse_quote(
                q,
                f"quotes[{i}]",
                instrument=signals.INSTRUMENT_RE,
                source_type=ActorType.PRODUCER,
                source_id=caller.id,
                not_after=not_after,
            )
            for i, q in enumerate(request.quotes)
        ]
        async with self._sessions.begin() as session:
            if await quotes.is_price_feed(session, caller.id):
                decoded = [dataclasses.replace(q, price_feed=True) for q in decoded]
            stored = await quotes.store_latest(session, decoded, datetime.now(UTC))
        await hints.publish_monitor(self._redis, [quotes.hint(q) for q in stored])
        return pb.SubmitQuotesResponse(accepted_count=len(decoded))

    async def GetSignal(self, request: pb.GetSignalRequest, context: Any) -> pb.Signal:
        caller = current_caller()
        signal_id = parse_id(request.id, "id")
        async with self._sessions() as session:
            return encode_signal(await signals.get(session, caller, signal_id))

    async def ListSignals(self, request: pb.ListSignalsRequest, context: Any) -> pb.ListSignalsResponse:
        caller = current_caller()
        status = wire.optional_enum_from_wire(pb.SignalStatus, "SIGNAL_STATUS", request.status, SignalStatus, "status")
        async with self._sessions() as session:
            views, token = await signals.list_signals(
                session,
                caller,
                producer_id=parse_optional_id(request.producer_id, "producer_id"),
                status=status,
                page_size=request.page_size,
                page_token=request.page_token,
            )
        return pb.ListSignalsResponse(signals=[encode_signal(v) for v in views], next_page_token=token)
