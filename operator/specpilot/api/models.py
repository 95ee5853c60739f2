"""The SpeculativeInference resource (specpilot.io/v1alpha1) as pydantic models.

These models are the single source of the CRD schema (see `specpilot.api.crd`), of `specpilot
validate`, and of the admission webhook, so a rule written here holds everywhere.
"""

from __future__ import annotations

import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, PlainSerializer
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from specpilot.catalog import GPU_TYPES

GROUP = "specpilot.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "SpeculativeInference"
PLURAL = "speculativeinferences"
SINGULAR = "speculativeinference"
SHORT_NAMES = ("specinf",)

DEFAULT_IMAGE = "vllm/vllm-openai:v0.33.0"
MAX_DECISIONS = 20

Duration = Annotated[
    str,
    Field(
        pattern=r"^[0-9]+(ms|s|m|h)$",
        max_length=16,
        description="A duration such as 30s, 5m or 1h.",
    ),
]
ModelId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=256,
        pattern=r"^[A-Za-z0-9_./:-]+$",
        description="A Hugging Face model id (org/name) or a path inside the container.",
    ),
]
ResourceName = Annotated[
    str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
]


class SpecModel(BaseModel):
    """Base of every spec model: camelCase on the wire, unknown fields are errors (typos)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
    )


class Quantization(StrEnum):
    NONE = "none"
    FP8 = "fp8"
    INT8 = "int8"
    INT4 = "int4"
    AWQ = "awq"
    GPTQ = "gptq"
    BITSANDBYTES = "bitsandbytes"


class SpeculationMethod(StrEnum):
    DRAFT_MODEL = "draft_model"
    NGRAM = "ngram"
    EAGLE = "eagle"
    EAGLE3 = "eagle3"
    MTP = "mtp"
    SUFFIX = "suffix"
    NONE = "none"


DEFAULT_SPECULATIVE_TOKENS = {
    SpeculationMethod.DRAFT_MODEL: 5,
    SpeculationMethod.NGRAM: 5,
    SpeculationMethod.SUFFIX: 24,
    SpeculationMethod.EAGLE: 3,
    SpeculationMethod.EAGLE3: 3,
    SpeculationMethod.MTP: 1,
}


class PolicyMode(StrEnum):
    AUTO = "auto"
    RECOMMEND = "recommend"
    OFF = "off"


class Slo(StrEnum):
    """The latency the user's service level is stated in: the one the policy compares with the
    baseline (docs/policy.md, "The SLO").

    Goodput (requests or tokens per second that meet a latency target) is not offered: the
    operator reads latency quantiles, not how many requests met a stated target (that takes the
    histogram's count below the target, and the target itself), and the tokens/s it reads is the
    offered load the Service shares between the speculating and the control replicas, not
    what each could serve."""

    P99_TPOT = "P99TPOT"
    MEDIAN_TPOT = "MedianTPOT"
    MEDIAN_TTFT = "MedianTTFT"
    P99_TTFT = "P99TTFT"


class ArchitectureOverride(SpecModel):
    """Architecture facts for a model that is not in specpilot's catalog (from its config.json)."""

    layers: int = Field(ge=1, le=1024, description="num_hidden_layers.")
    hidden_size: int = Field(ge=1, le=1_000_000, description="hidden_size.")
    attention_heads: int = Field(ge=1, le=4096, description="num_attention_heads.")
    kv_heads: int = Field(
        ge=1, le=4096, description="num_key_value_heads (equal to attentionHeads without GQA)."
    )
    head_dim: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="head_dim; hiddenSize / attentionHeads if unset (warning HeadDimAssumed).",
    )
    vocab_size: int = Field(ge=1, le=10_000_000, description="vocab_size.")
    parameters_billions: float = Field(
        gt=0, le=100_000, description="Parameter count in billions (8.03 for Llama-3.1-8B)."
    )
    family: str | None = Field(
        default=None, max_length=64, description="Model family, for draft/target pairing checks."
    )
    tokenizer: str | None = Field(
        default=None,
        max_length=128,
        description="Tokenizer identity; a draft must share it with its target.",
    )
    max_position_embeddings: int | None = Field(
        default=None, ge=16, description="Longest context the model supports."
    )


