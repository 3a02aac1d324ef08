"""The Grafana dashboard in docs/ reads only metrics the servers export (one home: platform.metrics)."""

from __future__ import annotations

import json
import re

from prometheus_client import REGISTRY, generate_latest

from backoffice.platform import metrics
from tests.conftest import ROOT_DIR


def exported_names() -> set[str]:
    assert metrics.SESSIONS is not None  # imported: every metric is registered
    text = generate_latest(REGISTRY).decode()
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE signalhub_")}


def test_every_dashboard_query_reads_an_exported_metric() -> None:
    dashboard = json.loads((ROOT_DIR / "docs" / "grafana-dashboard.json").read_text())
    exported = exported_names()
    read = {
        re.sub(r"_(bucket|sum|count)$", "", name)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"signalhub_[a-z_]+", target["expr"])
    }
    read = {name.removesuffix("_total") if name.removesuffix("_total") in exported else name for name in read}
    assert read and read <= exported, read - exported
