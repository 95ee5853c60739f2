"""The control policy: whether speculation is paying, as a pure state machine.

Input: the latest signals for one resource, the state carried in its status, its policy spec,
the time and the operator's ceiling on changes per hour. Output: one decision (keep, hold,
disable, enable, step quantization, undo a quantization step) with a reason that holds the
numbers, and the next state. Acting on the decision is the adapters' job; the thresholds are the
decision framework's (docs/policy.md). `flapping_findings` refuses or warns on a spec.policy
that would make the pods flap, before the policy ever runs.
"""

from __future__ import annotations

import datetime
import math
import re
from enum import StrEnum

from pydantic import BaseModel

from specpilot.api.admin import DEFAULT_MAX_CHANGES_PER_HOUR
from specpilot.api.models import PolicyMode, PolicySpec, PolicyState, Slo, Thresholds
from specpilot.control.curve import band_of
from specpilot.findings import Finding, error, warning
from specpilot.planning.startup import DEFAULT_STARTUP_S

RE_ENABLE_LOAD_MARGIN = 0.8
"""Re-enable only once load stays below this share of the load at which speculation stopped."""
ACCEPTANCE_DRIFT = 0.10
"""Warn when acceptance falls this far below what was measured at rollout."""
STALE_AFTER_INTERVALS = 3
MAX_PROBE_DOUBLINGS = 3
"""A probe after a low-acceptance disable waits the cooldown, doubled per failed probe, up to 8x."""
MIN_COOLDOWN_INTERVALS = 2
"""A cooldown under two intervals blocks at most the one check right after a change, whose
readings still come from the pods being replaced: validation refuses it, and a probe waits at
least this long whatever the cooldown."""
RESTART_SECONDS = 300
"""What a GPU pod restart costs: minutes of loading weights and warming up. A cooldown below it
lets the loop change the pods again before the last change has served (a warning: simulated pods
restart in seconds, and the local demo's cooldown is 30s)."""
PROBE_CAPACITY_SHARE = 0.10
"""A failed probe restarts the pods twice; probes are spaced so that this costs at most this share
of the capacity in between (2 x startup / 0.10: 69 minutes for a 208 s startup)."""
CHANGE_WINDOW_SECONDS = 3600
"""The ceiling on changes counts the changes of the last hour."""
DEFAULT_COOLDOWN = PolicySpec.model_fields["cooldown"].default
LIMIT_HINT = (
    "the operator's admin raises it with `specpilot run --max-changes-per-hour` "
    "(chart: control.maxChangesPerHour)"
)


class Action(StrEnum):
    KEEP = "keep"
    HOLD = "hold"
    DISABLE = "disable-speculation"
    ENABLE = "enable-speculation"
    STEP_QUANTIZATION = "step-quantization"
    SET_ENGINE_SCHEDULE = "set-engine-schedule"
    UNDO_QUANTIZATION_STEP = "undo-quantization-step"


class AcceptanceBand(StrEnum):
    """The decision framework's acceptance bands (docs/policy.md)."""

    NET_NEGATIVE = "net-negative"
    """Below disableBelowAcceptance: speculation costs more than it saves, whatever the latency."""
    REVIEW = "review"
    """From disableBelowAcceptance to reviewBelowAcceptance: near break-even, so P99 TPOT against
    a baseline decides; without a baseline the check holds."""
    LIKELY_WIN = "likely-win"
    """At or above reviewBelowAcceptance: kept unless latency regresses against a baseline."""


def acceptance_band(acceptance: float, thresholds: Thresholds) -> AcceptanceBand:
    """The one place the acceptance thresholds are compared with a reading."""
    if acceptance < thresholds.disable_below_acceptance:
        return AcceptanceBand.NET_NEGATIVE
    if acceptance < thresholds.review_below_acceptance:
        return AcceptanceBand.REVIEW
    return AcceptanceBand.LIKELY_WIN


def _band_text(acceptance: float, thresholds: Thresholds) -> str:
    """The acceptance and the band it fell in, with the thresholds, for a reason."""
    disable, review = thresholds.disable_below_acceptance, thresholds.review_below_acceptance
    band = acceptance_band(acceptance, thresholds)
    if band is AcceptanceBand.NET_NEGATIVE:
        return f"acceptance {_fmt(acceptance)} < {disable:.2f}"
    if band is AcceptanceBand.REVIEW:
        return f"acceptance {_fmt(acceptance)} in the review band {disable:.2f}-{review:.2f}"
    return f"acceptance {_fmt(acceptance)} >= {review:.2f}"


