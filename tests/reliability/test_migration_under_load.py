"""A schema change while the gateways keep serving: expand, then contract, under steady load.

Two test-only revisions are added on top of the real head, in a copy of ``migrations/``: the expand step
adds a nullable column and (CONCURRENTLY) an index to ``deliveries``, the table every gateway writes on
every ack, and a NOT NULL column with a constant default to ``execution_events``, which they insert into
on every frame; the contract step drops all of it again. Both run under ``lock_timeout`` (an ALTER that
cannot get its lock gives up and is run again, rather than queueing every statement behind it: a long
reader of ``deliveries`` makes the expand step do just that) while the
back office, two gateways, the worker and four bridges carry signals, acks, fills and closes. Then nothing
may be lost or done twice, no client may have had an error, no server may have logged one, and neither
table may have been rewritten.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.exc import DBAPIError

from backoffice.platform import schema
from tests.reliability.conftest import WorldOpener
from tests.reliability.services import OwnedPostgres

LOCK_TIMEOUT = "1s"
ATTEMPTS = 6  # of a step whose lock timed out
READER_SECONDS = 2.5  # a long report holding ACCESS SHARE on deliveries while the expand step wants its lock

# A test-only revision on top of ``down_revision``; ``body`` is its upgrade's work, under the lock timeout.
REVISION = '''"""{message}

Revision ID: {revision}
Revises: {down_revision}
"""

import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = "{down_revision}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("SET lock_timeout = '{lock_timeout}'")
{body}'''

# The expand step's upgrade: columns the next release would use, and an index built without blocking writes.
EXPAND = """    # Nullable, and a constant default: catalog changes only, neither table is rewritten.
    op.add_column("deliveries", sa.Column("route_hint", sa.Text(), nullable=True))
    op.add_column("execution_events", sa.Column("source", sa.Text(), server_default="device", nullable=False))
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_deliveries_route_hint", "deliveries", ["route_hint"], postgresql_concurrently=True, if_not_exists=True
        )
"""

# The contract step's upgrade: drop all of it again.
CONTRACT = """    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_deliveries_route_hint", table_name="deliveries", postgresql_concurrently=True, if_exists=True
        )
    op.drop_column("deliveries", "route_hint")
    op.drop_column("execution_events", "source")
"""


def revision_file(revision: str, down_revision: str, message: str, body: str) -> str:
    return REVISION.format(
        revision=revision, down_revision=down_revision, message=message, lock_timeout=LOCK_TIMEOUT, body=body
    )


def migrations_with_test_steps(into: Path, database_url: str) -> Config:
    """A copy of ``migrations/`` with the expand and contract revisions on top of the real head."""
    shutil.copytree(schema.MIGRATIONS_DIR, into, ignore=shutil.ignore_patterns("__pycache__"))
    config = schema.alembic_config(database_url)
    head = ScriptDirectory.from_config(config).get_current_head()
    versions = into / "versions"
    expand = "expand (test only): columns the next release would use, and an index built without blocking writes"
    (versions / "t1_expand.py").write_text(revision_file("t_expand", head, expand, EXPAND))
    contract = "contract (test only): drop what only the previous release used"
    (versions / "t2_contract.py").write_text(revision_file("t_contract", "t_expand", contract, CONTRACT))
    config.set_main_option("script_location", str(into))
    return config


def upgrade_with_retries(config: Config, revision: str) -> int:
    """``alembic upgrade`` to ``revision``; a step whose lock timed out rolled back and is run again.
    Returns how many attempts it took."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            command.upgrade(config, revision)
            return attempt
        except DBAPIError as exc:
            if "lock timeout" not in str(exc) or attempt == ATTEMPTS:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")


async def catalog(postgres: OwnedPostgres) -> dict[str, object]:
    """What the test reads about the schema: the two tables' storage (a rewrite changes relfilenode),
    their columns, the test index and the Alembic revision."""
    conn = await asyncpg.connect(postgres.dsn())
    try:
        files = await conn.fetch(
            "SELECT relname, relfilenode FROM pg_class WHERE relname IN ('deliveries', 'execution_events')"
        )
        columns = await conn.fetch(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE (table_name, column_name) IN (('deliveries', 'route_hint'), ('execution_events', 'source'))"
        )
        index = await conn.fetchval(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = 'ix_deliveries_route_hint'"
        )
        version = await conn.fetchval("SELECT version_num FROM alembic_version")
    finally:
        await conn.close()
    return {
        "files": {r["relname"]: r["relfilenode"] for r in files},
        "columns": {(r["table_name"], r["column_name"]) for r in columns},
        "index_valid": index,
        "version": version,
    }


async def long_reader(postgres: OwnedPostgres, holding: asyncio.Event) -> None:
    """A report reading ``deliveries`` in one long transaction: it blocks no writer, but an ALTER waiting
    behind it would block every writer that comes after the ALTER, until the ALTER gives up."""
    conn = await asyncpg.connect(postgres.dsn())
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE deliveries IN ACCESS SHARE MODE")
            holding.set()
            await asyncio.sleep(READER_SECONDS)
    finally:
        await conn.close()


async def test_expand_then_contract_while_the_gateways_serve(new_world: WorldOpener, tmp_path: Path) -> None:
    """Expand under load, let traffic run on the expanded schema, contract under load; then the fault
    suite's checks (nothing lost or doubled, no client error, every server SERVING, none restarted), no
    ERROR line from any server, and both tables kept their storage."""
    async with new_world() as (world, postgres, _):
        config = migrations_with_test_steps(tmp_path / "migrations", postgres.url)
        before = await catalog(postgres)
        assert not before["columns"] and before["index_valid"] is None

        submitted = len(world.load.submitted)
        holding = asyncio.Event()
        reader = asyncio.create_task(long_reader(postgres, holding))
        await holding.wait()
        started = time.monotonic()
        expand_attempts = await asyncio.to_thread(upgrade_with_retries, config, "t_expand")
        expand_s = time.monotonic() - started
        await reader
        assert expand_attempts >= 2, "the expand step gave up its lock wait behind the long reader, then ran again"
        expanded = await catalog(postgres)
        assert expanded["version"] == "t_expand" and expanded["index_valid"] is True
        assert expanded["columns"] == {("deliveries", "route_hint"), ("execution_events", "source")}

        await asyncio.sleep(2.0)  # the running servers work on the expanded schema
        started = time.monotonic()
        contract_attempts = await asyncio.to_thread(upgrade_with_retries, config, "t_contract")
        contract_s = time.monotonic() - started
        contracted = await catalog(postgres)
        assert contracted["version"] == "t_contract" and not contracted["columns"]
        assert contracted["index_valid"] is None
        during = len(world.load.submitted) - submitted
        assert during > 0, "signals were submitted while the schema changed"

        assert expanded["files"] == before["files"] == contracted["files"], "a table was rewritten"
        world.report.add(
            "expand and contract under load",
            expand_s=expand_s,
            contract_s=contract_s,
            expand_attempts=expand_attempts,
            contract_attempts=contract_attempts,
            signals_meanwhile=during,
        )
        await world.settle_and_check()
        errors = {name: p.errors() for name, p in world.cluster.processes.items()}
        assert not any(errors.values()), f"a server logged an error: {errors}"
