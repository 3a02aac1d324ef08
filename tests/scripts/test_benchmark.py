"""The benchmark package (scripts/benchmark, run by scripts/bench) imports and its command line parses.
Nothing is started and nothing is timed: a real run is `scripts/bench --quick`."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest

import scripts.benchmark
from scripts.benchmark import options, report
from scripts.endurance import judge
from tests.conftest import SERVER_PACKAGES, packages_imported_by

ROOT = Path(__file__).resolve().parents[2]
MODULES = sorted(m.name for m in pkgutil.iter_modules(scripts.benchmark.__path__) if m.name != "__main__")


def test_the_package_has_its_modules() -> None:
    assert {"cli", "loadgen", "simdevice", "scenarios", "limits", "report", "system", "positions", "risk"} <= set(
        MODULES
    )


@pytest.mark.parametrize("name", MODULES)
def test_every_module_imports(name: str) -> None:
    importlib.import_module(f"scripts.benchmark.{name}")


def test_the_parser_builds_and_quick_shortens_every_phase() -> None:
    assert options.build_parser().prog == "scripts/bench"
    full, quick = options.parse_args([]), options.parse_args(["--quick"])
    assert (full.devices, full.users, full.processes) == (1000, 50, 4)
    assert quick.quick and not full.quick
    assert quick.ack_seconds < full.ack_seconds and quick.latency_samples < full.latency_samples
    assert quick.account_seconds < full.account_seconds and quick.stopout_samples < full.stopout_samples
    assert full.output == ROOT / "bench" / "results.json"


def test_check_fails_the_run_only_when_a_figure_misses_its_goal() -> None:
    assert options.parse_args(["--check"]).check and not options.parse_args([]).check
    run = report.Report()
    run.add("met", 1.0, "ms", "s", at_most=2.0)
    run.add("informative", 9.0, "ms", "s")
    assert (run.exit_status(check=True), run.exit_status(check=False)) == (0, 0)
    run.add("missed", 3.0, "x", "s", at_least=4.0)
    assert (run.exit_status(check=True), run.exit_status(check=False)) == (1, 0)
    unmeasured = report.Report()
    unmeasured.add("n/a", None, "x", "s", at_most=1.0)
    assert unmeasured.exit_status(check=True) == 1


def test_a_running_stack_is_named_by_both_addresses() -> None:
    with pytest.raises(SystemExit):
        options.parse_args(["--backoffice", "127.0.0.1:1"])
    given = options.parse_args(["--backoffice", "127.0.0.1:1", "--gateway", "127.0.0.1:2", "--gateway-pid", "7"])
    assert (given.backoffice, given.gateway, given.gateway_pid) == ("127.0.0.1:1", "127.0.0.1:2", 7)


def test_a_load_process_imports_no_server_module() -> None:
    """The simulated bridges are built on signalhub.protocol alone, like any bridge."""
    loaded = packages_imported_by("scripts.benchmark.loadgen")
    assert not loaded & SERVER_PACKAGES
    assert "signalhub" in loaded


def test_only_names_existing_scenarios() -> None:
    assert options.parse_args(["--only", "quote to CloseOrder"]).only == ("quote to CloseOrder",)
    assert options.parse_args(["--only", "risk limits"]).only == ("risk limits",)
    assert options.parse_args(["--only", "console"]).only == ("console",)
    assert options.parse_args(["--only", "10,000 devices"]).only == ("10,000 devices",)  # the full run's last
    assert options.parse_args([]).only == ()
    with pytest.raises(SystemExit):
        options.parse_args(["--only", "no such thing"])


@pytest.mark.parametrize(
    ("n", "p", "rank"),
    [(100, 99, 99), (100, 50, 50), (100, 100, 100), (1000, 99, 990), (60, 95, 57), (10, 99, 10), (1, 50, 1), (3, 1, 1)],
)
def test_percentile_is_the_nearest_rank(n: int, p: float, rank: int) -> None:
    """The ceil(p/100 * n)-th smallest, shared by the benchmark and the soak's judge."""
    values = [float(v) for v in range(n, 0, -1)]  # n .. 1, unsorted on purpose
    assert report.percentile(values, p) == rank
    assert judge.judge(
        [_sample(at_s=i, lag_s=v) for i, v in enumerate(values)], 0, judge.Bounds(1e9, 1e9, 1e9)
    ).gateway_lag_p99_s == report.percentile(values, 99)


def test_percentile_of_nothing_is_none() -> None:
    assert report.percentile([], 99) is None


def _sample(at_s: float, lag_s: float) -> judge.Sample:
    return judge.Sample(at_s, None, None, lag_s, None, None, 0, 0, 0, 0, 0, 0)
