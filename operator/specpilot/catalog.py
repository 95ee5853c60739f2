"""GPU and model facts shared by the planner and the simulator.

Units follow the decision framework: GB means 10^9 bytes and a GPU's memory is its nominal figure
(an "80 GB" H100 reports slightly more, 80 GiB; the difference is left as margin).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GPUType:
    name: str
    memory_gb: float
    bf16_tflops: float
    """Dense BF16 tensor throughput, used by the simulator's roofline model."""
    hbm_tb_per_s: float


GPU_TYPES: dict[str, GPUType] = {
    gpu.name: gpu
    for gpu in (
        GPUType("H100-80GB", 80.0, 989.0, 3.35),
        GPUType("H200-141GB", 141.0, 989.0, 4.8),
        GPUType("A100-40GB", 40.0, 312.0, 1.555),
        GPUType("A100-80GB", 80.0, 312.0, 2.039),
        GPUType("L40S-48GB", 48.0, 362.0, 0.864),
        GPUType("L4-24GB", 24.0, 121.0, 0.3),
        GPUType("A10G-24GB", 24.0, 70.0, 0.6),
    )
}


@dataclass(frozen=True)
class ModelArchitecture:
    """Facts from a model's config.json that the memory math and draft checks need."""

    layers: int
    hidden_size: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    parameters_billions: float
    family: str | None
    tokenizer: str | None
    """Models with the same tokenizer id share a vocabulary, so their tokens can be verified."""
    max_position_embeddings: int | None
    intermediate_size: int | None = None
    """The MLP's width; sizes the activation peak of vLLM's profiling pass."""


def _llama31(
    layers: int, hidden: int, heads: int, params: float, intermediate: int
) -> ModelArchitecture:
    return ModelArchitecture(
        layers, hidden, heads, 8, 128, 128256, params, "llama3", "llama3", 131072, intermediate
    )


def _qwen25(
    layers: int, hidden: int, heads: int, kv: int, vocab: int, params: float, ctx: int
) -> ModelArchitecture:
    return ModelArchitecture(
        layers, hidden, heads, kv, hidden // heads, vocab, params, "qwen2.5", "qwen2", ctx
    )


_LLAMA_31_8B = _llama31(32, 4096, 32, 8.03, 14336)
_LLAMA_31_70B = _llama31(80, 8192, 64, 70.55, 28672)
_LLAMA_31_405B = _llama31(126, 16384, 128, 405.85, 53248)
_LLAMA_32_1B = ModelArchitecture(16, 2048, 32, 8, 64, 128256, 1.24, "llama3", "llama3", 131072)
_LLAMA_32_3B = ModelArchitecture(28, 3072, 24, 8, 128, 128256, 3.21, "llama3", "llama3", 131072)
_QWEN_05B = _qwen25(24, 896, 14, 2, 151936, 0.49, 32768)
_QWEN_15B = _qwen25(28, 1536, 12, 2, 151936, 1.54, 32768)
_QWEN_3B = _qwen25(36, 2048, 16, 2, 151936, 3.09, 32768)
_QWEN_7B = _qwen25(28, 3584, 28, 4, 152064, 7.62, 32768)
_QWEN_14B = _qwen25(48, 5120, 40, 8, 152064, 14.77, 32768)
_QWEN_32B = _qwen25(64, 5120, 40, 8, 152064, 32.76, 32768)
_QWEN_72B = _qwen25(80, 8192, 64, 8, 152064, 72.71, 32768)
_MISTRAL_7B_V03 = ModelArchitecture(
    32, 4096, 32, 8, 128, 32768, 7.25, "mistral", "mistral-v3", 32768
)
_MISTRAL_7B_V01 = ModelArchitecture(32, 4096, 32, 8, 128, 32000, 7.24, "mistral", "llama2", 32768)
# Qwama: Qwen2-0.5B re-trained on the Llama-3 vocabulary, the draft of vLLM's published benchmark.
_QWAMA_05B = ModelArchitecture(24, 896, 14, 2, 64, 128256, 0.5, "qwen2", "llama3", 32768)
# EAGLE heads: one decoder layer (plus, for EAGLE-3, a fusion layer and a reduced-vocabulary head).
_EAGLE_LLAMA_31_8B = ModelArchitecture(1, 4096, 32, 8, 128, 128256, 0.25, "llama3", "llama3", 2048)
_EAGLE3_LLAMA_31_8B = ModelArchitecture(1, 4096, 32, 8, 128, 128256, 0.42, "llama3", "llama3", 2048)
_EAGLE3_LLAMA_33_70B = ModelArchitecture(1, 8192, 64, 8, 128, 128256, 1.5, "llama3", "llama3", 2048)


def _variants(base: str, arch: ModelArchitecture, *suffixes: str) -> dict[str, ModelArchitecture]:
    return {f"{base}{suffix}": arch for suffix in ("", *suffixes)}


