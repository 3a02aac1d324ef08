"""The command line of ``scripts/soak``: how long, how many bridges, how much churn and traffic, how
often to sample, and the bounds the run is judged by."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from scripts.endurance.judge import Bounds

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Options:
    minutes: float
    bridges: int
    processes: int
    sample_seconds: float
    warmup_seconds: float
    churn_fraction: float
    churn_seconds: float
    signal_seconds: float
    manual_accounts: int
    cancel_after_seconds: float
    quote_seconds: float
    bounds: Bounds
    output: Path

    @property
    def users(self) -> int:
        return max(1, self.bridges // 20)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/soak",
        description="Hold bridges through churn and steady traffic; sample the gateway; fail on growth.",
    )
    add = parser.add_argument
    add("--minutes", type=float, default=10.0, help="traffic time, warm-up included (default 10; 0.5 is allowed)")
    add("--bridges", type=int, default=1000, help="simulated bridges (default 1000)")
    add("--processes", type=int, default=4, help="load processes the bridges are spread over (default 4)")
    add("--sample-every", type=float, default=10.0, help="seconds between samples (default 10)")
    add("--warmup", type=float, help="seconds not judged at first (default: a fifth of the run, 2 samples at least)")
    add("--churn", type=float, default=0.05, help="share of the bridges reconnected every churn interval (0.05)")
    add("--churn-every", type=float, default=5.0, help="seconds between churn rounds (default 5)")
    add("--signal-every", type=float, help="seconds between signals of each producer (default: bridges / 40)")
    add("--manual-accounts", type=int, default=3, help="accounts approving each MANUAL signal (default 3)")
    add("--cancel-after", type=float, help="a signal is cancelled, closing its positions, this long after (2 signals)")
    add("--quote-every", type=float, default=15.0, help="seconds between one bridge's quotes (default 15)")
    add("--max-rss-growth-mb", type=float, default=64.0, help="bound on gateway RSS growth in MiB (default 64)")
    add("--max-fd-growth", type=float, help="bound on the growth of the gateway's open fds (default: 5%% of bridges)")
    add("--max-lag-p99", type=float, default=0.5, help="bound on event-loop lag p99 in seconds (default 0.5)")
    add("--output", type=Path, default=REPO / "bench" / "soak.json", help="the JSON written (bench/soak.json)")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.bridges <= 0 or args.sample_every <= 0:
        parser.error("--minutes, --bridges and --sample-every must be positive")
    if not 0 <= args.churn <= 1:
        parser.error("--churn is a share of the bridges, from 0 to 1")
    # An AUTO signal reaches every bridge: about 5 frames each with its close. A fortieth of a second per
    # bridge keeps 1,000 of them near 200 frames/s, well below what one gateway takes: a soak looks for
    # growth, not for the limit (that is scripts/bench).
    signal_every = args.signal_every if args.signal_every is not None else max(3.0, args.bridges / 40)
    total = args.minutes * 60
    warmup = args.warmup if args.warmup is not None else max(total / 5, 2 * args.sample_every)
    if warmup >= total:
        parser.error(f"the warm-up ({warmup:g} s) leaves nothing to judge in {total:g} s")
    return Options(
        minutes=args.minutes,
        bridges=args.bridges,
        processes=max(1, min(args.processes, args.bridges)),
        sample_seconds=args.sample_every,
        warmup_seconds=warmup,
        churn_fraction=args.churn,
        churn_seconds=args.churn_every,
        signal_seconds=signal_every,
        manual_accounts=args.manual_accounts,
        cancel_after_seconds=args.cancel_after if args.cancel_after is not None else 2 * signal_every,
        quote_seconds=args.quote_every,
        bounds=Bounds(
            rss_growth_mib=args.max_rss_growth_mb,
            fd_growth=args.max_fd_growth if args.max_fd_growth is not None else max(10.0, 0.05 * args.bridges),
            lag_p99_s=args.max_lag_p99,
        ),
        output=args.output,
    )
