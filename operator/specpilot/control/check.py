"""One control check for one resource: readings in, status and Events out. Pure.

The control loop (adapters) reads Prometheus for every due resource at once, then calls `check`
per resource with the readings and the resource as stored. `check` turns the readings into the
policy's signals (live A/B against control replicas, or the before/after baseline recorded while
speculation was off), holds on readings that cannot be true (storing none of them), asks the
policy under the operator's change ceiling, re-plans memory before a quantization step, and
returns the status to write (never with a NaN or Infinity in it), the Events to post and whether
the Deployments must be re-rendered.
"""

from __future__ import annotations

import datetime
import itertools
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

from packaging.version import Version
from pydantic import BaseModel

from specpilot.api.admin import AdminPolicy
from specpilot.api.finite import non_finite_paths
from specpilot.api.models import (
    MAX_DECISIONS,
    Condition,
    DecisionRecord,
    LastMetrics,
    PolicyMode,
    PolicySpec,
    PolicyState,
    SpeculativeInferenceSpec,
    SpeculativeInferenceStatus,
    SpeedupBand,
    whole_seconds,
)
from specpilot.assessment import assess
from specpilot.control import curve
from specpilot.control.policy import (
    Action,
    PolicyDecision,
    RestartCost,
    Signals,
    decide,
    kv_headroom,
    latencies,
    seconds,
    within_ceiling,
)
from specpilot.control.signals import Readings, Signal, implausible
from specpilot.findings import errors
from specpilot.planning.checkpoint import Checkpoints
from specpilot.planning.memory import MemoryPlan
from specpilot.planning.rollout import expected_startup
from specpilot.reconcile import (
    REVERT_ACTION,
    ROLLED_OUT,
    ROLLOUT_HOLDING_REASONS,
    Event,
    condition,
    keep_transition_times,
    target_identity,
    with_checkpoint,
)
from specpilot.rendering.args import is_speculating

NO_SERIES = "Prometheus has no series for this resource"
ROLLING = "rollout"
"""Starts the error of a check held by a rollout: the readings may hold old-configuration pods."""
IMPLAUSIBLE = "implausible metrics"
"""Starts the error of a reading that cannot be true: the check holds and stores none of it."""
METRICS_REFRESH_SECONDS = 60
"""status.lastMetrics (and the readings kept in status.control) are rewritten at most this often
when nothing else changes, so a thousand resources checked every 10 s do not mean a hundred
status writes a second."""
REFRESHED_READINGS = (
    "last_acceptance",
    "baseline_p50_tpot",
    "baseline_p99_tpot",
    "baseline_p50_ttft",
    "baseline_p99_ttft",
    "baseline_load",
    "speedup_curve",
)
"""What a check updates in status.control by reading alone (besides its time), without deciding
anything."""
STARTUP_ANNOTATION = "specpilot.io/startup-seconds"
"""On the resource: its pods' measured startup in seconds, which replaces the estimate from the
weights (planning/startup.py) in the cost of a restart. Simulated pods start in seconds (the
lab sets it); a resource's owner can only make their own restarts look cheaper or dearer."""
BASELINE_LOAD_TOLERANCE = 0.25
"""A recorded baseline is compared only while load is within this share of the load it saw."""

_ACTED_EVENTS: dict[Action, tuple[Literal["Normal", "Warning"], str]] = {
    Action.DISABLE: ("Warning", "SpeculationDisabled"),
    Action.ENABLE: ("Normal", "SpeculationEnabled"),
    Action.STEP_QUANTIZATION: ("Warning", "QuantizationSteppedBack"),
    Action.SET_ENGINE_SCHEDULE: ("Normal", "EngineScheduleSet"),
    Action.UNDO_QUANTIZATION_STEP: ("Warning", "QuantizationStepUndone"),
}
_RECOMMENDED_EVENTS = {
    Action.DISABLE: "RecommendDisableSpeculation",
    Action.ENABLE: "RecommendEnableSpeculation",
    Action.STEP_QUANTIZATION: "RecommendQuantizationStep",
    Action.UNDO_QUANTIZATION_STEP: "RecommendQuantizationStepUndo",
}


class CheckResult(BaseModel):
    status: dict[str, Any]
    """The whole status to write (kopf's bookkeeping excluded)."""
    events: list[Event]
    rerender: bool
    """The effective configuration changed: re-render and apply the Deployments."""
    action: Action
    changed: bool = True
    """False when only the check's time would change, or, within the refresh period, the numbers
    it read."""

    @property
    def worth_writing(self) -> bool:
        """Whether the status must be written (the Events are posted after that write)."""
        return self.changed or bool(self.events) or self.rerender


