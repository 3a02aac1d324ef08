"""Consistent backups of the database and their restore, through PostgreSQL's own pg_dump and pg_restore
(a dump is one repeatable-read snapshot, so it is consistent while the servers keep writing).

The tools are the ones of the server's major version (the server is asked): the embedded Postgres's own
for the embedded server, else PATH's or /usr/lib/postgresql/<major>/bin's. A backup is written to a
temporary file beside the target and renamed only once pg_dump succeeded, so a failed one leaves no file
behind and an older backup of the same name intact. A restore goes only into an empty database, which
``create`` makes when it does not exist yet.

Secrets stay sealed under the master key inside a dump: a restore needs the same master key (or the key in
SIGNALHUB_PREVIOUS_MASTER_KEYS), and the dump file is written owner-only all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from backoffice.cli import embedded
from backoffice.cli.local import CONNECT_TIMEOUT_SECONDS, Unreachable
from backoffice.platform import db
from backoffice.platform.config import Settings, mask_url

PACKAGED_BIN_DIRS = Path("/usr/lib/postgresql")  # Debian and Ubuntu: one <major>/bin per installed version
MAINTENANCE_DATABASE = "postgres"

# Relations a restore would collide with: tables, views, sequences... in any schema but the system's.
_RELATIONS = """
SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
"""


class BackupFailed(RuntimeError):
    """pg_dump or pg_restore is missing or refused; the message is one line for a person."""


@dataclass(frozen=True)
class Target:
    """What the server says about the configured database before a backup or a restore."""

    major: int  # the server's major version (16 for 16.2)
    exists: bool
    relations: int  # tables, views and sequences outside the system schemas (0: empty)


def backup(settings: Settings, path: Path) -> dict[str, object]:
    """Dump the whole database to ``path`` (custom format, owner-only) and say how big it is."""
    target = asyncio.run(inspect(settings.database_url))
    if not target.exists:
        raise BackupFailed(f"backup of {mask_url(settings.database_url)} failed: the database does not exist")
    pg_dump = pg_tool("pg_dump", target.major, embedded.serves(settings.database_url))
    dsn, env = _libpq(settings.database_url)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")  # 0600
    except OSError as exc:
        raise BackupFailed(f"backup of {mask_url(settings.database_url)} failed: cannot write {path}: {exc}") from None
    os.close(handle)
    try:
        _run([pg_dump, "--format=custom", "--no-owner", f"--file={partial}", dsn], env, "backup", settings)
        try:
            os.replace(partial, path)
        except OSError as exc:
            raise BackupFailed(
                f"backup of {mask_url(settings.database_url)} failed: cannot write {path}: {exc}"
            ) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)  # a failed or interrupted dump leaves nothing
    return {"backup": str(path), "bytes": path.stat().st_size}


def restore(settings: Settings, path: Path, *, create: bool = False) -> dict[str, object]:
    """Restore ``path`` into the configured database, which must be empty (``create``: made when it does
    not exist). One transaction, so a restore that fails leaves nothing half done; a database ``create``
    made for it is dropped again."""
    masked = mask_url(settings.database_url)
    if not path.is_file():
        raise BackupFailed(f"no backup file at {path}")
    target = asyncio.run(inspect(settings.database_url))
    if target.relations:
        raise BackupFailed(
            f"restore into {masked} refused: the database is not empty ({target.relations} tables, views or "
            "sequences); point SIGNALHUB_DATABASE_URL at a new one (restore --create makes it)"
        )
    if not target.exists and not create:
        raise BackupFailed(
            f"restore into {masked} refused: the database does not exist (restore --create makes it empty)"
        )
    pg_restore = pg_tool("pg_restore", target.major, embedded.serves(settings.database_url))
    if not target.exists:
        try:
            asyncio.run(db.ensure_database(settings.database_url))
        except (OSError, asyncpg.PostgresError) as exc:  # e.g. a role without CREATEDB
            raise BackupFailed(f"restore into {masked} failed: cannot create the database: {_reason(exc)}") from None
    dsn, env = _libpq(settings.database_url)
    command = [pg_restore, "--no-owner", "--single-transaction", "--exit-on-error", f"--dbname={dsn}", str(path)]
    try:
        _run(command, env, "restore", settings)
    except BackupFailed as failed:
        if not target.exists:
            try:
                asyncio.run(_drop_database(settings.database_url))
            except (OSError, asyncpg.PostgresError, Unreachable) as exc:
                raise BackupFailed(f"{failed}; the database it created is left ({_reason(exc)})") from None
        raise
    return {"restored": str(path), "database": masked, "created": not target.exists}


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


async def inspect(database_url: str) -> Target:
    """Ask the server its version and whether the URL's database exists and holds anything (through the
    server's maintenance database when it does not exist)."""
    try:
        conn = await _connect(database_url)
    except asyncpg.InvalidCatalogNameError:
        conn = await _connect(database_url, MAINTENANCE_DATABASE)
        try:
            return Target(major=_major(await conn.fetchval("SHOW server_version_num")), exists=False, relations=0)
        finally:
            await conn.close()
    try:
        relations = int(await conn.fetchval(_RELATIONS))
        return Target(major=_major(await conn.fetchval("SHOW server_version_num")), exists=True, relations=relations)
    finally:
        await conn.close()


