"""Memory math: weights, KV cache budget and concurrency per GPU, as vLLM will size them.

vLLM sizes its KV cache as total memory x gpu_memory_utilization minus weights, the activation
peak and non-torch memory. A draft's weights come one-for-one out of that cache and, on V1, its
attention layers share the cache's pages, so every token costs target + draft bytes.
"""

from __future__ import annotations

import math
from typing import Literal

from packaging.version import Version
from pydantic import BaseModel

from specpilot import vllm_versions
from specpilot.api.models import (
    Quantization,
    SpeculationMethod,
    SpeculativeInferenceSpec,
)
from specpilot.catalog import GPU_TYPES
from specpilot.findings import Finding, Severity, error, info, warning
from specpilot.planning.checkpoint import CheckpointFacts, Checkpoints, facts_for
from specpilot.planning.quantization import (
    QuantizationChoice,
    release_findings,
    resolve,
    weight_bytes,
)

GB = 1e9
FULL_PRECISION_BYTES = {"float": 4.0, "float32": 4.0}
"""Bytes per unquantized parameter by dtype; everything else (auto, bfloat16, half) is 2."""

PROFILED_BATCH_TOKENS = 8192
"""Tokens in V1's profiling forward pass (max_num_batched_tokens on datacenter GPUs)."""
V0_MIN_BATCHED_TOKENS = 2048
V0_CHUNKED_PREFILL_ABOVE = 32768
"""V0 turns chunked prefill on by itself only above this max_model_len; below it, its profiling
pass runs max(max_model_len, 2048) tokens at once, so the activation peak grows with it."""
ACTIVATION_BYTES_PER_TOKEN_PER_HIDDEN = 2.0
ACTIVATION_BYTES_PER_TOKEN_PER_INTERMEDIATE = 7.2
"""Peak activation bytes per profiled token: 2 per hidden unit (the residual stream, whole on
every GPU) and 7.2 per MLP unit (gate/up outputs and their product, split by TP). Fitted on V0
logs of Llama-3.1-8B (110 KB/token) and Qwen2.5-7B (143 KB/token); docs/planner.md."""
INTERMEDIATE_PER_HIDDEN = 3.5
"""A model without intermediate_size in its facts (spec architecture) is assumed this wide."""
PROFILED_SEQUENCES = 256
NON_TORCH_GB = {vllm_versions.Engine.V0: 0.25, vllm_versions.Engine.V1: 1.0}
"""CUDA context and allocator slack: V0 logs 0.05-0.35 GiB; V1 adds its compile and sampler
buffers (docs/planner.md, the startup-log table)."""
CUDA_GRAPHS_GB = 1.0
"""CUDA graphs, counted inside the budget from the release that profiles them (0.7-2.2 GiB)."""
NCCL_GB = 0.5
FOUR_BIT_ACTIVATION_FACTOR = 1.5
"""4-bit weight GEMMs (AWQ, GPTQ) peak 1.5x higher in the profiling pass: V0 logs of
Qwen2.5-72B-AWQ (5.66 GiB) and Qwen3-32B-AWQ (2.74 GiB) against the BF16 fit."""
FOUR_BIT = (Quantization.INT4, Quantization.AWQ, Quantization.GPTQ, Quantization.BITSANDBYTES)

DRAFT_VRAM_SHARE_LIMIT = 0.15
TARGET_VRAM_SHARE_LIMIT = 0.70
LONG_CONTEXT_TOKENS = 32768
TIGHT_CONCURRENCY = 8

Verdict = Literal["fits", "tight", "does-not-fit"]


