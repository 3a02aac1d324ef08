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

from backoffice.api.wire import parse_timestamp
from backoffice.errors import InvalidArgument
from backoffice.models import ActorType, Quote
from backoffice.validation import parse_decimal
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
    """A wire Quote as a domain quote. InvalidArgument names every bad field as ``<prefix>.<field>``.
    ``instrument`` is the source's naming rule: producers name instruments, devices their broker's symbols."""
    violations: list[tuple[str, str]] = []
    if not instrument.match(quote.instrument):
        violations.append((f"{prefix}.instrument", f"must match {instrument.pattern}"))
    prices: dict[str, Decimal] = {}
    for name in ("bid", "ask"):
        try:
            prices[name] = parse_decimal(getattr(quote, name), f"{prefix}.{name}")
        except InvalidArgument as exc:
            violations.extend(exc.violations)
    if len(prices) == 2 and prices["bid"] > prices["ask"]:
        violations.append((f"{prefix}.bid", "must not exceed ask"))
    quote_time = None
    if not quote.HasField("quote_time"):
        violations.append((f"{prefix}.quote_time", "is required"))
    else:
        try:
            quote_time = parse_timestamp(quote.quote_time, True, f"{prefix}.quote_time")
        except InvalidArgument as exc:
            violations.extend(exc.violations)
    if violations:
        raise InvalidArgument(violations)
    assert quote_time is not None
    return QuoteIn(quote.instrument, prices["bid"], prices["ask"], quote_time, source_type, source_id)


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
