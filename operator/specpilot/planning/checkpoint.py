"""Model facts as the checkpoint states them: config.json and the safetensors sizes.

The planner sizes weights and the KV cache from these facts. They are built by pure functions
from already-parsed JSON; reading the files (hub or local directory) is the adapter's job
(`specpilot.adapters.checkpoints`). The catalog and `spec.*.architecture` give the same facts
when a checkpoint cannot be read, each with its source named.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from specpilot.api.models import ArchitectureOverride, Quantization
from specpilot.catalog import ModelArchitecture, catalog_quant_method, lookup_model
from specpilot.findings import Finding, warning

TORCH_DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}

SOURCE_CATALOG = "specpilot's catalog"
SOURCE_OVERRIDE = "spec architecture"


class CheckpointFactsError(ValueError):
    """config.json lacks a field the planner needs, or holds a value of the wrong type."""


class MLA(BaseModel):
    """Multi-head latent attention (DeepSeek): one compressed latent per layer and token."""

    model_config = ConfigDict(frozen=True)

    kv_lora_rank: int
    qk_rope_head_dim: int


class CheckpointQuantization(BaseModel):
    """The checkpoint's own quantization_config, and what it means in specpilot's terms."""

    model_config = ConfigDict(frozen=True)

    method: str
    """quant_method as config.json names it (fp8, fbgemm_fp8, compressed-tensors, awq, gptq...)."""
    precision: Quantization | None
    """The weight precision it stores; None for a method specpilot does not classify."""
    desc_act: bool | None = None
    """GPTQ group activation ordering (quantization_config desc_act); None when not stated."""
    group_size: int | None = None
    """GPTQ group size; -1 is one group per output channel (activation ordering then a no-op)."""
    dynamic_act_order: tuple[str, ...] = ()
    """GPTQModel `dynamic` rules that give a module activation ordering with groups."""

    @property
    def group_act_order(self) -> bool | None:
        """Whether vLLM would run GPTQ group activation ordering (g_idx), as vLLM decides it:
        desc_act with grouped weights, or a `dynamic` rule that enables it; None when unknown."""
        if self.method != "gptq":
            return False
        if self.dynamic_act_order:
            return True
        if self.desc_act is None:
            return None
        return self.desc_act and self.group_size != -1


class CheckpointFacts(BaseModel):
    """What the planner needs to know about one checkpoint, and where it came from."""

    model_config = ConfigDict(frozen=True)

    model: str
    source: str
    """Where the facts come from: a config.json (hub or directory), the catalog, or the spec."""
    layers: int
    hidden_size: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    parameters_billions: float
    intermediate_size: int | None = None
    max_position_embeddings: int | None = None
    model_type: str | None = None
    architecture: str | None = None
    torch_dtype: str | None = None
    tie_word_embeddings: bool = False
    mla: MLA | None = None
    quantization: CheckpointQuantization | None = None
    """None: the checkpoint stores unquantized weights (its torch_dtype)."""
    quantization_known: bool = True
    """False when the facts come from the spec: whether the checkpoint is quantized is unknown."""
    weight_bytes: int | None = None
    """Exact bytes of all tensors (safetensors index total_size or headers); None if unread."""
    family: str | None = None
    tokenizer: str | None = None
    """Models with the same tokenizer id share a vocabulary (catalog knowledge only)."""

    @property
    def attention_parameters(self) -> int:
        """Q, K, V and output projections of every layer."""
        q = self.attention_heads * self.head_dim
        kv = self.kv_heads * self.head_dim
        return self.layers * self.hidden_size * (2 * q + 2 * kv)

    @property
    def embedding_parameters(self) -> int:
        """Embedding plus lm_head rows: the tensors quantization methods leave in 16 bits."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)


def _int(config: Mapping[str, Any], *keys: str, required: bool = True) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if value is not None:
            raise CheckpointFactsError(f"config.json {key} is {value!r}, not an integer")
    if required:
        raise CheckpointFactsError(f"config.json has no {' or '.join(keys)}")
    return None


