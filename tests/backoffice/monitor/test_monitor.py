"""The monitor against real Postgres and Redis, fed through the signed SubmitQuotes RPC (and the gateway
for device quotes): a crossed level gives exactly one close command, also with two monitors; stale
quotes act on nothing; a new position meets the latest quote; trailing stops and breakeven move and fire;
a lost hint costs latency, never a trigger."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import grpc
import pytest

from backoffice import quotes
from backoffice.bootstrap import Resources
from backoffice.models import (
    ActorType,
    CloseCommandStatus,
    CloseReason,
    Position,
    PositionEventKind,
    PositionStatus,
    Side,
)
from backoffice.platform import hints
from signalhub.v1 import gateway_pb2 as gpb
from tests.backoffice.monitor.support import (
    commands,
    held,
    instrument,
    monitoring,
    position_events,
    quote,
    submit,
)
from tests.conftest import KeyCredentials, UserCredentials, make_device
from tests.gateway.support import Book, eventually, gateway, row, stream

D = Decimal


@pytest.fixture
async def book(res: Resources, user: UserCredentials) -> Book:
    return await Book.open(res, user.id)


async def _closing(res: Resources, position_id: uuid.UUID) -> bool:
    return (await row(res, Position, position_id)).status is PositionStatus.CLOSING


async def test_a_quote_crossing_the_hidden_stop_queues_one_close(
    res: Resources, backoffice_channel: grpc.aio.Channel, device: KeyCredentials, book: Book
) -> None:
    """A quote above the stop does nothing; one through it queues one STOP_LOSS command with its event,
    and more quotes through it queue no other; the second position meets its target later."""
    symbol = instrument()
    crossed = await book.position(device.id, signal_instrument=symbol, entry="100", stop_loss="99", take_profit="110")
    spared = await book.position(device.id, signal_instrument=symbol, entry="100", stop_loss="95", take_profit="110")
    async with monitoring(res) as monitor:
        await submit(backoffice_channel, book.producer, quote(symbol, "99.50"))
        await asyncio.sleep(0.3)
        assert await commands(res, crossed) == []  # above the stop: nothing yet
        await submit(backoffice_channel, book.producer, quote(symbol, "98.90"))
        await eventually(lambda: _closing(res, crossed), "the stop to fire")
        await submit(backoffice_channel, book.producer, quote(symbol, "98.80"))
        # 111 is a jump of over 5 %: it acts once a second quote confirms the level.
        await submit(backoffice_channel, book.producer, quote(symbol, "111"))
        await eventually(lambda: held(monitor, symbol), "the jump to be held")
        await submit(backoffice_channel, book.producer, quote(symbol, "111.05"))
        await asyncio.sleep(0.5)  # more crossings, and two sweeps: still one command
    [command] = await commands(res, crossed)
    assert (command.reason, command.status, command.volume) == (
        CloseReason.STOP_LOSS,
        CloseCommandStatus.PENDING,
        D("0.10"),
    )
    [requested] = await position_events(res, crossed, PositionEventKind.CLOSE_REQUESTED)
    assert (requested.price, requested.stop_loss, requested.actor_type) == (D("98.90"), D(99), ActorType.SYSTEM)
    assert requested.close_command_id == command.id
    # The other one met 111 later: its target.
    [target] = await commands(res, spared)
    assert target.reason is CloseReason.TAKE_PROFIT


async def test_two_monitors_never_close_a_position_twice(
    res: Resources, backoffice_channel: grpc.aio.Channel, device: KeyCredentials, book: Book
) -> None:
    symbol = instrument()
    ids = [
        await book.position(device.id, signal_instrument=symbol, entry="100", stop_loss=f"{99 - i / 100:.2f}")
        for i in range(40)
    ]
    async with monitoring(res), monitoring(res):
        for bid in ("98.95", "98.80", "98.60", "98.40"):  # a falling market reaches them in turn
            await submit(backoffice_channel, book.producer, quote(symbol, bid))
        for position_id in ids:
            await eventually(lambda p=position_id: _closing(res, p), "every stop to fire")
        await asyncio.sleep(0.5)
    for position_id in ids:
        assert len(await commands(res, position_id)) == 1


async def test_a_stale_quote_triggers_nothing(
    res: Resources, backoffice_channel: grpc.aio.Channel, device: KeyCredentials, book: Book
) -> None:
    symbol = instrument()
    position_id = await book.position(device.id, signal_instrument=symbol, entry="100", stop_loss="99")
    async with monitoring(res, quote_max_age_seconds=5):
        await submit(
            backoffice_channel, book.producer, quote(symbol, "90", at=datetime.now(UTC) - timedelta(seconds=6))
        )
        await asyncio.sleep(0.6)
        assert await commands(res, position_id) == []
        await submit(backoffice_channel, book.producer, quote(symbol, "90"))
        await eventually(lambda: _closing(res, position_id), "a fresh quote to fire the stop")


async def test_a_new_position_meets_the_latest_fresh_quote_when_it_opens(
    res: Resources, backoffice_channel: grpc.aio.Channel, device: KeyCredentials, book: Book
) -> None:
    """The quote came first (nothing to close then); the position opens below its own stop and is closed
    at once, by the hint its opening sends or by the sweep."""
    symbol = instrument()
    async with monitoring(res):
        await submit(backoffice_channel, book.producer, quote(symbol, "98"))
        await asyncio.sleep(0.3)
        position_id = await book.position(device.id, signal_instrument=symbol, entry="100", stop_loss="99")
        await eventually(lambda: _closing(res, position_id), "the latest quote to fire the stop")
    [command] = await commands(res, position_id)
    assert command.reason is CloseReason.STOP_LOSS


async def test_a_lost_hint_costs_latency_never_a_trigger(res: Resources, device: KeyCredentials, book: Book) -> None:
    """A quote stored without any hint on Redis (the publish was lost) is found by the sweep."""
    symbol = instrument()
    position_id = await book.position(
        device.id, signal_instrument=symbol, entry="100", stop_loss=None, take_profit="101"
    )
    async with monitoring(res):
        now = datetime.now(UTC)
        async with res.sessions.begin() as session:
            await quotes.store_latest(
                session,
                [quotes.QuoteIn(symbol, D("101.5"), D("101.6"), now, ActorType.PRODUCER, book.producer.id)],
                now,
            )
        await eventually(lambda: _closing(res, position_id), "the sweep to find the quote")
    [command] = await commands(res, position_id)
    assert command.reason is CloseReason.TAKE_PROFIT


async def test_without_redis_the_sweep_still_closes(
    res: Resources, device: KeyCredentials, book: Book, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis is gone (the monitor's stream and its wake-up hints): the monitor says so and keeps going on
    its sweep of Postgres."""
    symbol = instrument()
    position_id = await book.position(device.id, signal_instrument=symbol, entry="100", stop_loss="99")
    async with monitoring(res, redis_url="redis://127.0.0.1:1/0"):
        now = datetime.now(UTC)
        async with res.sessions.begin() as session:
            await quotes.store_latest(
                session, [quotes.QuoteIn(symbol, D("98.5"), D("98.6"), now, ActorType.PRODUCER, book.producer.id)], now
            )
        await eventually(lambda: _closing(res, position_id), "the sweep to close it without Redis")
    assert any(r.getMessage() == "monitor stream unavailable" for r in caplog.records)


