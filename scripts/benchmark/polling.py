"""The polling yardstick, the seeds' design: a device asks a unary RPC once a second for pending work.

Built small and honest: a spawned process runs a grpc.aio server with two generic unary handlers over
bytes (no .proto of its own) on a scratch table in the run's database (asyncpg). ``Poll(device_id)``
takes that device's pending rows in one transaction (SELECT ... FOR UPDATE SKIP LOCKED, then marks
them taken, one statement); ``Report(device_id, work_id)`` records the execution and commits. As many devices as the
run has poll it from the load processes (``pollers``), each once a second from a random phase; work is
inserted (each row its own commit) at the approval rate, for a device after device. Latency runs from a
row's insert committed to its Report committed (time.time on this machine, both ends).

1,000 polls a second are a lot for one Python server process on a shared 2-core machine: when it cannot
keep up, polls queue and the devices poll less often than once a second, and the latency grows past its
floor (about half the interval). ``polling_poll_rpc_p50`` and ``polling_server_cpu_share`` show when
that happened; read the ratio against polling with them.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
import uuid
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from typing import Any

import asyncpg
import grpc
from sqlalchemy.engine import make_url

from .meters import cpu_seconds
from .options import Options
from .pollers import SERVICE, PollerSpec, pollers_main, raw
from .report import Report, ms, percentile


def dsn(database_url: str) -> str:
    """asyncpg's form of a SQLAlchemy URL."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


class PollingServer:
    """The two RPCs over the scratch table; remembers when each Report committed."""

    def __init__(self, pool: Any, table: str) -> None:
        self.pool = pool  # an asyncpg pool (asyncpg ships no type stubs)
        self.reported: dict[int, float] = {}
        # One statement, so one round trip and its own transaction: lock the device's pending rows that
        # no other poll holds, then mark them taken.
        self.take = (
            f"WITH pending AS (SELECT id FROM {table} WHERE device_id = $1 AND taken_at IS NULL"  # noqa: S608
            f" FOR UPDATE SKIP LOCKED) UPDATE {table} SET taken_at = now() FROM pending"
            f" WHERE {table}.id = pending.id RETURNING {table}.id"
        )
        self.done = f"UPDATE {table} SET done_at = now() WHERE id = $1 AND device_id = $2"  # noqa: S608

    async def poll(self, request: bytes, _: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        async with self.pool.acquire() as db:
            ids = [row["id"] for row in await db.fetch(self.take, request.decode())]
        return ",".join(str(i) for i in ids).encode()

    async def report(self, request: bytes, _: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        device_id, _sep, work_id = request.decode().partition(",")
        async with self.pool.acquire() as db:
            await db.execute(self.done, int(work_id), device_id)
        self.reported[int(work_id)] = time.time()
        return b""

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Poll": grpc.unary_unary_rpc_method_handler(self.poll, raw, raw),
                "Report": grpc.unary_unary_rpc_method_handler(self.report, raw, raw),
            },
        )


def polling_server_main(conn: Connection, database: str, table: str) -> None:
    """The polling server's process: sends its port on ``conn``, answers ``("count",)`` and
    ``("reported",)``; any other message stops it."""
    asyncio.run(_serve(conn, database, table))