class ModelFootprint(BaseModel):
    model: str
    quantization: Quantization
    parameters_billions: float
    tensor_parallel_size: int
    weights_gb: float
    weights_gb_per_gpu: float
    kv_bytes_per_token_per_gpu: int
    facts_source: str = ""
    """Where the model's facts come from: its checkpoint, the catalog or the spec."""
    weights_basis: str = ""
    """How the weights were sized: the checkpoint's real bytes, or an estimate."""
    checkpoint_quantization: str | None = None
    """The checkpoint's own quant_method (config.json), None when it is unquantized."""
    quantization_flag: str | None = None
    """What --quantization the command carries for this model (None: none at all)."""


class MemoryPlan(BaseModel):
    verdict: Verdict
    vllm_version: str
    gpu_type: str
    gpu_count: int
    gpu_memory_gb: float
    memory_utilization: float
    max_model_len: int | None
    findings: list[Finding]
    target: ModelFootprint | None = None
    """None when the target's architecture is unknown (nothing else can be planned)."""
    draft: ModelFootprint | None = None
    overhead_gb_per_gpu: float = 0.0
    left_after_weights_gb: float = 0.0
    """All GPUs' memory minus all weights: the framework's 'left for KV cache' before overheads."""
    kv_cache_gb_per_gpu: float = 0.0
    kv_cache_tokens: int = 0
    kv_cache_tokens_without_speculation: int = 0
    max_concurrent_sequences: int = 0
    max_concurrent_sequences_without_speculation: int = 0
    draft_ratio: float | None = None
    """Target parameters per draft parameter (9.0 means 1:9)."""
    engine: vllm_versions.Engine = vllm_versions.Engine.V1
    """The engine this release runs for this speculation method (V0 or V1)."""
    profiled_tokens: int = 0
    """Tokens in vLLM's profiling pass, which sets the activation peak."""


