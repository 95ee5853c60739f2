"""Parse a manifest into a SpeculativeInference and report every problem at once.

Structural errors (types, enums, ranges, unknown fields) come from pydantic and are rewritten as
findings that name the field and the fix. To still report cross-field problems in the same
run, the offending fields are dropped and the rest is parsed again; a cross-field finding that
rests on a dropped field is not reported (it would be about a value the user did not write).

Types are judged as the API server judges them against the CRD's schema (generated from the same
models): the document is read as JSON, strictly, so "5" or true is no integer and "true" no
boolean, while enums still take their string values.
"""

from __future__ import annotations

import copy
import difflib
import json
from collections import deque
from collections.abc import Iterator
from itertools import pairwise
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from specpilot.api.models import (
    API_VERSION,
    KIND,
    SpeculationMethod,
    SpeculativeInference,
    SpeculativeInferenceSpec,
)
from specpilot.control.policy import flapping_findings
from specpilot.findings import Finding, error, shown

MAX_REPAIR_ROUNDS = 20


class ParseResult(BaseModel):
    resource: SpeculativeInference | None
    """The parsed resource; None when the manifest had structural errors."""
    findings: list[Finding]
    repaired: SpeculativeInference | None = None
    """The resource without its failing fields, for further checks; None if nothing was left."""
    dropped: list[str] = []
    """Fields removed to build `repaired`."""