def _text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """Multimodal checkpoints keep the language model's facts under text_config."""
    text = config.get("text_config")
    if isinstance(text, Mapping) and "num_hidden_layers" in text:
        return text
    return config


def classify_quantization(quantization_config: Mapping[str, Any]) -> CheckpointQuantization:
    """What a quantization_config stores, in the precisions specpilot plans with."""
    method = str(quantization_config.get("quant_method", "")).lower()
    bits = quantization_config.get("bits")
    precision: Quantization | None = None
    if method in ("fp8", "fbgemm_fp8"):
        precision = Quantization.FP8
    elif method == "awq":
        precision = Quantization.AWQ
    elif method == "gptq":
        precision = Quantization.INT8 if bits == 8 else Quantization.GPTQ
    elif method == "bitsandbytes":
        eight_bit = quantization_config.get("load_in_8bit") is True
        precision = Quantization.INT8 if eight_bit else Quantization.BITSANDBYTES
    elif method == "compressed-tensors":
        precision = _compressed_tensors_precision(quantization_config)
    elif method == "modelopt":
        algo = str(quantization_config.get("quant_algo", "")).upper()
        precision = Quantization.FP8 if algo == "FP8" else None
    if method != "gptq":
        return CheckpointQuantization(method=method, precision=precision)
    desc_act = quantization_config.get("desc_act")
    group_size = quantization_config.get("group_size")
    return CheckpointQuantization(
        method=method,
        precision=precision,
        desc_act=desc_act if isinstance(desc_act, bool) else None,
        group_size=group_size if isinstance(group_size, int) else None,
        dynamic_act_order=_dynamic_act_order(quantization_config, desc_act, group_size),
    )


def _dynamic_act_order(
    quantization_config: Mapping[str, Any], desc_act: Any, group_size: Any
) -> tuple[str, ...]:
    """The `dynamic` rules under which vLLM sees group activation ordering: a positive rule
    whose desc_act (its own, else the checkpoint's) is true and whose group_size is not -1."""
    dynamic = quantization_config.get("dynamic")
    if not isinstance(dynamic, Mapping):
        return ()
    return tuple(
        str(pattern)
        for pattern, overrides in dynamic.items()
        if not str(pattern).startswith("-:")
        and isinstance(overrides, Mapping)
        and overrides.get("desc_act", desc_act) is True
        and overrides.get("group_size", group_size) != -1
    )


def _compressed_tensors_precision(quantization_config: Mapping[str, Any]) -> Quantization | None:
    groups = quantization_config.get("config_groups")
    weights: list[Mapping[str, Any]] = [
        group["weights"]
        for group in (groups.values() if isinstance(groups, Mapping) else [])
        if isinstance(group, Mapping) and isinstance(group.get("weights"), Mapping)
    ]
    if not weights:
        return None
    bits = {w.get("num_bits") for w in weights}
    kinds = {w.get("type") for w in weights}
    if bits == {8} and kinds == {"float"}:
        return Quantization.FP8
    if bits == {8} and kinds == {"int"}:
        return Quantization.INT8
    if bits == {4}:
        return Quantization.INT4
    return None


def weight_bytes_from_index(index: Mapping[str, Any]) -> int | None:
    """model.safetensors.index.json's metadata.total_size: the bytes of every tensor."""
    metadata = index.get("metadata")
    total = metadata.get("total_size") if isinstance(metadata, Mapping) else None
    if isinstance(total, (int, float)) and not isinstance(total, bool) and total > 0:
        return int(total)
    return None


def weight_bytes_from_headers(headers: Sequence[Mapping[str, Any]]) -> int:
    """Bytes of every tensor listed in safetensors headers (dtype x shape, no guessing)."""
    total = 0
    for header in headers:
        for name, tensor in header.items():
            if name == "__metadata__" or not isinstance(tensor, Mapping):
                continue
            start, end = tensor.get("data_offsets", (0, 0))
            total += int(end) - int(start)
    return total


