"""Whether the gateway grew: the samples after warm-up are cut into thirds, and the median of the last
third is compared with the median of the first (a median shrugs off one busy moment; comparing thirds
rather than ends needs a trend that lasts). The event-loop lag is judged by its 99th percentile after
warm-up. Pure functions over the samples, so the rules are tested without a run."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from scripts.benchmark.report import percentile


@dataclass(frozen=True)
class Sample:
    """The figures read at one moment (seconds since traffic started)."""

    at_s: float
    gateway_rss_mib: float | None
    gateway_fds: int | None
    gateway_lag_s: float | None
    backoffice_lag_s: float | None
    sessions: float | None
    bridges_connected: int
    deliveries: int  # since the previous sample (a delivery sent again counts again)
    receipts: int  # ack and fill frames receipted
    closes: int
    quotes: int
    reconnects: int

    def row(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Bounds:
    rss_growth_mib: float
    fd_growth: float
    lag_p99_s: float


@dataclass(frozen=True)
class Verdict:
    """The figures judged, each beside its bound, and what breached."""

    rss_growth_mib: float | None
    fd_growth: float | None
    gateway_lag_p99_s: float | None
    backoffice_lag_p99_s: float | None
    judged_samples: int
    breaches: list[str]

    @property
    def passed(self) -> bool:
        return not self.breaches


def thirds_growth(values: Sequence[float]) -> float | None:
    """Median of the last third minus median of the first third; None with fewer than three values."""
    if len(values) < 3:
        return None
    third = len(values) // 3
    return statistics.median(values[-third:]) - statistics.median(values[:third])


def judge(samples: Sequence[Sample], warmup_s: float, bounds: Bounds) -> Verdict:
    """Judge the samples taken at or after ``warmup_s`` against ``bounds``; too few of them is a breach
    too (a soak that cannot say whether it grew has not shown that it did not)."""
    steady = [s for s in samples if s.at_s >= warmup_s]
    rss = thirds_growth([s.gateway_rss_mib for s in steady if s.gateway_rss_mib is not None])
    fds = thirds_growth([float(s.gateway_fds) for s in steady if s.gateway_fds is not None])
    lag = percentile([s.gateway_lag_s for s in steady if s.gateway_lag_s is not None], 99)
    backoffice_lag = percentile([s.backoffice_lag_s for s in steady if s.backoffice_lag_s is not None], 99)
    breaches = []
    if len(steady) < 3:
        breaches.append(f"only {len(steady)} samples after the warm-up: run longer or sample more often")
    if rss is not None and rss > bounds.rss_growth_mib:
        breaches.append(f"gateway RSS grew {rss:.1f} MiB (bound {bounds.rss_growth_mib:g})")
    if fds is not None and fds > bounds.fd_growth:
        breaches.append(f"gateway open fds grew by {fds:.0f} (bound {bounds.fd_growth:g})")
    for name, value in (("gateway", lag), ("back office", backoffice_lag)):
        if value is not None and value > bounds.lag_p99_s:
            breaches.append(f"{name} event-loop lag p99 {value * 1000:.0f} ms (bound {bounds.lag_p99_s * 1000:.0f} ms)")
    if any(s.gateway_rss_mib is None or s.gateway_lag_s is None for s in steady):
        breaches.append("the gateway could not be read at every sample (did it exit?)")
    return Verdict(rss, fds, lag, backoffice_lag, len(steady), breaches)


def table(samples: Sequence[Sample]) -> str:
    """The samples as a fixed-width table, one line each."""

    def cell(value: float | int | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    lines = [
        f"{'t (s)':>7} {'RSS MiB':>8} {'fds':>6} {'lag ms':>7} {'bo lag':>7} {'streams':>7} "
        f"{'deliv':>6} {'rcpts':>6} {'closes':>6} {'quotes':>6} {'reconn':>6}"
    ]
    for s in samples:
        lines.append(
            f"{s.at_s:>7.0f} {cell(s.gateway_rss_mib, '.1f'):>8} {cell(s.gateway_fds, 'd'):>6} "
            f"{cell(None if s.gateway_lag_s is None else s.gateway_lag_s * 1000, '.1f'):>7} "
            f"{cell(None if s.backoffice_lag_s is None else s.backoffice_lag_s * 1000, '.1f'):>7} "
            f"{cell(s.sessions, '.0f'):>7} {s.deliveries:>6} {s.receipts:>6} {s.closes:>6} {s.quotes:>6} "
            f"{s.reconnects:>6}"
        )
    return "\n".join(lines)
