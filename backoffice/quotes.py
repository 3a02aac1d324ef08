"""Quotes: market data from producers' price feeds (signalhub instruments) and devices' terminals (their
broker's symbols). One rule decodes a wire Quote, whoever sent it. Only the latest quote per instrument
and source is kept (one row per key, overwritten by newer quotes), never one row per quote frame.

Each stored quote is also told to the monitor (``backoffice.monitor``) through the Redis stream of
``backoffice.platform.hints``, after the commit; the monitor's periodic sweep re-reads the table, so a
lost hint costs latency, never a trigger. A quote whose ``quote_time`` is older than the quote age limit
is stale: it is kept, but triggers nothing.

Whose positions a quote is read against (its ``Feed``): a producer's quote, the positions its own signals
opened on that instrument (on every device, whatever its symbol map calls it); a quote of a producer an
admin marked a price feed (``set_price_feed``), every position whose signal named that instrument; a
device's quote, that device's own positions on that broker symbol. So no producer moves another
producer's subscribers' money with its prices.

A quote dated more than the signature tolerance ahead of the server's clock is refused where it comes in
(it would count as fresh for ever); the monitor orders quotes by the server's receive time. The worker
purges stored quotes not renewed for ``quote_retention_seconds`` (``purge_stale``).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from backoffice import audit
from backoffice.models import ActorType, Producer, Quote, Signal
from backoffice.platform.db import any_id
from signalhub.protocol import wire
from signalhub.v1 import common_pb2


@dataclass(frozen=True)
class QuoteIn:
    instrument: str
    bid: Decimal
    ask: Decimal
    quote_time: datetime
    source_type: ActorType
    source_id: uuid.UUID
    frame_id: str | None = None  # the device frame that carried it
    price_feed: bool = False  # from a producer an admin marked a price feed


@dataclass(frozen=True)
class Feed:
    """What a quote is read against: a producer's quote (``producer_id`` set), the positions that
    producer's signals opened on ``instrument``; a price feed's quote (neither set), every position whose
    signal named ``instrument``; a device's quote (``device_id`` set), that device's positions on the broker
    symbol ``instrument``."""

    instrument: str
    device_id: uuid.UUID | None = None
    producer_id: uuid.UUID | None = None


@dataclass(frozen=True)
class Seen:
    """A stored quote as the monitor reads it: its feed, prices, the source's time and the server's time
    of receipt (which orders it against level changes)."""

    feed: Feed
    bid: Decimal
    ask: Decimal
    quote_time: datetime
    received_at: datetime


def feed_of(source_type: ActorType, source_id: uuid.UUID, instrument: str, price_feed: bool) -> Feed:
    if source_type is ActorType.DEVICE:
        return Feed(instrument, device_id=source_id)
    return Feed(instrument) if price_feed else Feed(instrument, producer_id=source_id)


async def is_price_feed(session: AsyncSession, producer_id: uuid.UUID) -> bool:
    return bool(await session.scalar(select(Producer.price_feed).where(Producer.id == producer_id)))


async def set_price_feed(session: AsyncSession, producer_id: uuid.UUID, enabled: bool) -> bool:
    """Mark (or unmark) a producer as a price feed, audited as the system's act (an admin runs it on the
    server); False when there is no such producer. Quotes stored before keep the feed they had."""
    found = await session.scalar(
        update(Producer).where(Producer.id == producer_id).values(price_feed=enabled).returning(Producer.id)
    )
    if found is None:
        return False
    audit.record(
        session, (ActorType.SYSTEM, None), "SetPriceFeed", "producer", producer_id, details={"price_feed": enabled}
    )
    return True


def parse_quote(
    quote: common_pb2.Quote,
    prefix: str,
    *,
    instrument: re.Pattern[str],
    source_type: ActorType,
    source_id: uuid.UUID,
    frame_id: str | None = None,
    not_after: datetime | None = None,
    price_feed: bool = False,
) -> QuoteIn:
    """A wire Quote (checked by ``wire.parse_quote``, dated at most ``not_after``) as a domain quote of its
    source."""
    prices = wire.parse_quote(quote, prefix, instrument, not_after)
    return QuoteIn(
        prices.instrument, prices.bid, prices.ask, prices.quote_time, source_type, source_id, frame_id, price_feed
    )


def newest(quotes: Iterable[QuoteIn]) -> dict[tuple[str, ActorType, uuid.UUID], QuoteIn]:
    """The newest quote of each instrument and source."""
    found: dict[tuple[str, ActorType, uuid.UUID], QuoteIn] = {}
    for quote in quotes:
        key = (quote.instrument, quote.source_type, quote.source_id)
        current = found.get(key)
        if current is None or current.quote_time <= quote.quote_time:
            found[key] = quote
    return found


async def store_latest(session: AsyncSession, quotes: Iterable[QuoteIn], now: datetime) -> list[Seen]:
    """Upsert the newest quote per instrument and source; an older quote never overwrites a newer one
    (unless that one is dated ahead of the server's clock).
    Sorted by key, so two transactions upserting the same keys lock them in the same order. Returns the
    quotes that were stored, for the monitor."""
    found = newest(quotes)
    if not found:
        return []
    statement = insert(Quote).values(
        [
            {
                "instrument": q.instrument,
                "source_type": q.source_type,
                "source_id": q.source_id,
                "bid": q.bid,
                "ask": q.ask,
                "quote_time": q.quote_time,
                "frame_id": q.frame_id,
                "received_at": now,
                "price_feed": q.price_feed,
            }
            for _, q in sorted(found.items(), key=lambda item: (item[0][0], item[0][1].value, item[0][2]))
        ]
    )
    result = await session.execute(
        statement.on_conflict_do_update(
            index_elements=[Quote.instrument, Quote.source_type, Quote.source_id],
            set_={
                name: statement.excluded[name]
                for name in ("bid", "ask", "quote_time", "frame_id", "received_at", "price_feed")
            },
            # An older quote never overwrites a newer one, unless the stored one is dated ahead of the server's
            # clock: then any real quote wins (a source's clock never holds the row).
            where=or_(
                Quote.quote_time <= statement.excluded.quote_time,
                Quote.quote_time > statement.excluded.received_at,
            ),
        ).returning(Quote.instrument, Quote.source_type, Quote.source_id)
    )
    return [_seen(found[(row.instrument, row.source_type, row.source_id)], now) for row in result]


def _seen(quote: QuoteIn, received_at: datetime) -> Seen:
    return Seen(
        feed_of(quote.source_type, quote.source_id, quote.instrument, quote.price_feed),
        quote.bid,
        quote.ask,
        quote.quote_time,
        received_at,
    )


async def recorded_frames(
    session: AsyncSession, device_frames: Iterable[tuple[uuid.UUID, str]]
) -> set[tuple[uuid.UUID, str]]:
    """Which (device, frame id) pairs set a stored quote: a repeat of such a frame is a DUPLICATE."""
    pairs = set(device_frames)
    if not pairs:
        return set()
    rows = await session.execute(
        select(Quote.source_id, Quote.frame_id).where(
            Quote.source_type == ActorType.DEVICE,
            any_id(Quote.source_id, {device for device, _ in pairs}),
            Quote.frame_id.in_({frame for _, frame in pairs}),
        )
    )
    return {(row.source_id, row.frame_id) for row in rows if (row.source_id, row.frame_id) in pairs}


def is_fresh(quote_time: datetime, now: datetime, max_age: timedelta) -> bool:
    """A quote older than ``max_age`` (by its source's clock) is stale and triggers nothing."""
    return now - quote_time <= max_age


async def latest_fresh(
    session: AsyncSession,
    *,
    signal_instrument: str,
    signal_id: uuid.UUID,
    device_id: uuid.UUID,
    instrument: str,
    now: datetime,
    max_age: timedelta,
) -> Seen | None:
    """The newest fresh quote a position is read against: its signal's producer's and the price feeds'
    quotes of its signal's instrument, and its device's own quotes of its broker symbol."""
    row = (
        await session.execute(
            select(Quote)
            .where(
                or_(
                    and_(
                        Quote.source_type == ActorType.PRODUCER,
                        Quote.instrument == signal_instrument,
                        or_(
                            Quote.price_feed,
                            Quote.source_id
                            == select(Signal.producer_id).where(Signal.id == signal_id).scalar_subquery(),
                        ),
                    ),
                    and_(
                        Quote.source_type == ActorType.DEVICE,
                        Quote.source_id == device_id,
                        Quote.instrument == instrument,
                    ),
                ),
                Quote.quote_time >= now - max_age,
            )
            .order_by(Quote.received_at.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    return None if row is None else stored(row)


def stored(row: Quote) -> Seen:
    return Seen(
        feed_of(row.source_type, row.source_id, row.instrument, row.price_feed),
        row.bid,
        row.ask,
        row.quote_time,
        row.received_at,
    )


async def received_since(session: AsyncSession, since: datetime, *, page: int = 5000) -> list[Seen]:
    """Every quote stored since ``since`` (the monitor's sweep), oldest first, read ``page`` rows at a
    time (a page may repeat the previous one's last instant: reading a quote twice is harmless)."""
    found: list[Seen] = []
    while True:
        rows = await session.scalars(
            select(Quote).where(Quote.received_at >= since).order_by(Quote.received_at, Quote.quote_time).limit(page)
        )
        batch = [stored(row) for row in rows]
        found.extend(batch)
        if len(batch) < page or batch[-1].received_at == since:
            return found
        since = batch[-1].received_at


# -- the monitor's hints: a stored quote as a Redis stream entry and back


def hint(seen: Seen) -> dict[str, str]:
    return {
        "q": seen.feed.instrument,
        "d": str(seen.feed.device_id or ""),
        "f": str(seen.feed.producer_id or ""),  # not "p": that names a positions entry (hints.POSITIONS_FIELD)
        "b": wire.decimal_text(seen.bid),
        "a": wire.decimal_text(seen.ask),
        "t": seen.quote_time.isoformat(),
        "r": seen.received_at.isoformat(),
    }


def from_hint(fields: Mapping[str, str]) -> Seen | None:
    """A quote hint read back; None when the entry is not one (or is garbled: hints are only hints)."""
    try:
        device, producer = fields.get("d") or "", fields.get("f") or ""
        seen = Seen(
            Feed(fields["q"], uuid.UUID(device) if device else None, uuid.UUID(producer) if producer else None),
            Decimal(fields["b"]),
            Decimal(fields["a"]),
            datetime.fromisoformat(fields["t"]),
            datetime.fromisoformat(fields["r"]),
        )
    except (KeyError, ValueError, ArithmeticError):
        return None
    return seen if seen.bid.is_finite() and seen.ask.is_finite() and seen.quote_time.tzinfo else None


async def purge_stale(session: AsyncSession, before: datetime) -> int:
    """Delete stored quotes not renewed since ``before`` (the worker's round): a source that stopped
    quoting a symbol leaves no row for ever. Returns how many went."""
    result = await session.execute(delete(Quote).where(Quote.received_at < before).returning(Quote.instrument))
    return len(result.all())