class Signals(BaseModel):
    """One reading for one resource; None where Prometheus had no value."""

    sampled_at: datetime.datetime
    acceptance: float | None = None
    p50_tpot: float | None = None
    p99_tpot: float | None = None
    baseline_p50_tpot: float | None = None
    baseline_p99_tpot: float | None = None
    p50_ttft: float | None = None
    baseline_p50_ttft: float | None = None
    p99_ttft: float | None = None
    baseline_p99_ttft: float | None = None
    load: float | None = None
    """Requests running per replica (or QPS): what speculation's payoff depends on."""
    batch: float | None = None
    """Requests running per serving replica when read: the batch the engine schedules."""
    kv_cache_usage: float | None = None
    """The serving replicas' KV cache usage, 0-1: near 1, requests wait for memory."""
    waiting: float | None = None
    """Requests waiting per serving replica when read (queued for memory or a batch slot)."""
    baseline_batch: float | None = None
    """Requests running per control replica: the batch at this load without speculation (a
    losing speculating server batches more, its requests waiting longer)."""
    error: str | None = None
    """Why the reading failed (Prometheus unreachable, bad answer)."""


SLO_NAMES = {
    Slo.P99_TPOT: "P99 TPOT",
    Slo.MEDIAN_TPOT: "median TPOT",
    Slo.MEDIAN_TTFT: "median TTFT",
    Slo.P99_TTFT: "P99 TTFT",
}


def slo_latency(signals: Signals, slo: Slo) -> tuple[str, float | None, float | None]:
    """The SLO's latency as the reasons name it, the reading's and the baseline's."""
    value, baseline = {
        Slo.P99_TPOT: (signals.p99_tpot, signals.baseline_p99_tpot),
        Slo.MEDIAN_TPOT: (signals.p50_tpot, signals.baseline_p50_tpot),
        Slo.MEDIAN_TTFT: (signals.p50_ttft, signals.baseline_p50_ttft),
        Slo.P99_TTFT: (signals.p99_ttft, signals.baseline_p99_ttft),
    }[slo]
    return SLO_NAMES[slo], value, baseline


def latencies(
    signals: Signals, policy: PolicySpec
) -> list[tuple[str, float | None, float | None, float]]:
    """What the baseline is compared on, with the allowed regression: the SLO's latency, and
    median TTFT against the queueing margin whatever the SLO (requests waiting behind the
    draft near saturation). Once only when the SLO is median TTFT, with the SLO's margin."""
    t = policy.thresholds
    what, value, baseline = slo_latency(signals, policy.slo)
    found = [(what, value, baseline, t.max_p99_tpot_regression)]
    if policy.slo is not Slo.MEDIAN_TTFT:
        found.append(
            ("median TTFT", signals.p50_ttft, signals.baseline_p50_ttft, t.max_p50_ttft_regression)
        )
    return found


KV_CACHE_FULL = 0.9
"""KV cache usage from which a speculating server's loss is taken for lack of memory."""


def kv_headroom(signals: Signals) -> bool:
    """Whether the server's KV cache has room (a reading below KV_CACHE_FULL): then its loss is
    the draft's passes, which k=0 removes; near full, requests wait for the memory the draft's
    weights and cache take whatever k, and only turning speculation off gives it back."""
    return signals.kv_cache_usage is not None and signals.kv_cache_usage < KV_CACHE_FULL


MEMORY_LOSS_MARGIN = 0.10
"""The batch a full KV cache leaves the server must be this much below the control replicas'
before it counts: batches move by a few requests from one scrape to the next."""


def memory_loss(signals: Signals) -> float | None:
    """The share of the control replicas' batch a speculating server cannot run for lack of
    memory, or None: its KV cache is full (KV_CACHE_FULL), a request or more waits per
    replica, and it runs at least MEMORY_LOSS_MARGIN fewer requests per replica than the
    control replicas. The draft's weights and KV cache take that memory whatever k (the engine
    schedule's k=0 included), so the latency quantiles can miss it: near saturation both roles
    queue behind the same router and saturate together, while the server serves fewer
    requests at a time."""
    kv, waiting = signals.kv_cache_usage, signals.waiting
    batch, control = signals.batch, signals.baseline_batch
    if kv is None or kv < KV_CACHE_FULL or waiting is None or waiting < 1:
        return None
    if not batch or not control:
        return None
    share = 1 - batch / control
    return share if share >= MEMORY_LOSS_MARGIN else None


def _memory_text(signals: Signals, share: float) -> str:
    return (
        f"KV cache {signals.kv_cache_usage:.0%} full with {signals.waiting:.0f} request(s) "
        f"waiting per replica: the server runs {signals.batch:.0f} requests per replica "
        f"against the control replicas' {signals.baseline_batch:.0f}, {share:.0%} fewer for "
        "the draft's weights and KV cache"
    )


