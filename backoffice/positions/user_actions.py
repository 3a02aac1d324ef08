"""What people do to a position: close it (fully or partly) and move or remove its hidden levels. Each
runs in the caller's transaction with the position's row locked; another user's position is NOT_FOUND."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession

from backoffice import audit, quotes
from backoffice.devices.hello import Hello
from backoffice.models import (
    ActorType,
    CloseCommand,
    CloseReason,
    Device,
    Position,
    PositionEventKind,
    PositionStatus,
    Side,
)
from backoffice.platform.auth import Caller
from backoffice.positions import closing, events, levels, queries
from signalhub.protocol.errors import FailedPrecondition, InvalidArgument
from signalhub.protocol.wire import decimal_text, parse_decimal, parse_optional_decimal


def _require_open(position: Position) -> None:
    if position.status is not PositionStatus.OPEN:
        raise FailedPrecondition(
            f"the position is {position.status.value}, not OPEN",
            reason="POSITION_NOT_OPEN",
            metadata={"position_id": str(position.id), "status": position.status.value},
        )


def _require_closable(position: Position) -> None:
    """OPEN, or CLOSED_ERROR: a close that failed (or was never answered) may be tried again by a person."""
    if position.status not in (PositionStatus.OPEN, PositionStatus.CLOSED_ERROR):
        raise FailedPrecondition(
            f"the position is {position.status.value}, not OPEN or CLOSED_ERROR",
            reason="POSITION_NOT_OPEN",
            metadata={"position_id": str(position.id), "status": position.status.value},
        )


async def _check_close_volume(session: AsyncSession, position: Position, amount: Decimal) -> None:
    """A partial close the broker can make: at most the open volume, a multiple of the symbol's volume step,
    and leaving nothing or at least the symbol's minimum (the specs of the device's last Hello, where it
    said)."""
    if amount > position.volume:
        raise InvalidArgument([("volume", f"must not exceed the open volume {decimal_text(position.volume)}")])
    if amount == position.volume:
        return
    device = await session.get(Device, position.device_id)
    spec = Hello.from_json(device.last_hello if device else None).spec(position.instrument)
    if spec is None:
        return
    if spec.volume_step and amount % spec.volume_step:
        raise InvalidArgument(
            [("volume", f"must be a multiple of {position.instrument}'s volume step {decimal_text(spec.volume_step)}")]
        )
    if spec.volume_min and position.volume - amount < spec.volume_min:
        raise InvalidArgument(
            [
                (
                    "volume",
                    f"would leave {decimal_text(position.volume - amount)} lots, under {position.instrument}'s "
                    f"minimum {decimal_text(spec.volume_min)}: close all of it, or less",
                )
            ]
        )


@dataclass(frozen=True)
class Closed:
    command: CloseCommand
    device_id: uuid.UUID


async def close_position(
    session: AsyncSession,
    caller: Caller,
    position_id: uuid.UUID,
    *,
    volume: str,
    now: datetime,
    request_id: str = "",
) -> Closed:
    """A close command for ``volume`` of an OPEN position (all of it when empty), reason MANUAL, or ADMIN
    when an admin closes another user's position; the position is CLOSING until the device answers. A
    CLOSED_ERROR position (its close failed, or was never answered) may be closed again the same way."""
    amount = parse_optional_decimal(volume, "volume")
    position = await queries.find_position(session, caller, position_id, lock=True)
    _require_closable(position)
    if amount is not None:
        await _check_close_volume(session, position, amount)
    owner = (await queries.owners(session, [position.device_id]))[position.device_id]
    reason = CloseReason.ADMIN if caller.is_admin and owner != caller.id else CloseReason.MANUAL
    queued = await closing.queue_closes(
        session,
        [
            closing.Closing(
                position.id,
                position.device_id,
                amount or position.volume,
                reason,
                stop_loss=position.stop_loss,
                take_profit=position.take_profit,
                whole=amount is None or amount == position.volume,
            )
        ],
        now,
        actor_type=caller.kind,
        actor_id=caller.id,
        requested_by=caller.id if caller.kind is ActorType.USER else None,
    )
    if not queued:  # a command is out already: the unique index refused a second one
        raise FailedPrecondition("a close command is already out", reason="POSITION_NOT_OPEN")
    audit.record(
        session,
        caller,
        "ClosePosition",
        "position",
        position.id,
        details={"volume": decimal_text(amount or position.volume), "reason": reason.value},
        request_id=request_id,
    )
    command = await session.get_one(CloseCommand, queued[0].command_id)
    return Closed(command, position.device_id)


@dataclass(frozen=True)
class ProtectionChange:
    """The fields an UpdateProtection names: None keeps a level, "" removes it, a decimal string sets it."""

    stop_loss: str | None = None
    take_profit: str | None = None
    trailing_distance: str | None = None
    breakeven_trigger: str | None = None
    breakeven_offset: str | None = None


def _parse_change(change: ProtectionChange) -> tuple[dict[str, Decimal | None], list[tuple[str, str]]]:
    """The named fields as decimals (None: removed), and every malformed one."""
    given: dict[str, Decimal | None] = {}
    violations: list[tuple[str, str]] = []
    for name in ("stop_loss", "take_profit", "trailing_distance", "breakeven_trigger", "breakeven_offset"):
        text = getattr(change, name)
        if text is None:
            continue
        try:
            positive = name != "breakeven_offset"
            given[name] = parse_decimal(text, name, positive=positive) if text.strip() else None
        except InvalidArgument as exc:
            violations.extend(exc.violations)
    return given, violations


async def update_protection(
    session: AsyncSession,
    caller: Caller,
    position_id: uuid.UUID,
    change: ProtectionChange,
    *,
    now: datetime,
    quote_max_age: timedelta,
    request_id: str = "",
) -> queries.PositionView:
    """Move or remove an OPEN position's hidden levels. Refused (INVALID_ARGUMENT, every bad field named):
    a malformed value, a stop on the wrong side of the target, a breakeven offset not below its trigger,
    and a level this request sets that would fire at once against the latest fresh quote (a trailing
    stop's first level included). A new trailing distance restarts the trailing from the better of the
    entry and that quote; a new breakeven trigger arms the move again. Quotes received before now never
    act on the new levels."""
    given, violations = _parse_change(change)
    if violations:
        raise InvalidArgument(violations)
    position = await queries.find_position(session, caller, position_id, lock=True)
    _require_open(position)
    current = levels.of(position)
    updated = replace(
        current,
        stop_loss=given.get("stop_loss", current.stop_loss),
        take_profit=given.get("take_profit", current.take_profit),
        trailing_distance=given.get("trailing_distance", current.trailing_distance),
        breakeven_trigger=given.get("breakeven_trigger", current.breakeven_trigger),
        # Removing the trigger removes its offset too, unless the request sets one (then it is refused).
        breakeven_offset=given.get(
            "breakeven_offset", None if given.get("breakeven_trigger", 0) is None else current.breakeven_offset
        ),
        breakeven_done=current.breakeven_done and "breakeven_trigger" not in given,
    )
    quote = await quotes.latest_fresh(
        session,
        signal_instrument=position.signal_instrument,
        signal_id=position.signal_id,
        device_id=position.device_id,
        instrument=position.instrument,
        now=now,
        max_age=quote_max_age,
    )
    price = levels.exit_price(position.side, quote.bid, quote.ask) if quote else None
    if "trailing_distance" in given:
        updated = levels.start_trailing(updated, price)
    violations = levels.check_order(updated.side, updated.stop_loss, updated.take_profit)
    violations += levels.check_breakeven(updated.breakeven_trigger, updated.breakeven_offset)
    if price is not None:
        violations += _fires_at_once(current, updated, given, price)
    if violations:
        raise InvalidArgument(violations)
    for name in ("stop_loss", "take_profit", "trailing_distance", "best_price"):
        setattr(position, name, getattr(updated, name))
    position.breakeven_trigger = updated.breakeven_trigger
    position.breakeven_offset = updated.breakeven_offset
    position.breakeven_done = updated.breakeven_done
    position.levels_at = now
    await events.insert_events(
        session,
        [
            events.event_row(
                position.id,
                PositionEventKind.PROTECTION_UPDATED,
                now,
                actor_type=caller.kind,
                actor_id=caller.id,
                stop_loss=updated.stop_loss,
                take_profit=updated.take_profit,
                price=price,
                detail=", ".join(sorted(given)),
            )
        ],
    )
    audit.record(
        session,
        caller,
        "UpdateProtection",
        "position",
        position.id,
        details={"fields": sorted(given)},
        request_id=request_id,
    )
    await session.flush()
    return await queries.get_position(session, caller, position.id)


def _fires_at_once(
    current: levels.Levels, updated: levels.Levels, given: dict[str, Decimal | None], price: Decimal
) -> list[tuple[str, str]]:
    """The levels this request sets that ``price`` (the latest fresh quote's exit price) already crosses:
    the new stop (named after the field that set it), the new target."""
    side = "bid" if updated.side is Side.BUY else "ask"
    quoted = f"would fire at once: the latest quote's {side} is {decimal_text(price)}"
    bare = levels.Levels(updated.side, updated.entry)
    found = []
    stop, target = updated.stop_loss, updated.take_profit
    if stop is not None and stop != current.stop_loss and levels.crossed(replace(bare, stop_loss=stop), price):
        explicit = "stop_loss" in given and given["stop_loss"] == stop
        found.append(("stop_loss" if explicit else "trailing_distance", quoted))
    if "take_profit" in given and target is not None and levels.crossed(replace(bare, take_profit=target), price):
        found.append(("take_profit", quoted))
    return found