class VLLMSpec(SpecModel):
    """Which vLLM runs the model."""

    image: str = Field(
        default=DEFAULT_IMAGE,
        min_length=1,
        max_length=512,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$",
        description="vLLM server image. Its tag names the vLLM version unless version is set.",
    )
    version: str | None = Field(
        default=None,
        pattern=r"^[0-9]+\.[0-9]+\.[0-9]+$",
        description="vLLM release the image contains (e.g. 0.33.0); wins over the image tag.",
    )
    extra_args: list[Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=list,
        max_length=64,
        description=(
            "Additional vLLM server arguments, one list item per argument, read as the image's "
            "vLLM release reads them (underscores, =VALUE, abbreviations, short aliases). Options "
            "specpilot manages (model, parallelism, memory, context length, speculation) are "
            "rejected under any spelling: set the matching field. Options the release does not "
            "have are rejected too (see docs/extra-args.md)."
        ),
    )
    port: int = Field(default=8000, ge=1024, le=65535, description="Container port for the API.")


class TargetSpec(SpecModel):
    """The model that serves requests and verifies the draft's tokens."""

    model: ModelId
    quantization: Quantization = Field(
        default=Quantization.NONE,
        description=(
            "Precision of the weights. none: as the checkpoint stores them (its own "
            "quantization_config, if any). fp8 or bitsandbytes: quantize an unquantized "
            "checkpoint while loading. int8, int4, awq, gptq: what a pre-quantized checkpoint "
            "stores (vLLM cannot quantize to them while loading); must agree with its config."
        ),
    )
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"] = Field(
        default="auto", description="Activation and unquantized weight dtype (auto is bfloat16)."
    )
    tensor_parallel_size: int = Field(
        default=1, ge=1, le=64, description="GPUs per pipeline stage."
    )
    pipeline_parallel_size: int = Field(default=1, ge=1, le=64, description="Pipeline stages.")
    max_model_len: int | None = Field(
        default=None,
        ge=16,
        le=10_485_760,
        description="Longest sequence (prompt + output) served; the model's maximum if unset.",
    )
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = Field(
        default="auto", description="KV cache precision; fp8 halves the cache per token."
    )
    architecture: ArchitectureOverride | None = Field(
        default=None, description="Architecture facts for models not in specpilot's catalog."
    )


class DraftSpec(SpecModel):
    """The draft model (draft_model method) or draft head checkpoint (eagle, eagle3)."""

    model: ModelId
    quantization: Quantization = Field(
        default=Quantization.NONE,
        description="Precision of the draft's weights, with the target's rules (none: as stored).",
    )
    tensor_parallel_size: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Draft tensor parallelism; the target's if unset (vLLM V1 requires that).",
    )
    architecture: ArchitectureOverride | None = Field(
        default=None, description="Architecture facts for drafts not in specpilot's catalog."
    )


class NgramSpec(SpecModel):
    """Prompt lookup bounds for the ngram method: n-gram sizes matched against the prompt."""

    prompt_lookup_min: int = Field(default=1, ge=1, le=64, description="Smallest n-gram.")
    prompt_lookup_max: int = Field(default=4, ge=1, le=64, description="Largest n-gram.")


class ScheduleStep(SpecModel):
    """Speculative tokens for a range of batch sizes; 0 turns speculation off for that range."""

    min_batch_size: int = Field(ge=1, le=1_000_000, description="First batch size (inclusive).")
    max_batch_size: int = Field(ge=1, le=1_000_000, description="Last batch size (inclusive).")
    num_speculative_tokens: int = Field(ge=0, le=32, description="Draft tokens in this range.")