def signals_for(
    namespace: str,
    name: str,
    readings: Readings | None,
    error: str | None,
    state: PolicyState,
    sampled_at: datetime.datetime,
) -> Signals:
    if error is not None or readings is None:
        return Signals(sampled_at=sampled_at, error=error or "no reading")
    server = readings.get((namespace, name, "server"))
    if not server:
        return Signals(
            sampled_at=sampled_at,
            error=f"{NO_SERIES} (are its pods scraped, with the specpilot.io/resource and "
            "specpilot.io/role pod labels as target labels?)",
        )
    live = readings.get((namespace, name, "baseline")) or {}
    problems = implausible(server) + implausible(live, "baseline")
    if problems:
        return Signals(sampled_at=sampled_at, error=f"{IMPLAUSIBLE}: {'; '.join(problems)}")
    replicas = server.get(Signal.REPLICAS)
    rps = server.get(Signal.REQUESTS_PER_SECOND)
    load = rps / replicas if rps is not None and replicas else None
    baseline_p50, baseline_p99 = live.get(Signal.TPOT_P50), live.get(Signal.TPOT_P99)
    baseline_ttft, baseline_p99_ttft = live.get(Signal.TTFT_P50), live.get(Signal.TTFT_P99)
    if baseline_p99 is None and _comparable(load, state.baseline_load):
        baseline_p50, baseline_p99 = state.baseline_p50_tpot, state.baseline_p99_tpot
        baseline_ttft, baseline_p99_ttft = state.baseline_p50_ttft, state.baseline_p99_ttft
    running, waiting = server.get(Signal.REQUESTS_RUNNING), server.get(Signal.REQUESTS_WAITING)
    live_running, live_replicas = live.get(Signal.REQUESTS_RUNNING), live.get(Signal.REPLICAS)
    return Signals(
        sampled_at=sampled_at,
        batch=running / replicas if running is not None and replicas else None,
        baseline_batch=(
            live_running / live_replicas if live_running is not None and live_replicas else None
        ),
        kv_cache_usage=server.get(Signal.KV_CACHE_USAGE),
        waiting=waiting / replicas if waiting is not None and replicas else None,
        acceptance=server.get(Signal.ACCEPTANCE) if state.speculation_on else None,
        p50_tpot=server.get(Signal.TPOT_P50),
        p99_tpot=server.get(Signal.TPOT_P99),
        baseline_p50_tpot=baseline_p50,
        baseline_p99_tpot=baseline_p99,
        p50_ttft=server.get(Signal.TTFT_P50),
        baseline_p50_ttft=baseline_ttft,
        p99_ttft=server.get(Signal.TTFT_P99),
        baseline_p99_ttft=baseline_p99_ttft,
        load=load,
    )


def restart_cost(
    spec: SpeculativeInferenceSpec,
    memory: MemoryPlan | None,
    annotations: Mapping[str, str] | None = None,
) -> RestartCost:
    """What a change of the server pods costs: each of spec.replicas (1 when an autoscaler owns
    them) serves nothing for the startup of a pod loading the plan's weights, target plus draft,
    from where the pod finds them (planning/rollout.py: a model cache, else a download from the
    Hub at every start); the measured startup of the `specpilot.io/startup-seconds` annotation
    instead, when it is a number; the default estimate when the weights are unknown."""
    replicas = spec.replicas or 1
    measured = _seconds((annotations or {}).get(STARTUP_ANNOTATION))
    if measured is not None:
        return RestartCost(
            startup_s=measured,
            replicas_affected=replicas,
            source=f"startup {measured:g}s from the {STARTUP_ANNOTATION} annotation",
        )
    estimate = expected_startup(spec, memory)
    if estimate is None:
        return RestartCost(replicas_affected=replicas)
    return RestartCost(
        startup_s=estimate.seconds,
        replicas_affected=replicas,
        source=f"startup {estimate.describe()}",
    )