class RestartCost(BaseModel):
    """What one change of the pods costs: every replica it restarts serves nothing for the
    startup time (weights loaded, CUDA graphs captured, engine up: planning/startup.py). The
    control check computes it from the rendered configuration's weight bytes; the default is the
    decision framework's 86 GB baseline from a local cache."""

    startup_s: float = DEFAULT_STARTUP_S
    replicas_affected: int = 1
    """The serving replicas a change restarts (the control replicas run on, unchanged)."""
    source: str = f"default estimate {DEFAULT_STARTUP_S:.0f}s"
    """Where startup_s comes from, for the reason."""

    @property
    def lost_replica_seconds(self) -> float:
        """The capacity a restart takes away: startup x replicas restarted."""
        return self.startup_s * self.replicas_affected


class PolicyWarning(BaseModel):
    code: str
    """Stable CamelCase, used as the Event reason."""
    message: str


class PolicyDecision(BaseModel):
    """What the policy decided for one check, and the state to carry to the next; status keeps
    it as an `api.models.DecisionRecord`."""

    action: Action
    reason: str
    state: PolicyState
    warnings: list[PolicyWarning] = []
    acted: bool = False
    """False in recommend mode, where the decision is only reported."""
    evidence: str = ""
    """The numbers behind an action, without what was done about them."""


_ADVICE = {
    Action.DISABLE: "disable speculation",
    Action.ENABLE: "re-enable speculation",
    Action.STEP_QUANTIZATION: "step the target back along the quantization ladder",
    Action.SET_ENGINE_SCHEDULE: "let the engine stop speculating above the learned crossover",
    Action.UNDO_QUANTIZATION_STEP: "undo the quantization ladder step",
}


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m|h)", duration)
    if match is None:
        raise ValueError(f"not a duration: {duration!r}")
    value, unit = int(match.group(1)), match.group(2)
    return value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value * 1000:.1f} ms" if unit == "ms" else f"{value:.2f}"


def decide(
    signals: Signals,
    state: PolicyState,
    policy: PolicySpec,
    now: datetime.datetime,
    max_changes_per_hour: int = DEFAULT_MAX_CHANGES_PER_HOUR,
    restart: RestartCost | None = None,
) -> PolicyDecision:
    """The decision for one check; an action beyond `max_changes_per_hour` is held.

    With `restart` (the control check always passes one) the decision is cost-aware
    (docs/policy.md, "The cost of acting"): a restart happens only when the measured loss of
    keeping the pods as they are over the cooldown exceeds the capacity the restart takes away;
    the cooldown is at least the startup plus the rate window; and no breach or success is
    counted while the readings still cover the restart. Without it, thresholds alone decide
    (the behaviour before the cost rule, kept for callers that know nothing of the pods)."""
    if policy.mode is PolicyMode.OFF:
        return PolicyDecision(action=Action.KEEP, reason="policy mode is off", state=state)
    signals = _with_acceptance_above_crossover(signals, state)
    problem = _unusable(signals, policy, now, state)
    if problem is not None:
        return PolicyDecision(action=Action.HOLD, reason=f"holding: {problem}", state=state)
    if state.speculation_on:
        decision = _while_on(signals, state, policy, now, restart)
    else:
        decision = _while_off(signals, state, policy, now, restart)
    if policy.mode is PolicyMode.RECOMMEND and decision.action not in (Action.KEEP, Action.HOLD):
        return PolicyDecision(
            action=decision.action,
            reason=f"recommend mode, not acting: would {_ADVICE[decision.action]}: "
            f"{decision.evidence}",
            state=state.model_copy(
                update={"breaches": decision.state.breaches, "successes": decision.state.successes}
            ),
            warnings=decision.warnings,
            acted=False,
        )
    if decision.acted:
        return within_ceiling(decision, state, now, max_changes_per_hour)
    return decision


def within_ceiling(
    decision: PolicyDecision, state: PolicyState, now: datetime.datetime, ceiling: int
) -> PolicyDecision:
    """The action, recorded in the state's recent changes; or, when it would exceed the ceiling,
    a hold that changes nothing and warns. A probe needs room for two changes: the probe and,
    should acceptance still be low, the disable that ends it."""
    recent = [t for t in state.recent_changes if (now - t).total_seconds() < CHANGE_WINDOW_SECONDS]
    probe = decision.action is Action.ENABLE and decision.state.probes > state.probes
    if len(recent) + (2 if probe else 1) <= ceiling:
        return decision.model_copy(
            update={"state": decision.state.model_copy(update={"recent_changes": [*recent, now]})}
        )
    would = f"would {_ADVICE[decision.action]}{' to probe' if probe else ''}"
    message = (
        f"change limit reached: {len(recent)} changes in the last hour, the ceiling is "
        f"{ceiling} per hour; {would} ({decision.evidence}); {LIMIT_HINT}"
    )
    return PolicyDecision(
        action=Action.HOLD,
        reason=f"holding: {message}",
        state=state,
        warnings=[*decision.warnings, PolicyWarning(code="ChangeLimitReached", message=message)],
    )


