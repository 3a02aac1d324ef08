"""Engine and session factory: one per process, built by its composition root and passed down; the one
SQL idiom every module shares (id arrays as a single parameter); and the one way a hot path retries a
transaction that lost a race."""

from __future__ import annotations

import enum
import functools
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import ColumnElement, Enum, any_, literal
from sqlalchemy import types as sqltypes
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.util import greenlet_spawn

from backoffice.platform.config import Settings
from backoffice.platform.metrics import DB_POOL_IN_USE, DB_POOL_SIZE
from signalhub.protocol.errors import Unavailable


def create_engine(settings: Settings, *, pool_size: int = 20) -> AsyncEngine:
    """The process's engine; its pool is what ``signalhub_db_pool_*`` report when scraped."""
    engine = create_async_engine(
        settings.database_url,
        pool_size=pool_size,
        # No overflow: a connection opened for a burst and closed after it (asyncpg's TLS attempt, its type
        # introspection, Postgres's new backend) cost about 5 % of the back office's CPU at 500 submits a
        # second, and more the more it is overloaded. Calls beyond the pool wait for a connection instead;
        # the most a process opens is unchanged (it was 10 and 10 overflowing).
        max_overflow=0,
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
    engine's pool directly, with no ORM session and no Connection object around it: in-process about 110
    against 180 us of CPU per checkout and statement through ``engine.connect()``, and 280 through a
    session. Returned through the pool's own (greenlet) path, which resets it as for any checkout."""
    engine: AsyncEngine = sessions.kw["bind"]
    dbapi_error = engine.dialect.loaded_dbapi.Error
    try:
        pooled = await engine.raw_connection()
    except dbapi_error as exc:  # no connection could be made (the server starting, say): as connect() raises it
        lost = engine.dialect.is_disconnect(exc, None, None)
        raise DBAPIError.instance(None, None, exc, dbapi_error, connection_invalidated=lost) from exc
    try:
        yield pooled.driver_connection
    except (asyncpg.InterfaceError, asyncpg.PostgresConnectionError, ConnectionError, OSError) as exc:
        await greenlet_spawn(pooled.invalidate, exc)
        raise
    except asyncpg.PostgresError as exc:
        if str(getattr(exc, "sqlstate", "")).startswith("57P"):  # the server is shutting down
            await greenlet_spawn(pooled.invalidate, exc)
        raise
    finally:
        await greenlet_spawn(pooled.close)


async def fetch_alone(
    sessions: async_sessionmaker[AsyncSession], statement: str, *params: Any, give_way: Collection[str] = ()
) -> list[Any] | None:
    """The rows of one statement of the driver's own SQL that commits on its own (``driver``); None, with
    nothing changed, when it failed with a race's SQLSTATE or one of ``give_way``: the caller then does the
    same work in a transaction of its own, which retries races."""
    try:
        async with driver(sessions) as connection:
            return list(await connection.fetch(statement, *params))
    except asyncpg.PostgresError as exc:
        if getattr(exc, "sqlstate", None) in give_way or is_race(exc):
            return None
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
    """``UPDATE`` each of ``rows`` (its ``id`` and the new column values, the same columns in every row) in
    one statement of the session's transaction: every column one array parameter, joined by ``unnest``.
    No rows, no statement."""
    if rows:
        names = ("id", *(name for name in rows[0] if name != "id"))
        await _with_arrays(session, _array_statement("update", model.__table__, names), model.__table__, names, rows)


async def insert_rows(session: AsyncSession, model: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    """``INSERT`` ``rows`` (the same columns in every row) in one statement of the session's transaction,
    every column one array parameter: Postgres spreads them with ``unnest``, so the Python per row is a
    list append, not SQLAlchemy's bind processing of every value. No rows, no statement."""
    if rows:
        names = tuple(rows[0])
        await _with_arrays(session, _array_statement("insert", model.__table__, names), model.__table__, names, rows)


async def driver_rows(session: AsyncSession, statement: str, *params: Any) -> Sequence[Any]:
    """The rows of the driver's own SQL (``$1``-style parameters, values as asyncpg gives them) in the
    session's transaction, begun if it was not: for a hot path's read, where building and compiling a Core
    statement costs more Python than Postgres takes to run it."""
    connection = await session.connection()
    return (await connection.exec_driver_sql(statement, params)).all()


async def execute_driver(session: AsyncSession, statement: str, *params: Any) -> None:
    """The driver's own SQL (``$1``-style parameters) that returns no rows, in the session's transaction,
    begun if it was not: a hot path's write whose Core form would be compiled anew for every call."""
    connection = await session.connection()
    await connection.exec_driver_sql(statement, params)


_DIALECT: Any = postgresql.dialect()  # type: ignore[no-untyped-call]  # for column type names only


@functools.cache
def _array_statement(kind: str, table: Any, names: tuple[str, ...]) -> str:
    """The statement for these columns of ``table``, built once. Every identifier comes from the table
    itself (``table.c[name]`` refuses any other name) and is quoted by the dialect."""
    quote = _DIALECT.identifier_preparer.quote
    columns = [table.c[name] for name in names]
    arrays = ", ".join(f"${i}::{_array_type(column)}" for i, column in enumerate(columns, start=1))
    names_sql = ", ".join(quote(c.name) for c in columns)
    target = quote(table.name)
    if kind == "insert":
        # In the rows' order (WITH ORDINALITY): an identity column such as execution_events.seq follows it.
        spread = f"unnest({arrays}) WITH ORDINALITY AS v({names_sql}, row_number)"
        return f"INSERT INTO {target} ({names_sql}) SELECT {names_sql} FROM {spread} ORDER BY row_number"  # noqa: S608
    spread = f"unnest({arrays}) AS v({names_sql})"
    sets = ", ".join(f"{quote(c.name)} = v.{quote(c.name)}" for c in columns[1:])
    return f"UPDATE {target} SET {sets} FROM {spread} WHERE {target}.id = v.id"  # noqa: S608


def _array_type(column: Any) -> str:
    # An array column would be flattened by unnest: such tables keep an ORM or Core statement.
    if isinstance(column.type, sqltypes.ARRAY):  # the generic ARRAY, which PostgreSQL's subclasses
        raise TypeError(f"{column} is an array: unnest cannot carry it")
    return f"{column.type.compile(dialect=_DIALECT)}[]"


async def _with_arrays(
    session: AsyncSession, statement: str, table: Any, names: Sequence[str], rows: Sequence[Mapping[str, Any]]
) -> None:
    # Through SQLAlchemy's connection (so the statement runs in the session's transaction, begun if it was
    # not), but as the driver's own SQL: nothing compiled or processed per value.
    if any(len(row) != len(names) for row in rows):
        raise ValueError(f"every row written to {table.name} must name the same columns: {', '.join(names)}")
    converters = [_to_driver(table.c[name]) for name in names]
    arrays = [[convert(row[name]) for row in rows] for name, convert in zip(names, converters, strict=True)]
    await execute_driver(session, statement, *arrays)


def _to_driver(column: Any) -> Callable[[Any], Any]:
    """What asyncpg takes for a column's value: an enum's value, JSON as text (None as JSON null unless
    the type says SQL NULL, as SQLAlchemy's JSON type does), anything else as it is."""
    if isinstance(column.type, JSONB):
        if column.type.none_as_null:
            return lambda value: None if value is None else json.dumps(value)
        return json.dumps
    if isinstance(column.type, Enum):
        return lambda value: value.value if isinstance(value, enum.Enum) else value
    return _same


def _same(value: Any) -> Any:
    return value


T = TypeVar("T")
# Deadlock and serialization failure: the transaction lost a race and may simply run again.
RACE_SQLSTATES = frozenset({"40P01", "40001"})
# How often a decision (a signal's submission, an approval) reads and writes again when what it read no
# longer held by the time it wrote, or it lost a race, before the caller hears ``lost_race``.
DECISION_ATTEMPTS = 5


def function_call(name: str, arguments: int) -> str:
    """``SELECT * FROM name($1, ..., $n)``: a call of one of our Postgres functions (its name is ours)."""
    return f"SELECT * FROM {name}(" + ", ".join(f"${i}" for i in range(1, arguments + 1)) + ")"  # noqa: S608


def is_race(exc: BaseException) -> bool:
    """Whether ``exc`` is a statement that lost a race (it changed nothing and may simply run again)."""
    return str(getattr(exc, "sqlstate", "") or getattr(getattr(exc, "orig", None), "sqlstate", "")) in RACE_SQLSTATES


def lost_race() -> Unavailable:
    """What a caller hears of a change that kept losing races: transient, so UNAVAILABLE as the contract
    has it (it names no ABORTED for calls); retry."""
    return Unavailable("the request conflicted with a concurrent one; retry it", reason="CONCURRENT_CHANGE")


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
