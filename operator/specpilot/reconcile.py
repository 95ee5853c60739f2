"""What the operator should make true for one resource: pure functions, no Kubernetes client.

`desired` turns a resource body into the objects to apply: the one place where the control
loop's decisions (status.control: speculation off, a ladder step) become what the pods run; the
control loop never writes the user's spec. `status_after_apply` turns what the
API server reported back (applied objects, errors) into the status to write and the Events that
explain each transition. The kopf handlers only fetch, call these, and write the results.
"""

from __future__ import annotations

import copy
import datetime
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel

from specpilot.api.admin import AdminPolicy
from specpilot.api.models import (
    Checkpoint,
    Condition,
    EffectiveConfiguration,
    PlanSummary,
    PolicyMode,
    PolicyState,
    SpeculativeInferenceSpec,
    SpeculativeInferenceStatus,
    TargetSpec,
    whole_seconds,
)
from specpilot.assessment import Assessment, assess
from specpilot.findings import Finding, Severity, errors
from specpilot.planning.checkpoint import Checkpoints
from specpilot.rendering.args import is_speculating
from specpilot.rendering.manifests import FIELD_MANAGER, Manifest, manifests

CONDITION_TYPES = (
    "Ready",
    "Invalid",
    "Planned",
    "SpeculationActive",
    "MetricsAvailable",
    "Degraded",
)
MAX_MESSAGE = 1024


def target_identity(target: TargetSpec) -> str:
    return f"{target.model}@{target.quantization.value}"


def active_checkpoint(
    spec: SpeculativeInferenceSpec, control: PolicyState | None
) -> tuple[int, Checkpoint | None]:
    """The ladder step the pods run, if the control loop stepped spec.target back."""
    if (
        control is None
        or spec.policy.mode is not PolicyMode.AUTO
        or control.checkpoint_index == 0
        or control.target != target_identity(spec.target)
        or control.checkpoint_index > len(spec.policy.quantization_ladder)
    ):
        return 0, None
    index = control.checkpoint_index
    return index, spec.policy.quantization_ladder[index - 1]


def speculation_wanted(spec: SpeculativeInferenceSpec, control: PolicyState | None) -> bool:
    """Speculation as configured, unless the control loop (auto mode) turned it off."""
    turned_off = (
        spec.policy.mode is PolicyMode.AUTO and control is not None and not control.speculation_on
    )
    return is_speculating(spec) and not turned_off


def with_checkpoint(body: Mapping[str, Any], checkpoint: Checkpoint) -> dict[str, Any]:
    """The resource as if spec.target were the checkpoint, for planning and rendering.

    The checkpoint is served under spec.target's name (unless extraArgs names one), so clients
    keep working when the control loop steps the target back.
    """
    effective = copy.deepcopy(dict(body))
    spec = effective["spec"]
    original = spec["target"]["model"]
    spec["target"]["model"] = checkpoint.model
    spec["target"]["quantization"] = checkpoint.quantization.value
    vllm = spec.setdefault("vllm", {})
    extra = list(vllm.get("extraArgs") or [])
    if not any(str(a).split("=")[0] == "--served-model-name" for a in extra):
        vllm["extraArgs"] = [*extra, "--served-model-name", original]
    return effective


class Event(BaseModel):
    type: Literal["Normal", "Warning"]
    reason: str
    """Stable CamelCase reason, documented in docs/runbook.md."""
    message: str


class Desired(BaseModel):
    assessment: Assessment
    objects: list[Manifest]
    speculation: bool
    """Whether the server pods speculate."""
    checkpoint_index: int = 0
    """0 runs spec.target; n runs spec.policy.quantizationLadder[n-1]."""


class Observed(BaseModel):
    """What applying the objects produced."""

    deployments: list[Manifest] = []
    """The server (and baseline) Deployments as the API server returned them."""
    apply_errors: list[str] = []


def desired(
    body: Mapping[str, Any],
    admin: AdminPolicy | None = None,
    checkpoints: Checkpoints | None = None,
) -> Desired:
    """The objects for a resource; none at all if anything about it is invalid.

    What the control loop decided (status.control) is applied here: speculation turned off, or
    the target stepped back along the quantization ladder, whose plan is then the one reported.
    `checkpoints`: what was read of the checkpoints the resource names (assess says how).
    """
    result = assess(dict(body), admin, checkpoints)
    if result.resource is None:
        return Desired(assessment=result, objects=[], speculation=False)
    spec = result.resource.spec
    control = SpeculativeInferenceStatus.model_validate(body.get("status") or {}).control
    index, checkpoint = active_checkpoint(spec, control)
    if checkpoint is not None:
        stepped = assess(with_checkpoint(body, checkpoint), admin, checkpoints)
        if stepped.resource is not None:
            result = stepped
        else:
            index = 0
    assert result.resource is not None
    speculation = speculation_wanted(result.resource.spec, control)
    objects = manifests(result.resource, result.version, speculation, result.checkpoints)
    return Desired(
        assessment=result, objects=objects, speculation=speculation, checkpoint_index=index
    )


