"""The control loop's PromQL and the parsing of Prometheus' answers (the queries themselves run
against a real Prometheus in tests/integration)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from specpilot.control.signals import (
    GROUP_BY,
    PLAUSIBLE,
    QUERIES,
    BadAnswerError,
    Signal,
    implausible,
    parse_answers,
    queries,
)


def test_five_queries_carry_every_signal_once_grouped_by_resource_and_role() -> None:
    built = queries("2m")
    assert len(built) == 5
    carried = [signal for signals in QUERIES.values() for signal in signals]
    assert sorted(carried) == sorted(Signal)  # each signal in exactly one query
    for name, promql in built.items():
        assert promql.count("label_replace(") == len(QUERIES[name])
        for signal in QUERIES[name]:
            assert f'"specpilot_signal", "{signal.value}", "", ""' in promql
        assert f"by ({GROUP_BY})" in promql or f"by (le, {GROUP_BY})" in promql
        assert 'specpilot_io_resource!=""' in promql


def test_renamed_metrics_are_asked_for_under_both_names_newest_first() -> None:
    built = queries("2m")
    tpot = built["tpot"]
    assert tpot.index("vllm:request_time_per_output_token_seconds_bucket") < tpot.index(
        "vllm:time_per_output_token_seconds_bucket"
    )
    kv = built["load"]
    assert kv.index("vllm:kv_cache_usage_perc") < kv.index("vllm:gpu_cache_usage_perc")
    acceptance = built["acceptance"]
    assert "rate(vllm:spec_decode_num_accepted_tokens_total" in acceptance
    assert "or avg by" in acceptance
    assert "vllm:spec_decode_draft_acceptance_rate" in acceptance
    assert "[2m]" in acceptance


def answer(*samples: tuple[dict[str, str], str]) -> dict[str, Any]:
    return {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [{"metric": m, "value": [1700000000.0, v]} for m, v in samples],
        },
    }


def labels(signal: Signal, role: str = "server", name: str = "chat") -> dict[str, str]:
    return {
        "namespace": "ml",
        "specpilot_io_resource": name,
        "specpilot_io_role": role,
        "specpilot_signal": signal.value,
    }


def test_answers_become_readings_per_resource_and_role() -> None:
    acceptance, p50, p99 = Signal.ACCEPTANCE, Signal.TPOT_P50, Signal.TPOT_P99
    readings = parse_answers(
        {
            "acceptance": answer(
                (labels(acceptance), "0.71"), (labels(acceptance, name="other"), "0.4")
            ),
            "tpot": answer(
                (labels(p99), "0.031"), (labels(p99, "baseline"), "0.029"), (labels(p50), "0.02")
            ),
        }
    )
    assert readings["ml", "chat", "server"] == {acceptance: 0.71, p99: 0.031, p50: 0.02}
    assert readings["ml", "chat", "baseline"] == {p99: 0.029}
    assert readings["ml", "other", "server"] == {acceptance: 0.4}


def test_nan_is_no_value_and_infinities_are_kept_to_be_named() -> None:
    """A quantile over no requests is NaN; no query answers an infinity legitimately."""
    p99 = Signal.TPOT_P99
    readings = parse_answers(
        {"tpot": answer((labels(p99), "NaN"), (labels(p99, "baseline"), "+Inf"))}
    )
    assert readings == {("ml", "chat", "baseline"): {p99: math.inf}}
    assert implausible(readings["ml", "chat", "baseline"], "baseline") == [
        "Prometheus answered tpotP99 inf for the control replicas: not a finite number"
    ]


def test_every_signal_has_its_plausible_range() -> None:
    assert set(PLAUSIBLE) == set(Signal)


@pytest.mark.parametrize(
    ("signal", "value", "why"),
    [
        (Signal.ACCEPTANCE, 7.0, "acceptance 7.0: not a rate in [0, 1]"),
        (Signal.ACCEPTANCE, -1.0, "acceptance -1.0: not a rate in [0, 1]"),
        (Signal.MEAN_ACCEPTED_LENGTH, 0.5, "meanAcceptedLength 0.5: not a mean accepted length"),
        (Signal.MEAN_ACCEPTED_LENGTH, 40.0, "meanAcceptedLength 40.0: not a mean accepted length"),
        (Signal.TPOT_P99, -0.02, "tpotP99 -0.02: not a latency in [0, 3600] s"),
        (Signal.TTFT_P50, 1e308, "ttftP50 1e+308: not a latency in [0, 3600] s"),
        (Signal.TPOT_P50, -math.inf, "tpotP50 -inf: not a finite number"),
        (Signal.KV_CACHE_USAGE, 1.2, "kvCacheUsage 1.2: not a KV cache usage in [0, 1]"),
        (Signal.REQUESTS_WAITING, -3.0, "requestsWaiting -3.0: not a count >= 0"),
        (Signal.REQUESTS_PER_SECOND, math.inf, "requestsPerSecond inf: not a finite number"),
        (Signal.GENERATION_TOKENS_PER_SECOND, -1.0, "generationTokensPerSecond -1.0: not a rate"),
        (Signal.REPLICAS, 0.5, "replicas 0.5: not a count of serving pods >= 1"),
    ],
)
def test_impossible_values_are_named_with_the_value_and_why(
    signal: Signal, value: float, why: str
) -> None:
    (problem,) = implausible({signal: value, Signal.TPOT_P95: 0.03})
    assert problem.startswith(f"Prometheus answered {why}")


def test_possible_values_are_believed_at_their_bounds() -> None:
    bounds = {
        Signal.ACCEPTANCE: 0.0,
        Signal.KV_CACHE_USAGE: 1.0,
        Signal.MEAN_ACCEPTED_LENGTH: 1.0,
        Signal.TTFT_P99: 3600.0,
        Signal.TPOT_P50: 0.0,
        Signal.REQUESTS_WAITING: 0.0,
        Signal.GENERATION_TOKENS_PER_SECOND: 1e9,
        Signal.REPLICAS: 1.0,
    }
    assert implausible(bounds) == []
    assert implausible({Signal.ACCEPTANCE: 1.0, Signal.MEAN_ACCEPTED_LENGTH: 33.0}) == []


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"status": "error", "errorType": "bad_data", "error": "parse error"}, "parse error"),
        ({"status": "success", "data": {"resultType": "matrix", "result": []}}, "matrix"),
        (
            {"status": "success", "data": {"resultType": "vector", "result": [{"value": []}]}},
            "without a known signal",
        ),
        (answer((labels(Signal.ACCEPTANCE), "not a number")), "malformed sample"),
    ],
)
def test_bad_answers_are_errors_naming_the_query(bad: dict[str, Any], message: str) -> None:
    with pytest.raises(BadAnswerError, match=message) as caught:
        parse_answers({"acceptance": bad})
    assert "acceptance" in str(caught.value)