class SpeculationSpec(SpecModel):
    """How tokens are proposed. These are vLLM start-up arguments: changing them restarts pods."""

    method: SpeculationMethod = Field(
        description=(
            "draft_model (a smaller model of the same family), ngram (prompt lookup), eagle or "
            "eagle3 (draft heads), mtp (the model's own multi-token-prediction layers), suffix "
            "(suffix-tree lookup), or none."
        )
    )
    draft: DraftSpec | None = Field(
        default=None, description="Required for draft_model, eagle and eagle3."
    )
    num_speculative_tokens: int | None = Field(
        default=None,
        ge=1,
        le=32,
        description="Draft tokens per step (k), the most any schedule step may use. Default: 5 "
        "for draft_model and ngram, 3 for eagle and eagle3, 1 for mtp, 24 for suffix (vLLM's).",
    )
    ngram: NgramSpec | None = Field(default=None, description="Bounds for the ngram method.")
    schedule: list[ScheduleStep] | None = Field(
        default=None,
        min_length=1,
        max_length=32,
        description="Per-batch-size k (vLLM 0.24.0+): non-overlapping ranges, the first starting "
        "at batch size 1; gaps keep the previous step's k.",
    )
    adaptive_verification: bool = Field(
        default=False,
        description="Let vLLM choose, each step, how much of the draft to verify, from a cost "
        "profile measured at start-up and its running acceptance (enable_adaptive_verification; "
        "vLLM 0.30.0+ for eagle, eagle3 and mtp, 0.31.0+ for draft_model; needs full CUDA "
        "graphs and no pipeline parallelism). The engine then trims speculation under load by "
        "itself; acceptance reads a few points lower.",
    )
    acceptance_method: Literal["rejection_sampler", "typical_acceptance_sampler"] | None = Field(
        default=None, description="V0 engine only (vLLM before 0.10.0)."
    )
    typical_acceptance_posterior_threshold: float | None = Field(
        default=None, gt=0, lt=1, description="V0 typical acceptance sampler threshold."
    )
    typical_acceptance_posterior_alpha: float | None = Field(
        default=None, gt=0, lt=1, description="V0 typical acceptance sampler alpha."
    )
    disable_by_batch_size: int | None = Field(
        default=None,
        ge=2,
        le=1_000_000,
        description="V0 engine only: turn speculation off at this many running requests.",
    )

    @property
    def effective_num_speculative_tokens(self) -> int:
        return self.num_speculative_tokens or DEFAULT_SPECULATIVE_TOKENS.get(self.method, 0)


GPU_TYPE_NAMES = [*GPU_TYPES, "custom"]


def _known_gpu_type(name: str) -> str:
    if name not in GPU_TYPE_NAMES:
        raise PydanticCustomError(
            "unknown_gpu_type",
            "Unknown GPU type",
            {"fix": f"use one of {', '.join(GPU_TYPES)}, or custom with memoryGB set."},
        )
    return name


class GPUSpec(SpecModel):
    """The GPUs each replica gets."""

    type: Annotated[str, AfterValidator(_known_gpu_type)] = Field(
        description="GPU model from specpilot's catalog, or custom with memoryGB set.",
        json_schema_extra={"enum": list[JsonValue](GPU_TYPE_NAMES)},
    )
    count: int = Field(ge=1, le=64, description="GPUs per replica; must equal TP x PP.")
    memory_gb: float | None = Field(
        default=None,
        alias="memoryGB",
        gt=0,
        le=4096,
        description="Memory per GPU in GB (10^9 bytes, the vendor's figure: 80 for an H100 80GB; "
        "nvidia-smi reports MiB, so GB = MiB x 0.001049); required for type custom, overrides "
        "the catalog.",
    )
    memory_utilization: float | None = Field(
        default=None,
        gt=0,
        le=0.99,
        description="vLLM --gpu-memory-utilization: share of GPU memory vLLM may use "
        "(the version's default, 0.9, if unset).",
    )
    overhead_gb: float | None = Field(
        default=None,
        alias="overheadGB",
        ge=0,
        le=4096,
        description="Memory per GPU in GB (10^9 bytes) reserved for activations and non-torch "
        "allocations; estimated from the model if unset (see docs/planner.md).",
    )
    resource_name: str = Field(
        default="nvidia.com/gpu",
        max_length=253,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$",
        description="Extended resource requested for the GPUs.",
    )
    shm_size: str = Field(
        default="16Gi",
        pattern=r"^[0-9]+(Mi|Gi)$",
        description="Size of the in-memory /dev/shm volume (NCCL needs it with TP > 1), as a "
        "Kubernetes quantity in Mi or Gi (binary: 1Gi = 2^30 bytes).",
    )