def _unusable(
    signals: Signals, policy: PolicySpec, now: datetime.datetime, state: PolicyState
) -> str | None:
    if signals.error:
        return f"metrics unavailable ({signals.error})"
    age = (now - signals.sampled_at).total_seconds()
    if age > STALE_AFTER_INTERVALS * seconds(policy.interval):
        return f"metrics are stale ({age:.0f}s old)"
    if state.speculation_on and signals.acceptance is None:
        return "no acceptance rate yet (no speculative traffic in the window)"
    return None


def _with_acceptance_above_crossover(signals: Signals, state: PolicyState) -> Signals:
    """Above a running engine schedule's crossover the engine drafts nothing, so the window has
    no acceptance: the last one measured stands in, and latency is still judged there. k=0
    removes the draft's passes, not its weights, its KV cache or the graphs' cost: a loss there
    counts like any other, and the cost rule decides whether turning speculation off pays."""
    start, batch = state.engine_schedule_from, signals.batch
    if (
        signals.acceptance is not None
        or not state.speculation_on
        or start is None
        or batch is None
        or band_of(batch)[0] < start
        or state.last_acceptance is None
    ):
        return signals
    return signals.model_copy(update={"acceptance": state.last_acceptance})


def cooldown_seconds(policy: PolicySpec, restart: RestartCost | None) -> float:
    """The least time between two changes: spec.policy.cooldown, but never less than a restart's
    startup plus the rate window (until then the readings still hold the pods being replaced)."""
    cooldown = seconds(policy.cooldown)
    if restart is None:
        return cooldown
    return max(cooldown, restart.startup_s + seconds(policy.window))


def _cooled_down(
    state: PolicyState, policy: PolicySpec, now: datetime.datetime, restart: RestartCost | None
) -> bool:
    if state.last_change is None:
        return True
    return (now - state.last_change).total_seconds() >= cooldown_seconds(policy, restart)


def _still_waiting(
    count: int,
    limit: int,
    state: PolicyState,
    policy: PolicySpec,
    now: datetime.datetime,
    restart: RestartCost | None = None,
) -> str | None:
    """What an action still waits for (more consecutive checks, or the cooldown), or None."""
    if count < limit:
        return f"{count}/{limit} checks"
    if not _cooled_down(state, policy, now, restart):
        return "cooldown"
    return None


def _settling(
    state: PolicyState,
    policy: PolicySpec,
    now: datetime.datetime,
    restart: RestartCost | None,
    with_window: bool,
) -> str | None:
    """Why a reading still shows the last restart rather than the pods it made, or None: the
    new pods serve after the startup, and a rate over the window holds the outage until the
    window has passed since (`with_window`: load and latency; acceptance needs only the new
    pods, which alone have speculation's counters)."""
    if restart is None or state.last_change is None:
        return None
    elapsed = (now - state.last_change).total_seconds()
    settle = restart.startup_s + (seconds(policy.window) if with_window else 0.0)
    if elapsed >= settle:
        return None
    what = f"startup {restart.startup_s:.0f}s" + (
        f" + the {policy.window} rate window" if with_window else ""
    )
    return (
        f"the pods changed {elapsed:.0f}s ago and the readings cover the restart until "
        f"{settle:.0f}s ({what}); nothing counted"
    )


def _loss_share(signals: Signals, policy: PolicySpec) -> tuple[float, str] | None:
    """The share of the serving replicas' capacity that keeping speculation loses, measured
    against the baseline: a request whose SLO latency (or median TTFT) is r times the
    baseline's takes 1 - 1/r more GPU time than it would without (the larger of the two); None
    without a baseline to measure against. With the KV cache full and requests waiting, the
    share of the control replicas' batch the server cannot run (`memory_loss`) alone: the
    latencies then measure the queue, which grows with anything that slows the pool (a restart
    in the middle of it most of all), not what the draft costs. In the decision benchmark's
    day peak, the median TTFT put the loss at 42% where the batch said 25%; the restart it
    justified lengthened the queue, P99 TTFT from 152 s to 298 s."""
    memory = memory_loss(signals)
    if memory is not None:
        return memory, "the batch the draft's memory takes"
    found: list[tuple[float, str]] = []
    for what, value, baseline, _ in latencies(signals, policy):
        if value is not None and baseline and value > 0:
            found.append((max(0.0, 1 - baseline / value), what))
    return max(found) if found else None


def _worth_restarting(
    share: float, what: str, policy: PolicySpec, restart: RestartCost
) -> tuple[bool, str]:
    """The cost rule: keeping loses share x cooldown x replicas; restarting loses startup x
    replicas. Whether to act, and the sentence with the numbers."""
    horizon = cooldown_seconds(policy, restart)
    replicas = restart.replicas_affected
    loss = share * horizon * replicas
    cost = restart.lost_replica_seconds
    text = (
        f"keeping loses {share:.0%} of {replicas} replica(s)' capacity ({what}) over the "
        f"{horizon:.0f}s cooldown = {loss:.0f} replica-seconds, "
        f"{'more' if loss > cost else 'not more'} than the restart's "
        f"{restart.startup_s:.0f}s x {replicas} = {cost:.0f} ({restart.source})"
    )
    return loss > cost, text


