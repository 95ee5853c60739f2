"""spec.vllm.extraArgs judged the way the resource's vLLM release will read them.

vLLM's parser accepts many spellings of one option (`--max_model_len`, `--max-model-len=8192`,
`--max-model 8192`, `-sc.method ngram` for --speculative-config), so a list of forbidden strings
is not enough: each argument is read with the release's own option table (specpilot.vllm_cli),
and what it would set decides. An option specpilot sets from the resource cannot be set again
under any spelling; an argument the release would refuse is refused here, naming the release.
"""

from __future__ import annotations

import difflib

from packaging.version import Version

from specpilot.api.models import SpeculativeInferenceSpec
from specpilot.findings import Finding, error, warning
from specpilot.rendering.args import server_args
from specpilot.vllm_cli import (
    Applied,
    Problem,
    ServeOption,
    known_releases,
    nearest_release,
    read_args,
    serve_table,
)

MANAGED_DESTS = {
    "model": "spec.target.model",
    "model_tag": "spec.target.model",
    "tensor_parallel_size": "spec.target.tensorParallelSize",
    "pipeline_parallel_size": "spec.target.pipelineParallelSize",
    "gpu_memory_utilization": "spec.gpus.memoryUtilization",
    "max_model_len": "spec.target.maxModelLen",
    "quantization": "spec.target.quantization",
    "dtype": "spec.target.dtype",
    "kv_cache_dtype": "spec.target.kvCacheDtype",
    "port": "spec.vllm.port",
    "host": "spec.vllm.port",
    "speculative_config": "spec.speculation",
    "spec_method": "spec.speculation.method",
    "spec_model": "spec.speculation.draft.model",
    "spec_tokens": "spec.speculation.numSpeculativeTokens",
    "speculative_model": "spec.speculation.draft.model",
    "num_speculative_tokens": "spec.speculation.numSpeculativeTokens",
    "speculative_draft_tensor_parallel_size": "spec.speculation.draft.tensorParallelSize",
    "speculative_model_quantization": "spec.speculation.draft.quantization",
    "speculative_disable_by_batch_size": "spec.speculation.disableByBatchSize",
    "spec_decoding_acceptance_method": "spec.speculation.acceptanceMethod",
    "ngram_prompt_lookup_max": "spec.speculation.ngram.promptLookupMax",
    "ngram_prompt_lookup_min": "spec.speculation.ngram.promptLookupMin",
    "load_format": "spec.target.quantization",
}
"""vLLM's dests (argparse's names for what an option sets) that specpilot sets from a field.
load_format counts only where specpilot renders it (bitsandbytes)."""
MANAGED_DEST_PREFIXES = ("speculative_", "typical_acceptance_sampler_")
ALWAYS_MANAGED = set(MANAGED_DESTS) - {"load_format"}


def managed_field(dest: str) -> str | None:
    """The field that owns a vLLM dest whatever the resource renders, if any."""
    if dest in ALWAYS_MANAGED:
        return MANAGED_DESTS[dest]
    return "spec.speculation" if dest.startswith(MANAGED_DEST_PREFIXES) else None


def extra_args_findings(spec: SpeculativeInferenceSpec, version: Version) -> list[Finding]:
    """Every extraArgs item vLLM `version` would refuse, or would use to override the plan."""
    args = list(spec.vllm.extra_args)
    if not args:
        return []
    release = nearest_release(version)
    table = serve_table(str(release))
    without_extras = spec.model_copy(
        update={"vllm": spec.vllm.model_copy(update={"extra_args": []})}
    )
    rendered_args = server_args(without_extras, version)[1:]  # after the model
    rendered = {a.option.dest for a in read_args(table, rendered_args).applied}
    reading = read_args(table, args)
    found: list[Finding] = []
    seen: set[str] = set()
    for applied in reading.applied:
        dest = applied.option.dest
        owner = managed_field(dest) or (MANAGED_DESTS.get(dest) if dest in rendered else None)
        if owner or dest in rendered:
            found.append(_managed(applied, owner, version))
        elif dest == "config":
            found.append(_config_file(applied))
        elif applied.option.exits:
            found.append(_exits(applied, release))
        elif dest in seen and not applied.option.repeatable:
            found.append(_duplicate(applied))
        elif dest in ADAPTIVE_VERIFICATION_CONFLICTS and _adaptive(spec, applied):
            found.append(_adaptive_conflict(applied, version))
        seen.add(dest)
    exact = release == version
    found += [_refusal(p, release, exact, table.by_string()) for p in reading.problems]
    controlled = {_path(i) for i, arg in enumerate(args) if any(ord(c) < 32 for c in arg)}
    return [f for f in found if f.path not in controlled]  # refused for that already


def _path(index: int) -> str:
    return f"spec.vllm.extraArgs[{index}]"


def _spelling(applied: Applied) -> str:
    """How vLLM spells the option the user wrote, when the user wrote it otherwise."""
    written = applied.written.split("=", 1)[0]
    normalized = "--" + written[2:].replace("_", "-") if written.startswith("--") else written
    options = applied.option.options
    named = "--" + applied.option.dest.replace("_", "-")
    long_forms = [o for o in options if o.startswith("--")]
    full = next(
        (o for o in long_forms if o.startswith(normalized)),
        named if named in options else (long_forms or options)[0],
    )
    return "" if written == full else f" (vLLM reads it as {full})"


