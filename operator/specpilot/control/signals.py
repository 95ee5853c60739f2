"""What the control loop asks Prometheus, and how the answers become per-resource readings.

Pure: the PromQL is built here and the JSON answers are parsed here; sending them is the
Prometheus adapter's job. Every query covers all managed resources at once, grouped by namespace,
resource and role (serving replicas or control replicas), and related signals share a query (each
series tagged with its signal by `label_replace`), so a check costs five queries whatever the
number of resources. Metric names follow the vLLM release table: where a release renamed a
metric, the query asks for both names and prefers the newer with PromQL's `or`. Readings that
cannot be true (an acceptance of 7, a negative latency, an infinity) are named by `implausible`,
so the control check holds instead of believing them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from specpilot.vllm_versions import Feature

NAMESPACE_LABEL = "namespace"
RESOURCE_LABEL = "specpilot_io_resource"
"""The pod label specpilot.io/resource, as Prometheus sanitizes it into a target label."""
ROLE_LABEL = "specpilot_io_role"
SIGNAL_LABEL = "specpilot_signal"
"""Added by the queries: which signal a series of a shared query is."""
GROUP_BY = f"{NAMESPACE_LABEL}, {RESOURCE_LABEL}, {ROLE_LABEL}"
MANAGED = f'{RESOURCE_LABEL}!=""'

Key = tuple[str, str, str]
"""(namespace, resource, role)."""


class Signal(StrEnum):
    ACCEPTANCE = "acceptance"
    MEAN_ACCEPTED_LENGTH = "meanAcceptedLength"
    TPOT_P50 = "tpotP50"
    TPOT_P95 = "tpotP95"
    TPOT_P99 = "tpotP99"
    TTFT_P50 = "ttftP50"
    TTFT_P95 = "ttftP95"
    TTFT_P99 = "ttftP99"
    KV_CACHE_USAGE = "kvCacheUsage"
    REQUESTS_RUNNING = "requestsRunning"
    REQUESTS_WAITING = "requestsWaiting"
    GENERATION_TOKENS_PER_SECOND = "generationTokensPerSecond"
    REQUESTS_PER_SECOND = "requestsPerSecond"
    REPLICAS = "replicas"


TPOT_HISTOGRAMS = (
    f"{Feature.SPLIT_TPOT_METRICS.value}_bucket",  # per-request TPOT, 0.11 and later
    f"{Feature.OLD_TPOT_METRIC.value}_bucket",  # before 0.11 (inter-token latency)
)
KV_CACHE_GAUGES = (Feature.KV_CACHE_USAGE_METRIC.value, "vllm:gpu_cache_usage_perc")
V0_ACCEPTANCE_GAUGE = "vllm:spec_decode_draft_acceptance_rate"
"""V0 only: cumulative since the server started, so the counters come first."""


def _sum_rate(metric: str, window: str, by: str = GROUP_BY) -> str:
    return f"sum by ({by}) (rate({metric}{{{MANAGED}}}[{window}]))"


def _ratio(numerator: str, denominator: str) -> str:
    """numerator / denominator where the denominator moved at all (no 0/0 NaN series)."""
    return f"{numerator} / ({denominator} > 0)"


def _quantile(q: float, histograms: tuple[str, ...], window: str) -> str:
    return " or ".join(
        f"histogram_quantile({q}, {_sum_rate(h, window, f'le, {GROUP_BY}')})" for h in histograms
    )


def signal_expressions(window: str) -> dict[Signal, str]:
    """One PromQL expression per signal, for every managed resource; `window` is a rate range.
    A check sends them tagged and grouped (`queries`); a graph of one signal uses one alone."""
    accepted = _sum_rate("vllm:spec_decode_num_accepted_tokens_total", window)
    drafted = _sum_rate("vllm:spec_decode_num_draft_tokens_total", window)
    drafts = _sum_rate("vllm:spec_decode_num_drafts_total", window)
    ttft = ("vllm:time_to_first_token_seconds_bucket",)
    return {
        Signal.ACCEPTANCE: f"{_ratio(accepted, drafted)} or "
        f"avg by ({GROUP_BY}) ({V0_ACCEPTANCE_GAUGE}{{{MANAGED}}})",
        Signal.MEAN_ACCEPTED_LENGTH: f"1 + {_ratio(accepted, drafts)}",
        Signal.TPOT_P50: _quantile(0.5, TPOT_HISTOGRAMS, window),
        Signal.TPOT_P95: _quantile(0.95, TPOT_HISTOGRAMS, window),
        Signal.TPOT_P99: _quantile(0.99, TPOT_HISTOGRAMS, window),
        Signal.TTFT_P50: _quantile(0.5, ttft, window),
        Signal.TTFT_P95: _quantile(0.95, ttft, window),
        Signal.TTFT_P99: _quantile(0.99, ttft, window),
        Signal.KV_CACHE_USAGE: " or ".join(
            f"max by ({GROUP_BY}) ({gauge}{{{MANAGED}}})" for gauge in KV_CACHE_GAUGES
        ),
        Signal.REQUESTS_RUNNING: f"sum by ({GROUP_BY}) (vllm:num_requests_running{{{MANAGED}}})",
        Signal.REQUESTS_WAITING: f"sum by ({GROUP_BY}) (vllm:num_requests_waiting{{{MANAGED}}})",
        Signal.GENERATION_TOKENS_PER_SECOND: _sum_rate("vllm:generation_tokens_total", window),
        Signal.REQUESTS_PER_SECOND: _sum_rate("vllm:e2e_request_latency_seconds_count", window),
        Signal.REPLICAS: f"count by ({GROUP_BY}) (vllm:num_requests_running{{{MANAGED}}})",
    }


QUERIES: dict[str, tuple[Signal, ...]] = {
    "acceptance": (Signal.ACCEPTANCE, Signal.MEAN_ACCEPTED_LENGTH),
    "tpot": (Signal.TPOT_P50, Signal.TPOT_P95, Signal.TPOT_P99),
    "ttft": (Signal.TTFT_P50, Signal.TTFT_P95, Signal.TTFT_P99),
    "load": (
        Signal.KV_CACHE_USAGE,
        Signal.REQUESTS_RUNNING,
        Signal.REQUESTS_WAITING,
        Signal.REPLICAS,
    ),
    "throughput": (Signal.GENERATION_TOKENS_PER_SECOND, Signal.REQUESTS_PER_SECOND),
}
"""The signals each query carries; every signal is in exactly one."""


def queries(window: str) -> dict[str, str]:
    """The PromQL a check sends, by query name: every signal of every managed resource."""
    expressions = signal_expressions(window)
    return {
        name: " or ".join(
            f'label_replace({expressions[signal]}, "{SIGNAL_LABEL}", "{signal.value}", "", "")'
            for signal in signals
        )
        for name, signals in QUERIES.items()
    }


class BadAnswerError(ValueError):
    """Prometheus answered, but not with an instant vector."""


Readings = dict[Key, dict[Signal, float]]


def parse_answers(answers: Mapping[str, Mapping[str, Any]]) -> Readings:
    """Readings per (namespace, resource, role) from /api/v1/query answers, keyed by query name.
    NaN (a quantile over no requests) counts as no value; +-Inf is kept, for `implausible` to
    name: no signal's query answers it legitimately."""
    readings: Readings = {}
    for query, answer in answers.items():
        if answer.get("status") != "success":
            raise BadAnswerError(
                f"{query}: {answer.get('errorType', '')} {answer.get('error', '')}"
            )
        data = answer.get("data") or {}
        if data.get("resultType") != "vector":
            raise BadAnswerError(f"{query}: expected a vector, got {data.get('resultType')!r}")
        for sample in data.get("result", []):
            metric = sample.get("metric", {})
            try:
                signal = Signal(metric[SIGNAL_LABEL])
            except (KeyError, ValueError) as exc:
                raise BadAnswerError(
                    f"{query}: a series without a known signal: {sample!r}"
                ) from exc
            key = (
                metric.get(NAMESPACE_LABEL, ""),
                metric.get(RESOURCE_LABEL, ""),
                metric.get(ROLE_LABEL, "server"),
            )
            try:
                value = float(sample["value"][1])
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                raise BadAnswerError(f"{query}: malformed sample {sample!r}") from exc
            if not math.isnan(value):
                readings.setdefault(key, {})[signal] = value
    return readings


