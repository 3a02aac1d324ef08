"""Engine and session factory: one per process, built by its composition root and passed down; the one
SQL idiom every module shares (id arrays as a single parameter); and the one way a hot path retries a
transaction that lost a race."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import ColumnElement, any_, bindparam, literal, update
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from backoffice.platform.config import Settings
from backoffice.platform.metrics import DB_POOL_IN_USE, DB_POOL_SIZE


def create_engine(settings: Settings, *, pool_size: int = 10) -> AsyncEngine:
    """The process's engine; its pool is what ``signalhub_db_pool_*`` report when scraped."""
    engine = create_async_engine(
        settings.database_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        # No ping per checkout (a round trip on every transaction, two per signed SubmitSignal): a connection
        # that died with its server fails its next statement, SQLAlchemy then discards every pooled
        # connection older than that, and the caller's error is UNAVAILABLE (retry), as in any outage.
        pool_pre_ping=False,
        # Never echo statements: bound parameters can hold sealed secrets or token hashes.
        echo=False,
        hide_parameters=True,
    )
    pool: Any = engine.pool  # QueuePool: checkedout() and checkedin() count connections
    DB_POOL_IN_USE.set_function(lambda: float(pool.checkedout()))
    DB_POOL_SIZE.set_function(lambda: float(pool.checkedout() + pool.checkedin()))
    return engine


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def driver(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[Any]:
    """The pooled asyncpg connection itself, each statement its own transaction: for a hot path that one
    SQL statement does whole, where SQLAlchemy's Python per statement costs more than Postgres does.
    A connection that failed (lost, or its server going down) is discarded as SQLAlchemy would; what the
    client hears is the interceptor's to say. Typed Any: asyncpg ships no type stubs. Checked out of the
    engine directly, with no ORM session around it and no transaction begun: half the CPU of going
    through a session (about 150 against 280 us per checkout and statement, measured in-process)."""
    engine: AsyncEngine = sessions.kw["bind"]
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        try:
            yield raw.driver_connection
        except (asyncpg.InterfaceError, asyncpg.PostgresConnectionError, ConnectionError, OSError) as exc:
            await connection.invalidate(exc)
            raise
        except asyncpg.PostgresError as exc:
            if str(getattr(exc, "sqlstate", "")).startswith("57P"):  # the server is shutting down
                await connection.invalidate(exc)
            raise


@asynccontextmanager
async def autocommit(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A session whose every statement commits on its own: a lookup on the hot path (a key, a token) is
    one round trip rather than BEGIN, SELECT and ROLLBACK."""
    async with sessions() as session:
        await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        yield session


async def ensure_database(database_url: str) -> None:
    """Create the URL's database if it is missing (connecting to the server's ``postgres`` database)."""
    # asyncpg itself: CREATE DATABASE cannot run inside SQLAlchemy's transaction
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    name = url.database or "postgres"
    dsn = url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


UUID_ARRAY = ARRAY(UUID(as_uuid=True))


def any_id(column: Any, ids: Iterable[uuid.UUID]) -> ColumnElement[bool]:
    """``column = ANY($1)``: one array parameter, so the statement is the same (and prepared once)
    however many ids there are; an IN list is a new statement per length and is capped in size."""
    return column == any_(literal(list(ids), UUID_ARRAY))  # type: ignore[no-any-return]


async def update_by_id(session: AsyncSession, model: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    """``UPDATE`` each of ``rows`` (its ``id`` and the new column values, the same columns in every row) as
    one Core executemany: one statement, many parameter sets, no ORM flush. No rows, no statement."""
    if not rows:
        return
    columns = [name for name in rows[0] if name != "id"]
    # The bind names must not be column names: SQLAlchemy keeps those for the SET clause.
    statement = (
        update(model).where(model.id == bindparam("b_id")).values({name: bindparam(f"b_{name}") for name in columns})
    )
    connection = await session.connection()
    await connection.execute(statement, [{f"b_{name}": value for name, value in row.items()} for row in rows])


T = TypeVar("T")
# Deadlock and serialization failure: the transaction lost a race and may simply run again.
RACE_SQLSTATES = frozenset({"40P01", "40001"})


async def retrying(
    sessions: async_sessionmaker[AsyncSession],
    work: Callable[[AsyncSession], Awaitable[T]],
    *,
    log: logging.Logger,
    what: str,
    sqlstates: Collection[str] = RACE_SQLSTATES,
    attempts: int = 3,
) -> T:
    """``work`` in a transaction of its own, run again (at most ``attempts`` times in all) when it fails
    with one of ``sqlstates``; the retry sees what the winning transaction committed."""
    for attempt in range(1, attempts + 1):
        try:
            async with sessions.begin() as session:
                return await work(session)
        except DBAPIError as exc:
            sqlstate = getattr(exc.orig, "sqlstate", None)
            if attempt == attempts or sqlstate not in sqlstates:
                raise
            log.info(f"{what} retried", extra={"sqlstate": sqlstate, "attempt": attempt})
    raise AssertionError("unreachable")
