"""docs/operators/metrics.md and its Grafana dashboard name exactly the series `RayMetrics` exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ray.util.metrics import Counter, Histogram, Metric

from actors.metrics import RayMetrics

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operators"


def exported_names() -> dict[str, str]:
    """Each metric's Prometheus name (Ray adds `ray_`, and `_total` to counters) and its type."""
    names: dict[str, str] = {}
    for metric in vars(RayMetrics()).values():
        if not isinstance(metric, Metric):
            continue
        kind = "counter" if isinstance(metric, Counter) else "histogram" if isinstance(metric, Histogram) else "gauge"
        suffix = "_total" if kind == "counter" else ""
        names[f"ray_{metric.info['name']}{suffix}"] = kind
    return names


def test_the_metrics_table_lists_every_exported_series_with_its_type() -> None:
    rows = re.findall(r"^\| `(ray_downcity_\w+)` \| (\w+) \|", (DOCS / "metrics.md").read_text(), re.M)
    assert dict(rows) == exported_names()


def test_the_grafana_dashboard_queries_only_exported_series() -> None:
    dashboard = json.loads((DOCS / "grafana-panel.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {re.sub(r"_(bucket|sum|count)$", "", name) for e in exprs for name in re.findall(r"ray_downcity_\w+", e)}
    assert used == set(exported_names()) - {
        "ray_downcity_input_tokens_total",
        "ray_downcity_output_tokens_total",
        "ray_downcity_ledger_ops_total",
    }


def test_the_docs_queries_use_only_exported_series() -> None:
    text = (DOCS / "metrics.md").read_text()
    [queries] = re.findall(r"```promql\n(.*?)```", text, re.S)
    used = {re.sub(r"_(bucket|sum|count)$", "", name) for name in re.findall(r"ray_downcity_\w+", queries)}
    assert used <= set(exported_names())
    assert used == {
        "ray_downcity_requests_total",
        "ray_downcity_errors_total",
        "ray_downcity_request_latency_seconds",
        "ray_downcity_charged_microcredits_total",
        "ray_downcity_ledger_commit_seconds",
        "ray_downcity_ledger_queue_depth",
    }
