"""``signalhub status``: a one-screen summary of running processes, read from their Prometheus metrics
endpoints (backoffice.platform.metrics defines every figure it reads)."""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

FETCH_TIMEOUT_SECONDS = 3.0


@dataclass
class Scrape:
    """The samples of one or more endpoints, summed across them by (name, labels)."""

    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=lambda: defaultdict(float))

    def add(self, text: str) -> None:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.values[(sample.name, tuple(sorted(sample.labels.items())))] += sample.value

    def total(self, name: str, **where: str) -> float:
        return sum(v for (n, labels), v in self.values.items() if n == name and _matches(labels, where))

    def by(self, name: str, label: str) -> dict[str, float]:
        found: dict[str, float] = defaultdict(float)
        for (n, labels), value in self.values.items():
            if n == name:
                found[dict(labels).get(label, "")] += value
        return dict(found)

    def quantile(self, histogram: str, q: float) -> float | None:
        """``q`` of a histogram, interpolated within its buckets as Prometheus' histogram_quantile does."""
        buckets: dict[float, float] = defaultdict(float)
        for (n, labels), value in self.values.items():
            if n == f"{histogram}_bucket":
                buckets[float(dict(labels)["le"])] += value
        if not buckets:
            return None
        bounds = sorted(buckets)
        count = buckets[bounds[-1]]
        if count == 0:
            return None
        rank, lower, below = q * count, 0.0, 0.0
        for bound in bounds:
            if buckets[bound] >= rank:
                if math.isinf(bound):
                    return lower  # past the last finite bucket: its bound is all we know
                share = (rank - below) / (buckets[bound] - below) if buckets[bound] > below else 1.0
                return lower + (bound - lower) * share
            lower, below = bound, buckets[bound]
        return lower


def _matches(labels: tuple[tuple[str, str], ...], where: dict[str, str]) -> bool:
    found = dict(labels)
    return all(found.get(k) == v for k, v in where.items())


def fetch(address: str) -> str:
    """The text exposition of ``address`` (host:port of a SIGNALHUB_METRICS_ADDRESS)."""
    url = address if address.startswith("http") else f"http://{address}/metrics"
    with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_SECONDS) as response:  # noqa: S310 - an operator's URL
        return str(response.read().decode("utf-8"))


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _counts(values: dict[str, float]) -> str:
    shown = [f"{k or '-'} {int(v)}" for k, v in sorted(values.items()) if v]
    return ", ".join(shown) or "none"


def summary(scrape: Scrape) -> list[str]:
    """The lines ``signalhub status`` prints: devices, traffic, latency, failures, backing services."""
    frames: dict[str, float] = defaultdict(float)
    for (name, labels), value in scrape.values.items():
        if name == "signalhub_gateway_frames_total":
            found = dict(labels)
            frames[f"{found.get('kind')}/{found.get('status')}"] += value
    batches = scrape.total("signalhub_uplink_batch_frames_count")
    per_batch = scrape.total("signalhub_uplink_batch_frames_sum") / batches if batches else 0.0
    redis = scrape.values.get(("signalhub_redis_up", ()))
    return [
        f"connected devices      {int(scrape.total('signalhub_gateway_sessions'))}",
        f"frames answered        {_counts(dict(frames))}",
        f"instructions pushed    {_counts(scrape.by('signalhub_gateway_instructions_total', 'kind'))}",
        "approval -> delivery   p50 {} / p99 {}".format(
            _ms(scrape.quantile("signalhub_approval_to_delivery_seconds", 0.5)),
            _ms(scrape.quantile("signalhub_approval_to_delivery_seconds", 0.99)),
        ),
        "frame -> receipt       p50 {} / p99 {}".format(
            _ms(scrape.quantile("signalhub_frame_to_receipt_seconds", 0.5)),
            _ms(scrape.quantile("signalhub_frame_to_receipt_seconds", 0.99)),
        ),
        f"uplink                 {int(batches)} commits, {per_batch:.1f} frames each, p99 commit "
        f"{_ms(scrape.quantile('signalhub_uplink_commit_seconds', 0.99))}",
        f"RPCs                   {_counts(scrape.by('signalhub_rpc_seconds_count', 'code'))}; p99 "
        f"{_ms(scrape.quantile('signalhub_rpc_seconds', 0.99))}",
        f"refused at capacity    {int(scrape.total('signalhub_rpc_rejected_total'))}",
        f"auth failures          {_counts(scrape.by('signalhub_auth_failures_total', 'reason'))}",
        f"database pool          {int(scrape.total('signalhub_db_pool_in_use'))} in use of "
        f"{int(scrape.total('signalhub_db_pool_size'))}",
        "redis                  " + ("-" if redis is None else "up" if redis >= 1 else "DOWN"),
    ]


@dataclass(frozen=True)
class Report:
    """What ``signalhub status`` prints: the summary of the endpoints that answered (none when no endpoint
    did: a screen of zeros would look like an idle system), and one line per endpoint that did not."""

    summary: list[str]
    unanswered: list[str]


def run(addresses: Sequence[str]) -> Report:
    """Scrape every address and summarise those that answered together; name each that did not."""
    scrape = Scrape()
    unanswered: list[str] = []
    for address in addresses:
        try:
            scrape.add(fetch(address))
        except (OSError, ValueError) as exc:  # refused, timed out, an HTTP error, or not Prometheus text
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            unanswered.append(f"no metrics at {address}: {' '.join(str(reason).split())}")
    answered = len(unanswered) < len(addresses)
    return Report(summary=summary(scrape) if answered else [], unanswered=unanswered)


def addresses_or_default(given: Iterable[str] | None, default: str) -> list[str]:
    chosen = list(given or [])
    return chosen or [default]
