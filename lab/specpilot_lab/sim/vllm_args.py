"""vLLM's `serve` command line, as the simulator understands it.

The simulator starts from exactly the arguments specpilot renders for a pod, so it accepts the
flags vLLM has for the emulated release and, like vLLM, refuses unknown ones. What vLLM's flags
do not say (the GPU model, the checkpoint's precision when not on the command line) comes from
the environment: SPECPILOT_SIM_GPU, SPECPILOT_SIM_QUANTIZATION, SPECPILOT_SIM_VLLM_VERSION.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from packaging.version import Version
from pydantic import BaseModel, TypeAdapter

from specpilot.api.models import Quantization, SpeculationMethod
from specpilot.vllm_versions import NEWEST_VERIFIED, Feature, runs_model_runner_v2, supports

DEFAULT_GPU = "H100-80GB"


class SimArgsError(Exception):
    """Arguments vLLM itself would refuse; the message is in vLLM's words where it has them."""


class Speculation(BaseModel):
    method: SpeculationMethod
    draft_model: str | None = None
    num_speculative_tokens: int
    draft_tensor_parallel_size: int | None = None
    prompt_lookup_max: int | None = None
    prompt_lookup_min: int | None = None
    schedule: list[tuple[int, int, int]] | None = None
    """num_speculative_tokens_per_batch_size (vLLM 0.24.0+), validated and sorted by start."""
    adaptive_verification: bool = False
    """enable_adaptive_verification (vLLM 0.28.0+), as given; what vLLM refuses never gets here.
    The engine trims verification only for the methods whose drafter does it (not ngram)."""


class ServerConfig(BaseModel):
    model: str
    served_model_name: str
    host: str
    port: int
    tensor_parallel_size: int
    pipeline_parallel_size: int
    gpu_memory_utilization: float | None
    max_model_len: int | None
    dtype: str
    kv_cache_dtype: str
    quantization: Quantization
    max_num_seqs: int
    max_num_batched_tokens: int
    speculation: Speculation | None
    vllm_version: str
    gpu: str