def kv_bytes_per_token_per_gpu(
    arch: CheckpointFacts, tensor_parallel: int, pipeline_parallel: int, dtype_bytes: float
) -> int:
    """K and V per layer and KV head; with MLA one latent (kv_lora_rank + qk_rope_head_dim) per
    layer, which every GPU holds whole (vLLM's MLA cache has one head and is not split by TP)."""
    layers_per_stage = math.ceil(arch.layers / pipeline_parallel)
    if arch.mla is not None:
        latent = arch.mla.kv_lora_rank + arch.mla.qk_rope_head_dim
        return int(layers_per_stage * latent * dtype_bytes)
    kv_heads_per_gpu = max(1, arch.kv_heads // tensor_parallel)
    return int(2 * layers_per_stage * kv_heads_per_gpu * arch.head_dim * dtype_bytes)


def profiled_tokens(engine: vllm_versions.Engine, max_model_len: int | None) -> int:
    """Tokens in the profiling forward pass whose activation peak vLLM keeps free."""
    if engine is vllm_versions.Engine.V1:
        return PROFILED_BATCH_TOKENS
    if max_model_len is None or max_model_len > V0_CHUNKED_PREFILL_ABOVE:
        return V0_MIN_BATCHED_TOKENS
    return max(max_model_len, V0_MIN_BATCHED_TOKENS)


def estimated_overhead_gb(
    arch: CheckpointFacts,
    tensor_parallel: int,
    tokens: int,
    engine: vllm_versions.Engine,
    version: Version,
    precision: Quantization,
) -> float:
    """Activation peak of vLLM's profiling pass (`tokens` at once) plus non-torch memory (and
    CUDA graphs where the release counts them), per GPU."""
    intermediate = arch.intermediate_size or INTERMEDIATE_PER_HIDDEN * arch.hidden_size
    per_token = (
        ACTIVATION_BYTES_PER_TOKEN_PER_HIDDEN * arch.hidden_size
        + ACTIVATION_BYTES_PER_TOKEN_PER_INTERMEDIATE * intermediate / tensor_parallel
    )
    activations = tokens * per_token * (FOUR_BIT_ACTIVATION_FACTOR if precision in FOUR_BIT else 1)
    logits = PROFILED_SEQUENCES * arch.vocab_size * 4
    nccl = NCCL_GB if tensor_parallel > 1 else 0.0
    graphs = (
        CUDA_GRAPHS_GB
        if vllm_versions.supports(version, vllm_versions.Feature.CUDA_GRAPHS_IN_BUDGET)
        else 0.0
    )
    return NON_TORCH_GB[engine] + graphs + nccl + (activations + logits) / GB


def _draft_head_estimate(model: str, target: CheckpointFacts) -> CheckpointFacts:
    """EAGLE/MTP heads not in the catalog: one decoder layer of the target's shape plus fusion."""
    per_layer = target.parameters_billions / target.layers
    return target.model_copy(
        update={
            "model": model,
            "source": f"an estimate from {target.model}",
            "layers": 1,
            "parameters_billions": round(1.5 * per_layer, 3),
            "quantization": None,
            "weight_bytes": None,
        }
    )


def _kv_dtype_bytes(spec: SpeculativeInferenceSpec) -> float:
    if spec.target.kv_cache_dtype != "auto":
        return 1.0
    return FULL_PRECISION_BYTES.get(spec.target.dtype, 2.0)


class _Draft(BaseModel):
    model: str
    arch: CheckpointFacts
    quantization: Quantization
    tensor_parallel_size: int
    estimated: bool


def _resolve_draft(
    spec: SpeculativeInferenceSpec,
    target: CheckpointFacts,
    checkpoints: Checkpoints,
    findings: list[Finding],
) -> _Draft | None:
    speculation = spec.speculation
    if speculation is None or speculation.method in (
        SpeculationMethod.NONE,
        SpeculationMethod.NGRAM,
        SpeculationMethod.SUFFIX,
    ):
        return None
    draft = speculation.draft
    model = draft.model if draft else spec.target.model
    tp = (draft.tensor_parallel_size if draft else None) or spec.target.tensor_parallel_size
    quantization = draft.quantization if draft else spec.target.quantization
    arch = None
    if draft is not None:
        arch, read_findings = facts_for(
            model, draft.architecture, checkpoints, "spec.speculation.draft.model"
        )
        findings += read_findings
    if arch is not None:
        return _Draft(
            model=model,
            arch=arch,
            quantization=quantization,
            tensor_parallel_size=tp,
            estimated=False,
        )
    if speculation.method is SpeculationMethod.DRAFT_MODEL:
        findings.append(
            error(
                "UnknownDraftModel",
                "spec.speculation.draft.model",
                f"{model} is not in specpilot's model catalog and its checkpoint was not read, "
                "so its memory cannot be planned.",
                "let specpilot read its config.json (hub access or --checkpoint-dir), or add "
                "spec.speculation.draft.architecture with the facts from its config.json.",
            )
        )
        return None
    estimate = _draft_head_estimate(model, target)
    findings.append(
        info(
            "DraftHeadEstimated",
            "spec.speculation.draft.model",
            f"{model} is not in the catalog; its {speculation.method.value} head is estimated "
            f"as one target-shaped layer ({estimate.parameters_billions:.2f}B parameters).",
        )
    )
    return _Draft(
        model=model,
        arch=estimate,
        quantization=quantization,
        tensor_parallel_size=tp,
        estimated=True,
    )


def _footprint(
    model: str,
    arch: CheckpointFacts,
    choice: QuantizationChoice,
    dtype: str,
    tensor_parallel: int,
    pipeline_parallel: int,
    kv_dtype_bytes: float,
) -> ModelFootprint:
    weights = weight_bytes(arch, choice, dtype)
    weights_gb = weights.total / GB
    return ModelFootprint(
        model=model,
        quantization=choice.precision,
        parameters_billions=arch.parameters_billions,
        tensor_parallel_size=tensor_parallel,
        weights_gb=weights_gb,
        weights_gb_per_gpu=weights_gb / (tensor_parallel * pipeline_parallel),
        facts_source=arch.source,
        weights_basis=weights.basis,
        checkpoint_quantization=arch.quantization.method if arch.quantization else None,
        quantization_flag=choice.flag,
        kv_bytes_per_token_per_gpu=kv_bytes_per_token_per_gpu(
            arch, tensor_parallel, pipeline_parallel, kv_dtype_bytes
        ),
    )


class _Budget(BaseModel):
    """One replica's memory per GPU: the weights, and the KV cache left after them."""

    gpu_memory_gb: float
    usable_gb: float
    """What vLLM may use: gpu_memory_gb x memory utilization."""
    target: ModelFootprint
    draft: ModelFootprint | None
    overhead_gb: float
    kv_cache_gb: float
    tokens: int
    tokens_without_speculation: int
    max_model_len: int | None
    concurrency: int
    concurrency_without_speculation: int


def plan(
    spec: SpeculativeInferenceSpec, version: Version, checkpoints: Checkpoints | None = None
) -> MemoryPlan:
    """Plan one replica's memory; every problem is a finding, never an exception.

    `checkpoints`: what was read of the models' checkpoints; without it the spec's architecture
    and the catalog describe them."""
    checkpoints = checkpoints or Checkpoints()
    findings: list[Finding] = []
    gpus = spec.gpus
    gpu_memory = gpus.memory_gb or (GPU_TYPES[gpus.type].memory_gb if gpus.type in GPU_TYPES else 0)
    utilization = gpus.memory_utilization or vllm_versions.default_gpu_memory_utilization(version)
    gpu_count = spec.target.tensor_parallel_size * spec.target.pipeline_parallel_size
    unsized = MemoryPlan(
        verdict="does-not-fit",
        vllm_version=str(version),
        gpu_type=gpus.type,
        gpu_count=gpu_count,
        gpu_memory_gb=gpu_memory,
        memory_utilization=utilization,
        max_model_len=spec.target.max_model_len,
        findings=[],
    )
    """The GPUs alone: all there is to plan when the target's architecture is unknown."""
    target_arch, read_findings = facts_for(
        spec.target.model, spec.target.architecture, checkpoints, "spec.target.model"
    )
    findings += read_findings
    if target_arch is None:
        findings.append(
            error(
                "UnknownTargetModel",
                "spec.target.model",
                f"{spec.target.model} is not in specpilot's model catalog and its checkpoint "
                "was not read, so its memory cannot be planned.",
                "let specpilot read its config.json (hub access or --checkpoint-dir), or add "
                "spec.target.architecture with the facts from its config.json.",
            )
        )
        return unsized.model_copy(update={"findings": findings})
    draft_info = _resolve_draft(spec, target_arch, checkpoints, findings)
    target_choice, quantization_findings = resolve(
        spec.target.quantization, target_arch, "spec.target.quantization"
    )
    findings += quantization_findings
    findings += release_findings(target_arch, version, "spec.target.model")
    draft_choice = None
    if draft_info is not None:
        draft_choice, quantization_findings = resolve(
            draft_info.quantization, draft_info.arch, "spec.speculation.draft.quantization"
        )
        findings += quantization_findings
        findings += release_findings(draft_info.arch, version, "spec.speculation.draft.model")
    speculation = spec.speculation
    method = (
        speculation.method.value
        if speculation is not None and speculation.method is not SpeculationMethod.NONE
        else None
    )
    engine = vllm_versions.engine(version, method)
    budget = _budget(
        spec,
        target_arch,
        target_choice,
        draft_info,
        draft_choice,
        gpu_memory * utilization,
        gpu_memory,
        version,
        engine,
    )
    ratio = _draft_ratio(spec, target_arch, draft_info)
    findings += _memory_findings(spec, version, engine, budget)
    findings += _model_findings(
        spec, target_arch, budget.target.quantization, draft_info, budget.max_model_len, ratio
    )
    target, draft = budget.target, budget.draft
    return unsized.model_copy(
        update={
            "verdict": _verdict(findings, budget.concurrency),
            "target": target,
            "draft": draft,
            "overhead_gb_per_gpu": budget.overhead_gb,
            "left_after_weights_gb": gpu_memory * gpu_count
            - target.weights_gb
            - (draft.weights_gb if draft else 0.0),
            "kv_cache_gb_per_gpu": budget.kv_cache_gb,
            "kv_cache_tokens": budget.tokens,
            "kv_cache_tokens_without_speculation": budget.tokens_without_speculation,
            "max_model_len": budget.max_model_len,
            "max_concurrent_sequences": budget.concurrency,
            "max_concurrent_sequences_without_speculation": (
                budget.concurrency_without_speculation
            ),
            "draft_ratio": ratio,
            "engine": engine,
            "profiled_tokens": profiled_tokens(engine, budget.max_model_len),
            "findings": findings,
        }
    )


def _budget(
    spec: SpeculativeInferenceSpec,
    target_arch: CheckpointFacts,
    target_choice: QuantizationChoice,
    draft_info: _Draft | None,
    draft_choice: QuantizationChoice | None,
    usable: float,
    gpu_memory: float,
    version: Version,
    engine: vllm_versions.Engine,
) -> _Budget:
    """The weights per GPU, what vLLM leaves for the KV cache after them and the overhead, and
    how many tokens and full-length sequences that holds, with the draft and without it."""
    tp, pp = spec.target.tensor_parallel_size, spec.target.pipeline_parallel_size
    kv_bytes = _kv_dtype_bytes(spec)
    dtype = spec.target.dtype
    target = _footprint(
        spec.target.model,
        target_arch,
        target_choice,
        dtype,
        tp,
        pp,
        kv_bytes,
    )
    draft = (
        _footprint(
            draft_info.model,
            draft_info.arch,
            draft_choice,
            dtype,
            draft_info.tensor_parallel_size,
            1,
            kv_bytes,
        )
        if draft_info and draft_choice
        else None
    )
    draft_weights = draft.weights_gb_per_gpu if draft else 0.0
    draft_kv = draft.kv_bytes_per_token_per_gpu if draft else 0
    max_model_len = spec.target.max_model_len or target_arch.max_position_embeddings
    overhead = spec.gpus.overhead_gb
    if overhead is None:
        overhead = estimated_overhead_gb(
            target_arch,
            tp,
            profiled_tokens(engine, max_model_len),
            engine,
            version,
            target.quantization,
        )
    kv_gb = usable - target.weights_gb_per_gpu - draft_weights - overhead
    tokens = _tokens(kv_gb, target.kv_bytes_per_token_per_gpu + draft_kv)
    tokens_plain = _tokens(kv_gb + draft_weights, target.kv_bytes_per_token_per_gpu)
    return _Budget(
        gpu_memory_gb=gpu_memory,
        usable_gb=usable,
        target=target,
        draft=draft,
        overhead_gb=overhead,
        kv_cache_gb=kv_gb,
        tokens=tokens,
        tokens_without_speculation=tokens_plain,
        max_model_len=max_model_len,
        concurrency=tokens // max_model_len if max_model_len else 0,
        concurrency_without_speculation=tokens_plain // max_model_len if max_model_len else 0,
    )


def _draft_ratio(
    spec: SpeculativeInferenceSpec, target_arch: CheckpointFacts, draft_info: _Draft | None
) -> float | None:
    """Target parameters per draft parameter, for a separate draft model only."""
    if (
        draft_info is None
        or spec.speculation is None
        or spec.speculation.method is not SpeculationMethod.DRAFT_MODEL
    ):
        return None
    return target_arch.parameters_billions / draft_info.arch.parameters_billions


def _tokens(kv_gb: float, bytes_per_token: int) -> int:
    return max(0, int(kv_gb * GB // bytes_per_token)) if bytes_per_token else 0


def _verdict(findings: list[Finding], concurrency: int) -> Verdict:
    if any(f.severity is Severity.ERROR for f in findings):
        return "does-not-fit"
    if concurrency < TIGHT_CONCURRENCY or any(f.code in _TIGHT_CODES for f in findings):
        return "tight"
    return "fits"


_TIGHT_CODES = {"DraftVRAMShareHigh", "TargetVRAMShareHigh", "V0DraftWeightsUnprofiled"}


def _memory_findings(
    spec: SpeculativeInferenceSpec,
    version: Version,
    engine: vllm_versions.Engine,
    budget: _Budget,
) -> list[Finding]:
    """Whether the KV cache left after the weights holds a full-length sequence, and what the
    draft's share of the memory costs."""
    target, draft, gpu_memory = budget.target, budget.draft, budget.gpu_memory_gb
    usable, overhead, kv_gb = budget.usable_gb, budget.overhead_gb, budget.kv_cache_gb
    tokens, max_model_len, concurrency = budget.tokens, budget.max_model_len, budget.concurrency
    found: list[Finding] = []
    weights = target.weights_gb_per_gpu + (draft.weights_gb_per_gpu if draft else 0.0)
    draft_part = f" + draft {draft.weights_gb_per_gpu:.1f} GB" if draft else ""
    if kv_gb <= 0:
        found.append(
            error(
                "WeightsExceedMemory",
                "spec.gpus",
                f"weights need {weights:.1f} GB per GPU (target {target.weights_gb_per_gpu:.1f} GB"
                f"{draft_part}) plus {overhead:.1f} GB overhead, but vLLM may use only "
                f"{usable:.1f} GB of each {gpu_memory:.0f} GB GPU: nothing is left for the "
                f"KV cache ({kv_gb:.1f} GB).",
                "quantize the target (spec.target.quantization: fp8, or an int8/int4 checkpoint "
                "in spec.target.model) or the draft, add GPUs (spec.target.tensorParallelSize "
                "and spec.gpus.count), or choose a larger GPU.",
            )
        )
    elif max_model_len is not None and tokens < max_model_len:
        found.append(
            error(
                "KVCacheBelowMaxModelLen",
                "spec.target.maxModelLen",
                f"the KV cache holds {tokens} tokens per replica ({kv_gb:.1f} GB per GPU), fewer "
                f"than one sequence of maxModelLen {max_model_len}: vLLM refuses to start.",
                f"set spec.target.maxModelLen to at most {tokens}, or free memory for the cache.",
            )
        )
    elif max_model_len is not None and concurrency < TIGHT_CONCURRENCY:
        found.append(
            warning(
                "LowConcurrency",
                "spec.target.maxModelLen",
                f"the KV cache ({kv_gb:.1f} GB per GPU, {tokens} tokens) holds only "
                f"{concurrency} full-length sequences of {max_model_len} tokens.",
                "lower spec.target.maxModelLen, use spec.target.kvCacheDtype: fp8, or add GPUs.",
            )
        )
    if draft is None:
        return found
    draft_share = draft.weights_gb_per_gpu / gpu_memory if gpu_memory else 0.0
    if draft_share > DRAFT_VRAM_SHARE_LIMIT:
        found.append(
            warning(
                "DraftVRAMShareHigh",
                "spec.speculation.draft",
                f"the draft takes {draft.weights_gb_per_gpu:.1f} GB per GPU, {draft_share:.0%} of "
                f"GPU memory (rule of thumb: at most {DRAFT_VRAM_SHARE_LIMIT:.0%}).",
                "quantize the draft (spec.speculation.draft.quantization: fp8, or an int8 "
                "checkpoint of it) or pick a smaller one.",
            )
        )
    target_share = target.weights_gb_per_gpu / gpu_memory if gpu_memory else 0.0
    if target_share > TARGET_VRAM_SHARE_LIMIT:
        found.append(
            warning(
                "TargetVRAMShareHigh",
                "spec.target",
                f"the target already uses {target_share:.0%} of GPU memory, so a draft comes "
                "straight out of the KV cache and cuts concurrency.",
                "quantize the target or add GPUs before adding a draft.",
            )
        )
    if budget.concurrency_without_speculation > concurrency:
        found.append(
            info(
                "DraftCostsConcurrency",
                "spec.speculation",
                f"the draft's weights and KV layers cut full-length concurrency from "
                f"{budget.concurrency_without_speculation} to {concurrency} sequences per "
                "replica.",
            )
        )
    if engine is vllm_versions.Engine.V0 and (
        spec.speculation is not None
        and spec.speculation.method in (SpeculationMethod.DRAFT_MODEL, SpeculationMethod.EAGLE)
    ):
        safer = max(0.05, round((usable - draft.weights_gb_per_gpu) / gpu_memory, 2))
        found.append(
            warning(
                "V0DraftWeightsUnprofiled",
                "spec.gpus.memoryUtilization",
                f"vLLM {version} (V0 engine) does not count the draft's "
                f"{draft.weights_gb_per_gpu:.1f} GB per GPU when sizing the KV cache "
                "(vllm#9995): the pods can run out of memory under load.",
                f"set spec.gpus.memoryUtilization to {safer} so the draft fits in the margin.",
            )
        )
    return found


def _model_findings(
    spec: SpeculativeInferenceSpec,
    target: CheckpointFacts,
    target_precision: Quantization,
    draft: _Draft | None,
    max_model_len: int | None,
    ratio: float | None,
) -> list[Finding]:
    found: list[Finding] = []
    tp = spec.target.tensor_parallel_size
    if target.attention_heads % tp:
        found.append(
            error(
                "HeadsNotDivisibleByTP",
                "spec.target.tensorParallelSize",
                f"{spec.target.model} has {target.attention_heads} attention heads, which "
                f"{tp} GPUs cannot split evenly; vLLM refuses to start.",
                f"use a tensorParallelSize that divides {target.attention_heads} "
                f"(e.g. {_divisor_near(target.attention_heads, tp)}).",
            )
        )
    if max_model_len is None:
        found.append(
            error(
                "MaxModelLenUnknown",
                "spec.target.maxModelLen",
                "the model's maximum context is unknown, so the KV cache cannot be checked.",
                "set spec.target.maxModelLen or spec.target.architecture.maxPositionEmbeddings.",
            )
        )
    elif target.max_position_embeddings and max_model_len > target.max_position_embeddings:
        found.append(
            error(
                "MaxModelLenAboveModel",
                "spec.target.maxModelLen",
                f"maxModelLen {max_model_len} exceeds the {target.max_position_embeddings} "
                f"tokens {spec.target.model} supports; vLLM refuses it.",
                f"set spec.target.maxModelLen to at most {target.max_position_embeddings}.",
            )
        )
    speculating = spec.speculation is not None and spec.speculation.method is not (
        SpeculationMethod.NONE
    )
    if speculating and max_model_len and max_model_len >= LONG_CONTEXT_TOKENS:
        found.append(
            warning(
                "LongContextSpeculation",
                "spec.target.maxModelLen",
                f"maxModelLen {max_model_len} is long-context serving (32K+), where "
                "speculation usually costs more KV cache than it saves in latency.",
                "leave speculation off for long-context deployments, or lower maxModelLen.",
            )
        )
    if speculating and target_precision in (
        Quantization.INT4,
        Quantization.AWQ,
        Quantization.GPTQ,
        Quantization.BITSANDBYTES,
    ):
        found.append(
            warning(
                "Int4TargetLowersAcceptance",
                "spec.target.quantization",
                f"a 4-bit target ({target_precision.value}) shifts its distribution away "
                "from what the draft learned; expect a real acceptance penalty.",
                "prefer an int8 or fp8 target, and list it in spec.policy.quantizationLadder.",
            )
        )
    if draft is not None and spec.speculation is not None:
        if spec.speculation.method is SpeculationMethod.DRAFT_MODEL:
            found += _draft_pairing(spec, target, draft, ratio)
        if draft.arch.attention_heads % draft.tensor_parallel_size:
            found.append(
                error(
                    "DraftHeadsNotDivisibleByTP",
                    "spec.speculation.draft.tensorParallelSize",
                    f"the draft has {draft.arch.attention_heads} attention heads, which "
                    f"{draft.tensor_parallel_size} GPUs cannot split evenly.",
                    f"use a draft tensor parallel size that divides {draft.arch.attention_heads}.",
                )
            )
    return found


def _draft_pairing(
    spec: SpeculativeInferenceSpec,
    target: CheckpointFacts,
    draft: _Draft,
    ratio: float | None,
) -> list[Finding]:
    found: list[Finding] = []
    path = "spec.speculation.draft.model"
    if draft.arch.parameters_billions >= target.parameters_billions:
        found.append(
            error(
                "DraftNotSmaller",
                path,
                f"the draft ({draft.arch.parameters_billions:g}B parameters) is not smaller "
                f"than the target ({target.parameters_billions:g}B): it cannot save time.",
                "pick a draft of the same family about 1/8 to 1/12 of the target's size.",
            )
        )
        return found
    if draft.arch.tokenizer and target.tokenizer and draft.arch.tokenizer != target.tokenizer:
        found.append(
            error(
                "DraftTokenizerMismatch",
                path,
                f"the draft uses the {draft.arch.tokenizer} tokenizer and the target the "
                f"{target.tokenizer} one: the target cannot verify the draft's tokens.",
                "pick a draft with the target's tokenizer (same family).",
            )
        )
    elif draft.arch.vocab_size != target.vocab_size:
        found.append(
            error(
                "DraftVocabSizeMismatch",
                path,
                f"draft and target share a tokenizer but their embedding tables differ "
                f"({draft.arch.vocab_size} vs {target.vocab_size} rows); vLLM requires equal "
                "vocab_size for a draft model.",
                "pick a draft whose config.json vocab_size equals the target's.",
            )
        )
    if draft.arch.family and target.family and draft.arch.family != target.family:
        found.append(
            warning(
                "DraftFamilyMismatch",
                path,
                f"the draft is a {draft.arch.family} model and the target a {target.family} "
                "one; drafts trained on another distribution are accepted less often.",
                "prefer a draft from the target's family; quantize it before changing family.",
            )
        )
    if ratio is not None:
        found.append(_ratio_finding(ratio))
    return found


RATIO_TOO_LARGE = 5.0
RATIO_SWEET_SPOT = 15.0
RATIO_WEAK = 55.0


def _ratio_finding(ratio: float) -> Finding:
    path = "spec.speculation.draft.model"
    text = f"draft:target size ratio is 1:{ratio:.0f}"
    if ratio < RATIO_TOO_LARGE:
        return warning(
            "DraftTooLarge",
            path,
            f"{text}; a draft this large costs almost as much per step as it saves.",
            "use a draft about 1/8 to 1/12 of the target's size.",
        )
    if ratio <= RATIO_SWEET_SPOT:
        return info("DraftRatioGood", path, f"{text}, near the 1:8 to 1:12 sweet spot.")
    if ratio <= RATIO_WEAK:
        return warning(
            "DraftRatioWeak",
            path,
            f"{text}; drafts this small are accepted noticeably less often.",
            "measure acceptance at production temperature before relying on it.",
        )
    return warning(
        "DraftRatioTooSmall",
        path,
        f"{text}; a draft this small diverges from the target too often.",
        "use a draft about 1/8 to 1/12 of the target's size.",
    )


def _divisor_near(n: int, wanted: int) -> int:
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return min(divisors, key=lambda d: (abs(d - wanted), d))
