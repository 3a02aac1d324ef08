"""The frames a bridge sends, built from what its executor says, and the order a Delivery asks for.

Decimals go on the wire as plain decimal strings (``signalhub.protocol.wire.decimal_text``); every frame
carries a frame_id of its own, which its Receipt names.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from gateway.bridge.executors.base import AccountInfo, OrderFill, OrderRequest, OrderSide, SymbolInfo
from gateway.bridge.ledger import OutFrame, close_subject, delivery_subject
from signalhub.protocol.wire import decimal_text, timestamp
from signalhub.v1 import common_pb2
from signalhub.v1 import gateway_pb2 as pb


def new_frame_id() -> str:
    return str(uuid.uuid4())


def out_frame(subject: str, **body: Any) -> OutFrame:
    """A durable frame (Ack, Fill, CloseResult) about ``subject``, with a new frame_id."""
    frame_id = new_frame_id()
    data = pb.DeviceFrame(frame_id=frame_id, **body).SerializeToString()
    return OutFrame(frame_id, subject, data)


def ack(delivery_id: str, stage: pb.AckStage.ValueType, reason: str = "") -> OutFrame:
    return out_frame(delivery_subject(delivery_id), ack=pb.Ack(delivery_id=delivery_id, stage=stage, reason=reason))


def fill(delivery_id: str, done: OrderFill) -> OutFrame:
    return out_frame(
        delivery_subject(delivery_id),
        fill=pb.Fill(
            delivery_id=delivery_id,
            broker_ticket=done.broker_ticket,
            price=decimal_text(done.price),
            volume=decimal_text(done.volume),
            fill_time=timestamp(done.fill_time),
        ),
    )


def close_result(result: pb.CloseResult) -> OutFrame:
    return out_frame(close_subject(result.command_id), close_result=result)


def hello(version: str, account: AccountInfo, symbols: Sequence[SymbolInfo]) -> pb.DeviceFrame:
    """The first frame of a session: the account and the symbols it trades (no frame_id yet)."""
    return pb.DeviceFrame(
        hello=pb.Hello(
            bridge_version=version,
            account_currency=account.currency,
            balance=decimal_text(account.balance),
            equity=decimal_text(account.equity),
            symbols=[
                pb.SymbolSpec(
                    name=s.name,
                    contract_size=decimal_text(s.contract_size),
                    tick_size=decimal_text(s.tick_size),
                    tick_value=decimal_text(s.tick_value),
                    volume_min=decimal_text(s.volume_min),
                    volume_step=decimal_text(s.volume_step),
                    volume_max=decimal_text(s.volume_max),
                )
                for s in symbols
            ],
        )
    )


def account_state(account: AccountInfo, state_time: datetime) -> pb.DeviceFrame:
    """The account as the terminal reported it at ``state_time`` (an ephemeral frame: no frame_id yet)."""
    return pb.DeviceFrame(
        account_state=pb.AccountState(
            balance=decimal_text(account.balance),
            equity=decimal_text(account.equity),
            margin=decimal_text(account.margin),
            free_margin=decimal_text(account.free_margin),
            state_time=timestamp(state_time),
        )
    )


def heartbeat() -> pb.DeviceFrame:
    return pb.DeviceFrame(heartbeat=pb.Heartbeat(send_time=timestamp(datetime.now(UTC))))


def parse_decimal(text: str, field_name: str, *, optional: bool = False) -> Decimal | None:
    """A decimal from an instruction; ValueError naming the field when it is empty (unless ``optional``),
    not a number, or not finite."""
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


def expiry(delivery: pb.Delivery) -> datetime | None:
    if not delivery.HasField("expire_time"):
        return None
    return delivery.expire_time.ToDatetime(tzinfo=UTC)


def order_of(delivery: pb.Delivery) -> tuple[OrderRequest, Decimal | None, Decimal | None]:
    """The market order a delivery asks for, with its entry price and max_deviation (None: not given);
    ValueError saying what is wrong with a delivery the bridge cannot place."""
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
