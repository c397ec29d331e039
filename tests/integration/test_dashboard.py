"""The Grafana dashboard (deploy/grafana/tile-gateway.json): a dashboard Grafana imports (its
standard fields, a Prometheus datasource variable used by every panel), every PromQL
expression valid (parsed by promql-parser) and every metric it names exported by a real
gateway's ``GET /metrics`` after some traffic, with the label names its selectors use."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import promql_parser
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port
from tests.integration.conftest import FakeUpstream

WORKTREE = Path(__file__).resolve().parents[2]
DASHBOARD = WORKTREE / "deploy" / "grafana" / "tile-gateway.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Grafana's own variables, replaced by values of their kind before parsing (Grafana does the
# same before it sends a query); $layer only ever stands inside a regex matcher's string.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "6h", "$__interval": "30s"}
# The samples of each metric type (prometheus-client's names; _created is not used).
SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum"),
}


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: dict) -> Iterator[dict]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _expressions(dashboard: dict) -> list[str]:
    exprs = [
        target["expr"]
        for panel in _panels(dashboard)
        if panel["type"] != "row"
        for target in panel["targets"]
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            # label_values(metric, label): Grafana's, not PromQL; its metric is a selector.
            query = variable["query"]["query"]
            assert query.startswith("label_values(") and query.endswith(")"), query
            metric, _, _label = query.removeprefix("label_values(").removesuffix(")").partition(",")
            exprs.append(metric.strip())
    return exprs


def _parse(expr: str) -> promql_parser.Expr:
    """``expr`` parsed, Grafana's variables replaced. Raises ``ValueError`` when it does not
    parse."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return promql_parser.parse(expr)


def _selectors(node: promql_parser.Expr) -> list[tuple[str, set[str]]]:
    """Each metric selector under ``node``: its metric name and the label names it matches."""
    found: list[tuple[str, set[str]]] = []

    def visit(child: object) -> bool:
        if isinstance(child, promql_parser.VectorSelector):
            found.append((child.name, {m.name for m in child.matchers.matchers}))
        return True

    promql_parser.walk(node, visit)
    return found


def _groupings(node: promql_parser.Expr) -> list[tuple[set[str], list[str]]]:
    """Each ``by``/``without`` under ``node``: its label names and the metrics it aggregates."""
    found: list[tuple[set[str], list[str]]] = []

    def visit(child: object) -> bool:
        if isinstance(child, promql_parser.AggregateExpr) and child.modifier is not None:
            names = [name for name, _ in _selectors(child.expr)]
            found.append((set(child.modifier.labels), names))
        return True

    promql_parser.walk(node, visit)
    return found


def test_the_dashboard_has_what_grafana_imports() -> None:
    dashboard = _dashboard()
    for field in ("title", "uid", "schemaVersion", "panels", "templating", "time"):
        assert field in dashboard, field
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [panel for panel in _panels(dashboard) if panel["type"] != "row"]
    assert len(panels) >= 15
    assert len({panel["id"] for panel in _panels(dashboard)}) == len(list(_panels(dashboard)))
    titles = " | ".join(panel["title"] for panel in panels)
    for wanted in ("Hit ratio", "Tiles/s by front", "p50 / p99", "5xx", "Redis", "Jobs"):
        assert wanted in titles, wanted
    for panel in panels:
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys()
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE
            assert target["expr"] and target["refId"]
    quantiles = [e for e in _expressions(dashboard) if "histogram_quantile" in e]
    assert any("0.99" in e and "upstream_call_seconds_bucket" in e for e in quantiles)


def test_every_expression_parses() -> None:
    for expr in _expressions(_dashboard()):
        assert _selectors(_parse(expr)), expr


async def _scrape(
    fake_upstream: FakeUpstream, redis_url: str, key_prefix: str, tmp_path: Path
) -> str:
    """``GET /metrics`` of ``tile-gateway serve`` (one process: every metric is declared in
    its output, also those without a sample yet) after a miss, a hit, an upstream error and
    a purge."""
    port = free_port()
    config = tmp_path / "gw.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "server": {"port": port},
                "cache": {"redis_url": redis_url, "prefix": key_prefix},
                "layers": {"fake": {"url": fake_upstream.url, "formats": ["png"]}},
            }
        )
    )
    env = {**os.environ, "PYTHONPATH": str(WORKTREE), "TILE_GATEWAY_ADMIN_TOKEN": "admin-7c1e"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        cwd=WORKTREE,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
                try:
                    async with session.get(f"{base}/readyz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
            for expected in ("MISS", "HIT"):
                async with session.get(f"{base}/tiles/fake/3/1/2.png") as response:
                    assert response.headers["X-Cache"] == expected
            fake_upstream.behaviour = "http500"
            async with session.get(f"{base}/tiles/fake/3/5/5.png") as response:
                assert response.status == 502
            async with session.post(
                f"{base}/admin/purge",
                json={"layer": "fake"},
                headers={"Authorization": "Bearer admin-7c1e"},
            ) as response:
                assert response.status == 200
            async with session.get(f"{base}/metrics") as response:
                return await response.text()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


async def test_every_metric_of_the_dashboard_is_exported(
    fake_upstream: FakeUpstream, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    text = await _scrape(fake_upstream, redis_url, key_prefix, tmp_path)
    # Sample name -> the label names seen on it (empty for a metric without samples yet).
    exported: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for suffix in SUFFIXES.get(family.type, ()):
            exported.setdefault(family.name + suffix, set())
        for sample in family.samples:
            exported.setdefault(sample.name, set()).update(sample.labels)
    assert exported["tile_gateway_tile_requests_total"] >= {"layer", "front", "status", "cache"}
    used = set()
    for expr in _expressions(_dashboard()):
        tree = _parse(expr)
        for name, labels in _selectors(tree):
            assert name in exported, f"{name} (in {expr}) is not in /metrics"
            used.add(name)
            # A metric with samples shows its label names: those matched on must be among them.
            assert not exported[name] or labels <= exported[name], (expr, name, labels)
        for labels, names in _groupings(tree):
            # "by (le)" of a histogram's buckets, "by (instance)" of the scrape's target.
            known = {"le", "instance", "job"}.union(*(exported[name] for name in names))
            if all(exported[name] for name in names):
                assert labels <= known, (expr, labels)
    # Every metric of the gateway is on the dashboard (a histogram through its buckets).
    ours = {name for name in exported if name.startswith("tile_gateway_")}
    unused = {
        name
        for name in ours - used
        if not name.endswith("_created")
        and not any(name.removesuffix(s) + "_bucket" in used for s in ("_count", "_sum"))
    }
    assert not unused, unused