async def test_a_trailing_stop_follows_a_rising_price_and_fires_on_the_way_down(
    res: Resources, backoffice_channel: grpc.aio.Channel, device: KeyCredentials, book: Book
) -> None:
    symbol = instrument()
    position_id = await book.position(
        device.id, signal_instrument=symbol, entry="100", stop_loss="97", take_profit=None, trailing_distance="2"
    )
    async with monitoring(res):
        for bid in ("101", "103", "105"):
            await submit(backoffice_channel, book.producer, quote(symbol, bid))
            await eventually(lambda b=bid: _stop_is(res, position_id, D(b) - 2), f"the stop to follow {bid}")
        await submit(backoffice_channel, book.producer, quote(symbol, "104"))  # down, above the stop
        await asyncio.sleep(0.4)
        assert (await row(res, Position, position_id)).stop_loss == D(103)  # never moves back
        await submit(backoffice_channel, book.producer, quote(symbol, "102.9"))
        await eventually(lambda: _closing(res, position_id), "the trailing stop to fire")
    moves = await position_events(res, position_id, PositionEventKind.TRAILING_STOP_MOVED)
    assert [m.stop_loss for m in moves] == [D(99), D(101), D(103)]
    assert [m.price for m in moves] == [D(101), D(103), D(105)]
    [command] = await commands(res, position_id)
    assert command.reason is CloseReason.STOP_LOSS
    stored = await row(res, Position, position_id)
    assert (stored.best_price, stored.stop_loss) == (D(105), D(103))