def _seconds(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and 0 <= value < 86400 else None


def _comparable(load: float | None, recorded: float | None) -> bool:
    if load is None or not recorded:
        return False
    return abs(load - recorded) <= BASELINE_LOAD_TOLERANCE * recorded


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def last_metrics(
    namespace: str,
    name: str,
    readings: Readings | None,
    signals: Signals,
    sampled_at: datetime.datetime,
) -> LastMetrics:
    server = (readings or {}).get((namespace, name, "server"), {})
    return LastMetrics(
        sampled_at=whole_seconds(sampled_at),
        acceptance_rate=_rounded(server.get(Signal.ACCEPTANCE)),
        mean_accepted_length=_rounded(server.get(Signal.MEAN_ACCEPTED_LENGTH)),
        p50_tpot_ms=_ms(server.get(Signal.TPOT_P50)),
        p95_tpot_ms=_ms(server.get(Signal.TPOT_P95)),
        p99_tpot_ms=_ms(server.get(Signal.TPOT_P99)),
        p99_ttft_ms=_ms(server.get(Signal.TTFT_P99)),
        kv_cache_usage=_rounded(server.get(Signal.KV_CACHE_USAGE)),
        requests_running=_rounded(server.get(Signal.REQUESTS_RUNNING)),
        requests_waiting=_rounded(server.get(Signal.REQUESTS_WAITING)),
        requests_per_second=_rounded(server.get(Signal.REQUESTS_PER_SECOND)),
        generation_tokens_per_second=_rounded(server.get(Signal.GENERATION_TOKENS_PER_SECOND), 1),
        baseline_p99_tpot_ms=_ms(signals.baseline_p99_tpot),
        p50_ttft_ms=_ms(server.get(Signal.TTFT_P50)),
        baseline_p50_ttft_ms=_ms(signals.baseline_p50_ttft),
    )


def _after_target_change(state: PolicyState, identity: str, now: datetime.datetime) -> PolicyState:
    """The user changed spec.target (a rollout): compare the new acceptance with the old."""
    if state.target is None:
        return state.model_copy(update={"target": identity})
    return state.model_copy(
        update={
            "target": identity,
            "checkpoint_index": 0,
            "pre_change_acceptance": state.last_acceptance,
            "rollout_acceptance": None,
            "breaches": 0,
            "successes": 0,
            "last_change": now,
            # what was learned was about the target before
            "speedup_curve": [],
            "crossover_batch": None,
            "engine_schedule_from": None,
        }
    )


def _learned_curve(
    state: PolicyState,
    signals: Signals,
    live_baseline: bool,
    policy: PolicySpec,
    now: datetime.datetime,
) -> list[SpeedupBand]:
    """The speedup curve with this check's reading (control/curve.py) at the server's running
    batch: the control replicas' latency over the speculating server's in the user's SLO (P99
    TPOT by default), or lower where requests queue: median TTFT at the policy's allowance
    (maxP50TtftRegression) counts as break-even, so queueing behind the draft near saturation
    reads as the loss the policy takes it for. Only a live baseline counts (a recorded one saw
    other traffic), only while the server speculates on spec.target (on a ladder step the
    control replicas run another checkpoint), and not at or above the in-engine schedule's
    crossover, where the engine does not speculate."""
    batch = signals.batch
    if signals.error is not None or not state.speculation_on or state.checkpoint_index:
        return state.speedup_curve
    (_, value, baseline, _), *queueing = latencies(signals, policy)
    speedup = curve.speedup_reading(value, baseline)
    if not live_baseline or speedup is None or not batch:
        return state.speedup_curve
    for _, waited, baseline_waited, allowed in queueing:
        at_allowance = baseline_waited * (1 + allowed) if baseline_waited else None
        queued = curve.speedup_reading(waited, at_allowance)
        speedup = min(speedup, queued) if queued is not None else speedup
    schedule_from = state.engine_schedule_from
    if schedule_from is not None and curve.band_of(batch)[0] >= schedule_from:
        return state.speedup_curve
    return curve.observe(state.speedup_curve, batch, speedup, now)


def _engine_schedule(
    decision: PolicyDecision,
    spec: SpeculativeInferenceSpec,
    version: Version,
    learned: list[SpeedupBand],
    signals: Signals,
    now: datetime.datetime,
    admin: AdminPolicy,
    restart: RestartCost,
) -> PolicyDecision:
    """Set the learned schedule in the engine once its crossover is settled: from then on a
    load swing past it needs no restart (the engine stops speculating by itself). Re-enabling
    speculation (a probe after low acceptance) restarts the pods anyway, so it carries the
    schedule at no extra cost;
    otherwise the schedule's own restart happens only in auto mode, a cooldown after the last
    change, at a load below the crossover (the restart does not meet the peak), once per
    target."""
    state = decision.state
    speculation = spec.speculation
    enabling = decision.action is Action.ENABLE and decision.acted
    if (
        (decision.action is not Action.KEEP and not enabling)
        or spec.policy.mode is not PolicyMode.AUTO
        or speculation is None
        or not state.speculation_on
        or state.checkpoint_index
        or state.engine_schedule_from is not None
        or not curve.engine_schedule_possible(spec, version)
        or signals.batch is None
    ):
        return decision
    k = speculation.effective_num_speculative_tokens
    steps = curve.schedule(learned, k)
    if steps is None:
        return decision
    start = steps[1][0]
    if not enabling and curve.band_of(signals.batch)[0] >= start:
        return decision  # its own restart waits for a load below the crossover
    bands = curve.describe_curve(learned)
    schedule = f"num_speculative_tokens_per_batch_size {[list(step) for step in steps]}"
    if enabling:
        reason = (
            f"{decision.reason}; with the learned schedule: speculation stops paying from "
            f"batch {start} per replica ({bands}), so the engine runs k={k} up to batch "
            f"{start - 1} and 0 from {start} ({schedule}) and the next load swing past it "
            "needs no restart"
        )[:1024]
        carried = decision.state.model_copy(update={"engine_schedule_from": start})
        return decision.model_copy(update={"reason": reason, "state": carried})
    since = (now - state.last_change).total_seconds() if state.last_change else math.inf
    if since < seconds(spec.policy.cooldown):
        return decision
    reason = (
        f"speculation stops paying from batch {start} per replica ({bands}); the engine now "
        f"runs k={k} up to batch {start - 1} and 0 from {start} ({schedule}), so a load swing "
        f"past it needs no restart; setting it restarts the pods once "
        f"({restart.startup_s:.0f}s x {restart.replicas_affected}), at batch "
        f"{signals.batch:.1f}"
    )[:1024]
    acted = decision.model_copy(
        update={
            "action": Action.SET_ENGINE_SCHEDULE,
            "reason": reason,
            "evidence": reason,
            "acted": True,
            "state": state.model_copy(
                update={
                    "engine_schedule_from": start,
                    "last_change": now,
                    "breaches": 0,
                    "successes": 0,
                }
            ),
        }
    )
    return within_ceiling(acted, state, now, admin.max_changes_per_hour)


def _in_engine_instead(
    decision: PolicyDecision,
    state: PolicyState,
    spec: SpeculativeInferenceSpec,
    version: Version,
    learned: list[SpeedupBand],
    restart: RestartCost,
) -> PolicyDecision:
    """A latency disable while the server's KV cache has room (`policy.kv_headroom`: a loss
    for memory is the draft's weights and cache, which k=0 keeps), where vLLM has the lever,
    turned into the in-engine schedule: the same one restart sets k=0 from the provisional
    crossover instead of turning speculation off, so the engine still speculates below it, and
    neither the fall of the load nor the next surge needs a restart. A loss below a running
    schedule's crossover lowers it the same way. Not on a ladder step, or when speculation loses
    at every batch (the restart-based rule's)."""
    speculation = spec.speculation
    start, running = decision.state.crossover_batch, state.engine_schedule_from
    if (
        speculation is None
        or start is None
        or state.checkpoint_index
        or (running is not None and start >= running)
        or not curve.engine_schedule_possible(spec, version)
        or not _provisional_crossover(decision.state, learned)
    ):
        return decision
    k = speculation.effective_num_speculative_tokens
    steps = [list(step) for step in curve.steps_from(start, k)]
    bands = curve.describe_curve(learned)
    lowered = f" (lowered from batch {running})" if running is not None else ""
    reason = (
        f"{decision.evidence}; instead of turning speculation off (a restart now and another "
        f"when the load falls), the engine now runs k={k} up to batch {start - 1} and 0 from "
        f"{start}{lowered} "
        f"(num_speculative_tokens_per_batch_size {steps}), provisionally from where "
        f"the loss was read ({bands or 'no readings'}): one restart "
        f"({restart.startup_s:.0f}s x {restart.replicas_affected}), none for the next swing"
    )[:1024]
    return decision.model_copy(
        update={
            "action": Action.SET_ENGINE_SCHEDULE,
            "reason": reason,
            "evidence": reason,
            "state": decision.state.model_copy(
                update={"speculation_on": True, "engine_schedule_from": start}
            ),
        }
    )


def _crossover_at_disable(signals: Signals, learned: list[SpeedupBand]) -> int:
    """Where a latency disable says speculation stopped paying: the band of the batch the
    engine runs at this load without speculation (the control replicas'; a losing server's own
    batch is inflated by its queue), or lower where the curve already read a loss on the way
    up (the disable comes failureLimit checks after the first breach, the load still rising)."""
    batches = [b for b in (signals.batch, signals.baseline_batch) if b]
    start = curve.band_of(min(batches))[0]
    losing = curve.first_losing(learned)
    return min(start, losing) if losing is not None else start


def _provisional_crossover(state: PolicyState, learned: list[SpeedupBand]) -> bool:
    """Whether the crossover a latency loss placed (`_crossover_at_disable`) may serve while
    the curve settles none: the policy's own breaches are the evidence, unless the curve has
    measured speculation paying at or above it, or it is the first band (speculation loses at
    every batch: turning it off is the restart's job)."""
    start = state.crossover_batch
    if start is None or start <= 1:
        return False
    return all(curve.verdict(b) != "paying" for b in learned if b.min_batch >= start)


def _remember(
    state: PolicyState, signals: Signals, now: datetime.datetime, measured_speculating: bool
) -> PolicyState:
    """Bookkeeping after a usable reading: the last acceptance, and the no-speculation baseline.
    `measured_speculating` is how the pods ran when read (a decision of this check is not yet
    in effect)."""
    update: dict[str, Any] = {"last_check": now}
    if signals.error is None and measured_speculating and signals.acceptance is not None:
        update["last_acceptance"] = signals.acceptance
    if signals.error is None and not measured_speculating and signals.p99_tpot is not None:
        update |= {
            "baseline_p50_tpot": signals.p50_tpot,
            "baseline_p99_tpot": signals.p99_tpot,
            "baseline_p50_ttft": signals.p50_ttft,
            "baseline_p99_ttft": signals.p99_ttft,
            "baseline_load": signals.load,
        }
    return state.model_copy(update=update)


def rollout_hold(
    conditions: list[Condition], window_s: float, sampled_at: datetime.datetime
) -> str | None:
    """Why readings taken at `sampled_at` cannot be attributed to the configuration in status, or
    None when they can: while the Deployments roll out (or are stuck), old-configuration pods
    may still serve; once the new pods are all Ready (RolledOut's lastTransitionTime), the rate
    window must pass before it holds the new pods only. A resource whose status predates the
    RolledOut condition, or whose first pods are not up yet (nothing old serves), is not held."""
    rolled = next((c for c in conditions if c.type == ROLLED_OUT), None)
    if rolled is None:
        return None
    if rolled.status == "False" and rolled.reason in ROLLOUT_HOLDING_REASONS:
        return rolled.message
    since = rolled.last_transition_time
    if rolled.status != "True" or since is None:
        return None
    clean = (sampled_at - since).total_seconds()
    if clean >= window_s:
        return None
    return (
        f"completed at {since:%Y-%m-%dT%H:%M:%SZ}, {max(clean, 0):.0f}s before this reading; "
        f"its rate window ({window_s:g}s) still holds the pods it replaced"
    )


_REVERSALS: dict[str, Callable[[PolicyState], dict[str, Any]]] = {
    Action.DISABLE.value: lambda s: {"speculation_on": True},
    Action.ENABLE.value: lambda s: {"speculation_on": False},
    Action.STEP_QUANTIZATION.value: lambda s: {"checkpoint_index": max(s.checkpoint_index - 1, 0)},
    Action.SET_ENGINE_SCHEDULE.value: lambda s: {"engine_schedule_from": None},
    # a step runs with speculation: an undo that also turned it off returns to both
    Action.UNDO_QUANTIZATION_STEP.value: lambda s: {
        "checkpoint_index": s.checkpoint_index + 1,
        "speculation_on": True,
    },
}
"""How the configuration before each of the operator's own changes comes back."""


RETRY_AFTER_STUCK_SECONDS = 3600.0
"""After a change's rollout got stuck and was reverted, the same change waits this long: the GPUs
or whatever held it back rarely come free in a cooldown."""


def _reverted_recently(
    body: Mapping[str, Any], decision: PolicyDecision, now: datetime.datetime
) -> str | None:
    """Why an acted change must wait: the same change was reverted as stuck within the hour."""
    if not decision.acted or decision.action.value not in _REVERSALS:
        return None
    history = SpeculativeInferenceStatus.model_validate(body.get("status") or {}).decisions
    for before, record in itertools.pairwise(history):
        if record.action != REVERT_ACTION or before.action != decision.action.value:
            continue
        age = (now - record.time).total_seconds()
        if age < RETRY_AFTER_STUCK_SECONDS:
            return (
                f"holding: {decision.action.value} got stuck and was reverted at "
                f"{record.time:%Y-%m-%dT%H:%M:%SZ}; not retrying before "
                f"{RETRY_AFTER_STUCK_SECONDS / 60:.0f} minutes have passed (wanted: "
                f"{decision.reason})"
            )[:1024]
    return None


def stuck_revert(
    status: SpeculativeInferenceStatus, spec: SpeculativeInferenceSpec, now: datetime.datetime
) -> Callable[[PolicyState], tuple[PolicyState, DecisionRecord, Event]] | None:
    """When the stuck rollout is the operator's own change, how to return to the configuration
    that ran: the policy state before that change, a decision record and a RolloutReverted
    Warning. None when nothing is stuck, or the stuck rollout is not the operator's (a user's
    spec change: the RolloutStuck Event reports it; the operator does not fight the user).

    The rollout is the operator's when the last decision is an acted change (it moved
    `last_change`) and the rollout began (RolledOut turned False) within one check interval
    after it: the control loop re-renders right after writing its decision."""
    rolled = next((c for c in status.conditions if c.type == ROLLED_OUT), None)
    control = status.control
    if rolled is None or rolled.reason != "RolloutStuck" or not status.decisions:
        return None
    last = status.decisions[-1]
    reverse = _REVERSALS.get(last.action)
    if reverse is None or control is None or control.last_change is None:
        return None
    began = rolled.last_transition_time
    acted = abs((control.last_change - last.time).total_seconds()) < 1
    ours = began is not None and -1 <= (began - last.time).total_seconds() <= seconds(
        spec.policy.interval
    )
    if not (acted and ours):
        return None
    retry = now + datetime.timedelta(seconds=RETRY_AFTER_STUCK_SECONDS)
    reason = (
        f"the rollout of {last.action} at {last.time:%Y-%m-%dT%H:%M:%SZ} is stuck; returning "
        f"the pods to the configuration that ran before it, and not trying {last.action} "
        f"again before {retry:%Y-%m-%dT%H:%M:%SZ} ({rolled.message})"
    )[:1024]

    def apply(state: PolicyState) -> tuple[PolicyState, DecisionRecord, Event]:
        update = reverse(state) | {"breaches": 0, "successes": 0, "last_change": now}
        record = DecisionRecord(time=whole_seconds(now), action=REVERT_ACTION, reason=reason)
        return (
            state.model_copy(update=update),
            record,
            Event(type="Warning", reason="RolloutReverted", message=reason),
        )

    return apply


def _metrics_condition(signals: Signals, generation: int | None, ever_read: bool) -> Condition:
    if signals.error is None:
        message = "the control loop is reading metrics"
        return condition("MetricsAvailable", True, "MetricsRead", message, generation)
    if signals.error.startswith(ROLLING):
        message = f"holding, nothing counted or recorded: {signals.error}"
        return condition("MetricsAvailable", None, "AwaitingRollout", message, generation)
    if signals.error.startswith(NO_SERIES) and not ever_read:
        message = f"holding until the pods are scraped: {signals.error}"
        return condition("MetricsAvailable", None, "AwaitingMetrics", message, generation)
    if signals.error.startswith(IMPLAUSIBLE):
        message = f"holding, nothing changed or stored: {signals.error}"
        return condition("MetricsAvailable", False, "ImplausibleMetrics", message, generation)
    message = f"holding, nothing changed: {signals.error}"
    return condition("MetricsAvailable", False, "MetricsUnavailable", message, generation)


def check(
    body: Mapping[str, Any],
    readings: Readings | None,
    error: str | None,
    sampled_at: datetime.datetime,
    now: datetime.datetime,
    admin: AdminPolicy | None = None,
    checkpoints: Checkpoints | None = None,
) -> CheckResult | None:
    """The outcome of one check, or None when the resource is not under control (invalid).
    `checkpoints`: what was read of the checkpoints the resource names (see assess)."""
    admin = admin or AdminPolicy()
    result = assess(dict(body), admin, checkpoints)
    if result.resource is None:
        return None
    spec = result.resource.spec
    meta = body["metadata"]
    namespace, name, generation = meta["namespace"], meta["name"], meta.get("generation")
    status = SpeculativeInferenceStatus.model_validate(body.get("status") or {})
    state = status.control or PolicyState(speculation_on=is_speculating(spec))
    identity = target_identity(spec.target)
    if state.target != identity:
        state = _after_target_change(state, identity, now)
    signals = signals_for(namespace, name, readings, error, state, sampled_at)
    rolling = rollout_hold(status.conditions, seconds(spec.policy.window), sampled_at)
    if rolling is not None:
        signals = Signals(sampled_at=sampled_at, error=f"{ROLLING}: {rolling}")
    restart = restart_cost(spec, result.plan, meta.get("annotations") or {})
    decision, events = _decision(
        body, spec, signals, state, now, admin, result.checkpoints, restart
    )
    live = bool((readings or {}).get((namespace, name, "baseline")))
    learned = _learned_curve(state, signals, live, spec.policy, now)
    decision = _engine_schedule(
        decision, spec, result.version, learned, signals, now, admin, restart
    )
    if decision.acted and decision.action is Action.DISABLE and signals.batch:
        latency = decision.state.crossover_load is not None  # not low acceptance
        crossover = _crossover_at_disable(signals, learned) if latency else None
        decision = decision.model_copy(
            update={"state": decision.state.model_copy(update={"crossover_batch": crossover})}
        )
        if latency and kv_headroom(signals):
            decision = _in_engine_instead(decision, state, spec, result.version, learned, restart)
    decisions, decision_events = _recorded(status.decisions, decision, spec, now)
    events += decision_events
    events += [
        Event(type="Warning", reason=w.code, message=w.message)
        for w in decision.warnings
        if w.code not in state.active_warnings
    ]
    conditions, metrics_events = _metrics_conditions(status, signals, generation, now)
    events += metrics_events
    new_state = _remember(decision.state, signals, now, state.speculation_on)
    if new_state.checkpoint_index == state.checkpoint_index:
        new_state = new_state.model_copy(update={"speedup_curve": learned})
    else:  # another checkpoint serves: what was learned is about the one before
        new_state = new_state.model_copy(
            update={"speedup_curve": [], "engine_schedule_from": None, "crossover_batch": None}
        )
    revert = stuck_revert(status, spec, now)
    if revert is not None:
        new_state, record, event = revert(new_state)
        decisions = [*decisions, record]
        events.append(event)
    updated = status.model_copy(
        update={
            "control": new_state.model_copy(
                update={"active_warnings": [w.code for w in decision.warnings]}
            ),
            "conditions": conditions,
            "decisions": decisions[-MAX_DECISIONS:],
            "last_metrics": last_metrics(namespace, name, readings, signals, sampled_at)
            if signals.error is None
            else status.last_metrics,
            "kopf": None,
        }
    )
    written = updated.model_dump(by_alias=True, exclude_none=True, mode="json")
    non_finite = non_finite_paths(written, "status")
    if non_finite and readings is not None:  # the API server would refuse every later write
        error = f"{IMPLAUSIBLE}: Prometheus' answer made {', '.join(non_finite)} non-finite"
        return check(body, None, error, sampled_at, now, admin, checkpoints)
    return CheckResult(
        status=written,
        events=events,
        rerender=(decision.acted and decision.action in _ACTED_EVENTS) or revert is not None,
        action=decision.action,
        changed=_worth_writing(updated, status.model_copy(update={"kopf": None})),
    )


def _decision(
    body: Mapping[str, Any],
    spec: SpeculativeInferenceSpec,
    signals: Signals,
    state: PolicyState,
    now: datetime.datetime,
    admin: AdminPolicy,
    checkpoints: Checkpoints,
    restart: RestartCost | None = None,
) -> tuple[PolicyDecision, list[Event]]:
    """The policy's decision under the operator's ceiling; a quantization step whose plan does
    not fit is held instead, with a Warning Event."""
    if not is_speculating(spec):
        return PolicyDecision(
            action=Action.KEEP, reason="speculation is not configured", state=state
        ), []
    decision = decide(signals, state, spec.policy, now, admin.max_changes_per_hour, restart)
    stuck_before = _reverted_recently(body, decision, now)
    if stuck_before is not None:
        return _held(decision, state, stuck_before), []
    if decision.action is not Action.STEP_QUANTIZATION or not decision.acted:
        return decision, []
    refusal = _step_refusal(body, spec, decision.state.checkpoint_index, admin, checkpoints)
    if refusal is None:
        return decision, []
    refused = Event(type="Warning", reason="QuantizationStepRefused", message=refusal)
    return _held(decision, state, refusal), [refused]


def _held(decision: PolicyDecision, state: PolicyState, reason: str) -> PolicyDecision:
    """The policy's action not taken, for `reason`: nothing changes, the breaches start over."""
    return decision.model_copy(
        update={
            "action": Action.HOLD,
            "reason": reason,
            "acted": False,
            "state": state.model_copy(update={"breaches": 0}),
        }
    )


def _recorded(
    history: list[DecisionRecord],
    decision: PolicyDecision,
    spec: SpeculativeInferenceSpec,
    now: datetime.datetime,
) -> tuple[list[DecisionRecord], list[Event]]:
    """status.decisions with an action or a recommendation added, and its Event; a keep, a hold
    or a recommendation repeated within the cooldown adds nothing."""
    action = decision.action
    if action in (Action.KEEP, Action.HOLD) or _repeated_recommendation(
        history, action, decision.acted, spec, now
    ):
        return list(history), []
    record = DecisionRecord(time=whole_seconds(now), action=action.value, reason=decision.reason)
    message = decision.reason[:1024]
    if decision.acted:
        kind, reason = _ACTED_EVENTS[action]
        event = Event(type=kind, reason=reason, message=message)
    else:
        event = Event(type="Normal", reason=_RECOMMENDED_EVENTS[action], message=message)
    return [*history, record], [event]


def _metrics_conditions(
    status: SpeculativeInferenceStatus,
    signals: Signals,
    generation: int | None,
    now: datetime.datetime,
) -> tuple[list[Condition], list[Event]]:
    """The conditions with MetricsAvailable for this check, and an Event when it changed."""
    metrics = _metrics_condition(signals, generation, ever_read=status.last_metrics is not None)
    (metrics_now,) = keep_transition_times(status.conditions, [metrics], whole_seconds(now))
    previous = next((c for c in status.conditions if c.type == metrics_now.type), None)
    conditions = [c for c in status.conditions if c.type != metrics_now.type] + [metrics_now]
    if previous is not None and (previous.status, previous.reason) == (
        metrics_now.status,
        metrics_now.reason,
    ):
        return conditions, []
    event = Event(
        type="Warning" if metrics_now.status == "False" else "Normal",
        reason=metrics_now.reason,
        message=metrics_now.message,
    )
    return conditions, [event]


def _worth_writing(new: SpeculativeInferenceStatus, old: SpeculativeInferenceStatus) -> bool:
    """Whether the status changed beyond the check's own time and, within the refresh period,
    beyond the numbers it read."""
    if new.control is None or old.control is None:
        return new != old
    fields, last_metrics = ["last_check"], new.last_metrics
    if _refreshed_recently(old.last_metrics, new.last_metrics):
        # a first value (a baseline just recorded) is news; a newer one is a refresh
        fields += [f for f in REFRESHED_READINGS if getattr(old.control, f) is not None]
        if curve.learning(old.control.speedup_curve, new.control.speedup_curve):
            fields.remove("speedup_curve")  # a band's first readings are news
        last_metrics = old.last_metrics
    control = new.control.model_copy(update={f: getattr(old.control, f) for f in fields})
    return new.model_copy(update={"control": control, "last_metrics": last_metrics}) != old


def _refreshed_recently(old: LastMetrics | None, new: LastMetrics | None) -> bool:
    if old is None or new is None:
        return old == new
    return (new.sampled_at - old.sampled_at).total_seconds() < METRICS_REFRESH_SECONDS


def _repeated_recommendation(
    history: list[DecisionRecord],
    action: Action,
    acted: bool,
    spec: SpeculativeInferenceSpec,
    now: datetime.datetime,
) -> bool:
    """In recommend mode the same advice stands every check; repeat it once per cooldown."""
    if acted or not history or history[-1].action != action.value:
        return False
    return (now - history[-1].time).total_seconds() < seconds(spec.policy.cooldown)


def _step_refusal(
    body: Mapping[str, Any],
    spec: SpeculativeInferenceSpec,
    index: int,
    admin: AdminPolicy,
    checkpoints: Checkpoints,
) -> str | None:
    """Why the next checkpoint cannot run on these GPUs, or None when its plan fits."""
    checkpoint = spec.policy.quantization_ladder[index - 1]
    stepped = assess(with_checkpoint(body, checkpoint), admin, checkpoints)
    problems = errors(stepped.findings)
    if not problems:
        return None
    return (
        f"not stepping the target to {checkpoint.model} ({checkpoint.quantization.value}): "
        + "; ".join(str(p) for p in problems)
    )[:1024]
