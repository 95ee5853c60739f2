"""The load generator: a seeded, open-loop Poisson process, measured against the real simulator."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from specpilot.sim.loadgen import (
    Distribution,
    Segment,
    TemperatureShare,
    Trace,
    arrivals,
    load_trace,
    report,
    run,
)
from tests.conftest import REPO
from tests.sim.test_server import MODEL, SimServer


def constant(qps: float, seconds: float, **fields: object) -> Trace:
    return Trace.model_validate({"segments": [{"durationSeconds": seconds, "qps": qps}], **fields})


def test_arrivals_are_deterministic_per_seed() -> None:
    assert arrivals(constant(3, 100)) == arrivals(constant(3, 100))
    assert arrivals(constant(3, 100)) != arrivals(constant(3, 100, seed=1))


@pytest.mark.parametrize(
    ("trace", "expected"),
    [
        (constant(5, 400), 2000.0),
        (Trace(segments=[Segment(duration_seconds=200, qps_start=0, qps_end=10)]), 1000.0),
        (
            Trace(
                segments=[
                    Segment(duration_seconds=100, qps=2),
                    Segment(duration_seconds=100, qps=8),
                ]
            ),
            1000.0,
        ),
    ],
)
def test_arrival_counts_follow_the_schedule(trace: Trace, expected: float) -> None:
    count = len(arrivals(trace))
    assert abs(count - expected) <= 4 * math.sqrt(expected)  # Poisson: variance = mean


def test_rate_changes_where_the_schedule_says() -> None:
    trace = Trace(
        segments=[Segment(duration_seconds=100, qps=1), Segment(duration_seconds=100, qps=10)]
    )
    times = [a.at for a in arrivals(trace)]
    first, second = sum(t < 100 for t in times), sum(t >= 100 for t in times)
    assert second > 5 * first


def test_temperature_mix_and_length_bounds() -> None:
    trace = constant(
        20,
        200,
        temperatureMix=[{"temperature": 0.0, "weight": 3}, {"temperature": 1.0, "weight": 1}],
        promptTokens={"kind": "lognormal", "median": 100, "sigma": 2, "min": 10, "max": 500},
        outputTokens={"kind": "uniform", "min": 5, "max": 9},
    )
    got = arrivals(trace)
    share = sum(a.temperature == 1.0 for a in got) / len(got)
    assert share == pytest.approx(0.25, abs=3 * math.sqrt(0.25 * 0.75 / len(got)))
    assert all(10 <= a.prompt_tokens <= 500 for a in got)
    assert {a.max_tokens for a in got} <= set(range(5, 10))


def test_example_traces_load() -> None:
    for path in (REPO / "manifests" / "traces").glob("*.yaml"):
        trace = load_trace(path)
        assert trace.duration > 0
        assert arrivals(trace)


def test_open_loop_run_against_the_simulator() -> None:
    trace = Trace(
        seed=3,
        segments=[Segment(duration_seconds=40, qps=2)],
        temperature_mix=[TemperatureShare(temperature=0.0, weight=1)],
        prompt_tokens=Distribution(kind="fixed", value=50),
        output_tokens=Distribution(kind="fixed", value=30),
    )
    with SimServer([MODEL, "--max-model-len", "4096"], {"SPECPILOT_SIM_TIME_SCALE": "10"}) as s:
        results = asyncio.run(run(trace, s.url, MODEL, time_scale=10))
        wrong = asyncio.run(
            run(
                trace.model_copy(update={"segments": [Segment(duration_seconds=5, qps=2)]}),
                s.url,
                "no/such-model",
                time_scale=10,
            )
        )
    assert len(results) == len(arrivals(trace))
    assert all(r.error is None for r in results)
    assert all(r.output_tokens == 30 for r in results)
    # Open loop: sent on schedule (within scheduling jitter), whatever the server does.
    assert max(abs(r.sent - r.at) for r in results) < 1.0
    # The simulator's 8B on one H100: about 2 ms + 16 GB / 2.7 TB/s per step.
    tpots = [r.tpot for r in results if r.tpot is not None]
    assert min(tpots) > 0.004
    assert max(tpots) < 0.05
    assert all(r.ttft is not None and r.ttft > 0 for r in results)
    assert wrong
    assert all(r.error == "HTTP 404" for r in wrong)
    summary = report(results, trace.duration, window=10)
    assert sum(w.requests for w in summary.windows) == summary.overall.requests
    assert summary.overall.tpot.p50 is not None


def test_cli_without_a_trace(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from specpilot.cli import main

    with SimServer([MODEL, "--max-model-len", "4096"], {"SPECPILOT_SIM_TIME_SCALE": "20"}) as s:
        result = CliRunner().invoke(
            main,
            [
                "loadgen",
                "--base-url",
                s.url,
                "--qps",
                "4",
                "--duration",
                "20",
                "--time-scale",
                "20",
                "--window",
                "10",
                "-o",
                "json",
            ],
        )
    assert result.exit_code == 0, result.output
    assert '"overall"' in result.output
