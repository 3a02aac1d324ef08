"""`signalhub bridge`: run one EA bridge from a credentials file until Ctrl-C.

The device secret comes from the credentials JSON (``device_secret``, as `signalhub up` writes it) or from
the environment variable ``SIGNALHUB_DEVICE_SECRET`` with ``--device-id``; never from the command line,
where other users of the machine could read it. Logs are JSON lines on stderr and never carry the secret.

The channel to a gateway is TLS (``--tls``, or ``--ca-file`` for a private CA); plaintext only to a loopback
address, or with ``--insecure``, which warns: on the open internet anyone on the path could read the
stream and inject frames into it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NoReturn

from gateway.bridge.client import BridgeClient
from gateway.bridge.config import BridgeConfig, PlaintextRefused
from gateway.bridge.errors import BridgeError
from gateway.bridge.executors import Executor, ExecutorError, Mt5Config, Mt5Executor, PaperConfig, PaperExecutor
from signalhub.protocol import logs, state
from signalhub.protocol.state import DEFAULT_CREDENTIALS, STATE_DIR, CredentialsError

log = logging.getLogger("signalhub.bridge")

SECRET_ENV = "SIGNALHUB_DEVICE_SECRET"  # noqa: S105 - the name of a variable, not a secret
MT5_PASSWORD_ENV = "SIGNALHUB_MT5_PASSWORD"  # noqa: S105 - the name of a variable, not a secret
DEFAULT_GATEWAY = "127.0.0.1:50052"


@dataclass(frozen=True)
class Credentials:
    device_id: str
    secret: bytes = field(repr=False)
    gateways: tuple[str, ...]


class ChannelOptionsError(ValueError):
    """``--tls``, ``--ca-file`` and ``--insecure`` given in a way that cannot be used."""


class _NoSecretsHere(argparse.Action):
    """Refuses a secret on the command line without echoing it back."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any, **__: Any) -> NoReturn:
        parser.exit(2, f"{parser.prog}: a secret is never given on the command line: set {SECRET_ENV}\n")


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text!r}")
    return seconds