MODELS: dict[str, ModelArchitecture] = {
    **_variants("meta-llama/Llama-3.1-8B", _LLAMA_31_8B, "-Instruct"),
    **_variants("meta-llama/Meta-Llama-3.1-8B", _LLAMA_31_8B, "-Instruct"),
    **_variants("meta-llama/Llama-3.1-70B", _LLAMA_31_70B, "-Instruct"),
    **_variants("meta-llama/Meta-Llama-3.1-70B", _LLAMA_31_70B, "-Instruct"),
    **_variants("meta-llama/Llama-3.3-70B", _LLAMA_31_70B, "-Instruct"),
    **_variants("meta-llama/Llama-3.1-405B", _LLAMA_31_405B, "-Instruct", "-FP8", "-Instruct-FP8"),
    **_variants("meta-llama/Llama-3.2-1B", _LLAMA_32_1B, "-Instruct"),
    **_variants("meta-llama/Llama-3.2-3B", _LLAMA_32_3B, "-Instruct"),
    **_variants("Qwen/Qwen2.5-0.5B", _QWEN_05B, "-Instruct"),
    **_variants("Qwen/Qwen2.5-1.5B", _QWEN_15B, "-Instruct"),
    **_variants("Qwen/Qwen2.5-3B", _QWEN_3B, "-Instruct"),
    **_variants("Qwen/Qwen2.5-7B", _QWEN_7B, "-Instruct"),
    **_variants("Qwen/Qwen2.5-14B", _QWEN_14B, "-Instruct"),
    **_variants("Qwen/Qwen2.5-32B", _QWEN_32B, "-Instruct"),
    **_variants("Qwen/Qwen2.5-72B", _QWEN_72B, "-Instruct", "-Instruct-AWQ", "-Instruct-GPTQ-Int4"),
    **_variants("mistralai/Mistral-7B-v0.3", _MISTRAL_7B_V03),
    **_variants("mistralai/Mistral-7B-Instruct-v0.3", _MISTRAL_7B_V03),
    **_variants("mistralai/Mistral-7B-v0.1", _MISTRAL_7B_V01),
    **_variants("mistralai/Mistral-7B-Instruct-v0.2", _MISTRAL_7B_V01),
    "RedHatAI/Meta-Llama-3.1-70B-Instruct-quantized.w8a8": _LLAMA_31_70B,
    "RedHatAI/Meta-Llama-3.1-70B-Instruct-FP8": _LLAMA_31_70B,
    "RedHatAI/Meta-Llama-3.1-8B-Instruct-quantized.w8a8": _LLAMA_31_8B,
    "RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8": _LLAMA_31_8B,
    "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4": _LLAMA_31_70B,
    "hugging-quants/Meta-Llama-3.1-70B-Instruct-GPTQ-INT4": _LLAMA_31_70B,
    "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4": _LLAMA_31_8B,
    "hugging-quants/Meta-Llama-3.1-8B-Instruct-GPTQ-INT4": _LLAMA_31_8B,
    "turboderp/Qwama-0.5B-Instruct": _QWAMA_05B,
    "yuhuili/EAGLE-LLaMA3.1-Instruct-8B": _EAGLE_LLAMA_31_8B,
    "yuhuili/EAGLE3-LLaMA3.1-Instruct-8B": _EAGLE3_LLAMA_31_8B,
    "yuhuili/EAGLE3-LLaMA3.3-Instruct-70B": _EAGLE3_LLAMA_33_70B,
}


_FP8_TENSORS = {"num_bits": 8, "type": "float"}
_INT8_TENSORS = {"num_bits": 8, "type": "int"}
CATALOG_QUANTIZATION: dict[str, dict[str, object]] = {
    "meta-llama/Llama-3.1-405B-FP8": {"quant_method": "fbgemm_fp8"},
    "meta-llama/Llama-3.1-405B-Instruct-FP8": {"quant_method": "fbgemm_fp8"},
    "RedHatAI/Meta-Llama-3.1-70B-Instruct-FP8": {
        "quant_method": "compressed-tensors",
        "config_groups": {"group_0": {"weights": _FP8_TENSORS}},
    },
    "RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8": {
        "quant_method": "compressed-tensors",
        "config_groups": {"group_0": {"weights": _FP8_TENSORS}},
    },
    "RedHatAI/Meta-Llama-3.1-70B-Instruct-quantized.w8a8": {
        "quant_method": "compressed-tensors",
        "config_groups": {"group_0": {"weights": _INT8_TENSORS}},
    },
    "RedHatAI/Meta-Llama-3.1-8B-Instruct-quantized.w8a8": {
        "quant_method": "compressed-tensors",
        "config_groups": {"group_0": {"weights": _INT8_TENSORS}},
    },
    "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4": {"quant_method": "awq", "bits": 4},
    "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4": {"quant_method": "awq", "bits": 4},
    "hugging-quants/Meta-Llama-3.1-70B-Instruct-GPTQ-INT4": {"quant_method": "gptq", "bits": 4},
    # Its quantize_config.json (tests/fidelity/configs): desc_act true, group_size 128. The 70B's
    # was not found, so its desc_act stays unknown.
    "hugging-quants/Meta-Llama-3.1-8B-Instruct-GPTQ-INT4": {
        "quant_method": "gptq",
        "bits": 4,
        "group_size": 128,
        "desc_act": True,
    },
    "Qwen/Qwen2.5-72B-Instruct-AWQ": {"quant_method": "awq", "bits": 4},
    "Qwen/Qwen2.5-72B-Instruct-GPTQ-Int4": {"quant_method": "gptq", "bits": 4},
}
"""The quantization_config of the catalog's pre-quantized checkpoints (as their config.json has
it), for when the checkpoint itself cannot be read."""


def catalog_quant_method(model_id: str) -> dict[str, object] | None:
    """The catalogued quantization_config of a pre-quantized checkpoint; None if unquantized."""
    wanted = model_id.rstrip("/").lower()
    for known, config in CATALOG_QUANTIZATION.items():
        if wanted == known.lower() or wanted.endswith("/" + known.lower()):
            return config
    return None


def lookup_model(model_id: str) -> ModelArchitecture | None:
    """Find a model by its Hugging Face id, ignoring case and a local-path prefix."""
    if model_id in MODELS:
        return MODELS[model_id]
    wanted = model_id.rstrip("/").lower()
    for known, arch in MODELS.items():
        if wanted == known.lower() or wanted.endswith("/" + known.lower()):
            return arch
    return None
