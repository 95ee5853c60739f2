"""Model facts from a checkpoint's own files, and quantization as vLLM sees it: the plan and the
rendered command always describe the same weights."""

from __future__ import annotations

import json
from typing import Any

import pytest
from packaging.version import Version

from specpilot.api.models import SpeculativeInferenceSpec
from specpilot.assessment import checkpoint_models
from specpilot.planning.checkpoint import (
    CheckpointFactsError,
    Checkpoints,
    facts_from_config,
    weight_bytes_from_index,
)
from specpilot.planning.memory import MemoryPlan, kv_bytes_per_token_per_gpu, plan
from specpilot.rendering.args import server_args
from tests.conftest import CHECKPOINTS, manifest

V1 = Version("0.33.0")
FP8_8B = "RedHatAI/Meta-Llama-3-8B-Instruct-FP8"
LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"
AWQ_70B = "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4"
W8A8_70B = "RedHatAI/Meta-Llama-3.1-70B-Instruct-quantized.w8a8"
QWEN3_8B = "Qwen/Qwen3-8B"


def config(model: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((CHECKPOINTS / model / "config.json").read_text())
    return loaded


def read(model: str) -> Checkpoints:
    """What the adapter hands the planner for a fixture checkpoint."""
    index = CHECKPOINTS / model / "model.safetensors.index.json"
    size = weight_bytes_from_index(json.loads(index.read_text())) if index.is_file() else None
    return Checkpoints(read={model: facts_from_config(model, "fixture", config(model), size)})


def spec(model: str, quantization: str = "none", tp: int = 1, **target: Any) -> Any:
    doc = manifest(
        target={
            "model": model,
            "quantization": quantization,
            "tensorParallelSize": tp,
            "maxModelLen": 8192,
            **target,
        },
        speculation=None,
        gpus={"type": "H100-80GB", "count": tp},
    )
    return SpeculativeInferenceSpec.model_validate(doc["spec"])


def codes(p: MemoryPlan) -> set[str]:
    return {f.code for f in p.findings}


def quantization_arg(args: list[str]) -> str | None:
    return args[args.index("--quantization") + 1] if "--quantization" in args else None


def test_an_fp8_checkpoint_is_planned_from_its_real_bytes_and_rendered_without_a_flag() -> None:
    for quantization in ("fp8", "none"):
        s = spec(FP8_8B, quantization)
        p = plan(s, V1, read(FP8_8B))
        assert p.target is not None
        assert p.target.weights_gb == 9_081_202_432 / 1e9  # the index's total_size
        assert p.target.checkpoint_quantization == "fp8"
        assert p.target.quantization.value == "fp8"
        assert not codes(p) & {"QuantizationContradictsCheckpoint"}
        # vLLM reads the method from the checkpoint; a flag could only contradict it.
        assert quantization_arg(server_args(s, V1, read(FP8_8B))) is None


def test_a_quantization_contradicting_the_checkpoint_is_an_error_naming_the_fix() -> None:
    p = plan(spec(FP8_8B, "awq"), V1, read(FP8_8B))
    (finding,) = [f for f in p.findings if f.code == "QuantizationContradictsCheckpoint"]
    assert finding.path == "spec.target.quantization"
    assert "fp8" in finding.message
    assert FP8_8B in finding.message
    assert "fp8 or none" in finding.fix
    assert p.verdict == "does-not-fit"


def test_int8_or_awq_on_an_unquantized_checkpoint_is_refused_fp8_is_quantized_on_the_fly() -> None:
    for quantization in ("int8", "int4", "awq", "gptq"):
        p = plan(spec(LLAMA_8B, quantization), V1, read(LLAMA_8B))
        (finding,) = [f for f in p.findings if f.code == "QuantizationNeedsQuantizedCheckpoint"]
        assert finding.path == "spec.target.quantization"
        assert "fp8" in finding.fix
    s = spec(LLAMA_8B, "fp8")
    p = plan(s, V1, read(LLAMA_8B))
    assert p.target is not None
    assert p.target.quantization_flag == "fp8"
    assert quantization_arg(server_args(s, V1, read(LLAMA_8B))) == "fp8"
    # Linear layers at 1 byte, embeddings and lm_head (2 x 128256 x 4096) kept at 2 bytes.
    embeddings = 2 * 128256 * 4096
    assert p.target.weights_gb == pytest.approx((8.03e9 + embeddings) / 1e9, rel=1e-3)


@pytest.mark.parametrize(
    ("model", "quantization"),
    [
        (FP8_8B, "fp8"),
        (FP8_8B, "none"),
        (LLAMA_8B, "none"),
        (LLAMA_8B, "fp8"),
        (LLAMA_8B, "bitsandbytes"),
        (AWQ_70B, "awq"),
        (AWQ_70B, "int4"),
        (W8A8_70B, "int8"),
    ],
)
def test_plan_and_command_describe_the_same_weights(model: str, quantization: str) -> None:
    checkpoints = read(model)
    s = spec(model, quantization, tp=2)
    p = plan(s, V1, checkpoints)
    assert p.target is not None
    assert not [f for f in p.findings if f.code.startswith("Quantization")]
    rendered = quantization_arg(server_args(s, V1, checkpoints))
    assert rendered == p.target.quantization_flag
    stored = checkpoints.read[model].quantization
    if stored is not None:
        # Loaded as stored: no flag, and the plan counts the checkpoint's own bytes or its
        # precision, never the spec's word for it.
        assert rendered is None
        assert p.target.quantization is stored.precision
    elif rendered is None:
        assert p.target.quantization.value == "none"
        assert p.target.weights_gb == pytest.approx(2 * p.target.parameters_billions, rel=1e-3)
    else:
        assert p.target.quantization.value == rendered
        assert p.target.weights_gb < 2 * p.target.parameters_billions


def test_a_model_outside_the_catalog_plans_from_its_own_config() -> None:
    s = spec(QWEN3_8B)
    assert "UnknownTargetModel" in codes(plan(s, V1))
    p = plan(s, V1, read(QWEN3_8B))
    assert "UnknownTargetModel" not in codes(p)
    assert p.target is not None
    assert p.target.facts_source == "fixture"
    assert p.target.parameters_billions == pytest.approx(8.19, abs=0.01)
    assert p.target.kv_bytes_per_token_per_gpu == 2 * 36 * 8 * 128 * 2
    assert p.max_model_len == 8192


def test_head_dim_comes_from_config_not_hidden_over_heads() -> None:
    qwen3_32b = {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "num_hidden_layers": 64,
        "hidden_size": 5120,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "intermediate_size": 25600,
        "vocab_size": 151936,
        "max_position_embeddings": 40960,
        "torch_dtype": "bfloat16",
    }
    facts = facts_from_config("Qwen/Qwen3-32B", "test", qwen3_32b, None)
    assert facts.head_dim == 128  # hidden / heads would say 80
    assert kv_bytes_per_token_per_gpu(facts, 2, 1, 2.0) == 2 * 64 * 4 * 128 * 2


def test_mla_caches_one_latent_per_layer_whole_on_every_gpu() -> None:
    # DeepSeek-V2-Lite's attention facts (its SOURCE notes in the staging collection).
    deepseek = {
        "architectures": ["DeepseekV2ForCausalLM"],
        "num_hidden_layers": 27,
        "hidden_size": 2048,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "kv_lora_rank": 512,
        "qk_rope_head_dim": 64,
        "qk_nope_head_dim": 128,
        "vocab_size": 102400,
        "torch_dtype": "bfloat16",
    }
    facts = facts_from_config("deepseek-ai/DeepSeek-V2-Lite", "test", deepseek, 31_410_000_000)
    assert facts.mla is not None
    # 27 x (512 + 64) x 2 bytes = 31,104: vllm#15871's 0.95 GiB for 32,768 tokens.
    for tp in (1, 2, 4):
        assert kv_bytes_per_token_per_gpu(facts, tp, 1, 2.0) == 31_104
    assert pytest.approx(0.95, abs=0.005) == 32_768 * 31_104 / 2**30


def test_a_config_without_the_planners_facts_is_refused_naming_the_field() -> None:
    with pytest.raises(CheckpointFactsError, match="num_hidden_layers"):
        facts_from_config("x/y", "test", {"hidden_size": 1}, None)
    with pytest.raises(CheckpointFactsError, match="hidden_size"):
        facts_from_config(
            "x/y", "test", {"num_hidden_layers": 2, "hidden_size": "big", "vocab_size": 1}, None
        )


def test_an_unreadable_checkpoint_is_a_warning_and_the_catalog_still_plans() -> None:
    s = spec(AWQ_70B, "awq", tp=2)
    unreadable = Checkpoints(unreadable={AWQ_70B: "ConnectionError: hub unreachable"})
    p = plan(s, V1, unreadable)
    (finding,) = [f for f in p.findings if f.code == "CheckpointUnreadable"]
    assert finding.severity == "warning"
    assert AWQ_70B in finding.message
    assert "hub unreachable" in finding.message
    assert "specpilot's catalog" in finding.message
    assert p.target is not None
    assert p.target.facts_source == "specpilot's catalog"
    # The catalog knows this one is an AWQ checkpoint: still no flag.
    assert quantization_arg(server_args(s, V1, unreadable)) is None
    nothing = plan(spec(QWEN3_8B), V1, Checkpoints(unreadable={QWEN3_8B: "timeout"}))
    assert {"CheckpointUnreadable", "UnknownTargetModel"} <= codes(nothing)


def test_every_checkpoint_a_manifest_names_is_read_and_nothing_else() -> None:
    doc = manifest(
        target={"model": W8A8_70B, "quantization": "int8"},
        speculation={"method": "draft_model", "draft": {"model": LLAMA_8B}},
        policy={"quantizationLadder": [{"model": AWQ_70B}, {"model": W8A8_70B}, "junk"]},
    )
    assert checkpoint_models(doc) == [W8A8_70B, LLAMA_8B, AWQ_70B]
    assert checkpoint_models({"spec": {"target": "nonsense"}}) == []
    assert checkpoint_models(["not", "a", "manifest"]) == []


def test_an_architecture_without_head_dim_says_what_it_assumed() -> None:
    architecture = {
        "layers": 64,
        "hiddenSize": 5120,
        "attentionHeads": 64,
        "kvHeads": 8,
        "vocabSize": 151936,
        "parametersBillions": 32.76,
        "maxPositionEmbeddings": 40960,
    }
    s = spec("Qwen/Qwen3-32B", tp=2, architecture=architecture)
    (finding,) = [f for f in plan(s, V1).findings if f.code == "HeadDimAssumed"]
    assert finding.path == "spec.target.architecture.headDim"
    assert "80" in finding.message
    stated = spec("Qwen/Qwen3-32B", tp=2, architecture={**architecture, "headDim": 128})
    p = plan(stated, V1)
    assert "HeadDimAssumed" not in codes(p)
    assert p.target is not None
    assert p.target.kv_bytes_per_token_per_gpu == 2 * 64 * 4 * 128 * 2


GPTQ_8B = "hugging-quants/Meta-Llama-3.1-8B-Instruct-GPTQ-INT4"
"""desc_act true, group_size 128 (its quantize_config.json)."""
GPTQ_8B_STATIC_ORDER = "ModelCloud/Meta-Llama-3.1-8B-Instruct-gptq-4bit"
"""desc_act false."""


def gptq_facts(**quantization_config: Any) -> Checkpoints:
    """The GPTQ 8B fixture with its quantization_config changed (None removes a key)."""
    changed = config(GPTQ_8B)
    block = {**changed["quantization_config"], **quantization_config}
    changed["quantization_config"] = {k: v for k, v in block.items() if v is not None}
    return Checkpoints(read={GPTQ_8B: facts_from_config(GPTQ_8B, "fixture", changed, None)})


def test_gptq_activation_ordering_is_read_from_the_checkpoint() -> None:
    facts = read(GPTQ_8B).read[GPTQ_8B]
    assert facts.quantization is not None
    assert (facts.quantization.desc_act, facts.quantization.group_size) == (True, 128)
    assert facts.quantization.group_act_order is True
    static = read(GPTQ_8B_STATIC_ORDER).read[GPTQ_8B_STATIC_ORDER].quantization
    assert static is not None
    assert static.desc_act is False
    assert static.group_act_order is False


@pytest.mark.parametrize(
    ("version", "refused"),
    [("0.8.2", False), ("0.11.0", False), ("0.29.0", False), ("0.30.0", True), ("0.33.0", True)],
)
def test_gptq_desc_act_is_refused_from_the_release_that_removed_it(
    version: str, refused: bool
) -> None:
    for checkpoints in (read(GPTQ_8B), Checkpoints()):  # read, and the catalog's facts
        p = plan(spec(GPTQ_8B, "gptq"), Version(version), checkpoints)
        assert ("GPTQActOrderUnsupported" in codes(p)) is refused, (version, codes(p))
    if refused:
        finding = next(f for f in p.findings if f.code == "GPTQActOrderUnsupported")
        assert finding.path == "spec.target.model"
        assert version in finding.message
        assert "desc_act" in finding.message
        assert GPTQ_8B_STATIC_ORDER in finding.fix
        assert "before 0.30.0" in finding.fix


@pytest.mark.parametrize(
    "checkpoints",
    [
        gptq_facts(desc_act=False),
        gptq_facts(group_size=-1),  # one group per channel: vLLM turns desc_act off
        gptq_facts(desc_act=None),  # not stated: not judged
    ],
)
def test_gptq_without_group_activation_ordering_is_not_refused(checkpoints: Checkpoints) -> None:
    p = plan(spec(GPTQ_8B, "gptq"), V1, checkpoints)
    assert "GPTQActOrderUnsupported" not in codes(p)


def test_a_dynamic_rule_enabling_group_activation_ordering_is_refused() -> None:
    rule = {"+:.*\\.mlp\\..*": {"desc_act": True}, "-:.*lm_head": {}}
    p = plan(spec(GPTQ_8B, "gptq"), V1, gptq_facts(desc_act=False, dynamic=rule))
    assert "GPTQActOrderUnsupported" in codes(p)
    skip_only = gptq_facts(desc_act=False, dynamic={"-:.*\\.mlp\\..*": {"desc_act": True}})
    assert "GPTQActOrderUnsupported" not in codes(plan(spec(GPTQ_8B, "gptq"), V1, skip_only))


def test_non_gptq_checkpoints_are_never_judged_for_desc_act() -> None:
    for model, quantization in ((AWQ_70B, "awq"), (FP8_8B, "fp8"), (LLAMA_8B, "none")):
        p = plan(spec(model, quantization, tp=2), V1, read(model))
        assert "GPTQActOrderUnsupported" not in codes(p)


def test_a_gptq_draft_with_desc_act_is_refused_naming_the_draft() -> None:
    doc = manifest(
        target={"model": LLAMA_8B, "maxModelLen": 8192},
        speculation={"method": "draft_model", "draft": {"model": GPTQ_8B}},
        gpus={"type": "H100-80GB", "count": 1},
    )
    s = SpeculativeInferenceSpec.model_validate(doc["spec"])
    found = [f for f in plan(s, V1, read(GPTQ_8B)).findings if f.code == "GPTQActOrderUnsupported"]
    assert [f.path for f in found] == ["spec.speculation.draft.model"]
    assert not [
        f
        for f in plan(s, Version("0.29.0"), read(GPTQ_8B)).findings
        if f.code == "GPTQActOrderUnsupported"
    ]