def _decimal(text: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a decimal: {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `signalhub bridge`. No option takes a secret (other users of the machine could read
    it): ``--secret`` and ``--device-secret`` are refused without echoing what followed them."""
    parser.add_argument("--executor", choices=["paper", "mt5"], default="paper", help="where orders go")
    parser.add_argument(
        "--credentials",
        type=Path,
        help=f"JSON with device_id, device_secret and gateway (default {DEFAULT_CREDENTIALS} when present)",
    )
    parser.add_argument("--device-id", help=f"the device's id; its secret is read from ${SECRET_ENV}")
    parser.add_argument(
        "--gateway",
        action="append",
        metavar="HOST:PORT",
        help="a gateway address; repeat for failover (default: the credentials file's, else " + DEFAULT_GATEWAY + ")",
    )
    parser.add_argument("--ledger", type=Path, help="the SQLite ledger (default .signalhub/bridge-<device id>.db)")
    parser.add_argument("--tls", action="store_true", help="connect with TLS (needed beyond loopback)")
    parser.add_argument("--ca-file", type=Path, help="PEM roots for --tls, which it implies (default: the system's)")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow plaintext to a gateway beyond loopback: anyone on the path can read and alter the traffic",
    )
    parser.add_argument(
        "--account-state-interval",
        type=_seconds,
        default=2.0,
        metavar="SECONDS",
        help="while positions are open, send the account's state when equity moved, at most this often "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default %(default)s"
    )
    for name in ("--secret", "--device-secret"):
        parser.add_argument(name, nargs="?", action=_NoSecretsHere, help=argparse.SUPPRESS)
    paper = parser.add_argument_group("paper executor")
    paper.add_argument(
        "--paper-seed", type=int, default=0, help="makes latency, slippage and rejects repeatable (default 0)"
    )
    paper.add_argument("--paper-latency-ms", type=float, default=50.0, help="time to fill (default 50)")
    paper.add_argument("--paper-slippage-ticks", type=int, default=1, help="worst slippage in ticks (default 1)")
    paper.add_argument("--paper-reject-rate", type=float, default=0.0, help="share of orders rejected, 0 to 1")
    paper.add_argument(
        "--paper-balance",
        type=_decimal,
        default=Decimal(10000),
        help="the paper account's starting balance (default 10000)",
    )
    mt5 = parser.add_argument_group("MetaTrader 5 executor (Windows)")
    mt5.add_argument("--mt5-path", help="terminal64.exe (default: the running terminal)")
    mt5.add_argument("--mt5-login", type=int, help=f"account number; its password is read from ${MT5_PASSWORD_ENV}")
    mt5.add_argument("--mt5-server", help="the broker's trade server")
    parser.set_defaults(run=run)


def _private_enough(path: Path) -> None:
    if os.name != "posix":
        return
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("credentials file is readable by other users: chmod 600 it", extra={"path": str(path)})


def load_credentials(
    credentials: Path | None,
    device_id: str | None,
    gateways: list[str] | None,
    environ: Mapping[str, str],
) -> Credentials:
    """From ``--device-id`` and $SIGNALHUB_DEVICE_SECRET, else from the credentials JSON; the gateways
    from ``--gateway``, else the file's, else the local default."""
    found = state.load_credentials(
        "device", device_id, credentials, environ, secret_env=SECRET_ENV, address_key="gateway"
    )
    if found.path is not None:
        _private_enough(found.path)
    addresses = tuple(gateways) if gateways else ((found.address,) if found.address else (DEFAULT_GATEWAY,))
    for address in addresses:
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise CredentialsError(f"a gateway address is HOST:PORT, got {address!r}")
    return Credentials(found.key_id, found.secret.reveal(), addresses)


def build_executor(args: argparse.Namespace, environ: Mapping[str, str]) -> Executor:
    if args.executor == "mt5":
        return Mt5Executor(
            Mt5Config(
                path=args.mt5_path,
                login=args.mt5_login,
                password=environ.get(MT5_PASSWORD_ENV),
                server=args.mt5_server,
            )
        )
    try:
        config = PaperConfig(
            seed=args.paper_seed,
            latency=args.paper_latency_ms / 1000,
            slippage_ticks=args.paper_slippage_ticks,
            reject_rate=args.paper_reject_rate,
            balance=args.paper_balance,
        )
    except ValueError as exc:
        raise ExecutorError(str(exc)) from None
    return PaperExecutor(config)


def build_config(args: argparse.Namespace, credentials: Credentials) -> BridgeConfig:
    """The bridge's configuration from its options, before any connection: raises ChannelOptionsError for
    options that contradict each other or a CA file it cannot read, and PlaintextRefused for plaintext beyond
    loopback without ``--insecure``."""
    if args.insecure and (args.tls or args.ca_file):
        raise ChannelOptionsError("--insecure cannot be combined with --tls or --ca-file")
    try:
        root_certificates = args.ca_file.read_bytes() if args.ca_file else None
    except OSError as exc:
        raise ChannelOptionsError(f"cannot read --ca-file {args.ca_file}: {exc.strerror or exc}") from None
    config = BridgeConfig(
        device_id=credentials.device_id,
        gateways=credentials.gateways,
        ledger_path=args.ledger or STATE_DIR / f"bridge-{credentials.device_id}.db",
        tls=args.tls or root_certificates is not None,
        root_certificates=root_certificates,
        insecure=args.insecure,
        account_state_interval=args.account_state_interval,
    )
    if config.insecure:
        log.warning(
            "--insecure: the gateway channel is plaintext, anyone on the path can read and alter its traffic",
            extra={"gateways": list(config.gateways)},
        )
    return config


def _install_stop(client: BridgeClient) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, client.stop)
        except (NotImplementedError, RuntimeError):  # Windows: no loop signal handlers
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(client.stop))


async def serve(client: BridgeClient) -> None:
    _install_stop(client)
    # On every line of the running bridge (the tasks it starts inherit it), and only there: asyncio.run
    # gave this coroutine a context of its own. Whose bridge it is, when several of one trader log to one
    # place.
    logs.device_id_var.set(client.config.device_id)
    log.info(
        "bridge starting",
        extra={
            "gateways": list(client.config.gateways),
            "tls": client.config.tls,
            "executor": type(client.executor).__name__,
            "ledger": str(client.config.ledger_path),
        },
    )
    try:
        await client.run()
    finally:
        log.info("bridge stopped", extra={"stats": vars(client.stats)})


def run(args: argparse.Namespace) -> None:
    logs.configure(args.log_level)
    environ = os.environ
    try:
        credentials = load_credentials(args.credentials, args.device_id, args.gateway, environ)
        config = build_config(args, credentials)
        executor = build_executor(args, environ)
    except (CredentialsError, ChannelOptionsError, ExecutorError) as exc:
        sys.exit(f"signalhub bridge: {exc}")
    except PlaintextRefused as exc:
        sys.exit(
            f"signalhub bridge: refusing plaintext to {', '.join(exc.addresses)} (not a loopback address): "
            "connect with --tls (--ca-file PEM for a private CA), or accept that anyone on the path can read "
            "and alter the traffic with --insecure"
        )
    client = BridgeClient(config, credentials.secret, executor)
    try:
        asyncio.run(serve(client))
    except (BridgeError, ExecutorError) as exc:
        sys.exit(f"signalhub bridge: {exc}")
    except KeyboardInterrupt:
        pass
