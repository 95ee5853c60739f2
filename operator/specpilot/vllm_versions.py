"""What each vLLM release can do: the one table the renderer, simulator and metric queries share.

Boundaries come from the source vLLM shipped in each release's wheel (docs/vllm-versions.md has the
evidence, file by file).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from packaging.version import InvalidVersion, Version

OLDEST_SUPPORTED = Version("0.6.0")
NEWEST_VERIFIED = Version("0.33.0")


class Feature(StrEnum):
    LEGACY_SPECULATIVE_FLAGS = "per-flag speculative decoding options (--speculative-model, ...)"
    SPECULATIVE_CONFIG_JSON = "--speculative-config JSON"
    V0_ENGINE = "the V0 engine"
    TYPICAL_ACCEPTANCE_SAMPLER = "the typical acceptance sampler"
    DISABLE_BY_BATCH_SIZE = "disabling speculation by batch size"
    METHOD_DRAFT_MODEL = "method draft_model"
    METHOD_NGRAM = "method ngram"
    METHOD_EAGLE = "method eagle"
    METHOD_EAGLE3 = "method eagle3"
    METHOD_MTP = "method mtp"
    METHOD_SUFFIX = "method suffix"
    PER_BATCH_SIZE_SCHEDULE = "num_speculative_tokens_per_batch_size"
    EAGLE_NAME_DETECTION = "method detection that overrides an explicit eagle method"
    DRAFT_TP_MUST_EQUAL_TARGET = "the V1 draft_model rule that draft TP equals target TP"
    SPEC_DECODE_NUM_DRAFTS_METRIC = "vllm:spec_decode_num_drafts_total"
    KV_CACHE_USAGE_METRIC = "vllm:kv_cache_usage_perc"
    SPLIT_TPOT_METRICS = "vllm:request_time_per_output_token_seconds"
    OLD_TPOT_METRIC = "vllm:time_per_output_token_seconds"
    CUDA_GRAPHS_IN_BUDGET = "CUDA graph memory profiled inside gpu_memory_utilization"
    GPTQ_GROUP_ACT_ORDER = "GPTQ group activation ordering (desc_act true with groups)"
    ADAPTIVE_VERIFICATION = "enable_adaptive_verification for model-based drafters"


@dataclass(frozen=True)
class Span:
    """A half-open range of releases [since, until); None means unbounded."""

    since: Version | None = None
    until: Version | None = None

    def __contains__(self, version: Version) -> bool:
        return (self.since is None or version >= self.since) and (
            self.until is None or version < self.until
        )

    def describe(self) -> str:
        if self.since is None and self.until is None:
            return "all releases"
        if self.since is None:
            return f"releases before {self.until}"
        if self.until is None:
            return f"{self.since} and later"
        return f"{self.since} up to (not including) {self.until}"


def _span(since: str | None = None, until: str | None = None) -> Span:
    return Span(Version(since) if since else None, Version(until) if until else None)


FEATURES: dict[Feature, tuple[Span, ...]] = {
    Feature.LEGACY_SPECULATIVE_FLAGS: (_span(until="0.8.3"),),
    Feature.SPECULATIVE_CONFIG_JSON: (_span("0.8.2"),),
    Feature.V0_ENGINE: (_span(until="0.10.0"),),
    Feature.TYPICAL_ACCEPTANCE_SAMPLER: (_span(until="0.10.0"),),
    Feature.DISABLE_BY_BATCH_SIZE: (_span(until="0.10.0"),),
    Feature.METHOD_DRAFT_MODEL: (_span(until="0.10.0"), _span("0.15.0")),
    Feature.METHOD_NGRAM: (_span(),),
    Feature.METHOD_EAGLE: (_span(),),
    Feature.METHOD_EAGLE3: (_span("0.8.5"),),
    Feature.METHOD_MTP: (_span("0.11.0"),),
    Feature.METHOD_SUFFIX: (_span("0.11.1"),),
    Feature.PER_BATCH_SIZE_SCHEDULE: (_span("0.24.0"),),
    Feature.EAGLE_NAME_DETECTION: (_span("0.8.2", "0.8.5"),),
    Feature.DRAFT_TP_MUST_EQUAL_TARGET: (_span("0.15.0"),),
    Feature.SPEC_DECODE_NUM_DRAFTS_METRIC: (_span("0.8.5"),),
    Feature.KV_CACHE_USAGE_METRIC: (_span("0.9.2"),),
    Feature.SPLIT_TPOT_METRICS: (_span("0.11.0"),),
    Feature.OLD_TPOT_METRIC: (_span(until="0.12.0"),),
    Feature.CUDA_GRAPHS_IN_BUDGET: (_span("0.21.0"),),
    Feature.GPTQ_GROUP_ACT_ORDER: (_span(until="0.30.0"),),
    Feature.ADAPTIVE_VERIFICATION: (_span("0.30.0"),),
}


ENGINE_SCHEDULE_METHODS = frozenset({"ngram", "eagle", "eagle3", "mtp", "draft_model"})
"""Methods whose drafting follows num_speculative_tokens_per_batch_size: 0.33.0 silently ignores
the schedule on Model Runner V1 for any other (docs/vllm-versions.md, section 4), and specpilot
never renders a lever the engine would drop."""


ADAPTIVE_VERIFICATION_METHODS: dict[str, Span] = {
    "eagle": _span("0.30.0"),
    "eagle3": _span("0.30.0"),
    "mtp": _span("0.30.0"),
    "draft_model": _span("0.31.0"),
}
"""Methods whose drafter verifies adaptively, by release (docs/vllm-versions.md, section 14):
0.28-0.29 had it for DSpark only; Model Runner V2, which it requires, runs draft_model from
0.31.0; ngram's drafter silently has none and suffix is V1-only, so specpilot never renders it
for them."""


MODEL_RUNNER_V2_METHODS: dict[str, Span] = {
    "eagle": _span("0.29.0"),
    "eagle3": _span("0.29.0"),
    "mtp": _span("0.29.0"),
    "draft_model": _span("0.31.0"),
    "ngram": _span("0.32.0"),
}
"""Methods for which vLLM picks Model Runner V2 by default on a GPU (VllmConfig.
use_v2_model_runner: from 0.29.0, V2 unless the config uses something V2 lacks, such as these
methods before the release given; suffix never; before 0.29.0 V2 only for a list of
architectures, taken here to exclude the Llama family). On V2 a per-batch-size schedule keeps
full CUDA graphs; on V1 vLLM drops them to PIECEWISE (docs/vllm-versions.md, section 4)."""


def runs_model_runner_v2(version: Version, method: str) -> bool:
    span = MODEL_RUNNER_V2_METHODS.get(method)
    return span is not None and version in span


def adaptive_verification_methods(version: Version) -> list[str]:
    return sorted(m for m, span in ADAPTIVE_VERIFICATION_METHODS.items() if version in span)


def supports(version: Version, feature: Feature) -> bool:
    return any(version in span for span in FEATURES[feature])


def availability(feature: Feature) -> str:
    """Plain words for where a feature exists, for error messages."""
    return " and ".join(span.describe() for span in FEATURES[feature])


class Engine(StrEnum):
    V0 = "V0"
    V1 = "V1"


V1_DEFAULT = Version("0.8.0")
V1_EAGLE = Version("0.8.3")
V0_SPECULATION = ("draft_model",)
"""Methods the V1 engine could not run before V0 went away: vLLM fell back to V0 for them."""


def engine(version: Version, speculation_method: str | None) -> Engine:
    """Which engine a release runs for this speculation method (None: no speculation).

    V1 is the default from 0.8.0 and the only engine from 0.10.0 (the V0 feature boundary in
    FEATURES). In between, the V1 oracle fell back to V0 for what V1 could not run: a separate
    draft model until V0 was gone (V1 draft_model arrives in 0.15.0), and EAGLE before its V1
    proposer (0.8.3). docs/vllm-versions.md has the evidence, file by file.
    """
    if version < V1_DEFAULT:
        return Engine.V0
    if not supports(version, Feature.V0_ENGINE):
        return Engine.V1
    if speculation_method in V0_SPECULATION:
        return Engine.V0
    if speculation_method in ("eagle", "eagle3") and version < V1_EAGLE:
        return Engine.V0
    return Engine.V1


def default_gpu_memory_utilization(version: Version) -> float:
    return 0.92 if version >= Version("0.20.0") else 0.9


_TAG_VERSION = re.compile(r"^v?(\d+\.\d+\.\d+)(?:[-+.].*)?$")


def version_from_image(image: str) -> Version | None:
    """The vLLM release named by an image tag such as vllm/vllm-openai:v0.8.2, if it names one."""
    reference = image.split("@", 1)[0]
    last_segment = reference.rsplit("/", 1)[-1]
    if ":" not in last_segment:
        return None
    match = _TAG_VERSION.match(last_segment.rsplit(":", 1)[1])
    return parse_version(match.group(1)) if match else None


def parse_version(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None
