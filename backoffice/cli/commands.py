"""The `signalhub` command line."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

from backoffice.cli.calls import bad_fields
from backoffice.cli.embedded import EmbeddedUnavailable
from backoffice.cli.local import Unreachable, check_postgres, load_settings
from backoffice.platform.config import ENV_PREFIX, ConfigError, Settings
from signalhub.protocol import logs
from signalhub.protocol.errors import DomainError, InvalidArgument
from signalhub.protocol.state import STATE_DIR

# Server-side modules (SQLAlchemy, the servicers) are imported inside the commands that need them, so
# client commands (`producer`, `bridge`) start quickly.


def _parser() -> argparse.ArgumentParser:
    """Every command and option, each with its help text; the client commands (``producer``, ``bridge``)
    get their arguments from their SDKs, so each SDK owns its command line."""
    parser = argparse.ArgumentParser(prog="signalhub", description="Trading signals from strategies to terminals.")
    commands = parser.add_subparsers(dest="command", required=True, help="what to do")
    up = commands.add_parser("up", help="everything on one machine (embedded Postgres/Redis when no URLs are set)")
    up.add_argument(
        "--state-dir",
        type=Path,
        default=STATE_DIR,
        help="where the dev master key, embedded data and demo.json live (default %(default)s)",
    )
    commands.add_parser("migrate", help="upgrade the database schema to the latest revision")
    status = commands.add_parser("status", help="a one-screen summary read from the processes' metrics")
    status.add_argument(
        "--metrics",
        action="append",
        metavar="HOST:PORT",
        help="a metrics endpoint to read (repeat for each process; default SIGNALHUB_METRICS_ADDRESS)",
    )
    serve = commands.add_parser("serve", help="run one process")
    serve.add_argument("process", choices=["backoffice", "gateway", "worker", "console"], help="which process to run")
    serve.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="gateway only: N processes sharing its address, each holding its own streams (default"
        " SIGNALHUB_GATEWAY_PROCESSES; 0: one per core)",
    )
    admin = commands.add_parser("admin", help="administration").add_subparsers(
        dest="admin_command", required=True, help="what to administer"
    )
    create_user = admin.add_parser("create-user", help='prints {"user_id", "api_token"}')
    create_user.add_argument("--email", required=True, help="the user's email address (unique)")
    create_user.add_argument("--role", choices=["admin", "user"], default="user", help="default %(default)s")
    create_user.add_argument(
        "--referral-code",
        default="",
        metavar="CODE",
        help="the affiliate who referred the user (their code; --referral-code=CODE for one that starts with -)",
    )
    create_producer = admin.add_parser("create-producer", help='prints {"producer_id", "secret"}')
    create_producer.add_argument("--name", required=True, help="a name for the strategy engine")
    create_producer.add_argument(
        "--price-feed", action="store_true", help="its quotes act on every position of the instrument, not only its own"
    )
    price_feed = admin.add_parser(
        "set-price-feed", help="mark a producer a price feed (its quotes act on every position of the instrument)"
    )
    price_feed.add_argument("producer_id", type=uuid.UUID, help="the producer's id")
    price_feed.add_argument("--off", action="store_true", help="unmark it: its quotes act on its own signals only")
    admin.add_parser("rotate-master-key", help="re-seal every secret under the current master key")
    backup = admin.add_parser("backup", help="a consistent dump of the database (pg_dump); prints its size")
    backup.add_argument(
        "--to", type=Path, required=True, help="the file to write (owner-only; only once the dump succeeded)"
    )
    restore = admin.add_parser("restore", help="restore a dump into the configured (new, empty) database")
    restore.add_argument("--from", dest="source", type=Path, required=True, help="a file written by backup")
    restore.add_argument(
        "--create", action="store_true", help="create the database SIGNALHUB_DATABASE_URL names when it does not exist"
    )
    admin.add_parser("generate-master-key", help="print a new random master key (base64)")
    from backoffice.cli import affiliate as affiliate_cli
    from backoffice.cli import approvals as approvals_cli
    from backoffice.cli import audit as audit_cli
    from backoffice.cli import devices as devices_cli
    from backoffice.cli import positions as positions_cli
    from backoffice.cli import risk as risk_cli
    from backoffice.cli import signals as signals_cli
    from backoffice.cli import subscriptions as subscriptions_cli
    from backoffice.producer import cli as producer_cli  # each client command defines its own arguments
    from gateway.bridge import cli as bridge_cli

    producer_cli.add_arguments(commands.add_parser("producer", help="act as a producer (signed calls)"))
    bridge_cli.add_arguments(commands.add_parser("bridge", help="run an EA bridge (paper or MetaTrader 5)"))
    affiliate_cli.add_arguments(commands.add_parser("affiliate", help="referrals, commissions and payouts"))
    positions_cli.add_arguments(
        commands.add_parser("positions", help="your positions: list, close, move the hidden levels (API token)")
    )
    risk_cli.add_arguments(
        commands.add_parser("risk", help="a device's risk policy and stopouts: get, set, list, reset (API token)")
    )
    subscriptions_cli.add_arguments(
        commands.add_parser("subscriptions", help="the producers you follow: list, add, remove (API token)")
    )
    devices_cli.add_arguments(
        commands.add_parser("devices", help="your EA bridges: list, register, rotate the secret, revoke (API token)")
    )
    approvals_cli.add_arguments(
        commands.add_parser("approvals", help="signals awaiting your decision: pending, approve, reject (API token)")
    )
    signals_cli.add_arguments(
        commands.add_parser("signals", help="the signals you see, and each one's execution per device (API token)")
    )
    audit_cli.add_commands(admin)  # `admin alerts|audit`: client calls with an admin's token
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Run one ``signalhub`` command. A problem a person can fix (a bad setting, a server that does not
    answer, a refused call) ends with one line naming it, never a traceback."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "up":
            logs.configure("WARNING")
            asyncio.run(_up(args.state_dir))
            return
        if "run" in args:  # a client command (producer, bridge, the user commands, admin alerts|audit): runs itself
            logs.configure("WARNING")
            args.run(args)
            return
        if args.command == "status":
            from backoffice.cli import status as status_command

            default = os.environ.get(f"{ENV_PREFIX}METRICS_ADDRESS") or Settings().metrics_address
            report = status_command.run(status_command.addresses_or_default(args.metrics, default))
            if report.summary:
                print("\n".join(report.summary), flush=True)
            if report.unanswered:  # a process that does not answer is a problem: say so, exit 1
                sys.exit("\n".join(f"signalhub: {line}" for line in report.unanswered))
            return
        if args.command == "admin" and args.admin_command == "generate-master-key":
            print(base64.b64encode(secrets.token_bytes(32)).decode("ascii"))
            return
        if args.command == "serve" and args.process == "console":
            from backoffice.console import server as console_server  # no database: none of the server settings

            console_server.main()
            return
        settings = load_settings()
        logs.configure(settings.log_level)
        if args.command == "migrate":
            asyncio.run(check_postgres(settings.database_url))  # before Alembic's import logs anything
            from backoffice.platform import schema

            schema.upgrade(settings)
        elif args.command == "serve" and (processes := _processes(settings, args)) > 1:
            from gateway.processes import Supervisor

            sys.exit(Supervisor(settings, processes).run())
        elif args.command == "serve":
            from backoffice.platform import serving

            with asyncio.Runner(loop_factory=serving.event_loop_factory(settings)) as runner:
                runner.run(_serve(settings, args.process))
        elif args.command == "admin" and args.admin_command in ("backup", "restore"):
            print(json.dumps(_backup_or_restore(settings, args)))
        elif args.command == "admin":
            print(json.dumps(asyncio.run(_admin(settings, args))))
    except ConfigError as exc:
        sys.exit(f"signalhub: {exc}")
    except (EmbeddedUnavailable, Unreachable) as exc:
        sys.exit(f"signalhub: {exc}")
    except DomainError as exc:
        bad = exc.violations if isinstance(exc, InvalidArgument) else []
        sys.exit(f"signalhub: {exc.message}{bad_fields(dict(bad))}")
    except KeyboardInterrupt:
        pass


def _processes(settings: Settings, args: argparse.Namespace) -> int:
    """How many processes ``serve`` runs: the gateway's ``--processes`` or setting, one for the others."""
    if args.process != "gateway":
        if args.processes is not None:
            raise ConfigError(["--processes: only the gateway runs as several processes"])
        return 1
    if args.processes is not None and args.processes < 0:
        raise ConfigError(["--processes: 0 (one per core) or more"])
    from gateway.processes import process_count

    return process_count(settings, args.processes)