def spec_writer(obj: Mapping[str, Any]) -> str | None:
    """The field manager other than specpilot that last wrote the object's spec: whom a drift
    Event should name. Status and metadata writers (the Deployment controller) are left out."""
    writers = [
        entry
        for entry in obj.get("metadata", {}).get("managedFields") or []
        if entry.get("manager") != FIELD_MANAGER and "f:spec" in (entry.get("fieldsV1") or {})
    ]
    if not writers:
        return None
    manager: str = max(writers, key=lambda entry: str(entry.get("time") or ""))["manager"]
    return manager


def condition(
    ctype: str, status: bool | None, reason: str, message: str, generation: int | None
) -> Condition:
    value: Literal["True", "False", "Unknown"] = (
        "Unknown" if status is None else ("True" if status else "False")
    )
    return Condition(
        type=ctype,
        status=value,
        reason=reason,
        message=message[:MAX_MESSAGE],
        observed_generation=generation,
    )


def _summary(findings: list[Finding], severity: Severity | None = None) -> str:
    chosen = [f for f in findings if severity is None or f.severity is severity]
    return "; ".join(str(f) for f in chosen)


def _ready(deployments: list[Manifest]) -> tuple[bool, str]:
    if not deployments:
        return False, "no Deployment applied yet"
    waiting = []
    for d in deployments:
        wanted = d.get("spec", {}).get("replicas", 1)
        status = d.get("status") or {}
        available = status.get("availableReplicas", 0) or 0
        updated = status.get("updatedReplicas", 0) or 0
        current = status.get("observedGeneration") == d["metadata"].get("generation")
        if not (current and available >= wanted and updated >= wanted):
            waiting.append(f"{d['metadata']['name']} {available}/{wanted} available")
    return not waiting, ", ".join(waiting)


def status_after_apply(
    body: Mapping[str, Any], wanted: Desired, observed: Observed, now: datetime.datetime
) -> tuple[dict[str, Any], list[Event]]:
    """The status to write and the Events for every condition that changed."""
    generation = body.get("metadata", {}).get("generation")
    previous = SpeculativeInferenceStatus.model_validate(body.get("status") or {})
    result = wanted.assessment
    if result.resource is None:
        conditions, phase = _invalid_conditions(result, generation), "Invalid"
        effective = previous.effective
    else:
        conditions, phase = _applied_conditions(wanted, observed, generation)
        effective = _effective_configuration(wanted)
    metrics = next((c for c in previous.conditions if c.type == "MetricsAvailable"), None)
    conditions.append(
        metrics
        or condition(
            "MetricsAvailable",
            None,
            "NotYetRead",
            "the control loop has not read metrics yet",
            generation,
        )
    )
    conditions = keep_transition_times(previous.conditions, conditions, whole_seconds(now))
    status = SpeculativeInferenceStatus(
        phase=phase,
        observed_generation=generation,
        conditions=conditions,
        plan=_plan_summary(result) if result.plan else None,
        effective=effective,
        last_metrics=previous.last_metrics,
        control=previous.control,
        decisions=previous.decisions,
    )
    events = transition_events(previous.conditions, conditions)
    return status.model_dump(by_alias=True, exclude_none=True, mode="json"), events


def _invalid_conditions(result: Assessment, generation: int | None) -> list[Condition]:
    """Invalid, with the first error's code; nothing applied."""
    problems = errors(result.findings)
    first = problems[0].code if problems else "Invalid"
    plan = result.plan
    planned_reason = "DoesNotFit" if plan and plan.verdict == "does-not-fit" else "Invalid"
    return [
        condition("Invalid", True, first, _summary(problems), generation),
        condition(
            "Ready", False, "InvalidSpec", "the spec has errors; nothing applied", generation
        ),
        condition("Planned", False, planned_reason, _summary(problems), generation),
        condition("Degraded", False, "InvalidSpec", "", generation),
    ]


def _applied_conditions(
    wanted: Desired, observed: Observed, generation: int | None
) -> tuple[list[Condition], str]:
    """The conditions of a valid resource whose objects were applied, and its phase."""
    result = wanted.assessment
    assert result.resource is not None
    assert result.plan is not None  # a valid resource always has a plan
    spec, plan = result.resource.spec, result.plan
    ready, waiting = _ready(observed.deployments)
    degraded = bool(observed.apply_errors)
    planned_reason = "PlanTight" if plan.verdict == "tight" else "PlanFits"
    plan_message = (
        f"{plan.verdict}: {plan.kv_cache_gb_per_gpu:.1f} GB KV cache per GPU, "
        f"{plan.max_concurrent_sequences} full-length sequences per replica"
    )
    warnings = _summary(result.findings, Severity.WARNING)
    speculating = wanted.speculation
    spec_reason = (
        "SpeculationOn"
        if speculating
        else ("SpeculationOffBySpec" if not is_speculating(spec) else "SpeculationOffByPolicy")
    )
    conditions = [
        condition("Invalid", False, "Valid", "", generation),
        condition(
            "Planned",
            True,
            planned_reason,
            plan_message + (f"; {warnings}" if warnings else ""),
            generation,
        ),
        condition(
            "SpeculationActive",
            speculating,
            spec_reason,
            _speculation_message(result, speculating),
            generation,
        ),
        _ready_condition(ready, waiting, observed.apply_errors, generation),
        condition(
            "Degraded",
            degraded,
            "ApplyFailed" if degraded else "AsExpected",
            "; ".join(observed.apply_errors) or "all objects applied",
            generation,
        ),
    ]
    return conditions, "Degraded" if degraded else ("Ready" if ready else "Progressing")


