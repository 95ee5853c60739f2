"""The control loop's PromQL and the parsing of Prometheus' answers (the queries themselves run
against a real Prometheus in tests/integration)."""

from __future__ import annotations

from typing import Any

import pytest

from specpilot.signals import GROUP_BY, QUERIES, BadAnswerError, Signal, parse, queries


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
    readings = parse(
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


def test_nan_and_infinite_quantiles_are_no_value() -> None:
    p99 = Signal.TPOT_P99
    readings = parse({"tpot": answer((labels(p99), "NaN"), (labels(p99, "baseline"), "+Inf"))})
    assert readings == {}


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
        parse({"acceptance": bad})
    assert "acceptance" in str(caught.value)