async def _up(state_dir: Path) -> None:
    from backoffice.cli import up  # imports the gateway too; only `up` needs both

    await up.run(state_dir)


async def _serve(settings: Settings, process: str) -> None:
    from backoffice import bootstrap, worker
    from backoffice.platform import serving

    stop = asyncio.Event()
    serving.install_stop_signals(stop)
    async with bootstrap.resources(settings) as res:
        server: serving.Server | None = None
        if process == "gateway":
            from gateway.bootstrap import build_server as build_gateway

            server = build_gateway(res)
        elif process == "backoffice":
            server = bootstrap.build_server(res)
        if server is not None:
            await server.start()
        serving.settle_heap()
        serving.start_metrics(settings)  # every process: the worker's are the monitor's and the alerts'
        lag = serving.watch_loop_lag()
        try:
            if server is None:
                await worker.run(res, stop, settings.worker_interval_seconds)
            else:
                await stop.wait()
                await server.stop()
        finally:
            await serving.cancel_and_wait([lag])


def _backup_or_restore(settings: Settings, args: argparse.Namespace) -> dict[str, object]:
    from backoffice.cli import backup  # SQLAlchemy: not for the client commands

    try:  # each asks the server first: an unreachable one is one line (Unreachable)
        if args.admin_command == "backup":
            return backup.backup(settings, args.to)
        return backup.restore(settings, args.source, create=args.create)
    except backup.BackupFailed as exc:
        sys.exit(f"signalhub: {exc}")