def dotted(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def parse_manifest(raw: Any) -> ParseResult:
    """Validate a manifest (a dict from YAML) and run every cross-field check that can run."""
    if not isinstance(raw, dict):
        return ParseResult(
            resource=None,
            findings=[
                error(
                    "NotAnObject",
                    "(document)",
                    f"expected a SpeculativeInference mapping, got {type(raw).__name__}.",
                    "give a YAML mapping with apiVersion, kind, metadata and spec.",
                )
            ],
        )
    data, too_deep = bounded_copy(raw)
    structural = _nesting_findings(too_deep)
    dropped = [dotted(loc) for loc in too_deep]
    for _ in range(MAX_REPAIR_ROUNDS):
        try:
            repaired = SpeculativeInference.model_validate_json(
                json.dumps(data, default=str), strict=True, by_alias=True, by_name=False
            )
        except ValidationError as exc:
            new = [_finding_from_error(e) for e in exc.errors()]
            structural += [f for f in new if f.path not in dropped]
            if not _drop_failed_fields(data, exc.errors(), dropped):
                return ParseResult(resource=None, findings=_unique(structural))
            continue
        semantic = name_findings(repaired.metadata.name) + cross_field_findings(repaired.spec)
        semantic = [f for f in semantic if not f.involves(dropped)]
        return ParseResult(
            resource=None if structural else repaired,
            findings=_unique(structural + semantic),
            repaired=repaired,
            dropped=dropped,
        )
    return ParseResult(resource=None, findings=_unique(structural))


MAX_DEPTH = 32
"""Mappings and lists may nest this deep. A SpeculativeInference needs about 12 levels (in
spec.pod.affinity); Python's stack, the YAML parser and pydantic give out in the hundreds."""
Location = tuple[int | str, ...]


def bounded_copy(raw: dict[Any, Any]) -> tuple[dict[Any, Any], list[Location]]:
    """The document as the API server would hold it, copied iteratively down to MAX_DEPTH levels,
    and where it went deeper or contained itself (a YAML alias): there the copy holds null.

    Nothing that recurses (copy, JSON, pydantic) may see the document before this. Keys become
    strings where JSON has no spelling for them, and a whole float such as 2.0 becomes 2, as it
    comes back from the API server (which accepts 2.0 for an integer field). Breadth first, so
    the first place found too deep is the first in the document. metadata.managedFields is left
    out: the API server's record of who set which field, it mirrors the spec's shape (a deep
    spec makes it as deep) and nothing reads it from here.
    """
    root: dict[Any, Any] = {}
    too_deep: list[Location] = []
    pending: deque[tuple[Any, Any, Location, frozenset[int]]] = deque(
        [(raw, root, (), frozenset({id(raw)}))]
    )
    while pending:
        source, target, loc, ancestors = pending.popleft()
        items = source.items() if isinstance(source, dict) else enumerate(source)
        for key, value in items:
            here: Location = (
                *loc,
                key if isinstance(key, str) or isinstance(source, list) else _json_key(key),
            )
            if here == ("metadata", "managedFields"):
                continue
            if isinstance(value, dict | list):
                if len(here) >= MAX_DEPTH or id(value) in ancestors:
                    too_deep.append(here)
                    copied: Any = None
                else:
                    copied = {} if isinstance(value, dict) else []
                    pending.append((value, copied, here, ancestors | {id(value)}))
            else:
                copied = _as_stored(value)
            if isinstance(target, dict):
                target[here[-1]] = copied
            else:
                target.append(copied)
    return root, too_deep


def _json_key(key: Any) -> str:
    """How JSON (and so kubectl) spells a mapping key that is not a string: 1, true, null."""
    return json.dumps(key, default=str).strip('"')


def _as_stored(value: Any) -> Any:
    whole = isinstance(value, float) and value.is_integer() and -(2**63) <= value < 2**63
    return int(value) if whole else value


def _nesting_findings(too_deep: list[Location]) -> list[Finding]:
    if not too_deep:
        return []
    others = len(too_deep) - 1
    more = f" (and in {others} more place{'s' if others > 1 else ''})" if others else ""
    return [
        error(
            "NestingTooDeep",
            dotted(too_deep[0]),
            f"mappings and lists nest more than {MAX_DEPTH} levels deep here, or contain "
            f"themselves through a YAML alias{more}.",
            "flatten it: no field of a SpeculativeInference nests this deep.",
        )
    ]


BASELINE_SUFFIX = "-baseline"
"""The control replicas' Deployment is the resource's name plus this; the resource's other
objects (server Deployment, Service, PodMonitor) carry its name alone."""


def name_findings(name: str) -> list[Finding]:
    """A name ending in BASELINE_SUFFIX is the name of another resource's control Deployment:
    both resources would own, and fight over, one object."""
    if not name.endswith(BASELINE_SUFFIX):
        return []
    return [
        error(
            "ReservedNameSuffix",
            "metadata.name",
            f"a name ending in {BASELINE_SUFFIX} is the name of the control-replica Deployment "
            f"of the resource {name.removesuffix(BASELINE_SUFFIX)!r}; the two would collide.",
            f"choose a name that does not end in {BASELINE_SUFFIX}.",
        )
    ]


def _unique(findings: list[Finding]) -> list[Finding]:
    seen: set[tuple[str, str]] = set()
    unique = []
    for f in findings:
        if (f.path, f.message) not in seen:
            seen.add((f.path, f.message))
            unique.append(f)
    return unique


PLACEHOLDERS: dict[str, Any] = {
    "apiVersion": API_VERSION,
    "kind": KIND,
    "metadata": {"name": "placeholder"},
    "metadata.name": "placeholder",
    "spec.target": {"model": "placeholder"},
    "spec.target.model": "placeholder",
    "spec.gpus": {"type": "custom", "count": 1},
    "spec.gpus.type": "custom",
    "spec.gpus.count": 1,
    "spec.speculation.method": "none",
}
"""Stand-ins for required fields that failed, so the remaining fields can still be checked."""


def _drop_failed_fields(data: Any, errors: list[ErrorDetails], dropped: list[str]) -> bool:
    """Remove each failing field (or the list holding it), or stand in for a required one."""
    progress = False
    for err in errors:
        loc = _container_loc(err["loc"])
        path = dotted(loc)
        parent = data
        for part in loc[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if not isinstance(parent, dict) or not loc:
            continue
        if path in PLACEHOLDERS and parent.get(loc[-1]) != PLACEHOLDERS[path]:
            parent[loc[-1]] = copy.deepcopy(PLACEHOLDERS[path])
        elif err["type"] != "missing" and loc[-1] in parent and path not in PLACEHOLDERS:
            del parent[loc[-1]]
        else:
            continue
        dropped.append(path)
        progress = True
    return progress


def _container_loc(loc: tuple[int | str, ...]) -> tuple[str, ...]:
    """Cut a location at its first list index: whole lists are dropped, never single items."""
    cut: list[str] = []
    for part in loc:
        if isinstance(part, int):
            break
        cut.append(part)
    return tuple(cut)


_RANGE_WORDS = {
    "greater_than_equal": "of at least",
    "greater_than": "above",
    "less_than_equal": "of at most",
    "less_than": "below",
}
_FIXES = {
    "missing": "add this required field.",
    "int_type": "give a whole number.",
    "int_parsing": "give a whole number.",
    "int_from_float": "give a whole number.",
    "float_type": "give a number.",
    "float_parsing": "give a number.",
    "bool_type": "give true or false.",
    "bool_parsing": "give true or false.",
    "string_type": "give a string (quote it in YAML).",
    "list_type": "give a list.",
    "dict_type": "give a mapping.",
    "model_type": "give a mapping.",
    "model_attributes_type": "give a mapping.",
}


def _finding_from_error(err: ErrorDetails) -> Finding:
    path = dotted(err["loc"])
    kind = err["type"]
    ctx = err.get("ctx", {})
    message = err["msg"][0].lower() + err["msg"][1:]
    if kind == "extra_forbidden":
        return error(
            "UnknownField", path, _unknown_field_message(err["loc"]), _unknown_field_fix(err["loc"])
        )
    if kind in ("enum", "literal_error"):
        fix = f"use one of {ctx.get('expected', 'the listed values')}."
    elif kind in _RANGE_WORDS:
        bound = next(iter(ctx.values()), "the bound")
        fix = f"use a value {_RANGE_WORDS[kind]} {bound}."
    elif kind in ("string_too_long", "too_long"):
        fix = "shorten it."
    elif kind in ("string_too_short", "too_short"):
        fix = "give a value."
    elif kind == "string_pattern_mismatch":
        fix = _pattern_fix(err["loc"])
    elif "fix" in ctx:
        fix = str(ctx["fix"])
    else:
        fix = _FIXES.get(kind, "correct the value.")
    if kind != "missing":
        message = f"{message} (got {shown(err.get('input'))})."
    return error("InvalidField", path, message, fix)


def _pattern_fix(loc: tuple[int | str, ...]) -> str:
    last = next((p for p in reversed(loc) if isinstance(p, str)), "")
    hints = {
        "name": "use lower-case letters, digits and '-', starting with a letter (max 54).",
        "model": "use a Hugging Face id (org/name) or a path: letters, digits, . _ - / : only.",
        "image": "use an image reference such as vllm/vllm-openai:v0.33.0.",
        "version": "use a release number such as 0.33.0.",
        "prometheusUrl": "use an http:// or https:// base URL without user:password, query or "
        "fragment (credentials go in bearerTokenSecret).",
    }
    return hints.get(last, "use a value of the documented form (see kubectl explain).")


def _unknown_field_message(loc: tuple[int | str, ...]) -> str:
    name = str(loc[-1])
    if any(_spelled_alike(name, alias) for _, alias in _aliases(_model_at(loc[:-1]))):
        return "not a field: the resource's field names are camelCase, and this one is not applied."
    return f"not a field of {dotted(loc[:-1]) or 'the resource'}, so it is not applied."


def _spelled_alike(written: str, alias: str) -> bool:
    """The same name in another case or with - or _ (tensor_parallel_size, TensorParallelSize)."""
    return written != alias and _squashed(written) == _squashed(alias)


def _squashed(name: str) -> str:
    return name.replace("_", "").replace("-", "").lower()


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = SpeculativeInference
    for part in loc:
        if model is None or isinstance(part, int):
            continue
        model = _field_model(model, part)
    return model


def _unknown_field_fix(loc: tuple[int | str, ...]) -> str:
    """The field meant: the camelCase spelling here or anywhere in the spec, or a close name."""
    model = _model_at(loc[:-1])
    name = str(loc[-1])
    here = [alias for _, alias in _aliases(model) if _spelled_alike(name, alias)]
    if here:
        return f"did you mean {dotted((*loc[:-1], here[0]))}? Otherwise remove it."
    elsewhere = [
        path.lstrip(".")
        for path, field_name, alias in _field_paths(SpeculativeInference, "")
        if (name == field_name or _spelled_alike(name, alias)) and not path.startswith(".status")
    ]
    if elsewhere:
        return f"did you mean {' or '.join(elsewhere[:3])}? Otherwise remove it."
    if model is None:
        return "remove it."
    known = [alias for _, alias in _aliases(model)]
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"did you mean {close[0]}? Otherwise remove it."
    return f"remove it (known fields: {', '.join(known)})."


def _aliases(model: type[BaseModel] | None) -> list[tuple[str, str]]:
    """(Python name, name on the wire) of each field of `model`."""
    fields = model.model_fields.items() if model is not None else []
    return [(name, field.alias or name) for name, field in fields]


def _field_paths(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, str, str]]:
    """(dotted camelCase path, Python name, alias) of every field under `model`."""
    for name, alias in _aliases(model):
        path = f"{prefix}.{alias}"
        yield path, name, alias
        nested = _field_model(model, alias)
        if nested is not None:
            yield from _field_paths(nested, path)


def _field_model(model: type[BaseModel], alias: str | int) -> type[BaseModel] | None:
    for name, field in model.model_fields.items():
        if alias in (name, field.alias):
            for candidate in _types_in(field.annotation):
                if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                    return candidate
    return None


def _types_in(annotation: Any) -> Iterator[Any]:
    yield annotation
    for arg in getattr(annotation, "__args__", ()):
        yield from _types_in(arg)


def cross_field_findings(spec: SpeculativeInferenceSpec) -> list[Finding]:
    """Contradictions between fields that each are valid on their own."""
    found: list[Finding] = []
    tp, pp = spec.target.tensor_parallel_size, spec.target.pipeline_parallel_size
    if spec.gpus.count != tp * pp:
        found.append(
            error(
                "GPUCountMismatch",
                "spec.gpus.count",
                f"count is {spec.gpus.count} but tensorParallelSize {tp} x "
                f"pipelineParallelSize {pp} needs {tp * pp} GPUs per replica.",
                f"set spec.gpus.count to {tp * pp}, or change the parallelism.",
                also=["spec.target.tensorParallelSize", "spec.target.pipelineParallelSize"],
            )
        )
    if spec.gpus.type == "custom" and spec.gpus.memory_gb is None:
        found.append(
            error(
                "CustomGPUNeedsMemory",
                "spec.gpus.memoryGB",
                "a custom GPU type has no known memory size.",
                "set spec.gpus.memoryGB, or use a catalog GPU type.",
                also=["spec.gpus.type"],
            )
        )
    thresholds = spec.policy.thresholds
    if thresholds.disable_below_acceptance > thresholds.review_below_acceptance:
        found.append(
            error(
                "ThresholdsInverted",
                "spec.policy.thresholds.reviewBelowAcceptance",
                f"reviewBelowAcceptance {thresholds.review_below_acceptance} is below "
                f"disableBelowAcceptance {thresholds.disable_below_acceptance}.",
                "make reviewBelowAcceptance at least disableBelowAcceptance "
                "(defaults 0.65 and 0.50).",
                also=["spec.policy.thresholds.disableBelowAcceptance"],
            )
        )
    found += _speculation_findings(spec)
    found += _extra_args_findings(spec.vllm.extra_args)
    found += flapping_findings(spec.policy)
    return found


_NEEDS_DRAFT = (SpeculationMethod.DRAFT_MODEL, SpeculationMethod.EAGLE, SpeculationMethod.EAGLE3)


def _speculation_findings(spec: SpeculativeInferenceSpec) -> list[Finding]:
    speculation = spec.speculation
    if speculation is None:
        return []
    found: list[Finding] = []
    method = speculation.method
    if method in _NEEDS_DRAFT and speculation.draft is None:
        found.append(
            error(
                "DraftRequired",
                "spec.speculation.draft",
                f"method {method.value} needs a draft checkpoint.",
                "add spec.speculation.draft.model (for eagle/eagle3, the head's checkpoint).",
                also=["spec.speculation.method"],
            )
        )
    if method not in _NEEDS_DRAFT and speculation.draft is not None:
        found.append(
            error(
                "DraftNotUsed",
                "spec.speculation.draft",
                f"method {method.value} uses no draft checkpoint.",
                "remove spec.speculation.draft, or use method draft_model, eagle or eagle3.",
                also=["spec.speculation.method"],
            )
        )
    if speculation.ngram is not None and method is not SpeculationMethod.NGRAM:
        found.append(
            error(
                "NgramNotUsed",
                "spec.speculation.ngram",
                f"n-gram bounds are set but the method is {method.value}.",
                "remove spec.speculation.ngram, or use method ngram.",
                also=["spec.speculation.method"],
            )
        )
    ngram = speculation.ngram
    if ngram is not None and ngram.prompt_lookup_min > ngram.prompt_lookup_max:
        found.append(
            error(
                "NgramBoundsInverted",
                "spec.speculation.ngram.promptLookupMin",
                f"promptLookupMin {ngram.prompt_lookup_min} is above promptLookupMax "
                f"{ngram.prompt_lookup_max}.",
                "make promptLookupMin at most promptLookupMax.",
                also=["spec.speculation.ngram.promptLookupMax"],
            )
        )
    found += _schedule_findings(spec)
    typical = (
        speculation.typical_acceptance_posterior_threshold is not None
        or speculation.typical_acceptance_posterior_alpha is not None
    )
    if typical and speculation.acceptance_method != "typical_acceptance_sampler":
        found.append(
            error(
                "TypicalAcceptanceNotUsed",
                "spec.speculation.acceptanceMethod",
                "typical acceptance parameters are set but the acceptance method is not "
                "typical_acceptance_sampler.",
                "set acceptanceMethod: typical_acceptance_sampler, or remove the parameters.",
            )
        )
    return found


def _schedule_findings(spec: SpeculativeInferenceSpec) -> list[Finding]:
    schedule = (spec.speculation.schedule if spec.speculation else None) or []
    found: list[Finding] = []
    for i, step in enumerate(schedule):
        if step.min_batch_size > step.max_batch_size:
            found.append(
                error(
                    "ScheduleRangeInverted",
                    f"spec.speculation.schedule[{i}]",
                    f"minBatchSize {step.min_batch_size} is above maxBatchSize "
                    f"{step.max_batch_size}.",
                    "make minBatchSize at most maxBatchSize.",
                )
            )
    if schedule and min(step.min_batch_size for step in schedule) != 1:
        found.append(
            error(
                "ScheduleMustStartAtOne",
                "spec.speculation.schedule",
                "no schedule step covers batch size 1; vLLM requires the first range to start "
                "at 1.",
                "make the first step's minBatchSize 1.",
            )
        )
    most = spec.speculation.effective_num_speculative_tokens if spec.speculation else 0
    for i, step in enumerate(schedule):
        if step.num_speculative_tokens > most:
            found.append(
                error(
                    "ScheduleAboveNumSpeculativeTokens",
                    f"spec.speculation.schedule[{i}].numSpeculativeTokens",
                    f"the step asks for {step.num_speculative_tokens} draft tokens but "
                    f"numSpeculativeTokens is {most}; vLLM silently caps it.",
                    f"raise spec.speculation.numSpeculativeTokens to at least "
                    f"{step.num_speculative_tokens}, or lower the step.",
                    also=["spec.speculation.numSpeculativeTokens"],
                )
            )
    ordered = sorted(enumerate(schedule), key=lambda pair: pair[1].min_batch_size)
    for (_, before), (j, after) in pairwise(ordered):
        if after.min_batch_size <= before.max_batch_size:
            found.append(
                error(
                    "ScheduleOverlap",
                    f"spec.speculation.schedule[{j}]",
                    f"batch sizes {after.min_batch_size}-{after.max_batch_size} overlap "
                    f"{before.min_batch_size}-{before.max_batch_size}.",
                    "give each batch size to exactly one schedule step.",
                )
            )
    return found


def _extra_args_findings(args: list[str]) -> list[Finding]:
    """Control characters only: what each argument means depends on the vLLM release
    (specpilot.rendering.extra_args judges that once the release is known)."""
    return [
        error(
            "ControlCharacterInExtraArgs",
            f"spec.vllm.extraArgs[{i}]",
            "the argument holds a control character (newline, tab or NUL).",
            "give each argument as its own list item, without control characters.",
        )
        for i, arg in enumerate(args)
        if any(ord(c) < 32 for c in arg)
    ]