def _while_on(
    signals: Signals,
    state: PolicyState,
    policy: PolicySpec,
    now: datetime.datetime,
    restart: RestartCost | None = None,
) -> PolicyDecision:
    t = policy.thresholds
    acceptance = signals.acceptance
    assert acceptance is not None  # _unusable holds otherwise
    warnings = _warnings(signals, state)
    settling = _settling(state, policy, now, restart, with_window=False)
    if settling is not None:
        return PolicyDecision(
            action=Action.KEEP, reason=f"speculation on: {settling}", state=state, warnings=warnings
        )
    breach = _breach(signals, policy)
    if state.checkpoint_index > 0 and breach is not None:
        return _undo_step(signals, state, policy, now, restart, breach, warnings)
    quantization_drop = (
        state.pre_change_acceptance is not None
        and acceptance < state.pre_change_acceptance - t.quantization_acceptance_drop
        and state.checkpoint_index < len(policy.quantization_ladder)
    )
    if breach is None and not quantization_drop:
        return _no_breach(signals, state, policy, warnings)
    breaches = state.breaches + 1
    counted = state.model_copy(update={"breaches": breaches, "successes": 0})
    reason = (
        f"acceptance {_fmt(acceptance)} fell more than {t.quantization_acceptance_drop:.2f} "
        f"below {_fmt(state.pre_change_acceptance)} measured before the quantization change"
        if quantization_drop
        else str(breach)
    )
    kept_or_evidence = _ready_to_act(
        reason,
        breaches,
        counted,
        warnings,
        signals,
        state,
        policy,
        now,
        restart,
        probe_ends_at_once=True,
    )
    if isinstance(kept_or_evidence, PolicyDecision):
        return kept_or_evidence
    evidence = kept_or_evidence
    if quantization_drop:  # the change caused it: undo the change before giving up speculation
        return PolicyDecision(
            action=Action.STEP_QUANTIZATION,
            reason=f"{evidence}; stepping the target to "
            f"{policy.quantization_ladder[state.checkpoint_index].model}",
            evidence=evidence,
            state=counted.model_copy(
                update={
                    "breaches": 0,
                    "last_change": now,
                    "checkpoint_index": state.checkpoint_index + 1,
                    "pre_change_acceptance": None,
                    "rollout_acceptance": None,
                }
            ),
            warnings=warnings,
            acted=True,
        )
    # Low acceptance is about the traffic, not the load: nothing to wait for but a probe.
    low_acceptance = acceptance_band(acceptance, t) is AcceptanceBand.NET_NEGATIVE
    return PolicyDecision(
        action=Action.DISABLE,
        reason=f"{evidence}; speculation disabled",
        evidence=evidence,
        state=counted.model_copy(
            update={
                "speculation_on": False,
                "breaches": 0,
                "last_change": now,
                "crossover_load": None if low_acceptance else signals.load,
                "rollout_acceptance": None,
            }
        ),
        warnings=warnings,
        acted=True,
    )


def _rung(policy: PolicySpec, index: int) -> str:
    """A ladder index as the reason names it: spec.target, or the checkpoint."""
    if index == 0:
        return "spec.target"
    if index > len(policy.quantization_ladder):
        return f"quantization ladder step {index}"
    checkpoint = policy.quantization_ladder[index - 1]
    return f"{checkpoint.model} ({checkpoint.quantization.value})"


def _undo_step(
    signals: Signals,
    state: PolicyState,
    policy: PolicySpec,
    now: datetime.datetime,
    restart: RestartCost | None,
    breach: str,
    warnings: list[PolicyWarning],
) -> PolicyDecision:
    """While the server runs a ladder step, the control replicas run spec.target without
    speculation: the user's own choice, which the step must beat to be kept. A breach against
    it, counted failureLimit times, cooled down and worth the restart, undoes the step: one rung
    forward, towards spec.target. One rung, so that the undo is the exact inverse of the step (a
    stuck rollout of it is reverted like the step's); the policy takes one step per change of
    spec.target, so that rung is spec.target itself.

    A latency breach undoes the step only: the step's heavier weights may be what lost, and on
    spec.target the ordinary rule judges speculation against the very same checkpoint without
    it. Acceptance in the net-negative band on the step means the traffic, not the
    quantization, defeats the draft (a more precise target did not bring it back): the undo
    also turns speculation off, in the same restart, landing on what the control replicas run;
    a probe looks again later, as after any low-acceptance disable."""
    index = state.checkpoint_index
    low_acceptance = (
        signals.acceptance is not None
        and acceptance_band(signals.acceptance, policy.thresholds) is AcceptanceBand.NET_NEGATIVE
    )
    breaches = state.breaches + 1
    counted = state.model_copy(update={"breaches": breaches, "successes": 0})
    against = state.target or "spec.target"
    reason = (
        f"the quantization ladder step to {_rung(policy, index)} with speculation against "
        f"{against} without it (the baseline): {breach}"
    )
    kept_or_evidence = _ready_to_act(
        reason,
        breaches,
        counted,
        warnings,
        signals,
        state,
        policy,
        now,
        restart,
        probe_ends_at_once=False,
    )
    if isinstance(kept_or_evidence, PolicyDecision):
        return kept_or_evidence
    evidence = kept_or_evidence
    return PolicyDecision(
        action=Action.UNDO_QUANTIZATION_STEP,
        reason=f"{evidence}; the step loses to the user's choice: undoing it, back to "
        f"{_rung(policy, index - 1)}"
        + (" without speculation (acceptance is low on the step too)" if low_acceptance else ""),
        evidence=evidence,
        state=counted.model_copy(
            update={
                "breaches": 0,
                "last_change": now,
                "checkpoint_index": index - 1,
                "pre_change_acceptance": None,
                "rollout_acceptance": None,
            }
            | ({"speculation_on": False, "crossover_load": None} if low_acceptance else {})
        ),
        warnings=warnings,
        acted=True,
    )


