"""The command line of ``scripts/bench`` and the run's settings derived from it (``--quick`` shortens
every phase so that a whole run takes about three minutes)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DESCRIPTION = '`scripts/bench`: signalhub\'s benchmark (targets from docs/design.md, "Limits we hold ourselves to").'


@dataclass(frozen=True)
class Options:
    """What the command line asked for, and the scenario sizes that follow from --quick."""

    quick: bool
    check: bool  # exit 1 when a figure misses its goal
    profile: bool  # py-spy samples the servers during each scenario (bench/profiles/)
    only: tuple[str, ...]  # scenario names to run; empty runs them all
    devices: int
    users: int
    processes: int
    backoffice: str | None  # a running stack's addresses (both or neither)
    gateway: str | None
    gateway_pid: int | None
    output: Path
    latency_samples: int
    approval_rate: float
    ack_rate: float
    ack_seconds: float
    burst_signals: int
    wait_seconds: float
    submit_rate: float
    auto_submit_rate: float  # SubmitSignal/s from the producer with AUTO subscribers (each fans out to every device)
    auto_submits: int
    submit_seconds: float
    low_seconds: float
    idle_seconds: float
    commits: int
    publishes: int
    nats: str  # the NATS server (with JetStream) of the JetStream yardstick
    polling_samples: int  # work items in the polling yardstick
    account_seconds: float  # every device reporting its account every 2 s (risk limits)
    stopout_samples: int  # fresh devices whose CLOSE_ALL limit is crossed, one after another (risk limits)


def build_parser() -> argparse.ArgumentParser:
    """The options of ``scripts/bench``; ``parse_args`` derives the run's settings from them."""
    parser = argparse.ArgumentParser(prog="scripts/bench", description=DESCRIPTION)
    parser.add_argument("--quick", action="store_true", help="a short run (about 3 minutes)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when any figure misses its goal (one without a value, n/a, misses it too)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="record py-spy profiles of the servers per scenario into bench/profiles/"
    )
    parser.add_argument("--devices", type=int, default=1000, help="simulated bridges (default 1000)")
    parser.add_argument("--users", type=int, default=50, help="accounts the devices are spread over (default 50)")
    parser.add_argument("--processes", type=int, default=4, help="load processes (default 4)")
    parser.add_argument("--backoffice", metavar="HOST:PORT", help="use a running back office (with --gateway)")
    parser.add_argument("--gateway", metavar="HOST:PORT", help="use a running gateway (with --backoffice)")
    parser.add_argument("--gateway-pid", type=int, help="the running gateway's pid, for memory per stream")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results.json")
    parser.add_argument(
        "--nats",
        metavar="URL",
        default="nats://127.0.0.1:4222",
        help="NATS with JetStream, the broker yardstick (default nats://127.0.0.1:4222; unreachable: skipped)",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="SCENARIO",
        help=(
            "run only this scenario (repeat for more), e.g. 'quote to CloseOrder', 'risk limits', or"
            " '10,000 devices' (the full run's last phase); the bare limits always run, a yardstick (JetStream,"
            " polling) when a chosen scenario reads it"
        ),
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> Options:
    """The command line, checked (a running stack needs both addresses), with the scenario sizes of a
    full run or of a ``--quick`` one."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.backoffice) != bool(args.gateway):
        parser.error("--backoffice and --gateway go together")
    from .fleet import NAME as FLEET_PHASE  # the names a person may give --only
    from .scenarios import SCENARIOS

    unknown = sorted(set(args.only) - {name for name, _ in SCENARIOS} - {FLEET_PHASE})
    if unknown:
        parser.error(f"no such scenario: {', '.join(unknown)}")
    quick: bool = args.quick
    return Options(
        quick=quick,
        check=args.check,
        profile=args.profile,
        only=tuple(args.only),
        devices=args.devices,
        users=args.users,
        processes=args.processes,
        backoffice=args.backoffice,
        gateway=args.gateway,
        gateway_pid=args.gateway_pid,
        output=args.output,
        latency_samples=100 if quick else 1000,
        approval_rate=20.0,
        ack_rate=2000.0,
        ack_seconds=4.0 if quick else 20.0,
        burst_signals=2 if quick else 10,
        wait_seconds=8.0 if quick else 30.0,
        submit_rate=500.0,
        auto_submit_rate=2.0,
        auto_submits=10 if quick else 40,
        submit_seconds=1.0 if quick else 10.0,
        low_seconds=3.0 if quick else 10.0,
        idle_seconds=3.0 if quick else 10.0,
        commits=200 if quick else 1000,
        publishes=500 if quick else 2000,
        nats=args.nats,
        polling_samples=80 if quick else 1000,
        account_seconds=6.0 if quick else 20.0,
        stopout_samples=8 if quick else 20,
    )
