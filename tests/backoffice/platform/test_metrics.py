"""The Grafana dashboard in docs/ reads only metrics the servers export (one home: platform.metrics)."""

from __future__ import annotations

import json
import re
from typing import Any

from prometheus_client import REGISTRY, generate_latest

from backoffice.platform import metrics
from tests.conftest import ROOT_DIR


def exported_names() -> set[str]:
    assert metrics.SESSIONS is not None  # imported: every metric is registered
    text = generate_latest(REGISTRY).decode()
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE signalhub_")}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((ROOT_DIR / "docs" / "grafana-dashboard.json").read_text())
    return loaded


def read_by_dashboard(exported: set[str]) -> set[str]:
    """The metric names the dashboard's queries read, as exported (a histogram's _bucket/_sum/_count and a
    counter's _total folded into the metric's name)."""
    read = {
        re.sub(r"_(bucket|sum|count)$", "", name)
        for panel in dashboard()["panels"]
        for target in panel["targets"]
        for name in re.findall(r"signalhub_[a-z_]+", target["expr"])
    }
    return {name.removesuffix("_total") if name.removesuffix("_total") in exported else name for name in read}


def test_every_dashboard_query_reads_an_exported_metric() -> None:
    exported = exported_names()
    read = read_by_dashboard(exported)
    assert read and read <= exported, read - exported


def test_every_exported_metric_has_a_panel() -> None:
    """The monitor's, the alerts', the event-loop lag and GC pauses included: a new metric gets a panel."""
    exported = exported_names()
    metrics_defined = {name for name in exported if not name.endswith("_created")}  # the client's timestamps
    assert metrics_defined - read_by_dashboard(exported) == set()


def test_panels_have_their_own_ids_and_places() -> None:
    panels = dashboard()["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    cells = [
        (x, y)
        for panel in panels
        for x in range(panel["gridPos"]["x"], panel["gridPos"]["x"] + panel["gridPos"]["w"])
        for y in range(panel["gridPos"]["y"], panel["gridPos"]["y"] + panel["gridPos"]["h"])
    ]
    assert len(cells) == len(set(cells)), "two panels overlap"