def _ready_to_act(
    reason: str,
    breaches: int,
    counted: PolicyState,
    warnings: list[PolicyWarning],
    signals: Signals,
    state: PolicyState,
    policy: PolicySpec,
    now: datetime.datetime,
    restart: RestartCost | None,
    probe_ends_at_once: bool,
) -> PolicyDecision | str:
    """After a counted breach: a keep while the breaches, the cooldown or the restart's price
    say wait, else the evidence to act on (the breaches and, when priced, the cost).
    `probe_ends_at_once`: a failed probe's disable skips the cooldown (the probes' own waits
    space its restarts)."""
    waiting = _still_waiting(breaches, policy.failure_limit, state, policy, now, restart)
    if waiting == "cooldown" and state.probes and probe_ends_at_once:
        waiting = None
    if waiting is not None:
        return PolicyDecision(
            action=Action.KEEP, reason=f"{reason} ({waiting})", state=counted, warnings=warnings
        )
    span = breaches * seconds(policy.interval)
    evidence = f"{reason} for {breaches} checks over {span:.0f}s"
    priced = _priced(signals, policy, restart)
    if priced is None:
        return evidence
    act, cost_text = priced
    if not act:
        return PolicyDecision(
            action=Action.KEEP,
            reason=f"{evidence}, but {cost_text}: not restarting",
            state=counted,
            warnings=warnings,
        )
    return f"{evidence}; {cost_text}"


def _priced(
    signals: Signals, policy: PolicySpec, restart: RestartCost | None
) -> tuple[bool, str] | None:
    """The cost rule for a restart away from the running configuration, or None when it cannot
    be priced (no restart cost given, or no baseline to measure the loss against: then the
    decision framework's thresholds act alone, as for acceptance below 0.50 without control
    replicas)."""
    if restart is None:
        return None
    measured = _loss_share(signals, policy)
    if measured is None:
        return None
    return _worth_restarting(*measured, policy, restart)


def _probe(
    state: PolicyState,
    policy: PolicySpec,
    now: datetime.datetime,
    restart: RestartCost | None = None,
) -> PolicyDecision:
    """Acceptance cannot be measured while speculation is off: turn it on again to look, after
    the cooldown, doubled for every probe in a row that found acceptance still low."""
    wait = _probe_wait(state.probes, policy, restart)
    elapsed = (now - state.last_change).total_seconds() if state.last_change else wait
    if elapsed < wait:
        return PolicyDecision(
            action=Action.KEEP,
            reason=f"speculation off for low acceptance; probing again in {wait - elapsed:.0f}s",
            state=state,
        )
    evidence = (
        f"speculation was off for low acceptance for {elapsed:.0f}s, which cannot be measured "
        "without it"
    )
    return PolicyDecision(
        action=Action.ENABLE,
        reason=f"{evidence}; speculation re-enabled to probe (if acceptance is still low it is "
        f"disabled again after {policy.failure_limit} checks, and the next probe waits "
        f"{_probe_wait(state.probes + 1, policy, restart):.0f}s)"
        + (
            ""
            if restart is None
            else f"; a failed probe costs two restarts of {restart.startup_s:.0f}s x "
            f"{restart.replicas_affected} replica(s) ({restart.source})"
        ),
        evidence=evidence,
        state=state.model_copy(
            update={
                "speculation_on": True,
                "successes": 0,
                "last_change": now,
                "probes": state.probes + 1,
            }
        ),
        acted=True,
    )