class PodOverrides(SpecModel):
    """Kubernetes settings copied into the vLLM pods."""

    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels the pods must run on (e.g. a GPU product label)."""
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    """Tolerations, e.g. for tainted GPU nodes."""
    affinity: dict[str, Any] | None = None
    """Pod affinity and anti-affinity rules."""
    resources: dict[str, Any] | None = None
    """CPU and memory requests/limits; GPUs come from spec.gpus."""
    env: list[dict[str, Any]] = Field(default_factory=list)
    """Extra environment variables for the vLLM container (e.g. HF_TOKEN from a Secret)."""
    volumes: list[dict[str, Any]] = Field(default_factory=list)
    """Extra pod volumes (e.g. a model cache)."""
    volume_mounts: list[dict[str, Any]] = Field(default_factory=list)
    """Mounts of those volumes into the vLLM container."""
    image_pull_secrets: list[dict[str, str]] = Field(default_factory=list)
    """Secrets for pulling the vLLM image."""
    service_account_name: str | None = Field(default=None, max_length=253)
    """ServiceAccount the vLLM pods run as."""
    run_as_user: int = Field(default=1000, ge=1, le=2147483647)
    """UID and GID of the vLLM container; never root, so the pods meet the restricted Pod
    Security profile. HOME is a writable emptyDir, where vLLM and Hugging Face keep caches."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Extra pod labels (specpilot's own labels win on conflict)."""
    annotations: dict[str, str] = Field(default_factory=dict)
    """Extra pod annotations."""


class RolloutSurge(StrEnum):
    NONE = "None"
    ONE_POD = "OnePod"


class RolloutSpec(SpecModel):
    """How a change of the vLLM pods is rolled out. Every change restarts GPU pods."""

    surge: RolloutSurge = Field(
        default=RolloutSurge.NONE,
        description="None: replace one pod at a time without extra GPUs (maxSurge 0, "
        "maxUnavailable 1); with a single replica a change is an outage for the pod's startup. "
        "OnePod: start one new pod on spare GPUs before an old one stops (maxSurge 1, "
        "maxUnavailable 0); only where the cluster has a replica's GPUs free, else the new pod "
        "stays Pending and the old one keeps serving the old configuration.",
    )


class PersistentVolumeClaimRef(SpecModel):
    """A PersistentVolumeClaim in the resource's namespace."""

    claim_name: ResourceName = Field(description="The claim's name.")


class ModelCacheSpec(SpecModel):
    """A volume kept across pod restarts that holds the Hugging Face cache (HF_HOME)."""

    persistent_volume_claim: PersistentVolumeClaimRef = Field(
        description="The claim mounted at /model-cache as HF_HOME. Replicas on several nodes "
        "share it only with access mode ReadWriteMany."
    )


class Thresholds(SpecModel):
    """Decision thresholds; the defaults are the decision framework's."""

    disable_below_acceptance: float = Field(
        default=0.50,
        ge=0,
        le=1,
        description="Acceptance below this is net-negative: a breach whatever the latency "
        "(failureLimit of them disable speculation).",
    )
    review_below_acceptance: float = Field(
        default=0.65,
        ge=0,
        le=1,
        description="From disableBelowAcceptance up to this, acceptance is near break-even and "
        "latency against the baseline decides: the SLO's latency (spec.policy.slo) beyond "
        "maxP99TpotRegression (or median TTFT beyond maxP50TtftRegression) is a breach; without "
        "a baseline for the SLO's latency the check holds, speculation staying on. At or above "
        "it speculation is kept unless latency regresses that much.",
    )
    max_p99_tpot_regression: float = Field(
        default=0.10,
        ge=0,
        le=10,
        description="Allowed regression of the SLO's latency (spec.policy.slo: P99 TPOT unless "
        "stated otherwise) against the baseline, as a fraction (0.10).",
    )
    max_p50_ttft_regression: float = Field(
        default=1.5,
        ge=0,
        le=100,
        description="Allowed median TTFT regression against the baseline (1.5 = 2.5x). "
        "Speculation's longer steps raise TTFT somewhat; requests queueing behind the draft "
        "near saturation raise the median far more (the tail is long prompts either way).",
    )
    quantization_acceptance_drop: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Acceptance drop after a quantization change that steps the target back.",
    )


