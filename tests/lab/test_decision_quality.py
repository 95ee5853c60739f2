"""bench/decision_quality.py on tiny traces: the JSON's shape and the invariants that hold
whatever the figures (no timing, no target asserted: the benchmark reports those)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench import decision_quality as bench

POLICIES = ("static-on", "static-off", "operator", "operator-recorded", "oracle", "oracle-window")
KEYS = {
    "p50_tpot_ms",
    "p99_tpot_ms",
    "p50_ttft_ms",
    "p99_ttft_ms",
    "goodput_tokens_per_s",
    "restarts",
    "lost_capacity_s",
    "window_p99_tpot_ms",
}


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = tmp_path_factory.mktemp("bench") / "dq.json"
    args = ["--scale", "0.05", "--scenario", "temperature", "--scenario", "quantization"]
    bench.main([*args, "--json", str(path)], out=lambda _: None)
    document: dict[str, Any] = json.loads(Path(path).read_text())
    return document


def test_every_trace_has_every_policy_with_the_same_windows(figures: dict[str, Any]) -> None:
    assert set(figures) == {"temperature", "quantization", "_meta"}
    for trace in ("temperature", "quantization"):
        assert set(figures[trace]) == set(POLICIES)
        lengths = {len(figures[trace][p]["window_p99_tpot_ms"]) for p in POLICIES}
        windows = bench.SCENARIOS[[s.name for s in bench.SCENARIOS].index(trace)]
        assert lengths == {windows.scaled(0.05).windows}
        for policy in POLICIES:
            assert set(figures[trace][policy]) >= KEYS
            assert figures[trace][policy]["goodput_tokens_per_s"] > 0


def test_the_oracles_bound_the_statics_on_the_objective_they_minimise(
    figures: dict[str, Any],
) -> None:
    for trace in ("temperature", "quantization"):
        f = figures[trace]
        free, paid = f["oracle-window"]["objective"], f["oracle"]["objective"]
        assert free <= paid + 1e-9
        assert paid <= min(f["static-on"]["objective"], f["static-off"]["objective"]) + 1e-9


def test_restarts_are_the_switches_and_only_restarts_lose_capacity(
    figures: dict[str, Any],
) -> None:
    for trace in ("temperature", "quantization"):
        f = figures[trace]
        # without control replicas each change of the server configuration is one restart
        for policy in ("static-on", "static-off", "operator-recorded", "oracle", "oracle-window"):
            assert f[policy]["restarts"] == f[policy]["switches"], (trace, policy)
        assert f["oracle-window"]["lost_capacity_s"] == 0  # free switching
        for policy in POLICIES:
            assert (f[policy]["lost_capacity_s"] > 0) == (
                f[policy]["restarts"] > 0 and policy != "oracle-window"
            ), (trace, policy)
    # the user's edit of the target restarts everyone's pods; the temperature trace has none
    assert figures["quantization"]["static-on"]["restarts"] == 1
    assert figures["temperature"]["static-off"]["restarts"] == 0


def test_histogram_quantile_interpolates_inside_the_bucket_like_prometheus() -> None:
    bounds = (0.01, 0.05, 0.1)
    # 10 observations: 4 in (0, 0.01], 6 in (0.05, 0.1]; the median's rank 5 is the first of the
    # 6, interpolated 1/6 into (0.05, 0.1]
    values = [0.005] * 4 + [0.07] * 6
    assert bench.histogram_quantile(0.5, values, bounds) == pytest.approx(0.05 + 0.05 / 6)
    assert bench.histogram_quantile(0.99, [1.0], bounds) == 0.1  # +Inf: the highest bound
    assert math.isnan(bench.histogram_quantile(0.5, [], bounds))


def test_the_dynamic_programme_pays_kappa_per_switch() -> None:
    costs = {"a": [0.0, 5.0, 5.0, 0.0], "b": [1.0, 0.0, 0.0, 1.0]}
    assert bench.best_schedule(costs, 4, 0.0) == ["a", "b", "b", "a"]
    assert bench.best_schedule(costs, 4, 100.0) == ["b", "b", "b", "b"]
    assert bench.objective(costs, ["a", "b", "b", "a"], 3.0) == 6.0
