"""The Grafana dashboard: well-formed, every query parses in a real Prometheus, and every
recording rule it uses is defined in specpilot-rules.yaml."""

from __future__ import annotations

import json
import re
import urllib.error
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from specpilot_lab.local.prometheus import Prometheus
from tests.conftest import REPO

OBSERVABILITY = REPO / "manifests" / "observability"
DASHBOARD: dict[str, Any] = json.loads((OBSERVABILITY / "grafana-dashboard.json").read_text())


def expressions() -> list[str]:
    found = [t["expr"] for p in DASHBOARD["panels"] for t in p["targets"]]
    found += [a["expr"] for a in DASHBOARD["annotations"]["list"]]
    found += [v["query"] for v in DASHBOARD["templating"]["list"] if v["type"] == "query"]
    return found


def as_promql(expr: str) -> str:
    """What Grafana sends: variables replaced (All is .*), label_values() is not PromQL."""
    expr = expr.replace("$__rate_interval", "5m").replace("$namespace", ".*")
    expr = expr.replace("$resource", ".*")
    match = re.fullmatch(r"label_values\((.*), \w+\)", expr)
    return match.group(1) if match else expr


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    sd_file = tmp_path_factory.mktemp("sd") / "targets.json"
    sd_file.write_text("[]")
    with Prometheus(sd_file) as running:
        yield running


def test_every_query_parses_in_prometheus(prometheus: Prometheus) -> None:
    for expr in expressions():
        try:
            prometheus.query(as_promql(expr))
        except urllib.error.HTTPError as exc:
            pytest.fail(f"{expr!r}: {exc.read().decode()}")


def test_a_broken_query_would_be_caught(prometheus: Prometheus) -> None:
    with pytest.raises(urllib.error.HTTPError):
        prometheus.query(as_promql("sum by (le (rate(x[$__rate_interval]))"))


def test_recording_rules_used_are_defined() -> None:
    rules = yaml.safe_load((OBSERVABILITY / "specpilot-rules.yaml").read_text())
    defined = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    used = {name for e in expressions() for name in re.findall(r"specpilot:[a-z0-9_:]+", e)}
    assert used
    assert used <= defined, used - defined


def test_layout_and_what_it_shows() -> None:
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in DASHBOARD["panels"]:
        g = p["gridPos"]
        columns, rows = range(g["x"], g["x"] + g["w"]), range(g["y"], g["y"] + g["h"])
        area = {(x, y) for x in columns for y in rows}
        assert not cells & area, f"panel {p['title']} overlaps another"
        assert all(0 <= x < 24 for x, _ in area)
        cells |= area
        assert p["datasource"]["uid"] == "${datasource}"
    titles = " ".join(p["title"] for p in DASHBOARD["panels"]).lower()
    for topic in ("acceptance", "draft position", "tpot", "ttft", "kv cache", "load", "decisions"):
        assert topic in titles
    assert "specpilot_control_decisions_total" in DASHBOARD["annotations"]["list"][0]["expr"]