class Checkpoint(SpecModel):
    """An alternative target checkpoint for the quantization ladder."""

    model: ModelId
    quantization: Quantization = Quantization.NONE


class PolicySpec(SpecModel):
    """How the control loop acts on metrics."""

    mode: PolicyMode = Field(
        default=PolicyMode.AUTO,
        description="auto acts; recommend only reports (events and status); off does nothing.",
    )
    interval: Duration = Field(default="30s", description="Time between checks.")
    window: Duration = Field(default="5m", description="PromQL rate window.")
    thresholds: Thresholds = Field(default_factory=Thresholds)
    failure_limit: int = Field(
        default=3, ge=1, le=100, description="Consecutive breaches before acting."
    )
    consecutive_success_limit: int = Field(
        default=5, ge=1, le=100, description="Consecutive good checks before undoing an action."
    )
    cooldown: Duration = Field(default="10m", description="Least time between two restarts.")
    quantization_ladder: list[Checkpoint] = Field(
        default_factory=list,
        max_length=8,
        description="Target checkpoints to step back to, most preferred first.",
    )
    control_replicas: int = Field(
        default=0,
        ge=0,
        le=100,
        description="Replicas run without speculation as a live baseline.",
    )
    slo: Slo = Field(
        default=Slo.P99_TPOT,
        description="The latency the service level is stated in, compared with the baseline's "
        "(maxP99TpotRegression is its margin): P99TPOT, MedianTPOT (a mixed workload whose "
        "median matters more than its tail; the MixedWorkload warning still says when the tail "
        "regresses), MedianTTFT or P99TTFT (speculation improves TPOT, not TTFT: expect it "
        "off). Median TTFT beyond maxP50TtftRegression is a breach whatever the SLO. Goodput is "
        "not offered: the operator does not read how many requests meet a latency target.",
    )


class SecretKeyRef(SpecModel):
    """A key in a Secret in the resource's namespace."""

    name: ResourceName
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")


class MonitoringSpec(SpecModel):
    """Where the control loop reads metrics."""

    prometheus_url: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https?://[^\s/@?#]+(/[^\s@?#]*)?$",
        description="Prometheus base URL (http or https, no user:password, query or fragment). "
        "Only the operator-wide Prometheus and the URLs its admin allows are read.",
    )
    bearer_token_secret: SecretKeyRef | None = Field(
        default=None, description="Secret key holding a bearer token for Prometheus."
    )
    ca_bundle_secret: SecretKeyRef | None = Field(
        default=None, description="Secret key holding the CA bundle that signs Prometheus' cert."
    )
    pod_monitor: bool = Field(
        default=False, description="Also create a PodMonitor (Prometheus Operator) for the pods."
    )
    scrape_interval: Duration = Field(default="15s", description="PodMonitor scrape interval.")


class SpeculativeInferenceSpec(SpecModel):
    """Desired state of a vLLM deployment with speculative decoding."""

    vllm: VLLMSpec = Field(default_factory=VLLMSpec)
    target: TargetSpec
    speculation: SpeculationSpec | None = Field(
        default=None, description="Speculative decoding; absent means none."
    )
    gpus: GPUSpec
    replicas: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="Serving replicas; unset leaves replicas to an autoscaler (HPA, KEDA).",
    )
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    model_cache: ModelCacheSpec | None = Field(
        default=None,
        description="Where target, draft and ladder checkpoints are kept between restarts, so a "
        "new pod loads them from disk instead of downloading them (see docs/rendering.md).",
    )
    pod: PodOverrides = Field(default_factory=PodOverrides)
    policy: PolicySpec = Field(default_factory=PolicySpec)
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec)


