"""Quantization as vLLM sees it: what a checkpoint stores, what `--quantization` must say, and
how many bytes the weights then take. Planner and renderer both ask `resolve`, so the planned
weights and the rendered command always describe the same thing.

- A pre-quantized checkpoint (config.json has a quantization_config) is loaded with its own
  method: the command carries no `--quantization` (vLLM refuses one that differs from the
  checkpoint's, and picks the fastest kernel, e.g. awq_marlin, itself). Its weights are the
  checkpoint's real bytes.
- An unquantized checkpoint can be quantized on the fly only to fp8 (`--quantization fp8`) or
  bitsandbytes; int8, int4, awq and gptq need a checkpoint already quantized that way.
"""

from __future__ import annotations

from packaging.version import Version
from pydantic import BaseModel, ConfigDict

from specpilot.api.models import ArchitectureOverride, Quantization
from specpilot.findings import Finding, error
from specpilot.planning.checkpoint import (
    TORCH_DTYPE_BYTES,
    CheckpointFacts,
    Checkpoints,
    facts_for,
)
from specpilot.vllm_versions import FEATURES, Feature, availability, supports

ON_THE_FLY = {Quantization.FP8: "fp8", Quantization.BITSANDBYTES: "bitsandbytes"}
"""What vLLM can quantize an unquantized checkpoint to while loading it."""
NEEDS_QUANTIZED_CHECKPOINT = (
    Quantization.INT8,
    Quantization.INT4,
    Quantization.AWQ,
    Quantization.GPTQ,
)
AGREES_WITH = {
    Quantization.FP8: {Quantization.FP8},
    Quantization.INT8: {Quantization.INT8},
    Quantization.INT4: {Quantization.INT4, Quantization.AWQ, Quantization.GPTQ},
    Quantization.AWQ: {Quantization.AWQ, Quantization.INT4},
    Quantization.GPTQ: {Quantization.GPTQ, Quantization.INT4},
    Quantization.BITSANDBYTES: {Quantization.BITSANDBYTES},
}
"""Checkpoint precision -> the spec.quantization values that describe it."""
EXAMPLE_CHECKPOINTS = {
    Quantization.INT8: "RedHatAI/Meta-Llama-3.1-70B-Instruct-quantized.w8a8",
    Quantization.INT4: "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4",
    Quantization.AWQ: "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4",
    Quantization.GPTQ: "hugging-quants/Meta-Llama-3.1-70B-Instruct-GPTQ-INT4",
}

BYTES_PER_PARAMETER = {
    Quantization.FP8: 1.0,
    Quantization.INT8: 1.0,
    Quantization.INT4: 0.5,
    Quantization.AWQ: 0.5,
    Quantization.GPTQ: 0.5,
    Quantization.BITSANDBYTES: 0.5,
}
MLP_ONLY_METHODS = ("fbgemm_fp8",)
"""Methods that quantize only the MLP: Meta's FP8 405B keeps attention in BF16."""
GROUP_SIZE = 128
GROUP_SCALE_BYTES = 2.5
"""A 16-bit scale and a 4-bit zero point per group of 128 weights (AWQ, GPTQ, bitsandbytes)."""


class QuantizationChoice(BaseModel):
    """How one checkpoint is loaded: the flag vLLM gets and the precision of its weights."""

    model_config = ConfigDict(frozen=True)

    flag: str | None
    """The --quantization value to render; None leaves it to vLLM (checkpoint's own method)."""
    precision: Quantization
    """The weights' precision in GPU memory (none: the dtype)."""
    prequantized: bool


def resolve(
    requested: Quantization, facts: CheckpointFacts, path: str
) -> tuple[QuantizationChoice, list[Finding]]:
    """The flag and precision for `requested` on this checkpoint, or an error naming the fix."""
    stored = facts.quantization
    if stored is not None:
        choice = QuantizationChoice(
            flag=None, precision=stored.precision or requested, prequantized=True
        )
        agreeing = AGREES_WITH.get(stored.precision, set()) if stored.precision else set()
        if requested is Quantization.NONE or requested in agreeing:
            return choice, []
        described = f" ({stored.precision.value})" if stored.precision else ""
        fix_values = " or ".join([*sorted(q.value for q in agreeing), "none"])
        return choice, [
            error(
                "QuantizationContradictsCheckpoint",
                path,
                f"{facts.model} is already quantized with {stored.method}{described} "
                f"(its config.json quantization_config, read from {facts.source}); "
                f"{requested.value} contradicts it and vLLM refuses the model.",
                f"set {path} to {fix_values}: specpilot then leaves --quantization out and "
                "vLLM loads the checkpoint's own method.",
            )
        ]
    if not facts.quantization_known:
        # Facts from the spec: the checkpoint was not read, so trust what the spec says it is.
        flag = ON_THE_FLY.get(requested)
        return QuantizationChoice(
            flag=flag, precision=requested, prequantized=flag is None and requested.value != "none"
        ), []
    if requested in NEEDS_QUANTIZED_CHECKPOINT:
        return QuantizationChoice(flag=None, precision=Quantization.NONE, prequantized=False), [
            error(
                "QuantizationNeedsQuantizedCheckpoint",
                path,
                f"{facts.model} stores unquantized weights (no quantization_config, read from "
                f"{facts.source}) and vLLM cannot quantize to {requested.value} while loading: "
                "it would load them unquantized.",
                f"use a checkpoint already quantized to {requested.value} (e.g. "
                f"{EXAMPLE_CHECKPOINTS[requested]}), or set {path} to fp8 (quantized on the "
                "fly) or none.",
            )
        ]
    return QuantizationChoice(
        flag=ON_THE_FLY.get(requested), precision=requested, prequantized=False
    ), []