async def _stop_is(res: Resources, position_id: uuid.UUID, stop: Decimal) -> bool:
    return (await row(res, Position, position_id)).stop_loss == stop


async def test_a_breakeven_move_fires(
    res: Resources, backoffice_channel: grpc.aio.Channel, device: KeyCredentials, book: Book
) -> None:
    """A SELL at 100 with its stop at 103: once the ask is 2 below the entry the stop moves to 99.5; the
    market coming back to 99.5 closes it there, in profit."""
    symbol = instrument()
    position_id = await book.position(
        device.id,
        signal_instrument=symbol,
        side=Side.SELL,
        entry="100",
        stop_loss="103",
        take_profit="90",
        breakeven_trigger="2",
        breakeven_offset="0.5",
    )
    async with monitoring(res):
        await submit(backoffice_channel, book.producer, quote(symbol, "97.95", "98.00"))
        await eventually(lambda: _stop_is(res, position_id, D("99.5")), "the breakeven move")
        await submit(backoffice_channel, book.producer, quote(symbol, "99.40", "99.50"))
        await eventually(lambda: _closing(res, position_id), "the moved stop to fire")
    [move] = await position_events(res, position_id, PositionEventKind.BREAKEVEN_MOVED)
    assert (move.stop_loss, move.price) == (D("99.5"), D("98.00"))
    assert (await row(res, Position, position_id)).breakeven_done
    [command] = await commands(res, position_id)
    assert command.reason is CloseReason.STOP_LOSS


async def test_a_device_quote_acts_on_that_device_only(
    res: Resources, user: UserCredentials, device: KeyCredentials, book: Book
) -> None:
    """A Quote frame is in the device's broker symbol and its own broker's price: it reaches the device's
    positions on that symbol, not another device's on the same symbol."""
    other = await make_device(res, user)
    symbol = "GOLD." + uuid.uuid4().hex[:6]
    mine = await book.position(
        device.id, instrument=symbol, signal_instrument=instrument(), entry="100", stop_loss="99"
    )
    theirs = await book.position(
        other.id, instrument=symbol, signal_instrument=instrument(), entry="100", stop_loss="99"
    )

    async with monitoring(res), gateway(res) as (_, channel), stream(channel, device) as device_stream:
        frame = gpb.DeviceFrame(frame_id=device_stream.frame_id(), quote=quote(symbol, "98.5"))
        assert (await device_stream.receipt(frame)).status == gpb.RECEIPT_STATUS_ACCEPTED
        await eventually(lambda: _closing(res, mine), "the device's quote to fire its stop")
        close = (await device_stream.instruction()).close  # pushed to the device at once
        await asyncio.sleep(0.4)
    [command] = await commands(res, mine)
    assert close.command_id == str(command.id) and close.reason
    assert await commands(res, theirs) == []


async def test_another_producers_absurd_quote_closes_nothing(
    res: Resources, backoffice_channel: grpc.aio.Channel, device: KeyCredentials, user: UserCredentials, book: Book
) -> None:
    """A producer's quotes act only on positions its own signals opened: another producer's bid of
    0.000000000001 (and its high bid first, to drag a trailing stop) moves and closes nothing of this
    book's; this producer's own quote still closes at once."""
    symbol = instrument()
    position_id = await book.position(
        device.id, signal_instrument=symbol, entry="100", stop_loss="99", trailing_distance="2"
    )
    other = await Book.open(res, user.id)
    async with monitoring(res):
        await submit(backoffice_channel, other.producer, quote(symbol, "1000"))
        await submit(backoffice_channel, other.producer, quote(symbol, "0.000000000001"))
        await asyncio.sleep(0.6)  # two sweeps
        assert await commands(res, position_id) == []
        assert (await row(res, Position, position_id)).best_price == D(100)  # the trailing stop never moved
        await submit(backoffice_channel, book.producer, quote(symbol, "98.50"))
        await eventually(lambda: _closing(res, position_id), "its own producer's quote to fire the stop")