def rfc3339(moment: datetime.datetime) -> str:
    """A time as status holds it: RFC 3339 in UTC with a Z ('2026-01-01T00:00:00Z'), fractions of
    a second only where there are some; what every version of the operator has written."""
    return moment.astimezone(datetime.UTC).isoformat().removesuffix("+00:00") + "Z"


def _in_utc(moment: datetime.datetime) -> datetime.datetime:
    """A time read from status, in UTC; one without an offset is taken as UTC."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=datetime.UTC)
    return moment.astimezone(datetime.UTC)


Timestamp = Annotated[datetime.datetime, AfterValidator(_in_utc), PlainSerializer(rfc3339)]
"""Every time in status: a UTC datetime in Python, `rfc3339` on the wire."""


def whole_seconds(moment: datetime.datetime) -> datetime.datetime:
    """The time a condition, a decision or a reading is stamped with: Kubernetes' times
    (lastTransitionTime) have whole seconds, and status' other stamps follow them."""
    return moment.replace(microsecond=0)


class StatusModel(BaseModel):
    """Base of the status models: written by the operator, tolerant of fields it adds later."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        use_attribute_docstrings=True,
    )


class Condition(StatusModel):
    """A Kubernetes-style condition (Ready, Planned, SpeculationActive, ...)."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: Timestamp | None = None
    observed_generation: int | None = None


class PlanSummary(StatusModel):
    """The memory plan the pods were rendered from."""

    verdict: Literal["fits", "tight", "does-not-fit"]
    weights_gb_per_gpu: float = Field(alias="weightsGBPerGPU", description="GB = 10^9 bytes.")
    kv_cache_gb_per_gpu: float = Field(alias="kvCacheGBPerGPU", description="GB = 10^9 bytes.")
    max_concurrent_sequences: int
    max_concurrent_sequences_without_speculation: int
    draft_ratio: str | None = None
    findings: list[str] = Field(default_factory=list, description="Finding codes.")


class EffectiveConfiguration(StatusModel):
    """What the running pods do, which can differ from spec after a control decision."""

    speculation: Literal["on", "off"]
    method: str
    target_model: str
    target_quantization: str
    checkpoint_index: int = Field(
        default=0, description="0 is spec.target; n is spec.policy.quantizationLadder[n-1]."
    )
    num_speculative_tokens: int | None = None
    engine_schedule: str | None = Field(
        default=None,
        description="The per-batch-size k the server runs with, when it has a schedule.",
    )
    vllm_version: str


class LastMetrics(StatusModel):
    """The control loop's latest reading from Prometheus."""

    sampled_at: Timestamp
    acceptance_rate: float | None = None
    mean_accepted_length: float | None = None
    p50_tpot_ms: float | None = None
    p99_tpot_ms: float | None = None
    p95_tpot_ms: float | None = None
    p99_ttft_ms: float | None = None
    kv_cache_usage: float | None = None
    requests_running: float | None = None
    requests_waiting: float | None = None
    requests_per_second: float | None = None
    generation_tokens_per_second: float | None = None
    baseline_p99_tpot_ms: float | None = None
    p50_ttft_ms: float | None = None
    baseline_p50_ttft_ms: float | None = None
    """From the control replicas (live A/B), or the reading recorded while speculation was off."""


class DecisionRecord(StatusModel):
    """One control decision as status.decisions keeps it, with the numbers behind it."""

    time: Timestamp
    action: str
    reason: str


class SpeedupBand(StatusModel):
    """What was measured of speculation's speedup at one band of running batch sizes per
    replica (control/curve.py learns it; it lives in status so a restart keeps it)."""

    min_batch: int = Field(description="The band's smallest running batch per replica.")
    max_batch: int = Field(description="The band's largest running batch per replica.")
    readings: int = Field(default=0, description="Checks that measured this band.")
    log_speedup: float = Field(
        default=0.0,
        description="Exponentially weighted mean of log(control replicas' latency / server's "
        "latency), in spec.policy.slo: above 0, speculation is faster.",
    )
    log_variance: float = Field(
        default=0.0, description="Exponentially weighted variance of the same."
    )
    last_read: Timestamp | None = Field(default=None, description="The band's latest reading.")


