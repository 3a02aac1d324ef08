"""Consistent backups of the database and their restore, through PostgreSQL's own pg_dump and pg_restore
(a dump is one repeatable-read snapshot, so it is consistent while the servers keep writing).

Secrets stay sealed under the master key inside a dump: a restore needs the same master key (or the key in
SIGNALHUB_PREVIOUS_MASTER_KEYS), and the dump file is written owner-only all the same.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from sqlalchemy.engine import make_url

from backoffice.platform.config import Settings, mask_url


class BackupFailed(RuntimeError):
    """pg_dump or pg_restore is missing or refused; the message is one line for a person."""


def pg_tool(name: str) -> str:
    """``pg_dump`` / ``pg_restore`` from PATH, else the ones the embedded Postgres (pgserver) ships."""
    found = shutil.which(name)
    if found:
        return found
    try:
        import pgserver  # only on machines that use the embedded Postgres
    except ImportError:
        raise BackupFailed(f"{name} not found: install the PostgreSQL client tools (e.g. postgresql-client)") from None
    bundled = Path(pgserver.__file__).parent / "pginstall" / "bin" / name
    if not bundled.exists():
        raise BackupFailed(f"{name} not found on PATH nor beside the embedded Postgres")
    return str(bundled)


def _libpq(settings: Settings) -> tuple[str, dict[str, str]]:
    """The libpq URL without its password, and an environment carrying the password (never argv)."""
    url = make_url(settings.database_url).set(drivername="postgresql")
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    return url.set(password=None).render_as_string(hide_password=False), env


def _run(command: list[str], env: dict[str, str], what: str, settings: Settings) -> None:
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no reason given"])[-1]
        raise BackupFailed(f"{what} of {mask_url(settings.database_url)} failed: {reason}")


def backup(settings: Settings, path: Path) -> dict[str, object]:
    """Dump the whole database to ``path`` (custom format, owner-only) and say how big it is."""
    dsn, env = _libpq(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    _run([pg_tool("pg_dump"), "--format=custom", "--no-owner", f"--file={path}", dsn], env, "backup", settings)
    return {"backup": str(path), "bytes": path.stat().st_size}


def restore(settings: Settings, path: Path) -> dict[str, object]:
    """Restore ``path`` into the configured database, which should be new and empty: one transaction,
    so a restore that fails leaves nothing half done."""
    if not path.is_file():
        raise BackupFailed(f"no backup file at {path}")
    dsn, env = _libpq(settings)
    command = [pg_tool("pg_restore"), "--no-owner", "--single-transaction", "--exit-on-error", f"--dbname={dsn}"]
    _run([*command, str(path)], env, "restore", settings)
    return {"restored": str(path), "database": mask_url(settings.database_url)}