def _probe_wait(probes: int, policy: PolicySpec, restart: RestartCost | None = None) -> float:
    """The cooldown, doubled per failed probe; never shorter than two intervals or the rate
    window (each probe is judged on its own samples, not on the last probe's), whatever the
    cooldown says; with a restart cost, never shorter than its cost-aware cooldown."""
    floor = max(MIN_COOLDOWN_INTERVALS * seconds(policy.interval), seconds(policy.window))
    cooldown = cooldown_seconds(policy, restart)
    wait = max(cooldown, floor) * float(2 ** min(probes, MAX_PROBE_DOUBLINGS))
    if restart is None:
        return wait
    return max(wait, probe_budget_seconds(restart))


def probe_budget_seconds(restart: RestartCost) -> float:
    """The least wait between probes for the restarts of a failed probe (two: on, and off again)
    to cost at most PROBE_CAPACITY_SHARE of the restarted replicas' capacity over the wait."""
    return 2 * restart.startup_s / PROBE_CAPACITY_SHARE


def _no_breach(
    signals: Signals, state: PolicyState, policy: PolicySpec, warnings: list[PolicyWarning]
) -> PolicyDecision:
    """Keep speculation, the breach count reset; or, in the review band without a baseline
    for the SLO's latency, where nothing decides, hold: nothing counted, speculation left on."""
    t = policy.thresholds
    acceptance = signals.acceptance
    assert acceptance is not None
    band = _band_text(acceptance, t)
    what, value, baseline = slo_latency(signals, policy.slo)
    regression = _regression(value, baseline)
    if regression is None and acceptance_band(acceptance, t) is AcceptanceBand.REVIEW:
        return PolicyDecision(
            action=Action.HOLD,
            reason=f"holding: {band}, where {what} against a baseline decides, and there is "
            "no baseline (no control replicas, and no reading without speculation at this "
            "load); speculation stays on",
            state=state,
            warnings=warnings,
        )
    latency = (
        f"no {what} baseline to confirm it against"
        if regression is None
        else f"{what} {_fmt(value, 'ms')} is within "
        f"{t.max_p99_tpot_regression:.0%} of the baseline's {_fmt(baseline, 'ms')}"
    )
    rollout = state.rollout_acceptance if state.rollout_acceptance is not None else acceptance
    return PolicyDecision(
        action=Action.KEEP,
        reason=f"speculation pays: {band}, {latency}",
        state=state.model_copy(update={"breaches": 0, "rollout_acceptance": rollout, "probes": 0}),
        warnings=warnings,
    )


def _breach(signals: Signals, policy: PolicySpec) -> str | None:
    """Why speculation is not paying, or None: acceptance in the net-negative band, or, in the
    other bands, latency regressing against the baseline beyond what the thresholds allow, or
    the draft's memory leaving the server a smaller batch than the control replicas'
    (`memory_loss`)."""
    t = policy.thresholds
    acceptance = signals.acceptance
    assert acceptance is not None
    band = _band_text(acceptance, t)
    if acceptance_band(acceptance, t) is AcceptanceBand.NET_NEGATIVE:
        return band
    for what, value, baseline, allowed in latencies(signals, policy):
        regression = _regression(value, baseline)
        if regression is not None and regression > allowed:
            return (
                f"{what} {_fmt(value, 'ms')} is {regression:.0%} above the baseline's "
                f"{_fmt(baseline, 'ms')} (more than {allowed:.0%}) at {band}"
            )
    memory = memory_loss(signals)
    if memory is not None:
        return f"{_memory_text(signals, memory)} at {band}"
    return None


def _regression(value: float | None, baseline: float | None) -> float | None:
    if value is None or not baseline:
        return None
    return value / baseline - 1


def _warnings(signals: Signals, state: PolicyState) -> list[PolicyWarning]:
    warnings = []
    if (
        signals.p50_tpot is not None
        and signals.baseline_p50_tpot
        and signals.p99_tpot is not None
        and signals.baseline_p99_tpot
        and signals.p50_tpot < signals.baseline_p50_tpot
        and signals.p99_tpot > signals.baseline_p99_tpot
    ):
        warnings.append(
            PolicyWarning(
                code="MixedWorkload",
                message=f"mixed workload: P50 TPOT improves ({_fmt(signals.p50_tpot, 'ms')} vs "
                f"{_fmt(signals.baseline_p50_tpot, 'ms')}) while P99 regresses "
                f"({_fmt(signals.p99_tpot, 'ms')} vs {_fmt(signals.baseline_p99_tpot, 'ms')})",
            )
        )
    if (
        signals.acceptance is not None
        and state.rollout_acceptance is not None
        and signals.acceptance < state.rollout_acceptance - ACCEPTANCE_DRIFT
    ):
        warnings.append(
            PolicyWarning(
                code="AcceptanceDrift",
                message=f"acceptance drift: {_fmt(signals.acceptance)} vs "
                f"{_fmt(state.rollout_acceptance)} at rollout",
            )
        )
    memory = memory_loss(signals)
    if memory is not None:
        warnings.append(
            PolicyWarning(
                code="DraftMemoryLimitsBatch",
                message=f"{_memory_text(signals, memory)} (k=0 in the engine keeps them): a "
                "smaller or quantized draft, or more GPU memory per replica, gives the batch "
                "back; the control loop turns speculation off only once the loss outweighs a "
                "restart",
            )
        )
    return warnings