def _managed(applied: Applied, owner: str | None, version: Version) -> Finding:
    written = applied.written.split("=", 1)[0]
    source = f"from {owner}" if owner else "itself for this resource"
    return error(
        "ManagedFlagInExtraArgs",
        _path(applied.index),
        f"{written}{_spelling(applied)} sets vLLM {version}'s {applied.option.dest}, which "
        f"specpilot sets {source}; passing it again would contradict the plan.",
        f"remove it from extraArgs and set {owner} instead."
        if owner
        else "remove it from extraArgs.",
    )


ADAPTIVE_VERIFICATION_CONFLICTS = {
    "enforce_eager": "Adaptive verification requires full CUDA graphs",
    "enable_lora": "Adaptive verification is not currently compatible with LoRA",
}
"""Options vLLM refuses beside enable_adaptive_verification, with its message (config/vllm.py,
_validate_adaptive_verification, 0.30.0-0.33.0)."""


def _adaptive(spec: SpeculativeInferenceSpec, applied: Applied) -> bool:
    """Whether the resource verifies adaptively and the flag turns the option on."""
    speculation = spec.speculation
    turned_on = not applied.written.startswith("--no-") and applied.values[-1:] != ["false"]
    return speculation is not None and speculation.adaptive_verification and turned_on


def _adaptive_conflict(applied: Applied, version: Version) -> Finding:
    written = applied.written.split("=", 1)[0]
    return error(
        "AdaptiveVerificationConflict",
        _path(applied.index),
        f"{written} with spec.speculation.adaptiveVerification: vLLM {version} refuses to start "
        f'("{ADAPTIVE_VERIFICATION_CONFLICTS[applied.option.dest]}").',
        "remove it from extraArgs, or set adaptiveVerification to false.",
    )


def _config_file(applied: Applied) -> Finding:
    return error(
        "ConfigFileInExtraArgs",
        _path(applied.index),
        "--config reads options from a file inside the container, where specpilot cannot check "
        "them against the plan.",
        "give each option as its own extraArgs item instead.",
    )


def _exits(applied: Applied, release: Version) -> Finding:
    return error(
        "ExitingOptionInExtraArgs",
        _path(applied.index),
        f"{applied.written} makes vLLM {release} print its help and exit instead of serving.",
        "remove it.",
    )


def _duplicate(applied: Applied) -> Finding:
    return error(
        "DuplicateOptionInExtraArgs",
        _path(applied.index),
        f"{applied.written.split('=', 1)[0]} sets {applied.option.dest} again; vLLM keeps only "
        "the last value.",
        "give the option once.",
    )


def _refusal(
    problem: Problem, release: Version, exact: bool, strings: dict[str, ServeOption]
) -> Finding:
    """An argument the parser of `release` refuses. Judged with the table of a nearby release
    (`exact` False), only an option managed in some shipped release is certain enough to be an
    error; the rest is a warning."""
    owner = None if exact else _managed_in_any_release(problem.written)
    if owner is not None:
        return error(
            "ManagedFlagInExtraArgs",
            _path(problem.index),
            f"{problem.written.split('=', 1)[0]} sets vLLM's {owner[0]} in vLLM {owner[1]}, "
            f"which specpilot sets from {owner[2]}.",
            f"remove it from extraArgs and set {owner[2]} instead.",
        )
    name = problem.written.split("=", 1)[0]
    serve = f"vLLM {release}'s `vllm serve`"
    if problem.kind == "unknown":
        close = difflib.get_close_matches(name.replace("_", "-"), list(strings), n=1)
        message = f"{name} is not an option of {serve}."
        fix = f"did you mean {close[0]}? Otherwise remove it." if close else "remove it."
    elif problem.kind == "ambiguous":
        shown = ", ".join(problem.candidates[:4]) + (", ..." if len(problem.candidates) > 4 else "")
        message = f"{name} abbreviates several options of {serve} ({shown}), which it refuses."
        fix = "write the option in full."
    elif problem.kind == "stray-value":
        message = (
            f"{problem.written!r} follows no option that takes a value; {serve} would read it "
            "as a second model and refuse it."
        )
        fix = "put it right after the option it belongs to, or remove it."
    elif problem.kind == "missing-value":
        message = f"{name} takes a value in {serve}, and none follows it."
        fix = f"give the value as the next item (or as {name}=VALUE)."
    else:
        message = f"{name} is a switch in {serve}: it takes no value."
        fix = f"give {name} without =VALUE."
    if exact:
        return error("InvalidExtraArg", _path(problem.index), message, fix)
    nearby = (
        f" (judged by the options of vLLM {release}, the nearest release specpilot has vLLM's "
        "parser table for)"
    )
    return warning("UncheckedExtraArg", _path(problem.index), message[:-1] + nearby + ".", fix)


def _managed_in_any_release(written: str) -> tuple[str, Version, str] | None:
    """(dest, release, field) if some shipped release reads `written` as a managed option."""
    for release in known_releases():
        for applied in read_args(serve_table(str(release)), [written, "x"]).applied:
            owner = managed_field(applied.option.dest)
            if applied.index == 0 and owner is not None:
                return applied.option.dest, release, owner
    return None
