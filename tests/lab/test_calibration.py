"""The calibrated parts of the simulator stay calibrated (deterministic: simulated time only).

bench/calibrate_sim.py prints the full table; docs/simulator.md records it with the gaps.
"""

from __future__ import annotations

import pytest

from bench import calibrate_sim as bench


def speedup(speculation: list[str], workload: object, qps: float) -> float:
    off = bench.run(bench.BASE, workload, qps, 200.0, 1)
    on = bench.run(bench.BASE + speculation, workload, qps, 200.0, 1)
    return float(off / on)


def test_draft_model_speedup_at_qps_1_and_slowdown_at_saturation() -> None:
    assert 1.3 <= speedup(bench.DRAFT, bench.SHAREGPT, 1.0) <= 1.8  # published 1.5x
    assert speedup(bench.DRAFT, bench.SHAREGPT, 24.0) <= 0.85  # published 1/1.4 = 0.71x


def test_ngram_speedup_at_qps_1_and_slowdown_at_saturation() -> None:
    assert 2.3 <= speedup(bench.NGRAM, bench.CNN_DM, 1.0) <= 3.2  # published 2.8x
    assert speedup(bench.NGRAM, bench.CNN_DM, 14.0) <= 0.8  # published 1/1.8 = 0.56x


@pytest.mark.parametrize(
    ("temperature", "framework"), [(0.0, 0.81), (0.4, 0.71), (0.8, 0.52), (1.0, 0.38)]
)
def test_acceptance_follows_the_frameworks_temperature_curve(
    temperature: float, framework: float
) -> None:
    assert bench.acceptance_at(temperature, 100.0, 1) == pytest.approx(framework, abs=0.03)