def _while_off(
    signals: Signals,
    state: PolicyState,
    policy: PolicySpec,
    now: datetime.datetime,
    restart: RestartCost | None = None,
) -> PolicyDecision:
    crossover = state.crossover_load
    if crossover is None:
        return _probe(state, policy, now, restart)
    if signals.load is None:
        return PolicyDecision(
            action=Action.KEEP, reason="speculation off; no load reading to compare", state=state
        )
    settling = _settling(state, policy, now, restart, with_window=True)
    if settling is not None:  # the outage's missing completions read as low load
        return PolicyDecision(
            action=Action.KEEP,
            reason=f"speculation off: {settling}",
            state=state.model_copy(update={"successes": 0}),
        )
    ceiling = crossover * RE_ENABLE_LOAD_MARGIN
    if signals.load >= ceiling:
        return PolicyDecision(
            action=Action.KEEP,
            reason=f"speculation off: load {signals.load:.1f} is not below {ceiling:.1f} "
            f"({RE_ENABLE_LOAD_MARGIN:.0%} of the {crossover:.1f} where it stopped paying)",
            state=state.model_copy(update={"successes": 0}),
        )
    successes = state.successes + 1
    counted = state.model_copy(update={"successes": successes})
    waiting = _still_waiting(
        successes, policy.consecutive_success_limit, state, policy, now, restart
    )
    if waiting is not None:
        return PolicyDecision(
            action=Action.KEEP,
            reason=f"load {signals.load:.1f} below {ceiling:.1f} ({waiting})",
            state=counted,
        )
    evidence = f"load {signals.load:.1f} stayed below {ceiling:.1f} for {successes} checks"
    if restart is not None:
        evidence += (
            f"; the restart costs {restart.startup_s:.0f}s x {restart.replicas_affected} "
            f"replica(s) ({restart.source}), spaced at least "
            f"{cooldown_seconds(policy, restart):.0f}s from the last"
        )
    return PolicyDecision(
        action=Action.ENABLE,
        reason=f"{evidence}; speculation re-enabled",
        evidence=evidence,
        state=counted.model_copy(
            update={"speculation_on": True, "successes": 0, "last_change": now}
        ),
        acted=True,
    )


def flapping_findings(policy: PolicySpec) -> list[Finding]:
    """What in spec.policy would make the pods flap: a cooldown under two intervals (refused),
    a cooldown shorter than a GPU pod restart, or one check being enough to act (warnings)."""
    found: list[Finding] = []
    cooldown, interval = seconds(policy.cooldown), seconds(policy.interval)
    least = MIN_COOLDOWN_INTERVALS * interval
    if cooldown < least:
        found.append(
            error(
                "CooldownTooShort",
                "spec.policy.cooldown",
                f"cooldown {policy.cooldown} is shorter than two intervals ({_duration(least)} "
                f"at interval {policy.interval}): it blocks at most the check right after a "
                "change, whose readings still come from the pods being replaced, so every check "
                "could restart the pods.",
                f"set spec.policy.cooldown to at least {_duration(least)}; on GPUs "
                f"{_duration(RESTART_SECONDS)} or more (the default is {DEFAULT_COOLDOWN}).",
                also=["spec.policy.interval"],
            )
        )
    elif cooldown < RESTART_SECONDS:
        found.append(
            warning(
                "CooldownShorterThanRestart",
                "spec.policy.cooldown",
                f"cooldown {policy.cooldown} is shorter than a GPU pod restart (minutes: "
                f"{_duration(RESTART_SECONDS)} assumed): the loop may change the pods again "
                "before the last change has served.",
                "fine for simulated pods; on GPUs set spec.policy.cooldown to "
                f"{_duration(RESTART_SECONDS)} or more (the default is {DEFAULT_COOLDOWN}).",
            )
        )
    for name, field in (
        ("failureLimit", "failure_limit"),
        ("consecutiveSuccessLimit", "consecutive_success_limit"),
    ):
        if getattr(policy, field) == 1:
            default = PolicySpec.model_fields[field].default
            found.append(
                warning(
                    "SingleCheckActs",
                    f"spec.policy.{name}",
                    f"{name} 1: one noisy check is enough to restart the pods.",
                    f"set spec.policy.{name} to 2 or more (the default is {default}).",
                )
            )
    return found


def _duration(secs: float) -> str:
    whole = math.ceil(secs)
    return f"{whole // 60}m" if whole >= 60 and whole % 60 == 0 else f"{whole}s"