def _effective_configuration(wanted: Desired) -> EffectiveConfiguration:
    """What the applied pods run: the spec, with the control loop's decisions applied."""
    result = wanted.assessment
    assert result.resource is not None
    spec, speculating = result.resource.spec, wanted.speculation
    return EffectiveConfiguration(
        speculation="on" if speculating else "off",
        method=spec.speculation.method.value if spec.speculation else "none",
        target_model=spec.target.model,
        target_quantization=spec.target.quantization.value,
        checkpoint_index=wanted.checkpoint_index,
        num_speculative_tokens=(
            spec.speculation.effective_num_speculative_tokens
            if spec.speculation and speculating
            else None
        ),
        vllm_version=str(result.version),
    )


def _ready_condition(
    ready: bool, waiting: str, apply_errors: list[str], generation: int | None
) -> Condition:
    if apply_errors:
        return condition("Ready", False, "ApplyFailed", "see the Degraded condition", generation)
    if ready:
        return condition("Ready", True, "DeploymentsReady", "all replicas available", generation)
    return condition("Ready", False, "DeploymentsProgressing", f"waiting: {waiting}", generation)


def _speculation_message(result: Assessment, speculating: bool) -> str:
    spec = result.resource.spec if result.resource else None
    if spec is None or spec.speculation is None or not is_speculating(spec):
        return "speculation is not configured"
    method = spec.speculation.method.value
    if speculating:
        return f"{method}, k={spec.speculation.effective_num_speculative_tokens}"
    return f"{method} is configured but the control loop turned it off (see status.decisions)"


def _plan_summary(result: Assessment) -> PlanSummary:
    plan = result.plan
    assert plan is not None
    return PlanSummary(
        verdict=plan.verdict,
        weights_gb_per_gpu=round(
            (plan.target.weights_gb_per_gpu if plan.target else 0)
            + (plan.draft.weights_gb_per_gpu if plan.draft else 0),
            2,
        ),
        kv_cache_gb_per_gpu=round(plan.kv_cache_gb_per_gpu, 2),
        max_concurrent_sequences=plan.max_concurrent_sequences,
        max_concurrent_sequences_without_speculation=(
            plan.max_concurrent_sequences_without_speculation
        ),
        draft_ratio=f"1:{plan.draft_ratio:.0f}" if plan.draft_ratio else None,
        findings=[f.code for f in result.findings if f.severity is not Severity.INFO],
    )


def keep_transition_times(
    before: list[Condition], after: list[Condition], now: datetime.datetime
) -> list[Condition]:
    """A condition's lastTransitionTime moves only when its status does."""
    old = {c.type: c for c in before}
    kept = []
    for condition in after:
        prior = old.get(condition.type)
        unchanged = prior is not None and prior.status == condition.status
        time = prior.last_transition_time if unchanged and prior else now
        kept.append(condition.model_copy(update={"last_transition_time": time}))
    return kept


_EVENTS: dict[tuple[str, str], Literal["Normal", "Warning"]] = {
    ("Invalid", "True"): "Warning",
    ("Planned", "True"): "Normal",
    ("Planned", "False"): "Warning",
    ("SpeculationActive", "True"): "Normal",
    ("SpeculationActive", "False"): "Normal",
    ("Ready", "True"): "Normal",
    ("Degraded", "True"): "Warning",
    ("Degraded", "False"): "Normal",
}
"""MetricsAvailable is left out: the control loop posts its transitions with its own check."""


def transition_events(before: list[Condition], after: list[Condition]) -> list[Event]:
    """One Event per condition whose status or reason changed; the reason is the condition's."""
    old = {c.type: c for c in before}
    events = []
    for condition in after:
        prior = old.get(condition.type)
        if prior is not None and (prior.status, prior.reason) == (
            condition.status,
            condition.reason,
        ):
            continue
        kind = _EVENTS.get((condition.type, condition.status))
        if kind is None or (
            prior is None and (condition.type, condition.status) == ("Degraded", "False")
        ):
            continue  # "not degraded" is news only after having been degraded
        message = condition.message or f"{condition.type} is {condition.status}"
        if condition.type == "Planned" and kind == "Normal" and condition.reason == "PlanTight":
            kind = "Warning"
        events.append(Event(type=kind, reason=condition.reason, message=message[:MAX_MESSAGE]))
    return events