_COMMON = [
    ("--host", str, "0.0.0.0"),
    ("--port", int, 8000),
    ("--tensor-parallel-size", int, 1),
    ("--pipeline-parallel-size", int, 1),
    ("--gpu-memory-utilization", float, None),
    ("--max-model-len", str, None),
    ("--dtype", str, "auto"),
    ("--kv-cache-dtype", str, "auto"),
    ("--quantization", str, None),
    ("--load-format", str, "auto"),
    ("--served-model-name", str, None),
    ("--max-num-seqs", int, 256),
    ("--max-num-batched-tokens", int, 8192),
    ("--seed", int, 0),
    ("--swap-space", float, 4),
    ("--block-size", int, 16),
    ("--download-dir", str, None),
    ("--revision", str, None),
    ("--tokenizer", str, None),
    ("--trust-remote-code", None, False),
    ("--enforce-eager", None, False),
    ("--enable-prefix-caching", None, False),
    ("--disable-log-requests", None, False),
    ("--disable-log-stats", None, False),
]
_LEGACY = [
    ("--speculative-model", str, None),
    ("--num-speculative-tokens", int, None),
    ("--speculative-draft-tensor-parallel-size", int, None),
    ("--speculative-model-quantization", str, None),
    ("--ngram-prompt-lookup-max", int, None),
    ("--ngram-prompt-lookup-min", int, None),
    ("--spec-decoding-acceptance-method", str, None),
    ("--typical-acceptance-sampler-posterior-threshold", float, None),
    ("--typical-acceptance-sampler-posterior-alpha", float, None),
    ("--speculative-disable-by-batch-size", int, None),
    ("--use-v2-block-manager", None, False),
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits; the simulator reports instead
        raise SimArgsError(f"vllm: error: {message}")


def _parser(version: Version) -> _Parser:
    parser = _Parser(prog="vllm serve", add_help=False, allow_abbrev=False)
    parser.add_argument("model")
    flags = list(_COMMON)
    if supports(version, Feature.LEGACY_SPECULATIVE_FLAGS):
        flags += _LEGACY
    if supports(version, Feature.SPECULATIVE_CONFIG_JSON):
        flags.append(("--speculative-config", str, None))
    for flag, kind, default in flags:
        if kind is None:
            parser.add_argument(flag, action="store_true", default=default)
        else:
            parser.add_argument(flag, type=kind, default=default)
    return parser


def _max_model_len(text: str | None) -> int | None:
    """vLLM's human-readable lengths: 32k = 32000, 32K = 32768 (newer releases)."""
    if text is None:
        return None
    match = re.fullmatch(r"(\d+)([kKmM]?)", text)
    if not match:
        raise SimArgsError(f"vllm: error: argument --max-model-len: invalid value {text!r}")
    value, suffix = int(match.group(1)), match.group(2)
    scale = {"": 1, "k": 1000, "K": 1024, "m": 10**6, "M": 2**20}[suffix]
    return value * scale


def _quantization(flag: str | None, model: str, env: Mapping[str, str]) -> Quantization:
    """The checkpoint's precision: the environment, the flag, or what the name says."""
    if env.get("SPECPILOT_SIM_QUANTIZATION"):
        return Quantization(env["SPECPILOT_SIM_QUANTIZATION"])
    name = (flag or "") + " " + model.lower()
    for needle, quantization in (
        ("awq", Quantization.AWQ),
        ("gptq", Quantization.GPTQ),
        ("bitsandbytes", Quantization.BITSANDBYTES),
        ("fp8", Quantization.FP8),
        ("w8a8", Quantization.INT8),
        ("int8", Quantization.INT8),
        ("int4", Quantization.INT4),
    ):
        if needle in name:
            return quantization
    return Quantization.NONE


def _int(value: Any) -> int:
    """int() as vLLM applies it to each schedule item (its error when that fails)."""
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise SimArgsError(f"ValueError: {exc}") from exc


def validate_schedule(schedule: object) -> list[tuple[int, int, int]]:
    """num_speculative_tokens_per_batch_size checked as vLLM checks it when it builds the scheduler
    (v1/spec_decode/dynamic/utils.py, 0.24.0 to 0.33.0; docs/vllm-versions.md section 4), in
    vLLM's words: inclusive [start, end, k] ranges, positive, start <= end, k >= 0, no overlap
    once sorted by start, the first starting at 1. Returns the ranges sorted by start."""
    if not isinstance(schedule, list):
        raise SimArgsError(
            "ValueError: num_speculative_tokens_per_batch_size must be a non-empty list of "
            "(range_start, range_end, num_speculative_tokens) entries."
        )
    if not schedule:
        raise SimArgsError("ValueError: num_speculative_tokens_per_batch_size must not be empty.")
    ranges: list[tuple[int, int, int]] = []
    for entry in schedule:
        if not isinstance(entry, list | tuple) or len(entry) != 3:
            raise SimArgsError(
                "ValueError: Each num_speculative_tokens_per_batch_size entry must be a 3-item "
                "sequence: (range_start, range_end, num_speculative_tokens)."
            )
        start, end, k = (_int(item) for item in entry)
        if start <= 0 or end <= 0:
            raise SimArgsError(f"ValueError: Batch-size range ({start}, {end}) must be positive.")
        if start > end:
            raise SimArgsError(
                f"ValueError: Batch-size range start must be <= end for ({start}, {end}, {k})."
            )
        if k < 0:
            raise SimArgsError(
                "ValueError: num_speculative_tokens_per_batch_size values must be >= 0."
            )
        ranges.append((start, end, k))
    ranges.sort(key=lambda r: r[0])
    previous_end = 0
    for start, end, _ in ranges:
        if start <= previous_end:
            raise SimArgsError("ValueError: Batch-size ranges must be non-overlapping and sorted.")
        previous_end = end
    if ranges[0][0] != 1:
        raise SimArgsError(
            "ValueError: The first batch-size range must start at 1 so every runtime batch size "
            "has a defined schedule."
        )
    return ranges


def _schedule(data: Mapping[str, Any], version: Version) -> list[tuple[int, int, int]] | None:
    """The per-batch-size schedule, on releases that have it. Older releases: the key is ignored,
    as the simulator ignores other keys it does not model (the operator refuses to render it)."""
    key = "num_speculative_tokens_per_batch_size"
    if data.get(key) is None or not supports(version, Feature.PER_BATCH_SIZE_SCHEDULE):
        return None
    return validate_schedule(data[key])


ADAPTIVE_VERIFICATION_KEY = "enable_adaptive_verification"
ADAPTIVE_VERIFICATION_SINCE = Version("0.28.0")
"""The first release whose SpeculativeConfig has enable_adaptive_verification (PR #47808)."""


def _pydantic_error(model: str, text: str) -> SimArgsError:
    """A check vLLM runs inside a pydantic dataclass (SpeculativeConfig's model validator,
    VllmConfig.__post_init__): pydantic wraps the ValueError. The echo of the whole input
    (input_value=ArgsKwargs(...)) is left out."""
    return SimArgsError(
        f"pydantic_core._pydantic_core.ValidationError: 1 validation error for {model}\n"
        f"  Value error, {text} [type=value_error, input_value=ArgsKwargs(...), "
        "input_type=ArgsKwargs]"
    )


def _adaptive_verification(data: Mapping[str, Any], version: Version) -> bool:
    """enable_adaptive_verification as SpeculativeConfig takes it: an unknown keyword before
    0.28.0 (extra fields are forbidden), a bool after, refused up to 0.29 for anything but DSpark
    (which the simulator does not run) and, from 0.30.0, with use_local_argmax_reduction
    (vllm/config/speculative.py)."""
    if ADAPTIVE_VERIFICATION_KEY not in data:
        return False
    value = data[ADAPTIVE_VERIFICATION_KEY]
    if version < ADAPTIVE_VERIFICATION_SINCE:
        raise SimArgsError(
            "pydantic_core._pydantic_core.ValidationError: 1 validation error for "
            f"SpeculativeConfig\n{ADAPTIVE_VERIFICATION_KEY}\n  Unexpected keyword argument "
            f"[type=unexpected_keyword_argument, input_value={value!r}, "
            f"input_type={type(value).__name__}]"
        )
    enabled = TypeAdapter(bool).validate_python(value)  # pydantic's lax bool, as vLLM's field
    if not enabled:
        return False
    if not supports(version, Feature.ADAPTIVE_VERIFICATION):  # 0.28-0.29: DSpark only
        raise _pydantic_error(
            "SpeculativeConfig", "Adaptive verification only supported with DSpark"
        )
    if data.get("use_local_argmax_reduction"):
        raise _pydantic_error(
            "SpeculativeConfig",
            "Adaptive verification estimates per-position acceptance from the draft logits, "
            "which use_local_argmax_reduction never materializes. Disable one of them.",
        )
    return True


def check_adaptive_verification(
    speculation: Speculation | None, args: argparse.Namespace, version: Version
) -> None:
    """VllmConfig's checks of enable_adaptive_verification, in vLLM's order (0.30.0 to 0.33.0,
    vllm/config/vllm.py): Model Runner V1, picked when V2 does not run the method, refuses it;
    then _validate_adaptive_verification wants full CUDA graphs (--enforce-eager has none) and
    no pipeline parallelism. Its LoRA check has no flag the simulator accepts. Which methods
    Model Runner V2 runs is vllm_versions.MODEL_RUNNER_V2_METHODS (ngram, draft_model and suffix
    on V1 in 0.30.0; ngram and suffix in 0.31.0; suffix in 0.32.0 and 0.33.0)."""
    if speculation is None or not speculation.adaptive_verification:
        return
    if not runs_model_runner_v2(version, speculation.method.value):
        raise _pydantic_error(
            "VllmConfig", "Model Runner V1 does not support: adaptive draft verification"
        )
    if args.enforce_eager:
        raise _pydantic_error(
            "VllmConfig",
            "Adaptive verification requires full CUDA graphs. Use cudagraph mode FULL, "
            "FULL_DECODE_ONLY, or FULL_AND_PIECEWISE, or disable adaptive verification.",
        )
    if args.pipeline_parallel_size > 1:
        raise _pydantic_error(
            "VllmConfig",
            "Adaptive verification is not currently compatible with pipeline parallelism",
        )


def _speculation(args: argparse.Namespace, version: Version) -> Speculation | None:
    config = getattr(args, "speculative_config", None)
    if config:
        try:
            data = json.loads(config)
        except ValueError as exc:
            raise SimArgsError(f"vllm: error: --speculative-config is not JSON: {exc}") from exc
        if "tensor_parallel_size" in data:
            raise SimArgsError(
                "'tensor_parallel_size' is not a valid argument in the speculative_config."
            )
        method = data.get("method") or "draft_model"
        return Speculation(
            method=SpeculationMethod(method.replace("deepseek_mtp", "mtp")),
            draft_model=data.get("model"),
            num_speculative_tokens=data.get("num_speculative_tokens", 1),
            draft_tensor_parallel_size=data.get("draft_tensor_parallel_size"),
            prompt_lookup_max=data.get("prompt_lookup_max"),
            prompt_lookup_min=data.get("prompt_lookup_min"),
            schedule=_schedule(data, version),
            adaptive_verification=_adaptive_verification(data, version),
        )
    draft = getattr(args, "speculative_model", None)
    if draft is None:
        return None
    if args.num_speculative_tokens is None:
        raise SimArgsError("num_speculative_tokens must be provided with speculative_model")
    ngram = draft == "[ngram]"
    return Speculation(
        method=SpeculationMethod.NGRAM
        if ngram
        else (
            SpeculationMethod.EAGLE if "eagle-" in draft.lower() else SpeculationMethod.DRAFT_MODEL
        ),
        draft_model=None if ngram else draft,
        num_speculative_tokens=args.num_speculative_tokens,
        draft_tensor_parallel_size=args.speculative_draft_tensor_parallel_size,
        prompt_lookup_max=args.ngram_prompt_lookup_max,
        prompt_lookup_min=args.ngram_prompt_lookup_min,
    )


def parse_server_args(argv: Sequence[str], env: Mapping[str, str]) -> ServerConfig:
    """The server configuration for `vllm serve ARGV` in the emulated vLLM release."""
    version = _emulated_version(argv, env)
    args = _parser(version).parse_args(list(argv))
    speculation = _speculation(args, version)
    check_adaptive_verification(speculation, args, version)
    return ServerConfig(
        model=args.model,
        served_model_name=args.served_model_name or args.model,
        host=args.host,
        port=args.port,
        tensor_parallel_size=args.tensor_parallel_size,
        pipeline_parallel_size=args.pipeline_parallel_size,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_len=_max_model_len(args.max_model_len),
        dtype=args.dtype,
        kv_cache_dtype=args.kv_cache_dtype,
        quantization=_quantization(args.quantization, args.model, env),
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        speculation=speculation,
        vllm_version=str(version),
        gpu=env.get("SPECPILOT_SIM_GPU") or DEFAULT_GPU,
    )


def _emulated_version(argv: Sequence[str], env: Mapping[str, str]) -> Version:
    """SPECPILOT_SIM_VLLM_VERSION, else 0.8.2 for legacy flags, else the newest verified."""
    if env.get("SPECPILOT_SIM_VLLM_VERSION"):
        return Version(env["SPECPILOT_SIM_VLLM_VERSION"])
    legacy = any(a.split("=", 1)[0] == "--speculative-model" for a in argv)
    return Version("0.8.2") if legacy else NEWEST_VERIFIED