async def test_a_price_feed_producer_acts_on_every_position_of_the_instrument(
    res: Resources, backoffice_channel: grpc.aio.Channel, device: KeyCredentials, user: UserCredentials, book: Book
) -> None:
    symbol = instrument()
    position_id = await book.position(device.id, signal_instrument=symbol, entry="100", stop_loss="99")
    feed = await Book.open(res, user.id)
    async with res.sessions.begin() as session:
        assert await quotes.set_price_feed(session, feed.producer.id, True)
        assert not await quotes.set_price_feed(session, uuid.uuid4(), True)
    async with monitoring(res):
        await submit(backoffice_channel, feed.producer, quote(symbol, "98.50"))
        await eventually(lambda: _closing(res, position_id), "the price feed's quote to fire the stop")


async def test_a_jump_acts_only_once_a_second_quote_confirms_it(
    res: Resources, backoffice_channel: grpc.aio.Channel, device: KeyCredentials, book: Book
) -> None:
    """A mid more than 5 % from the feed's last fresh quote triggers nothing alone; a later quote near it
    confirms the new level, and acts. One back near the old level clears it."""
    symbol = instrument()
    position_id = await book.position(device.id, signal_instrument=symbol, entry="100", stop_loss="99")
    async with monitoring(res) as monitor:
        await submit(backoffice_channel, book.producer, quote(symbol, "100.10"))
        # The feed's last fresh quote is what a jump is measured from (a feed's first quote has none).
        await eventually(lambda: any(f.instrument == symbol for f in monitor.latest), "the monitor to read it")
        await submit(backoffice_channel, book.producer, quote(symbol, "50"))  # a spike
        await eventually(lambda: held(monitor, symbol), "the spike to be held")
        await asyncio.sleep(0.6)
        assert await commands(res, position_id) == []
        await submit(backoffice_channel, book.producer, quote(symbol, "100.20"))  # back: the spike was noise
        await eventually(lambda: not held(monitor, symbol), "the level to be back")
        await submit(backoffice_channel, book.producer, quote(symbol, "60"))
        await eventually(lambda: held(monitor, symbol), "the second jump to be held")
        await asyncio.sleep(0.6)
        assert await commands(res, position_id) == []
        await submit(backoffice_channel, book.producer, quote(symbol, "60.10"))  # confirmed
        await eventually(lambda: _closing(res, position_id), "the confirmed level to fire the stop")
    [command] = await commands(res, position_id)
    assert command.reason is CloseReason.STOP_LOSS


async def test_a_quote_dated_ahead_never_blinds_the_feed(
    res: Resources, backoffice_channel: grpc.aio.Channel, device: KeyCredentials, book: Book
) -> None:
    """Beyond the clock tolerance a quote is refused; within it, a quote dated ahead neither keeps later real
    quotes from being stored nor from being read: a real quote crossing the stop closes the position."""
    symbol = instrument()
    position_id = await book.position(device.id, signal_instrument=symbol, entry="100", stop_loss="99")
    tolerance = timedelta(seconds=res.settings.signature_tolerance_seconds)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await submit(backoffice_channel, book.producer, quote(symbol, "100", at=datetime.now(UTC) + tolerance * 2))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    async with monitoring(res):
        ahead = quote(symbol, "100.50", at=datetime.now(UTC) + tolerance - timedelta(seconds=10))
        await submit(backoffice_channel, book.producer, ahead)
        await submit(backoffice_channel, book.producer, quote(symbol, "98.90"))
        await eventually(lambda: _closing(res, position_id), "the real quote to fire the stop")


async def test_a_quote_acts_through_its_hint_not_only_the_sweep(
    res: Resources, backoffice_channel: grpc.aio.Channel, device: KeyCredentials, book: Book
) -> None:
    """With the sweep a minute away, a crossing quote still closes at once: the monitor reads the quote
    hint it follows on Redis (a hint whose fields looked like a positions entry was dropped)."""
    symbol = instrument()
    position_id = await book.position(device.id, signal_instrument=symbol, entry="100", stop_loss="99")
    async with monitoring(res, monitor_sweep_seconds=60):
        await submit(backoffice_channel, book.producer, quote(symbol, "98.90"))
        await eventually(lambda: _closing(res, position_id), "the hint to fire the stop", within=5)
    seen = quotes.Seen(
        quotes.Feed(symbol, producer_id=book.producer.id), D(1), D(2), datetime.now(UTC), datetime.now(UTC)
    )
    assert quotes.from_hint(quotes.hint(seen)) == seen
    assert hints.POSITIONS_FIELD not in quotes.hint(seen)