def facts_from_config(
    model: str, source: str, config: Mapping[str, Any], weight_bytes: int | None
) -> CheckpointFacts:
    """The facts of one checkpoint from its config.json (parsed) and its safetensors size.

    Raises CheckpointFactsError when config.json lacks what the planner needs.
    """
    text = _text_config(config)
    layers = _int(text, "num_hidden_layers", "n_layer", "num_layers")
    hidden = _int(text, "hidden_size", "n_embd", "d_model")
    heads = _int(text, "num_attention_heads", "n_head")
    vocab = _int(text, "vocab_size", required=False) or _int(config, "vocab_size")
    if not (layers and hidden and heads and vocab):
        raise CheckpointFactsError("config.json gives a zero layer, hidden, head or vocab size")
    kv_heads = _int(text, "num_key_value_heads", required=False) or heads
    head_dim = _int(text, "head_dim", required=False) or hidden // heads
    kv_lora_rank = _int(text, "kv_lora_rank", required=False)
    rope_dim = _int(text, "qk_rope_head_dim", required=False)
    mla = MLA(kv_lora_rank=kv_lora_rank, qk_rope_head_dim=rope_dim or 0) if kv_lora_rank else None
    quantization_config = config.get("quantization_config") or text.get("quantization_config")
    quantization = (
        classify_quantization(quantization_config)
        if isinstance(quantization_config, Mapping)
        else None
    )
    dtype = text.get("torch_dtype") or config.get("torch_dtype") or config.get("dtype")
    catalogued = lookup_model(model)
    facts = CheckpointFacts(
        model=model,
        source=source,
        layers=layers,
        hidden_size=hidden,
        attention_heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=vocab,
        parameters_billions=0.0,
        intermediate_size=_int(text, "intermediate_size", required=False),
        max_position_embeddings=_int(text, "max_position_embeddings", required=False),
        model_type=str(text.get("model_type") or config.get("model_type") or "") or None,
        architecture=_first(config.get("architectures")),
        torch_dtype=str(dtype) if dtype else None,
        tie_word_embeddings=bool(
            text.get("tie_word_embeddings", config.get("tie_word_embeddings", False))
        ),
        mla=mla,
        quantization=quantization,
        weight_bytes=weight_bytes,
        family=catalogued.family if catalogued else None,
        tokenizer=catalogued.tokenizer if catalogued else None,
    )
    parameters = _parameters_billions(facts, catalogued)
    return facts.model_copy(update={"parameters_billions": parameters})


def _first(value: Any) -> str | None:
    return str(value[0]) if isinstance(value, list) and value else None


def _parameters_billions(facts: CheckpointFacts, catalogued: ModelArchitecture | None) -> float:
    """Exact from the bytes of an unquantized checkpoint; else the catalog; else the shapes."""
    dtype_bytes = TORCH_DTYPE_BYTES.get(facts.torch_dtype or "", 2)
    if facts.weight_bytes and facts.quantization is None:
        return round(facts.weight_bytes / dtype_bytes / 1e9, 3)
    if catalogued is not None:
        return catalogued.parameters_billions
    if facts.intermediate_size and facts.mla is None:
        mlp = facts.layers * 3 * facts.hidden_size * facts.intermediate_size
        total = facts.attention_parameters + mlp + facts.embedding_parameters
        return round(total / 1e9, 3)
    if facts.weight_bytes:
        return round(facts.weight_bytes / _nominal_bytes(facts.quantization) / 1e9, 3)
    raise CheckpointFactsError("config.json has no intermediate_size to count parameters from")


def _nominal_bytes(quantization: CheckpointQuantization | None) -> float:
    precision = quantization.precision if quantization else None
    if precision in (Quantization.FP8, Quantization.INT8):
        return 1.0
    if precision is None:
        return 2.0
    return 0.5