STATIC_ORDER_GPTQ = "ModelCloud/Meta-Llama-3.1-8B-Instruct-gptq-4bit"
"""A GPTQ checkpoint with desc_act false (its quantize_config.json), for the fix."""


def release_findings(facts: CheckpointFacts, version: Version, path: str) -> list[Finding]:
    """What this vLLM release refuses in the checkpoint's quantization, naming the model field.

    vLLM 0.30.0 removed GPTQ group activation ordering: AutoGPTQConfig (gptq, gptq_marlin,
    auto_gptq) and moe_wna16 raise for desc_act true with groups, or a `dynamic` rule enabling
    it; an unknown desc_act is not judged.
    """
    stored = facts.quantization
    if stored is None or stored.group_act_order is not True:
        return []
    if supports(version, Feature.GPTQ_GROUP_ACT_ORDER):
        return []
    removed = FEATURES[Feature.GPTQ_GROUP_ACT_ORDER][-1].until
    how = (
        f"desc_act true with group_size {stored.group_size}"
        if stored.desc_act and stored.group_size != -1
        else f"desc_act true in its dynamic rules {', '.join(stored.dynamic_act_order)}"
    )
    return [
        error(
            "GPTQActOrderUnsupported",
            path,
            f"{facts.model} is a GPTQ checkpoint with group activation ordering ({how}, read "
            f"from {facts.source}); vLLM {version} refuses it ('GPTQ group activation ordering "
            "(desc_act=True) is no longer supported'): it exists in "
            f"{availability(Feature.GPTQ_GROUP_ACT_ORDER)}.",
            f"use a GPTQ checkpoint with desc_act false (e.g. {STATIC_ORDER_GPTQ}) or static "
            f"activation ordering, or a vLLM release before {removed} in spec.vllm.image (and "
            "spec.vllm.version).",
            also=["spec.vllm.version", "spec.vllm.image"],
        )
    ]


class WeightBytes(BaseModel):
    total: float
    """Bytes of all of the model's weights in GPU memory (all GPUs together)."""
    basis: str
    """How they were obtained, for the plan's text."""


def weight_bytes(facts: CheckpointFacts, choice: QuantizationChoice, dtype: str) -> WeightBytes:
    """The weights' bytes as vLLM will hold them: read when the checkpoint is loaded as stored,
    else estimated, with embeddings and lm_head (never quantized) in 16 bits."""
    dtype_bytes = TORCH_DTYPE_BYTES.get(dtype, 2)
    parameters = facts.parameters_billions * 1e9
    loaded_as_stored = choice.prequantized or (
        choice.precision is Quantization.NONE
        and dtype_bytes == TORCH_DTYPE_BYTES.get(facts.torch_dtype or "", 2)
    )
    if facts.weight_bytes and loaded_as_stored:
        return WeightBytes(total=facts.weight_bytes, basis="the checkpoint's safetensors size")
    if choice.precision is Quantization.NONE:
        return WeightBytes(
            total=parameters * dtype_bytes,
            basis=f"{facts.parameters_billions:g}B parameters x {dtype_bytes} bytes",
        )
    unquantized = min(facts.embedding_parameters, parameters)
    kept = "embedding"
    if facts.quantization is not None and facts.quantization.method in MLP_ONLY_METHODS:
        unquantized = min(unquantized + facts.attention_parameters, parameters)
        kept = "embedding and attention"
    linear = parameters - unquantized
    per_parameter = BYTES_PER_PARAMETER[choice.precision]
    scales = linear / GROUP_SIZE * GROUP_SCALE_BYTES if per_parameter < 1 else 0.0
    return WeightBytes(
        total=linear * per_parameter + scales + unquantized * 2,
        basis=(
            f"estimated: {linear / 1e9:.2f}B quantized parameters x {per_parameter:g} bytes"
            + (" + group scales" if scales else "")
            + f", {unquantized / 1e9:.2f}B {kept} parameters x 2 bytes"
        ),
    )


def quantization_flag(
    requested: Quantization,
    model: str,
    override: ArchitectureOverride | None,
    checkpoints: Checkpoints,
) -> str | None:
    """The --quantization value the command carries for a model: the planner's own choice."""
    facts, _ = facts_for(model, override, checkpoints, "")
    if facts is None:
        return ON_THE_FLY.get(requested)
    choice, _ = resolve(requested, facts, "")
    return choice.flag
