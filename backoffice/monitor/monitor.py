"""The monitor, in the worker process: it keeps every watched OPEN position's levels in memory (``book``),
reads each stored quote as it arrives and acts on the positions it reaches (``triggers``).

How it hears of things: the gateway and the back office append stored quotes and changed positions to
the Redis stream of ``backoffice.platform.hints`` after their commit; the monitor follows that stream
(two monitors can both follow it: the database decides). Because a hint may be lost (Redis restarts, the
stream is trimmed, a worker was down), every ``monitor_sweep_seconds`` it also re-reads the positions
changed lately and the quotes stored lately from Postgres, and every few minutes all OPEN positions: a
lost hint costs latency, never a trigger.

Quotes: one older than ``quote_max_age_seconds`` (by its source's clock) is stale and acts on nothing; one
received before the newest already read for its feed is skipped (an old price must never fire a level a
newer one moved; ordered by the server's receive time, so no source's clock can hold a feed). A position
that opens, or whose levels change, is read against the newest fresh quote of its feeds at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backoffice import quotes
from backoffice.models import Position, PositionStatus, Quote
from backoffice.monitor import triggers
from backoffice.monitor.book import Books
from backoffice.platform import db, hints
from backoffice.platform.config import Settings
from backoffice.platform.metrics import (
    MONITOR_ACTIONS,
    MONITOR_QUOTE_JUMPS,
    MONITOR_QUOTES,
    MONITOR_ROUND,
    MONITOR_WATCHED,
)
from backoffice.quotes import Feed, Seen

log = logging.getLogger("signalhub.monitor")

# Writers stamp rows with their own clock a moment before they commit: each sweep looks back this far.
SWEEP_OVERLAP = timedelta(seconds=10)
FULL_RELOAD_SECONDS = 300.0
READ_COUNT = 1000  # stream entries per read
MAX_BACKOFF = 5.0


class Monitor:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], redis: Redis, settings: Settings) -> None:
        self._sessions = sessions
        self._redis = redis  # a connection of its own: it blocks on the stream
        self._max_age = timedelta(seconds=settings.quote_max_age_seconds)
        self._sweep_every = settings.monitor_sweep_seconds
        self.books = Books()
        self.latest: dict[Feed, Seen] = {}  # the newest fresh quote read per feed
        # (received_at, quote_time) of the newest quote read per feed: older ones, and the same one read
        # again by an overlapping sweep, are skipped. The server's receive time comes first: a source's clock
        # cannot hold a feed (a quote dated ahead would otherwise make every later real one look old).
        self._read_up_to: dict[Feed, tuple[datetime, datetime]] = {}
        # A quote whose mid jumped beyond this share from its feed's last fresh one waits here, acting on
        # nothing, until a later quote near it confirms the new level (one absurd price never fires a level).
        self._jump_share = settings.quote_jump_share
        self.unconfirmed: dict[Feed, Seen] = {}
        self._stream_id = "0-0"
        self._positions_since: datetime | None = None
        self._quotes_since: datetime | None = None
        self._next_sweep = 0.0
        self._next_reload = 0.0
        self.ready = asyncio.Event()  # loaded and following the stream (tests wait for it)

    async def run(self, stop: asyncio.Event) -> None:
        """Load, then follow the stream and sweep until ``stop`` is set. A failed round is logged and the
        next one starts over from Postgres."""
        backoff = 0.1
        while not stop.is_set():
            try:
                if not self.ready.is_set():
                    await self._start()
                try:
                    await self._round(stop)
                except RedisError as exc:  # Redis away: the sweep keeps working meanwhile
                    log.warning("monitor stream unavailable", extra={"error": str(exc), "backoff": backoff})
                    await self._sleep(stop, backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
                    await self._sweep_if_due()
                    continue
                backoff = 0.1
            except Exception:  # the database too: start over from it once it answers
                log.exception("monitor round failed")
                self.ready.clear()
                await self._sleep(stop, backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    @staticmethod
    async def _sleep(stop: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

    async def _start(self) -> None:
        """Note where the stream ends, then load everything: whatever is appended meanwhile is read next."""
        with contextlib.suppress(RedisError, OSError):
            last: Any = await self._redis.xrevrange(hints.MONITOR_STREAM, count=1)
            self._stream_id = _text(last[0][0]) if last else "0-0"
        await self._reload_all()
        await self._sweep()
        self.ready.set()

    async def _round(self, stop: asyncio.Event) -> None:
        wait = max(0.0, min(self._next_sweep - time.monotonic(), self._sweep_every))
        answer: Any = await self._redis.xread(
            {hints.MONITOR_STREAM: self._stream_id}, count=READ_COUNT, block=max(1, int(wait * 1000))
        )
        changed: set[uuid.UUID] = set()
        seen: list[Seen] = []
        for _, entries in answer or []:
            for entry_id, fields in entries:
                self._stream_id = _text(entry_id)
                decoded = {_text(k): _text(v) for k, v in fields.items()}
                if hints.POSITIONS_FIELD in decoded:
                    changed.update(_ids(decoded[hints.POSITIONS_FIELD]))
                elif (quote := quotes.from_hint(decoded)) is not None:
                    seen.append(quote)
        if changed:
            await self._reload(changed)
        if seen:
            await self.read_quotes(seen)
        await self._sweep_if_due()

    async def _sweep_if_due(self) -> None:
        if time.monotonic() >= self._next_reload:
            await self._reload_all()
        if time.monotonic() >= self._next_sweep:
            await self._sweep()

    async def _sweep(self) -> None:
        """Positions changed and quotes stored since the last sweep (with some overlap), from Postgres."""
        self._next_sweep = time.monotonic() + self._sweep_every
        async with self._sessions() as session:
            started = await session.scalar(select(func.clock_timestamp()))
            assert started is not None
            rows: Sequence[Any] = []
            if self._positions_since is not None:
                rows = (
                    await session.execute(
                        select(*triggers.WATCHED_COLUMNS).where(
                            Position.updated_at >= self._positions_since - SWEEP_OVERLAP
                        )
                    )
                ).all()
            since = self._quotes_since or started - self._max_age
            stored = await quotes.received_since(session, since - SWEEP_OVERLAP)
        self._positions_since = self._quotes_since = started
        self.prune(started)
        if rows:
            await self._watch(rows)
        if stored:
            await self.read_quotes(stored)

    async def _reload_all(self) -> None:
        """Every OPEN position and the fresh quotes, from scratch."""
        self._next_reload = time.monotonic() + FULL_RELOAD_SECONDS
        async with self._sessions() as session:
            started = await session.scalar(select(func.clock_timestamp()))
            assert started is not None
            rows = (
                await session.execute(select(*triggers.WATCHED_COLUMNS).where(Position.status == PositionStatus.OPEN))
            ).all()
            fresh = await session.scalars(select(Quote).where(Quote.quote_time >= started - self._max_age))
            for row in fresh:
                self._remember(quotes.stored(row))
        self._positions_since = self._positions_since or started
        self.books.keep_only(row.id for row in rows)
        await self._watch(rows)
        MONITOR_WATCHED.set(len(self.books))

    async def _reload(self, position_ids: Iterable[uuid.UUID]) -> None:
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    select(*triggers.WATCHED_COLUMNS).where(db.any_id(Position.id, list(position_ids)))
                )
            ).all()
        await self._watch(rows)

    async def _watch(self, rows: Sequence[Any]) -> None:
        """Positions read from Postgres: OPEN ones are watched with their levels now (and read against the
        newest fresh quote of their feeds at once), the others forgotten."""
        now = datetime.now(UTC)
        runs: dict[Feed, set[uuid.UUID]] = {}
        for row in rows:
            position = triggers.watched(row)
            if row.status is not PositionStatus.OPEN:
                self.books.discard(position.id)
                continue
            if self.books.watched.get(position.id) == position:
                continue  # read again by an overlapping sweep: nothing changed
            self.books.put(position)
            if position.id not in self.books.watched:
                continue
            for feed in position.feeds:
                latest = self.latest.get(feed)
                if latest is not None and quotes.is_fresh(latest.quote_time, now, self._max_age):
                    runs.setdefault(feed, set()).add(position.id)
        if runs:
            await self._act(
                [triggers.Run(feed, [self.latest[feed]], frozenset(ids)) for feed, ids in runs.items()], now
            )

    def _confirmed(self, quote: Seen, now: datetime) -> bool:
        """False while ``quote`` is a jump: its mid moved more than the allowed share from its feed's last
        fresh quote, and no later quote near it has confirmed the new level yet (counted, logged)."""
        last = self.latest.get(quote.feed)
        if last is None or not quotes.is_fresh(last.quote_time, now, self._max_age) or not self._jumps(last, quote):
            self.unconfirmed.pop(quote.feed, None)
            return True
        pending = self.unconfirmed.get(quote.feed)
        if pending is not None and pending.received_at < quote.received_at and not self._jumps(pending, quote):
            del self.unconfirmed[quote.feed]  # a second quote at the new level: the market really moved
            return True
        if pending != quote:  # the same quote read again by an overlapping sweep is not a second jump
            self.unconfirmed[quote.feed] = quote
            MONITOR_QUOTE_JUMPS.inc()
            log.warning(
                "quote held until confirmed: it jumped from the feed's last",
                extra={"instrument": quote.feed.instrument, "bid": str(quote.bid), "last_bid": str(last.bid)},
            )
        return False

    def _jumps(self, before: Seen, after: Seen) -> bool:
        old, new = (before.bid + before.ask) / 2, (after.bid + after.ask) / 2
        return abs(new - old) > self._jump_share * old

    def prune(self, now: datetime) -> None:
        """Forget the feeds whose newest quote is stale: their memory would otherwise grow with every symbol
        anyone ever quoted."""
        cutoff = now - self._max_age - SWEEP_OVERLAP
        for feed in [f for f, q in self.latest.items() if q.received_at < cutoff]:
            self.latest.pop(feed, None)
            self._read_up_to.pop(feed, None)
        for feed in [f for f, q in self.unconfirmed.items() if q.received_at < cutoff]:
            del self.unconfirmed[feed]
        for feed in [f for f, (received_at, _) in self._read_up_to.items() if received_at < cutoff]:
            del self._read_up_to[feed]

    def _remember(self, quote: Seen) -> bool:
        """Keep the quote as its feed's newest; False when it is older than one read already, or is it."""
        newest = self._read_up_to.get(quote.feed)
        if newest is not None and (quote.received_at, quote.quote_time) <= newest:
            return False
        self._read_up_to[quote.feed] = (quote.received_at, quote.quote_time)
        self.latest[quote.feed] = quote
        return True

    async def read_quotes(self, seen: Sequence[Seen]) -> None:
        """Fresh quotes, in the order received: each feed's run is read against the positions its book says
        it may reach; only when there are some does anything touch the database."""
        now = datetime.now(UTC)
        by_feed: dict[Feed, list[Seen]] = {}
        for quote in sorted(seen, key=lambda q: (q.received_at, q.quote_time)):
            fresh = quotes.is_fresh(quote.quote_time, now, self._max_age)
            if fresh and self._confirmed(quote, now) and self._remember(quote):
                by_feed.setdefault(quote.feed, []).append(quote)
                MONITOR_QUOTES.inc()
        runs = []
        for feed, run in by_feed.items():
            reached = self.books.reached(feed, run)
            if reached:
                runs.append(triggers.Run(feed, run, frozenset(reached)))
        if runs:
            await self._act(runs, now)

    async def _act(self, runs: Sequence[triggers.Run], now: datetime) -> None:
        started = time.perf_counter()
        applied = await db.retrying(
            self._sessions, lambda session: triggers.apply(session, runs, now), log=log, what="monitor round"
        )
        MONITOR_ROUND.observe(time.perf_counter() - started)
        MONITOR_ACTIONS.labels("move").inc(applied.moves)
        MONITOR_ACTIONS.labels("close").inc(len(applied.queued))
        for position_id in applied.gone:
            self.books.discard(position_id)
        for position in applied.still_open.values():
            self.books.put(position)
        MONITOR_WATCHED.set(len(self.books))
        if applied.queued:
            log.info("close commands queued", extra={"count": len(applied.queued)})
            await hints.publish(self._redis, {q.device_id for q in applied.queued})


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _ids(text: str) -> set[uuid.UUID]:
    found = set()
    for part in text.split(","):
        with contextlib.suppress(ValueError):
            found.add(uuid.UUID(part))
    return found