def facts_from_catalog(model: str) -> CheckpointFacts | None:
    """The catalog's facts for a known model (its weight bytes are estimated, not read)."""
    arch = lookup_model(model)
    if arch is None:
        return None
    method = catalog_quant_method(model)
    quantization = classify_quantization(method) if method else None
    return _from_architecture(model, SOURCE_CATALOG, arch, quantization)


def facts_from_override(model: str, override: ArchitectureOverride) -> CheckpointFacts:
    arch = ModelArchitecture(
        layers=override.layers,
        hidden_size=override.hidden_size,
        attention_heads=override.attention_heads,
        kv_heads=override.kv_heads,
        head_dim=override.head_dim or override.hidden_size // override.attention_heads,
        vocab_size=override.vocab_size,
        parameters_billions=override.parameters_billions,
        family=override.family,
        tokenizer=override.tokenizer,
        max_position_embeddings=override.max_position_embeddings,
    )
    facts = _from_architecture(model, SOURCE_OVERRIDE, arch, None)
    return facts.model_copy(update={"quantization_known": False})


def _from_architecture(
    model: str,
    source: str,
    arch: ModelArchitecture,
    quantization: CheckpointQuantization | None,
) -> CheckpointFacts:
    return CheckpointFacts(
        model=model,
        source=source,
        layers=arch.layers,
        hidden_size=arch.hidden_size,
        attention_heads=arch.attention_heads,
        kv_heads=arch.kv_heads,
        head_dim=arch.head_dim,
        vocab_size=arch.vocab_size,
        parameters_billions=arch.parameters_billions,
        intermediate_size=arch.intermediate_size,
        max_position_embeddings=arch.max_position_embeddings,
        quantization=quantization,
        family=arch.family,
        tokenizer=arch.tokenizer,
    )


class Checkpoints(BaseModel):
    """What the operator read about each checkpoint before planning, and what it could not read.

    Empty means nothing was read (pure tests, or facts off): the catalog and the spec decide.
    """

    model_config = ConfigDict(frozen=True)

    read: dict[str, CheckpointFacts] = {}
    unreadable: dict[str, str] = {}
    """Model id -> why its checkpoint could not be read (the planner reports it)."""


def facts_for(
    model: str,
    override: ArchitectureOverride | None,
    checkpoints: Checkpoints,
    path: str,
) -> tuple[CheckpointFacts | None, list[Finding]]:
    """The facts to plan one model with: its checkpoint when read, else the spec's architecture,
    else the catalog; a checkpoint that could not be read is reported, never silently replaced."""
    read = checkpoints.read.get(model)
    if read is not None:
        return read, []
    fallback = facts_from_override(model, override) if override else facts_from_catalog(model)
    found = []
    if override is not None and override.head_dim is None:
        assumed = override.hidden_size // override.attention_heads
        found.append(
            warning(
                "HeadDimAssumed",
                path.removesuffix(".model") + ".architecture.headDim",
                f"headDim is unset, so the KV cache is sized with hiddenSize / attentionHeads = "
                f"{assumed}; models such as Qwen3 declare another head_dim (128 for Qwen3-32B, "
                "where that division gives 80).",
                "set headDim to config.json's head_dim (or let specpilot read the config).",
            )
        )
    reason = checkpoints.unreadable.get(model)
    if reason is None:
        return fallback, found
    planned_from = f"planning from {fallback.source}" if fallback else "nothing else describes it"
    return fallback, [
        *found,
        warning(
            "CheckpointUnreadable",
            path,
            f"the checkpoint metadata of {model} (config.json, safetensors sizes) could not be "
            f"read: {reason}; {planned_from}.",
            "check the model id, the token (HF_TOKEN) and the operator's access to the hub "
            "(HF_ENDPOINT), or give specpilot a directory with the checkpoint's config.json "
            "(--checkpoint-dir).",
        ),
    ]
