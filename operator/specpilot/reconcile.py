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
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from packaging.version import Version
from pydantic import BaseModel

from specpilot.api.admin import AdminPolicy
from specpilot.api.models import (
    Checkpoint,
    Condition,
    DecisionRecord,
    EffectiveConfiguration,
    PlanSummary,
    PolicyMode,
    PolicyState,
    ScheduleStep,
    SpeculativeInference,
    SpeculativeInferenceSpec,
    SpeculativeInferenceStatus,
    TargetSpec,
    whole_seconds,
)
from specpilot.assessment import Assessment, assess
from specpilot.control import curve
from specpilot.findings import Finding, Severity, errors
from specpilot.planning.checkpoint import Checkpoints
from specpilot.rendering.args import is_speculating
from specpilot.rendering.manifests import (
    ANNOTATION_TEMPLATE_DIGEST,
    FIELD_MANAGER,
    Manifest,
    manifests,
)

CONDITION_TYPES = (
    "Ready",
    "Invalid",
    "Planned",
    "SpeculationActive",
    "MetricsAvailable",
    "Degraded",
    "RolledOut",
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
    engine_schedule: list[tuple[int, int, int]] | None = None
    """The learned per-batch-size schedule the server runs with (control/curve.py)."""


class Observed(BaseModel):
    """What applying the objects produced."""

    deployments: list[Manifest] = []
    """The server (and baseline) Deployments as the API server returned them."""
    apply_errors: list[str] = []
    deferred: list[str] = []
    """Why a Deployment kept the pods it runs instead of its new template (deferred_change)."""
    pods: dict[str, list[Manifest]] = {}
    """The Pods of each Deployment (by name) whose rollout is not complete, for pod_causes."""


def deferred_change(server: Manifest | None, wanted: Manifest, live: Manifest | None) -> str | None:
    """Why the control replicas' new pod template must wait, or None to apply it now.

    Applied together, a change of both the server and the control replicas (a new target, a
    ladder step) restarts both at once: with one of each, nothing serves for a whole startup.
    So the control replicas keep the pods they run until the server's rollout is complete; the
    reconcile that follows it (the server Deployment's status changes) applies them."""
    if live is None:
        return None  # a new Deployment: nothing runs that could serve
    digest = ANNOTATION_TEMPLATE_DIGEST
    applied = (live.get("metadata", {}).get("annotations") or {}).get(digest)
    if applied == wanted["metadata"].get("annotations", {}).get(digest):
        return None
    if server is not None and deployment_rollout(server).complete:
        return None
    waiting_for = server["metadata"]["name"] if server is not None else "the server Deployment"
    return (
        f"{wanted['metadata']['name']} keeps its running pods until the rollout of "
        f"{waiting_for} is complete, so that one of them serves meanwhile"
    )


def desired(
    body: Mapping[str, Any],
    admin: AdminPolicy | None = None,
    checkpoints: Checkpoints | None = None,
) -> Desired:
    """The objects for a resource; none at all if anything about it is invalid.

    What the control loop decided (status.control) is applied here: speculation turned off, or
    the target stepped back along the quantization ladder, whose plan is then the one reported.
    A ladder step changes the server only: the control replicas always run spec.target without
    speculation, the user's own choice that a step must beat to be kept.
    `checkpoints`: what was read of the checkpoints the resource names (assess says how).
    """
    result = assess(dict(body), admin, checkpoints)
    if result.resource is None:
        return Desired(assessment=result, objects=[], speculation=False)
    spec = result.resource.spec
    users = spec
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
    resource, schedule = _with_engine_schedule(result.resource, result.version, control)
    objects = manifests(resource, result.version, speculation, result.checkpoints, baseline=users)
    return Desired(
        assessment=result,
        objects=objects,
        speculation=speculation,
        checkpoint_index=index,
        engine_schedule=schedule if speculation else None,
    )


def _with_engine_schedule(
    resource: SpeculativeInference, version: Version, control: PolicyState | None
) -> tuple[SpeculativeInference, list[tuple[int, int, int]] | None]:
    """The resource to render with the schedule the control loop learned (status.control.
    engineScheduleFrom) in its speculation, where the release and method allow one."""
    spec = resource.spec
    start = control.engine_schedule_from if control is not None else None
    if start is None or spec.speculation is None:
        return resource, None
    if not curve.engine_schedule_possible(spec, version):
        return resource, None
    steps = curve.steps_from(start, spec.speculation.effective_num_speculative_tokens)
    schedule = [
        ScheduleStep(min_batch_size=low, max_batch_size=high, num_speculative_tokens=k)
        for low, high, k in steps
    ]
    speculation = spec.speculation.model_copy(update={"schedule": schedule})
    rendered = spec.model_copy(update={"speculation": speculation})
    return resource.model_copy(update={"spec": rendered}), steps


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


ROLLED_OUT = "RolledOut"
"""True once every pod of the applied Deployments runs the applied configuration and is Ready
(its lastTransitionTime says since when); False while a rollout replaces old pods, or is stuck."""
ROLLOUT_HOLDING_REASONS = ("RolloutInProgress", "RolloutStuck")
"""RolledOut reasons under which old-configuration pods may still serve: the control loop holds."""
REVERT_ACTION = "revert-rollout"
"""The decision record of the control loop returning a stuck rollout's pods to what ran."""


class Rollout(BaseModel):
    """Where the rollout of the applied Deployments is, read from their status. Pure."""

    reason: Literal["RolloutComplete", "RolloutInProgress", "RolloutStuck", "AwaitingPods"]
    message: str

    @property
    def complete(self) -> bool:
        return self.reason == "RolloutComplete"


MAX_POD_CAUSES = 4
"""At most this many causes in a rollout's message (then how many more): a message is 1 KiB."""
_STARTING = ("ContainerCreating", "PodInitializing")
"""Waiting reasons of a container on its way up: no cause."""


def _exit(terminated: Mapping[str, Any]) -> str:
    """`Error 1`, `OOMKilled 137`, with the termination message (FallbackToLogsOnError) if any."""
    text = f"{terminated.get('reason') or 'exit'} {terminated.get('exitCode', '?')}"
    message = " ".join(str(terminated.get("message") or "").split())
    return f"{text}: {message[:160]}" if message else text


def _container_cause(container: Mapping[str, Any]) -> str | None:
    """Why one container is not ready, in the kubelet's words; None while it is merely starting
    (loading its weights is not a cause)."""
    state = container.get("state") or {}
    waiting = state.get("waiting") or {}
    ended = state.get("terminated") or {}
    last = (container.get("lastState") or {}).get("terminated") or {}
    restarts = int(container.get("restartCount") or 0)
    looping = waiting.get("reason") == "CrashLoopBackOff"
    if "OOMKilled" in (ended.get("reason"), last.get("reason")):
        return f"OOMKilled (restarts {restarts}{', crash-looping' if looping else ''})"
    if looping:
        return f"crash-looping (restarts {restarts}, last exit: {_exit(last)})"
    if waiting.get("reason") and waiting["reason"] not in _STARTING:
        message = " ".join(str(waiting.get("message") or "").split())[:160]
        return f"waiting: {waiting['reason']}{': ' + message if message else ''}"
    if ended:
        return f"exited: {_exit(ended)}"
    if restarts and last:
        return f"not ready after {restarts} restarts (last exit: {_exit(last)})"
    return None


def pod_causes(pods: Sequence[Mapping[str, Any]]) -> list[str]:
    """Why the pods of a rollout do not become Ready, as kube-scheduler and the kubelet report
    it in their status: Pending pods the scheduler cannot place, by its message ("1 pod Pending:
    0/1 nodes are available: 1 Insufficient nvidia.com/gpu."); containers crash-looping (with
    restarts and the last exit), OOM-killed, waiting for another reason (an image pull), or
    exited; failed pods. Healthy pods, and pods merely starting or loading, have none. Pure."""
    unschedulable: dict[str, int] = {}
    causes: list[str] = []
    for pod in sorted(pods, key=lambda p: str((p.get("metadata") or {}).get("name"))):
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue  # on its way out
        name, status = meta.get("name", "?"), pod.get("status") or {}
        scheduled: Mapping[str, Any] = next(
            (c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), {}
        )
        if status.get("phase") == "Pending" and scheduled.get("status") == "False":
            why = scheduled.get("message") or scheduled.get("reason") or "not scheduled"
            unschedulable[why] = unschedulable.get(why, 0) + 1
            continue
        if status.get("phase") == "Failed":
            why = ": ".join(str(status[k]) for k in ("reason", "message") if status.get(k))
            causes.append(f"pod {name} Failed{': ' + why if why else ''}")
            continue
        containers = status.get("containerStatuses") or []
        for container in containers:
            if container.get("ready"):
                continue
            cause = _container_cause(container)
            if cause is not None:
                which = f" container {container.get('name')}" if len(containers) > 1 else ""
                causes.append(f"pod {name}{which} {cause}")
    found = [
        f"{count} pod{'s' if count > 1 else ''} Pending: {why}"
        for why, count in unschedulable.items()
    ] + causes
    if len(found) > MAX_POD_CAUSES:
        found = [*found[:MAX_POD_CAUSES], f"{len(found) - MAX_POD_CAUSES} more"]
    return found


def deployment_rollout(
    deployment: Mapping[str, Any], pods: Sequence[Mapping[str, Any]] = ()
) -> Rollout:
    """One Deployment's rollout as the deployment controller reports it: stuck when Progressing
    is False (ProgressDeadlineExceeded, ReplicaSet failures); in progress while the controller
    has not seen the newest generation, or pods are not all updated, available or old ones not
    gone; awaiting pods while none exist at all (nothing old can serve then). An incomplete
    rollout's message ends with the causes its `pods` show (pod_causes)."""
    state = _deployment_rollout(deployment)
    causes = [] if state.complete else pod_causes(pods)
    if not causes:
        return state
    label = "cause" if len(causes) == 1 else "causes"
    return state.model_copy(update={"message": f"{state.message}; {label}: {'; '.join(causes)}"})


def _deployment_rollout(deployment: Mapping[str, Any]) -> Rollout:
    name = deployment.get("metadata", {}).get("name", "?")
    wanted = int((deployment.get("spec") or {}).get("replicas", 1) or 0)
    status = deployment.get("status") or {}
    generation = deployment.get("metadata", {}).get("generation")
    replicas = int(status.get("replicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    unavailable = int(status.get("unavailableReplicas") or 0)
    progressing: Mapping[str, Any] = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Progressing"), {}
    )
    counts = f"{updated} of {wanted} pods updated, {available} available"
    if progressing.get("status") == "False":
        cause = progressing.get("reason") or "not progressing"
        detail = progressing.get("message") or ""
        return Rollout(
            reason="RolloutStuck",
            message=f"{name}: {cause} ({counts}){': ' + detail if detail else ''}",
        )
    if replicas == 0 and available == 0 and wanted > 0:
        return Rollout(reason="AwaitingPods", message=f"{name}: no pods yet")
    if status.get("observedGeneration") != generation:
        return Rollout(
            reason="RolloutInProgress",
            message=f"rollout in progress: {name} generation {generation} not yet seen "
            f"by the deployment controller ({counts})",
        )
    if updated < wanted or available < wanted or replicas > wanted or unavailable > 0:
        return Rollout(reason="RolloutInProgress", message=f"rollout in progress: {name} {counts}")
    return Rollout(
        reason="RolloutComplete", message=f"{name}: {wanted} of {wanted} pods updated and Ready"
    )


def rollout(
    deployments: list[Manifest], pods: Mapping[str, Sequence[Manifest]] | None = None
) -> Rollout:
    """The rollout of all the applied Deployments: the worst of them (stuck, in progress,
    awaiting pods), or complete when every one is. `pods`: each Deployment's Pods by name,
    whose causes the message names."""
    if not deployments:
        return Rollout(reason="AwaitingPods", message="no Deployment applied yet")
    pods = pods or {}
    each = [
        deployment_rollout(d, pods.get(d.get("metadata", {}).get("name", ""), ()))
        for d in deployments
    ]
    for reason in ("RolloutStuck", "RolloutInProgress", "AwaitingPods"):
        matching = [r.message for r in each if r.reason == reason]
        if matching:
            return Rollout(reason=reason, message="; ".join(matching))
    return Rollout(reason="RolloutComplete", message="; ".join(r.message for r in each))


def _rolled_out_condition(state: Rollout, generation: int | None) -> Condition:
    return condition(
        ROLLED_OUT,
        None if state.reason == "AwaitingPods" else state.complete,
        state.reason,
        state.message,
        generation,
    )


def rollout_events(
    before: list[Condition],
    after: list[Condition],
    now: datetime.datetime,
    last_decision: DecisionRecord | None = None,
) -> list[Event]:
    """RolloutComplete (Normal) when a replacement's new pods are all Ready, with how long it
    took since the rollout began, and, when the control loop reverted a stuck rollout since
    (`last_decision`), that what is back in effect is the configuration that ran before it;
    RolloutStuck (Warning) when one stops progressing."""
    prior = next((c for c in before if c.type == ROLLED_OUT), None)
    current = next((c for c in after if c.type == ROLLED_OUT), None)
    if current is None or (prior is not None and prior.reason == current.reason):
        return []
    if current.reason == "RolloutStuck":
        return [Event(type="Warning", reason="RolloutStuck", message=current.message)]
    if current.reason != "RolloutComplete" or prior is None:
        return []
    if prior.reason not in ROLLOUT_HOLDING_REASONS:
        return []  # the first pods of a new resource: nothing was replaced
    since = prior.last_transition_time
    what = "the new configuration is in effect"
    if (
        last_decision is not None
        and last_decision.action == REVERT_ACTION
        and (since is None or last_decision.time >= since)
    ):
        what = (
            "the configuration that ran before the stuck rollout is back in effect (reverted "
            f"{last_decision.time:%Y-%m-%dT%H:%M:%SZ})"
        )
    message = f"{what}: {current.message}"
    if since is not None:
        took = (now - since).total_seconds()
        message += f"; the rollout took {took:.0f}s (since {since:%Y-%m-%dT%H:%M:%SZ})"
    return [Event(type="Normal", reason="RolloutComplete", message=message[:MAX_MESSAGE])]


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
        rolled = rollout(observed.deployments, observed.pods)
        if observed.deferred:
            message = "; ".join([rolled.message, *observed.deferred])[:MAX_MESSAGE]
            rolled = rolled.model_copy(update={"message": message})
        conditions.append(_rolled_out_condition(rolled, generation))
        effective = _effective_configuration(wanted)
        if rolled.reason in ROLLOUT_HOLDING_REASONS and previous.effective is not None:
            effective = previous.effective  # what runs until the new pods are all Ready
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
    last_decision = previous.decisions[-1] if previous.decisions else None
    events += rollout_events(previous.conditions, conditions, whole_seconds(now), last_decision)
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
        engine_schedule=_describe_schedule(wanted.engine_schedule),
        vllm_version=str(result.version),
    )


def _describe_schedule(steps: list[tuple[int, int, int]] | None) -> str | None:
    if not steps:
        return None
    return ", ".join(f"k={k} at batch {low}-{high}" for low, high, k in steps)


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