async def _serve(conn: Connection, database: str, table: str) -> None:
    pool = await asyncpg.create_pool(database, min_size=2, max_size=8)
    server = grpc.aio.server()
    polling = PollingServer(pool, table)
    server.add_generic_rpc_handlers((polling.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    conn.send(port)
    try:
        while True:
            command, *_ = await asyncio.to_thread(conn.recv)
            if command == "count":
                conn.send(("count", len(polling.reported)))
            elif command == "reported":
                conn.send(("reported", dict(polling.reported)))
            else:
                break
    finally:
        await server.stop(0)
        await pool.close()


async def ask(pipe: Connection, *command: object) -> Any:
    pipe.send(command)
    return await asyncio.to_thread(pipe.recv)


async def insert_work(db: Any, table: str, device_ids: Sequence[str], count: int, rate: float) -> dict[int, float]:
    """``count`` work rows, one commit each, at ``rate`` per second, spread over the devices; when each
    insert had committed."""
    inserted: dict[int, float] = {}
    statement = f"INSERT INTO {table} (device_id) VALUES ($1) RETURNING id"  # noqa: S608 - a generated name
    began = time.monotonic()
    for i in range(count):
        delay = began + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        work_id = await db.fetchval(statement, device_ids[i * len(device_ids) // count])
        inserted[work_id] = time.time()
    return inserted


async def bare_polling(
    options: Options, database_url: str, device_ids: Sequence[str], report: Report
) -> dict[str, float | None]:
    """The polling yardstick (see the module's docstring): the table, the server and the pollers started,
    a second for every device to have polled once, the work inserted, then a wait for the last Report;
    everything stopped and the table dropped whatever happens. Returns "polling_p50" (seconds)."""
    found: dict[str, float | None] = {"polling_p50": None}
    count = options.polling_samples
    where = (
        f"{len(device_ids)} devices polling once a second over {options.processes} load processes, "
        f"{count} work items at {options.approval_rate:g}/s"
    )
    table = f"bench_polling_{uuid.uuid4().hex[:8]}"
    context = multiprocessing.get_context("spawn")
    db = await asyncpg.connect(dsn(database_url))
    server: SpawnProcess | None = None
    pipe, theirs = context.Pipe()
    pollers: list[tuple[SpawnProcess, Connection]] = []
    poll_seconds: list[float] = []
    try:
        await db.execute(
            f"CREATE TABLE {table} (id bigserial PRIMARY KEY, device_id text NOT NULL, taken_at timestamptz,"
            " done_at timestamptz)"
        )
        await db.execute(f"CREATE INDEX ON {table} (device_id) WHERE taken_at IS NULL")
        server = context.Process(target=polling_server_main, args=(theirs, dsn(database_url), table), daemon=True)
        server.start()
        port = await asyncio.to_thread(pipe.recv)
        for index in range(options.processes):
            chunk = tuple(device_ids[index :: options.processes])
            if chunk:
                mine, other = context.Pipe()
                process = context.Process(
                    target=pollers_main, args=(PollerSpec(f"127.0.0.1:{port}", chunk), other), daemon=True
                )
                process.start()
                pollers.append((process, mine))
        ready = sum(a[1] for a in await asyncio.gather(*(asyncio.to_thread(p.recv) for _, p in pollers)))
        if ready < len(device_ids):
            report.note(f"polling: {ready} of {len(device_ids)} devices polling")
        await asyncio.sleep(1.0)  # every device is on its once-a-second beat
        began, cpu_before = time.monotonic(), cpu_seconds(server.pid)
        inserted = await insert_work(db, table, device_ids, count, options.approval_rate)
        deadline = time.monotonic() + options.wait_seconds
        while time.monotonic() < deadline:
            if (await ask(pipe, "count"))[1] >= len(inserted):
                break
            await asyncio.sleep(0.1)
        reported: dict[int, float] = (await ask(pipe, "reported"))[1]
        cpu_after, elapsed = cpu_seconds(server.pid), time.monotonic() - began
    finally:
        poll_seconds = await stop_pollers(pollers, report)
        if server is not None:
            pipe.send(("stop",))
            server.join(10)
            if server.is_alive():
                server.kill()
        with contextlib.suppress(Exception):
            await db.execute(f"DROP TABLE IF EXISTS {table}")
        await db.close()
    latencies = [reported[i] - at for i, at in inserted.items() if i in reported]
    found["polling_p50"] = percentile(latencies, 50)
    report.add("polling_approval_to_execution_p50", ms(found["polling_p50"]), "ms", where)
    report.add("polling_approval_to_execution_p99", ms(percentile(latencies, 99)), "ms", where)
    report.add("polling_poll_rpc_p50", ms(percentile(poll_seconds, 50)), "ms", where)
    report.add("polling_poll_rpc_p99", ms(percentile(poll_seconds, 99)), "ms", where)
    if cpu_before is not None and cpu_after is not None:  # near 100 %: the polls queue at the server
        report.add("polling_server_cpu_share", 100 * (cpu_after - cpu_before) / elapsed, "% of a core", where)
    if len(latencies) < len(inserted):
        report.note(f"polling: {len(inserted) - len(latencies)} of {len(inserted)} work items not executed in time")
    return found


async def stop_pollers(pollers: Sequence[tuple[SpawnProcess, Connection]], report: Report) -> list[float]:
    """Stop the polling load processes; note the calls that failed, if any. Each Poll's seconds."""
    answers = []
    for process, pipe in pollers:
        with contextlib.suppress(Exception):
            answers.append(await asyncio.wait_for(ask(pipe, "stop"), 15))
        process.join(5)
        if process.is_alive():
            process.kill()
    errors = [e for a in answers for e in a[3]]
    if errors:
        report.note(f"polling: calls failed, e.g. {errors[0]}")
    return [t for a in answers for t in a[4]]
