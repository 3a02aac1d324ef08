"""The local state that `signalhub up` keeps under ./.signalhub/ so every `signalhub` command run from the
same directory finds it: the development master key and the URLs of the embedded servers. Also the check
that the servers those settings name answer, so a command fails with one line instead of a traceback."""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from backoffice.platform.config import ENV_PREFIX, Settings, mask_url
from signalhub.protocol.state import STATE_DIR, write_private

MASTER_KEY_FILE = "master.key"
RUNTIME_FILE = "runtime.json"  # URLs of the embedded servers while `signalhub up` runs
DEV_KEY_ID = "dev"
CONNECT_TIMEOUT_SECONDS = 5.0


class Unreachable(RuntimeError):
    """A server named by the settings did not answer; the message is one line naming its masked URL."""

    def __init__(self, server: str, variable: str, url: str, error: BaseException) -> None:
        reason = " ".join(str(error).split()) or type(error).__name__
        for password in _passwords(url):  # drivers rarely echo it, but never print it
            reason = reason.replace(password, "***")
        super().__init__(f"cannot connect to {server} at {mask_url(url)} ({ENV_PREFIX}{variable}): {reason}")


def ensure_dev_master_key(state_dir: Path = STATE_DIR) -> str:
    path = state_dir / MASTER_KEY_FILE
    if not path.exists():
        write_private(path, base64.b64encode(secrets.token_bytes(32)).decode("ascii") + "\n")
    return path.read_text().strip()


def environment(state_dir: Path = STATE_DIR, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The process environment, completed from ./.signalhub/ where a variable is unset."""
    env = dict(os.environ if environ is None else environ)
    runtime = state_dir / RUNTIME_FILE
    if runtime.exists():
        urls = json.loads(runtime.read_text())
        env.setdefault(ENV_PREFIX + "DATABASE_URL", urls["database_url"])
        env.setdefault(ENV_PREFIX + "REDIS_URL", urls["redis_url"])
    key_file = state_dir / MASTER_KEY_FILE
    if ENV_PREFIX + "MASTER_KEY" not in env and key_file.exists():
        env[ENV_PREFIX + "MASTER_KEY"] = key_file.read_text().strip()
        env[ENV_PREFIX + "MASTER_KEY_ID"] = DEV_KEY_ID
    return env


def load_settings(state_dir: Path = STATE_DIR) -> Settings:
    return Settings.from_env(environment(state_dir))


async def check_postgres(database_url: str, *, database: str | None = None) -> None:
    """Connect once to ``database_url`` (or to its server's ``database``); raise Unreachable if that fails."""
    import asyncpg  # imported here: client commands load this module and need neither driver
    from sqlalchemy.engine import make_url

    url = make_url(database_url).set(drivername="postgresql")
    if database is not None:
        url = url.set(database=database)
    try:
        conn = await asyncpg.connect(url.render_as_string(hide_password=False), timeout=CONNECT_TIMEOUT_SECONDS)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:  # TimeoutError is an OSError
        raise Unreachable("Postgres", "DATABASE_URL", database_url, exc) from None
    await conn.close()


async def check_redis(redis_url: str) -> None:
    """PING ``redis_url`` once; raise Unreachable if that fails."""
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    client = Redis.from_url(
        redis_url, socket_timeout=CONNECT_TIMEOUT_SECONDS, socket_connect_timeout=CONNECT_TIMEOUT_SECONDS
    )
    try:
        await client.ping()
    except (OSError, RedisError) as exc:
        raise Unreachable("Redis", "REDIS_URL", redis_url, exc) from None
    finally:
        await client.aclose()


def _passwords(url: str) -> set[str]:
    """The URL's password as written and percent-decoded (empty when it has none)."""
    from urllib.parse import unquote, urlsplit

    try:
        password = urlsplit(url).password
    except ValueError:
        return set()
    return {password, unquote(password)} if password else set()