MAX_LATENCY_SECONDS = 3600.0
"""The longest TPOT or TTFT believed. histogram_quantile never answers above a histogram's highest
finite bucket (vLLM's highest is 2560 s, for TTFT), so an hour is a broken exporter or recording
rule, not a slow server."""
MAX_MEAN_ACCEPTED_LENGTH = 33.0
"""Tokens a step can emit: the target's own plus at most 32 drafts (numSpeculativeTokens' limit)."""
_LATENCIES = (
    Signal.TPOT_P50,
    Signal.TPOT_P95,
    Signal.TPOT_P99,
    Signal.TTFT_P50,
    Signal.TTFT_P95,
    Signal.TTFT_P99,
)
PLAUSIBLE: dict[Signal, tuple[float, float, str]] = {
    Signal.ACCEPTANCE: (0, 1, "a rate in [0, 1]"),
    Signal.MEAN_ACCEPTED_LENGTH: (
        1,
        MAX_MEAN_ACCEPTED_LENGTH,
        f"a mean accepted length in [1, {MAX_MEAN_ACCEPTED_LENGTH:g}] (the target's token plus "
        "at most 32 drafts per step)",
    ),
    **dict.fromkeys(
        _LATENCIES, (0, MAX_LATENCY_SECONDS, f"a latency in [0, {MAX_LATENCY_SECONDS:g}] s")
    ),
    Signal.KV_CACHE_USAGE: (0, 1, "a KV cache usage in [0, 1]"),
    Signal.REQUESTS_RUNNING: (0, math.inf, "a count >= 0"),
    Signal.REQUESTS_WAITING: (0, math.inf, "a count >= 0"),
    Signal.GENERATION_TOKENS_PER_SECOND: (0, math.inf, "a rate >= 0"),
    Signal.REQUESTS_PER_SECOND: (0, math.inf, "a rate >= 0"),
    Signal.REPLICAS: (1, math.inf, "a count of serving pods >= 1"),
}
"""The values each signal can take: (least, most, what it must be)."""
ROLE_NAMES = {"server": "", "baseline": " for the control replicas"}


def implausible(values: Mapping[Signal, float], role: str = "server") -> list[str]:
    """Why one (namespace, resource, role)'s readings cannot be true, one sentence per value;
    empty when they can. Any non-finite value is implausible (`parse_answers` already dropped
    NaN)."""
    problems = []
    for signal, value in values.items():
        least, most, what = PLAUSIBLE[signal]
        if not math.isfinite(value):
            what = "a finite number"
        elif least <= value <= most:
            continue
        problems.append(
            f"Prometheus answered {signal.value} {value}{ROLE_NAMES.get(role, f' ({role})')}: "
            f"not {what}"
        )
    return problems
