"""A trader's VPS and a producer's strategy engine install signalhub without the servers' dependencies
(`pip install signalhub`, no `[server]` extra): the client SDKs, their command lines and the protocol
layer must import and run with SQLAlchemy, asyncpg, redis, alembic and prometheus-client absent."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SDKS = {"gateway.bridge": ROOT / "gateway" / "bridge", "backoffice.producer": ROOT / "backoffice" / "producer"}
# Besides the standard library and themselves: the protocol layer and what it stands on; MetaTrader5 is the
# terminal's own package, imported by the mt5 executor only when one is made.
SDK_MAY_IMPORT = ("signalhub.protocol", "signalhub.v1", "grpc", "google.protobuf", "MetaTrader5")
SERVER_ONLY = ("sqlalchemy", "asyncpg", "redis", "alembic", "prometheus_client", "grpc_health", "grpc_reflection")

# Installed first in the child interpreter: any import of a server-only package fails as if not installed.
BLOCKER = textwrap.dedent(
    f"""
    import importlib.abc, sys

    class ServerOnly(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in {SERVER_ONLY!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}} (a server dependency)", name=name)
            return None

    sys.meta_path.insert(0, ServerOnly())
    """
)


def run_without_server_dependencies(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "proto")])}
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(code), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_blocker_really_blocks() -> None:
    done = run_without_server_dependencies("import sqlalchemy")
    assert done.returncode != 0 and "a server dependency" in done.stderr


@pytest.mark.parametrize(
    "statement",
    [
        "from gateway.bridge import BridgeClient, PaperExecutor",
        "from gateway.bridge.executors import Mt5Executor",
        "from backoffice.producer import ProducerClient",
        "import signalhub.protocol.signing, signalhub.protocol.sealing, signalhub.protocol.wire",
    ],
)
def test_the_sdks_import_without_server_dependencies(statement: str) -> None:
    done = run_without_server_dependencies(statement)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("command", ["bridge", "producer"])
def test_the_sdk_commands_run_without_server_dependencies(command: str) -> None:
    done = run_without_server_dependencies(
        "import sys; from backoffice.cli import main; sys.exit(main(sys.argv[1:]))", command, "--help"
    )
    assert done.returncode == 0, done.stderr
    assert f"signalhub {command}" in done.stdout


def _imported(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


@pytest.mark.parametrize("package", sorted(SDKS))
def test_the_sdks_import_only_the_protocol_layer_and_themselves(package: str) -> None:
    """Blocking the server dependencies catches a server import only if it pulls one in; this catches
    any import of another backoffice or gateway module, anywhere in an SDK's files."""
    allowed = (package, *SDK_MAY_IMPORT)
    strays = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in sorted(SDKS[package].rglob("*.py"))
        for name in _imported(path)
        if name.split(".")[0] not in sys.stdlib_module_names
        and not any(name == root or name.startswith(root + ".") for root in allowed)
    ]
    assert strays == []