async def _admin(settings: Settings, args: argparse.Namespace) -> dict[str, object]:
    from backoffice import accounts, bootstrap, quotes
    from backoffice.models import Role
    from backoffice.platform import vault

    await check_postgres(settings.database_url)
    async with bootstrap.resources(settings) as res:
        if args.admin_command == "rotate-master-key":
            # Transactions of its own, a batch of locked rows each, while the servers keep writing.
            changed = await vault.reseal_all(res.sessions, res.vault)
            return {"resealed": changed, "master_key_id": res.vault.current_key_id}
        async with res.sessions.begin() as session:
            if args.admin_command == "create-user":
                role = Role.ADMIN if args.role == "admin" else Role.USER
                user, token = await accounts.create_user(
                    session, email=args.email, role=role, referral_code=args.referral_code
                )
                return {"user_id": str(user.id), "api_token": token}
            if args.admin_command == "create-producer":
                producer, secret = await accounts.create_producer(session, res.vault, name=args.name)
                if args.price_feed:
                    await quotes.set_price_feed(session, producer.id, True)
                return {"producer_id": str(producer.id), "secret": secret}
            if args.admin_command == "set-price-feed":
                if not await quotes.set_price_feed(session, args.producer_id, not args.off):
                    raise SystemExit(f"signalhub: no producer {args.producer_id}")
                return {"producer_id": str(args.producer_id), "price_feed": not args.off}
    raise AssertionError(args.admin_command)