class PolicyState(StatusModel):
    """What the control policy remembers between checks. It lives in status, so an operator
    restart neither forgets nor repeats an action."""

    speculation_on: bool = True
    breaches: int = 0
    successes: int = 0
    last_check: Timestamp | None = None
    last_change: Timestamp | None = None
    crossover_load: float | None = Field(
        default=None,
        description="Requests/s per replica at which speculation stopped paying (latency); "
        "unset when low acceptance stopped it.",
    )
    probes: int = Field(
        default=0,
        description="Probes since acceptance last paid; each doubles the wait for the next.",
    )
    rollout_acceptance: float | None = Field(
        default=None, description="Acceptance first measured after speculation was (re)enabled."
    )
    last_acceptance: float | None = None
    checkpoint_index: int = Field(
        default=0, description="0 is spec.target; n is spec.policy.quantizationLadder[n-1]."
    )
    target: str | None = Field(
        default=None, description="The spec.target (model@quantization) this state is about."
    )
    pre_change_acceptance: float | None = Field(
        default=None, description="Acceptance before the last quantization change."
    )
    baseline_p50_tpot: float | None = Field(
        default=None, description="P50 TPOT (s) recorded while speculation was last off."
    )
    baseline_p99_tpot: float | None = Field(
        default=None, description="P99 TPOT (s) recorded while speculation was last off."
    )
    baseline_p50_ttft: float | None = Field(
        default=None, description="Median TTFT (s) recorded while speculation was last off."
    )
    baseline_p99_ttft: float | None = Field(
        default=None, description="P99 TTFT (s) recorded while speculation was last off."
    )
    baseline_load: float | None = Field(
        default=None, description="Requests/s per replica when the baseline was recorded."
    )
    active_warnings: list[str] = Field(
        default_factory=list, description="Warnings standing now; each is posted once."
    )
    recent_changes: list[Timestamp] = Field(
        default_factory=list,
        description="When the control loop last changed the pods (disable, enable, quantization "
        "step): the changes of the last hour count against the operator's ceiling. Holds at "
        "most that many.",
    )
    speedup_curve: list[SpeedupBand] = Field(
        default_factory=list,
        description="Speculation's measured speedup per band of running batch sizes (needs "
        "control replicas).",
    )
    crossover_batch: int | None = Field(
        default=None,
        description="The batch band where speculation was last turned off for latency: the "
        "engine schedule's provisional crossover until speedupCurve settles one.",
    )
    engine_schedule_from: int | None = Field(
        default=None,
        description="The batch size from which the server's in-engine schedule "
        "(num_speculative_tokens_per_batch_size) turns speculation off, learned from "
        "speedupCurve; unset while none is rendered.",
    )


class SpeculativeInferenceStatus(StatusModel):
    """Observed state, written only by the operator."""

    phase: Literal["Pending", "Invalid", "Progressing", "Ready", "Degraded"] | None = None
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    plan: PlanSummary | None = None
    effective: EffectiveConfiguration | None = None
    last_metrics: LastMetrics | None = None
    control: PolicyState | None = Field(
        default=None, description="The control loop's memory (hysteresis counts, crossover)."
    )
    decisions: list[DecisionRecord] = Field(
        default_factory=list,
        max_length=MAX_DECISIONS,
        description="Most recent control decisions, newest last.",
    )
    kopf: dict[str, Any] | None = Field(
        default=None,
        description="Handler bookkeeping of the operator framework (kopf); not for users.",
    )


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(
        min_length=1,
        max_length=54,
        pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$",
        description="Lower-case DNS label of at most 54 characters (room for '-baseline').",
    )
    namespace: str | None = None


class SpeculativeInference(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    api_version: Literal["specpilot.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["SpeculativeInference"]
    metadata: ObjectMeta
    spec: SpeculativeInferenceSpec
    status: SpeculativeInferenceStatus | None = None
