"""Latest quotes per instrument, from producers' price feeds and devices' brokers; the stop-loss and
take-profit monitor reads them. One rule decodes a wire Quote, whoever sent it."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from uuid import UUID

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from backoffice.models import ActorType, Quote
from signalhub.protocol import wire
from signalhub.v1 import common_pb2


@dataclass(frozen=True)
class QuoteIn:
    instrument: str
    bid: Decimal
    ask: Decimal
    quote_time: datetime
    source_type: ActorType
    source_id: UUID


def parse_quote(
    quote: common_pb2.Quote, prefix: str, *, instrument: re.Pattern[str], source_type: ActorType, source_id: UUID
) -> QuoteIn:
    """A wire Quote (checked by ``wire.parse_quote``) as a domain quote of its source."""
    prices = wire.parse_quote(quote, prefix, instrument)
    return QuoteIn(prices.instrument, prices.bid, prices.ask, prices.quote_time, source_type, source_id)


def latest(quotes: Iterable[QuoteIn]) -> dict[str, QuoteIn]:
    """The newest quote of each instrument."""
    found: dict[str, QuoteIn] = {}
    for quote in quotes:
        current = found.get(quote.instrument)
        if current is None or current.quote_time <= quote.quote_time:
            found[quote.instrument] = quote
    return found


async def store_latest(session: AsyncSession, quotes: Iterable[QuoteIn], now: datetime) -> None:
    """Upsert the newest quote per instrument; an older quote never overwrites a newer one. Sorted by
    instrument, so two transactions upserting the same instruments lock them in the same order."""
    newest = latest(quotes)
    if not newest:
        return
    statement = insert(Quote).values(
        [
            {
                "instrument": q.instrument,
                "bid": q.bid,
                "ask": q.ask,
                "quote_time": q.quote_time,
                "source_type": q.source_type,
                "source_id": q.source_id,
                "received_at": now,
            }
            for _, q in sorted(newest.items())
        ]
    )
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[Quote.instrument],
            set_={
                name: statement.excluded[name]
                for name in ("bid", "ask", "quote_time", "source_type", "source_id", "received_at")
            },
            where=Quote.quote_time <= statement.excluded.quote_time,
        )
    )
