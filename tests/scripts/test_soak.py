"""The soak (scripts/soak, package scripts/endurance): its judgement of growth, its command line, and a
short real run in the suite: 200 bridges through churn and steady traffic for 45 s, sampled every 3 s,
which fails when the gateway's memory, open descriptors or event-loop lag grow past the bounds below."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.endurance import judge, options
from tests.conftest import REDIS_URL, SERVER_PACKAGES, SERVER_URL, packages_imported_by

ROOT = Path(__file__).resolve().parents[2]
BOUNDS = judge.Bounds(rss_growth_mib=64, fd_growth=50, lag_p99_s=0.5)

# The in-suite run's bounds. Its 200 bridges reconnect about 10 every 3 s (140 reconnects, half of them
# streams cancelled on a live connection): a leak of 100 KiB per cancelled stream would show as 7 MiB.
# The lag bound is a stall's, not a slow machine's: on a 2-core machine shared with a 1,000-bridge
# benchmark, the gateway's loop was seen 1.8 s late (its process waiting for a core), which is no bug.
LAG_BOUND_S = 3.0
SHORT_RUN = {
    "--minutes": "0.75",
    "--bridges": "200",
    "--processes": "2",
    "--sample-every": "3",
    "--warmup": "12",
    "--churn": "0.05",
    "--churn-every": "3",
    "--signal-every": "3",
    "--quote-every": "5",
    "--max-rss-growth-mb": "12",
    "--max-fd-growth": "20",
    "--max-lag-p99": str(LAG_BOUND_S),
}


def series(rss: list[float], *, fds: int = 300, lag: float = 0.05) -> list[judge.Sample]:
    return [judge.Sample(float(n * 10), r, fds, lag, lag, 1000, 1000, 10, 30, 0, 60, 50) for n, r in enumerate(rss)]


def test_a_flat_series_passes_and_a_growing_one_does_not() -> None:
    flat = judge.judge(series([300, 400, 410, 405, 412, 408, 411, 409, 410, 407]), 10, BOUNDS)
    assert flat.passed, flat.breaches
    assert flat.judged_samples == 9 and flat.rss_growth_mib is not None and abs(flat.rss_growth_mib) < 5
    growing = judge.judge(series([400 + 20 * n for n in range(12)]), 10, BOUNDS)
    assert not growing.passed and "RSS grew" in growing.breaches[0]


def test_descriptors_and_lag_are_bounded_too() -> None:
    leaking = [judge.Sample(n * 10.0, 400, 300 + 20 * n, 0.05, 0.05, 1000, 0, 0, 0, 0, 0, 0) for n in range(9)]
    assert any("fds grew" in b for b in judge.judge(leaking, 0, BOUNDS).breaches)
    slow = judge.judge(series([400] * 9, lag=0.8), 0, BOUNDS)
    assert slow.gateway_lag_p99_s == 0.8 and any("event-loop lag" in b for b in slow.breaches)


def test_too_few_samples_after_the_warmup_is_a_failure() -> None:
    verdict = judge.judge(series([400, 400, 400]), 15, BOUNDS)
    assert verdict.judged_samples == 1 and not verdict.passed


def test_a_sample_the_gateway_did_not_answer_is_a_failure() -> None:
    samples = series([400] * 6)
    samples[4] = judge.Sample(40.0, None, None, None, None, None, 0, 0, 0, 0, 0, 0)
    assert any("could not be read" in b for b in judge.judge(samples, 0, BOUNDS).breaches)


def test_the_command_line_defaults_and_checks() -> None:
    parsed = options.parse_args([])
    assert (parsed.bridges, parsed.sample_seconds, parsed.minutes) == (1000, 10.0, 10.0)
    assert parsed.output == ROOT / "bench" / "soak.json" and parsed.bounds.fd_growth == 50
    assert (parsed.signal_seconds, parsed.cancel_after_seconds) == (25, 50)  # light enough to show growth
    assert options.parse_args(["--minutes", "0.5", "--sample-every", "2"]).warmup_seconds == 6
    with pytest.raises(SystemExit):
        options.parse_args(["--minutes", "0.1", "--warmup", "30"])


def test_a_load_process_imports_no_server_module() -> None:
    assert not packages_imported_by("scripts.endurance.fleet") & SERVER_PACKAGES


def test_a_short_soak_does_not_grow(tmp_path: Path) -> None:
    """The real thing, short: the servers as processes, 200 bridges churning, signals approved by rule
    and by hand, cancels closing positions, quotes and heartbeats; green only within every bound, with
    no API call failed and no ERROR line in any server's log."""
    output = tmp_path / "soak.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "proto")]),
        "SIGNALHUB_DATABASE_URL": SERVER_URL,
        "SIGNALHUB_REDIS_URL": REDIS_URL,
    }
    arguments = [item for pair in SHORT_RUN.items() for item in pair]
    done = subprocess.run(
        [sys.executable, "-m", "scripts.endurance", *arguments, "--output", str(output)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    print(done.stdout)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    result = json.loads(output.read_text())
    verdict, totals, samples = result["verdict"], result["totals"], result["samples"]
    assert verdict["passed"] and verdict["judged_samples"] >= 8
    assert verdict["rss_growth_mib"] <= 12 and verdict["fd_growth"] <= 20
    assert verdict["gateway_lag_p99_s"] <= LAG_BOUND_S
    assert totals["cancelled_streams"] > 20 and totals["closed_channels"] > 20, "the bridges churned"
    assert totals["receipts"] > 1000 and totals["closes"] > 100 and totals["approvals"] > 10, "traffic flowed"
    assert samples[-1]["bridges_connected"] >= 180
