"""The vLLM server command line for a resource, in the form its vLLM release understands.

Up to 0.8.2 speculation is configured with one flag per option; later releases take a single
--speculative-config JSON object. The command is always an argument list, never a shell string.
"""

from __future__ import annotations

import json
from typing import Any

from packaging.version import Version

from specpilot.api.models import (
    NgramSpec,
    Quantization,
    SpeculationMethod,
    SpeculationSpec,
    SpeculativeInferenceSpec,
)
from specpilot.planning.checkpoint import Checkpoints
from specpilot.planning.quantization import quantization_flag
from specpilot.vllm_versions import Feature, default_gpu_memory_utilization, supports

COMMAND = ["vllm", "serve"]


def is_speculating(spec: SpeculativeInferenceSpec) -> bool:
    return spec.speculation is not None and spec.speculation.method is not SpeculationMethod.NONE


def server_args(
    spec: SpeculativeInferenceSpec, version: Version, checkpoints: Checkpoints | None = None
) -> list[str]:
    """Arguments after `vllm serve`: the model first, then flags, then the user's extraArgs.

    `checkpoints`: what was read of the checkpoints, as the plan had it: a pre-quantized one
    gets no --quantization (vLLM reads its method; any other value makes vLLM refuse it)."""
    checkpoints = checkpoints or Checkpoints()
    target = spec.target
    utilization = spec.gpus.memory_utilization or default_gpu_memory_utilization(version)
    args = [
        target.model,
        "--host",
        "0.0.0.0",
        "--port",
        str(spec.vllm.port),
        "--tensor-parallel-size",
        str(target.tensor_parallel_size),
    ]
    if target.pipeline_parallel_size > 1:
        args += ["--pipeline-parallel-size", str(target.pipeline_parallel_size)]
    args += ["--gpu-memory-utilization", f"{utilization:g}"]
    if target.max_model_len is not None:
        args += ["--max-model-len", str(target.max_model_len)]
    if target.dtype != "auto":
        args += ["--dtype", target.dtype]
    if target.kv_cache_dtype != "auto":
        args += ["--kv-cache-dtype", target.kv_cache_dtype]
    flag = quantization_flag(target.quantization, target.model, target.architecture, checkpoints)
    if flag is not None:
        args += ["--quantization", flag]
        if flag == Quantization.BITSANDBYTES.value:
            args += ["--load-format", "bitsandbytes"]
    if spec.speculation is not None and is_speculating(spec):
        draft = spec.speculation.draft
        draft_flag = (
            quantization_flag(draft.quantization, draft.model, draft.architecture, checkpoints)
            if draft is not None
            else None
        )
        if supports(version, Feature.LEGACY_SPECULATIVE_FLAGS):
            args += _legacy_speculation_flags(spec.speculation, version, draft_flag)
        else:
            config = speculative_config(spec, spec.speculation, version, draft_flag)
            args += ["--speculative-config", json.dumps(config, sort_keys=True)]
    return args + list(spec.vllm.extra_args)


def _ngram(speculation: SpeculationSpec) -> NgramSpec:
    return speculation.ngram or NgramSpec()


def speculative_config(
    spec: SpeculativeInferenceSpec,
    speculation: SpeculationSpec,
    version: Version,
    draft_flag: str | None,
) -> dict[str, Any]:
    """The --speculative-config object; keys exactly as vLLM's SpeculativeConfig names them."""
    method = speculation.method
    config: dict[str, Any] = {
        "method": method.value,
        "num_speculative_tokens": speculation.effective_num_speculative_tokens,
    }
    if speculation.draft is not None:
        config["model"] = speculation.draft.model
        config["draft_tensor_parallel_size"] = (
            speculation.draft.tensor_parallel_size or spec.target.tensor_parallel_size
        )
        if draft_flag is not None:
            config["quantization"] = draft_flag
    if method is SpeculationMethod.NGRAM:
        ngram = _ngram(speculation)
        config["prompt_lookup_max"] = ngram.prompt_lookup_max
        config["prompt_lookup_min"] = ngram.prompt_lookup_min
    if speculation.schedule:
        config["num_speculative_tokens_per_batch_size"] = [
            [step.min_batch_size, step.max_batch_size, step.num_speculative_tokens]
            for step in speculation.schedule
        ]
    if speculation.adaptive_verification:
        config["enable_adaptive_verification"] = True
    if supports(version, Feature.V0_ENGINE):
        if speculation.disable_by_batch_size is not None:
            config["disable_by_batch_size"] = speculation.disable_by_batch_size
        if speculation.acceptance_method is not None:
            config["acceptance_method"] = speculation.acceptance_method
        if speculation.typical_acceptance_posterior_threshold is not None:
            config["posterior_threshold"] = speculation.typical_acceptance_posterior_threshold
        if speculation.typical_acceptance_posterior_alpha is not None:
            config["posterior_alpha"] = speculation.typical_acceptance_posterior_alpha
    return config


def _legacy_speculation_flags(
    speculation: SpeculationSpec, version: Version, draft_flag: str | None
) -> list[str]:
    """vLLM <= 0.8.2: one flag per option; n-gram is the pseudo-model "[ngram]"."""
    flags: list[str] = []
    if version < Version("0.6.2"):
        flags.append("--use-v2-block-manager")
    if speculation.method is SpeculationMethod.NGRAM:
        ngram = _ngram(speculation)
        flags += [
            "--speculative-model",
            "[ngram]",
            "--ngram-prompt-lookup-max",
            str(ngram.prompt_lookup_max),
            "--ngram-prompt-lookup-min",
            str(ngram.prompt_lookup_min),
        ]
    elif speculation.draft is not None:
        flags += ["--speculative-model", speculation.draft.model]
        if speculation.draft.tensor_parallel_size is not None:
            flags += [
                "--speculative-draft-tensor-parallel-size",
                str(speculation.draft.tensor_parallel_size),
            ]
        if draft_flag is not None:
            flags += ["--speculative-model-quantization", draft_flag]
    flags += ["--num-speculative-tokens", str(speculation.effective_num_speculative_tokens)]
    if speculation.acceptance_method is not None:
        flags += ["--spec-decoding-acceptance-method", speculation.acceptance_method]
    if speculation.typical_acceptance_posterior_threshold is not None:
        flags += [
            "--typical-acceptance-sampler-posterior-threshold",
            f"{speculation.typical_acceptance_posterior_threshold:g}",
        ]
    if speculation.typical_acceptance_posterior_alpha is not None:
        flags += [
            "--typical-acceptance-sampler-posterior-alpha",
            f"{speculation.typical_acceptance_posterior_alpha:g}",
        ]
    if speculation.disable_by_batch_size is not None:
        flags += ["--speculative-disable-by-batch-size", str(speculation.disable_by_batch_size)]
    return flags