async def _connect(database_url: str, database: str | None = None) -> asyncpg.Connection:
    """A connection to the URL's database (or the server's ``database``); a missing database raises
    InvalidCatalogNameError, any other failure Unreachable (one line naming the masked URL)."""
    url = make_url(database_url).set(drivername="postgresql")
    if database is not None:
        url = url.set(database=database)
    try:
        return await asyncpg.connect(url.render_as_string(hide_password=False), timeout=CONNECT_TIMEOUT_SECONDS)
    except asyncpg.InvalidCatalogNameError:
        raise
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:  # TimeoutError is an OSError
        raise Unreachable("Postgres", "DATABASE_URL", database_url, exc) from None


async def _drop_database(database_url: str) -> None:
    name = (make_url(database_url).database or "").replace('"', '""')
    conn = await _connect(database_url, MAINTENANCE_DATABASE)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def _major(server_version_num: str) -> int:
    return int(server_version_num) // 10000  # 160002 -> 16 (PostgreSQL 10 and newer)


def pg_tool(name: str, major: int, prefer_embedded: bool = False) -> str:
    """``pg_dump`` / ``pg_restore`` of the server's ``major`` version: the embedded Postgres's own first
    when the URL is the embedded server's (``prefer_embedded``), else PATH's, /usr/lib/postgresql/<major>/bin's,
    then the embedded one's. Without one of that major, the oldest newer one (both tools read older
    servers and dumps); an older one would refuse the server, so it is never taken."""
    bundled = embedded.postgres_bin_dir()
    candidates = [
        *([bundled / name] if bundled and prefer_embedded else []),
        *([Path(found)] if (found := shutil.which(name)) else []),
        *sorted(PACKAGED_BIN_DIRS.glob(f"*/bin/{name}")),
        *([bundled / name] if bundled and not prefer_embedded else []),
    ]
    versions = {path: version for path in dict.fromkeys(candidates) if (version := _tool_major(path)) is not None}
    same = [path for path, version in versions.items() if version == major]
    newer = sorted((version, str(path)) for path, version in versions.items() if version > major)
    if same:
        return str(same[0])
    if newer:
        return newer[0][1]
    found = ", ".join(f"{path} ({version})" for path, version in versions.items()) or "none"
    raise BackupFailed(
        f"no {name} for PostgreSQL {major} (found: {found}): install its client tools "
        f"(e.g. postgresql-client-{major}) or put their directory first on PATH"
    )


def _tool_major(path: Path) -> int | None:
    """The major version ``path --version`` reports ("pg_dump (PostgreSQL) 16.2" -> 16), None if it does not run."""
    try:
        done = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=10, check=False)  # noqa: S603
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"\(PostgreSQL\) (\d+)", done.stdout)
    return int(found.group(1)) if found and done.returncode == 0 else None


def _libpq(database_url: str) -> tuple[str, dict[str, str]]:
    """The libpq URL without its password, and an environment carrying the password (never argv)."""
    url = make_url(database_url).set(drivername="postgresql")
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    return url.set(password=None).render_as_string(hide_password=False), env


def _run(command: list[str], env: dict[str, str], what: str, settings: Settings) -> None:
    """Run pg_dump / pg_restore; a failure is BackupFailed with the tool's own reason, on one line."""
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        told = [line for line in lines if re.match(r"pg_\w+: (error|detail|hint): ", line)]
        reason = "; ".join(told or lines[-1:]) or f"exit status {done.returncode}"
        password = make_url(settings.database_url).password
        if password:  # the tools have no reason to echo it, but it is never printed
            reason = reason.replace(str(password), "***")
        raise BackupFailed(f"{what} of {mask_url(settings.database_url)} failed ({command[0]}): {reason}")
