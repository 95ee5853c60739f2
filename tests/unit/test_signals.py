"""The control loop's PromQL and the parsing of Prometheus' answers (the queries themselves run
against a real Prometheus in tests/integration)."""

from __future__ import annotations

from typing import Any

import pytest

from specpilot.signals import GROUP_BY, BadAnswerError, Signal, parse, queries


def test_every_signal_is_one_query_grouped_by_resource_and_role() -> None:
    built = queries("2m")
    assert set(built) == set(Signal)
    for promql in built.values():
        assert f"by ({GROUP_BY})" in promql or f"by (le, {GROUP_BY})" in promql
        assert 'specpilot_io_resource!=""' in promql


def test_renamed_metrics_are_asked_for_under_both_names_newest_first() -> None:
    built = queries("2m")
    tpot = built[Signal.TPOT_P99]
    assert tpot.index("vllm:request_time_per_output_token_seconds_bucket") < tpot.index(
        "vllm:time_per_output_token_seconds_bucket"
    )
    kv = built[Signal.KV_CACHE_USAGE]
    assert kv.index("vllm:kv_cache_usage_perc") < kv.index("vllm:gpu_cache_usage_perc")
    acceptance = built[Signal.ACCEPTANCE]
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


def labels(role: str = "server", name: str = "chat") -> dict[str, str]:
    return {"namespace": "ml", "specpilot_io_resource": name, "specpilot_io_role": role}


def test_answers_become_readings_per_resource_and_role() -> None:
    readings = parse(
        {
            Signal.ACCEPTANCE: answer((labels(), "0.71"), (labels(name="other"), "0.4")),
            Signal.TPOT_P99: answer((labels(), "0.031"), (labels("baseline"), "0.029")),
        }
    )
    assert readings["ml", "chat", "server"] == {Signal.ACCEPTANCE: 0.71, Signal.TPOT_P99: 0.031}
    assert readings["ml", "chat", "baseline"] == {Signal.TPOT_P99: 0.029}
    assert readings["ml", "other", "server"] == {Signal.ACCEPTANCE: 0.4}


def test_nan_and_infinite_quantiles_are_no_value() -> None:
    readings = parse({Signal.TPOT_P99: answer((labels(), "NaN"), (labels("baseline"), "+Inf"))})
    assert readings == {}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"status": "error", "errorType": "bad_data", "error": "parse error"}, "parse error"),
        ({"status": "success", "data": {"resultType": "matrix", "result": []}}, "matrix"),
        (
            {"status": "success", "data": {"resultType": "vector", "result": [{"value": []}]}},
            "malformed sample",
        ),
    ],
)
def test_bad_answers_are_errors_naming_the_signal(bad: dict[str, Any], message: str) -> None:
    with pytest.raises(BadAnswerError, match=message) as caught:
        parse({Signal.ACCEPTANCE: bad})
    assert "acceptance" in str(caught.value)
