"""The control policy as a pure state machine: thresholds, hysteresis, cooldown, modes, holds."""

from __future__ import annotations

import datetime
import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from specpilot.api.admin import DEFAULT_MAX_CHANGES_PER_HOUR
from specpilot.api.models import PolicySpec, Slo, Thresholds
from specpilot.assessment import assess
from specpilot.control.policy import (
    SLO_NAMES,
    Action,
    PolicyState,
    RestartCost,
    Signals,
    cooldown_seconds,
    decide,
    flapping_findings,
)
from specpilot.findings import Severity
from specpilot_lab.local.stack import FAST_POLICY
from tests.conftest import manifest

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def policy(**fields: Any) -> PolicySpec:
    return PolicySpec.model_validate({"interval": "30s", "cooldown": "10m", **fields})


def signals(at: datetime.datetime, **fields: Any) -> Signals:
    return Signals(sampled_at=at, **fields)


def run(
    readings: list[dict[str, Any]],
    spec: PolicySpec | None = None,
    state: PolicyState | None = None,
    step: float = 30.0,
    max_changes_per_hour: int = DEFAULT_MAX_CHANGES_PER_HOUR,
) -> list[Any]:
    spec = spec or policy()
    state = state or PolicyState()
    out = []
    for i, fields in enumerate(readings):
        now = T0 + datetime.timedelta(seconds=step * i)
        decision = decide(signals(now, **fields), state, spec, now, max_changes_per_hour)
        state = decision.state
        out.append(decision)
    return out


def test_low_acceptance_disables_after_failure_limit_checks() -> None:
    decisions = run([{"acceptance": 0.41, "load": 40}] * 3)
    assert [d.action for d in decisions] == [Action.KEEP, Action.KEEP, Action.DISABLE]
    assert "acceptance 0.41 < 0.50 for 3 checks over 90s; speculation disabled" in (
        decisions[-1].reason
    )
    assert decisions[-1].state.speculation_on is False
    # low acceptance is about the traffic, not the load: no crossover, a probe brings it back
    assert decisions[-1].state.crossover_load is None


def test_a_latency_disable_records_the_crossover_load() -> None:
    worse = {"acceptance": 0.7, "p99_tpot": 0.040, "baseline_p99_tpot": 0.029, "load": 40}
    decisions = run([worse] * 3)
    assert decisions[-1].action is Action.DISABLE
    assert decisions[-1].state.crossover_load == 40


def probe_cycle(state: PolicyState, spec: PolicySpec, start: datetime.datetime, low: bool) -> Any:
    """Checks every 30 s from `start` while off, until the probe; then 3 checks while on."""
    now, decision = start, None
    while state.speculation_on is False:
        decision = decide(signals(now, load=10), state, spec, now, max_changes_per_hour=100)
        state = decision.state
        now += datetime.timedelta(seconds=30)
    assert decision is not None
    probed = decision
    for _ in range(3):
        decision = decide(signals(now, acceptance=0.3 if low else 0.8, load=10), state, spec, now)
        state = decision.state
        now += datetime.timedelta(seconds=30)
    return probed, decision


def test_after_a_low_acceptance_disable_probes_with_doubling_waits() -> None:
    spec = policy(cooldown="5m")
    state = PolicyState(speculation_on=False, last_change=T0)  # disabled for low acceptance
    waits = []
    start = T0
    for _ in range(5):
        probed, last = probe_cycle(state, spec, start, low=True)
        assert probed.action is Action.ENABLE
        assert "re-enabled to probe" in probed.reason
        waits.append((probed.state.last_change - start).total_seconds())
        assert last.action is Action.DISABLE  # still low: off again
        state, start = last.state, last.state.last_change
    assert waits == [300, 600, 1200, 2400, 2400]  # doubled per failed probe, capped at 8x
    # acceptance has recovered: the probe keeps speculation on and the count starts again
    _, last = probe_cycle(state, spec, start, low=False)
    assert last.action is Action.KEEP
    assert last.state.speculation_on is True
    assert last.state.probes == 0


def test_a_good_check_resets_the_breach_count() -> None:
    good, bad = {"acceptance": 0.8}, {"acceptance": 0.3}
    decisions = run([bad, bad, good, bad, bad, good])
    assert all(d.action is Action.KEEP for d in decisions)


def test_review_band_decides_on_p99_against_the_baseline() -> None:
    fine = {"acceptance": 0.58, "p99_tpot": 0.030, "baseline_p99_tpot": 0.029}
    worse = {"acceptance": 0.58, "p99_tpot": 0.040, "baseline_p99_tpot": 0.029}
    kept = run([fine] * 5)
    assert all(d.action is Action.KEEP for d in kept)
    assert kept[-1].reason == (
        "speculation pays: acceptance 0.58 in the review band 0.50-0.65, "
        "P99 TPOT 30.0 ms is within 10% of the baseline's 29.0 ms"
    )
    decisions = run([worse] * 3)
    assert decisions[-1].action is Action.DISABLE
    assert decisions[-1].reason.startswith(
        "P99 TPOT 40.0 ms is 38% above the baseline's 29.0 ms (more than 10%) at acceptance 0.58 "
        "in the review band 0.50-0.65 for 3 checks"
    )


def test_review_band_without_a_baseline_holds_and_counts_nothing() -> None:
    """Near break-even only latency can tell; with nothing to compare, speculation stays on and
    neither the breaches before nor a probe in progress are forgotten."""
    state = PolicyState(breaches=2, probes=1)
    decision = run([{"acceptance": 0.58, "p99_tpot": 0.030}], state=state)[0]
    assert decision.action is Action.HOLD
    assert decision.state == state
    assert decision.reason.startswith(
        "holding: acceptance 0.58 in the review band 0.50-0.65, where P99 TPOT against a "
        "baseline decides, and there is no baseline"
    )
    assert decision.reason.endswith("speculation stays on")


def test_above_the_review_band_speculation_is_kept_unless_latency_regresses() -> None:
    alone = run([{"acceptance": 0.7}], state=PolicyState(breaches=2))[0]
    assert alone.action is Action.KEEP
    assert alone.state.breaches == 0
    assert (
        alone.reason
        == "speculation pays: acceptance 0.70 >= 0.65, no P99 TPOT baseline to confirm it against"
    )
    worse = {"acceptance": 0.7, "p99_tpot": 0.040, "baseline_p99_tpot": 0.029}
    decisions = run([worse] * 3)
    assert decisions[-1].action is Action.DISABLE
    assert decisions[-1].reason.startswith(
        "P99 TPOT 40.0 ms is 38% above the baseline's 29.0 ms (more than 10%) at acceptance "
        "0.70 >= 0.65 for 3 checks"
    )


THRESHOLD_CASES: dict[str, tuple[dict[str, Any], PolicyState, float]] = {
    "disable_below_acceptance": ({"acceptance": 0.45}, PolicyState(), 0.40),
    "review_below_acceptance": ({"acceptance": 0.58}, PolicyState(), 0.55),
    "max_p99_tpot_regression": (
        {"acceptance": 0.8, "p99_tpot": 0.040, "baseline_p99_tpot": 0.029},
        PolicyState(),
        0.5,
    ),
    "max_p50_ttft_regression": (
        {"acceptance": 0.8, "p50_ttft": 0.44, "baseline_p50_ttft": 0.103},
        PolicyState(),
        5.0,
    ),
    "quantization_acceptance_drop": (
        {"acceptance": 0.7},
        PolicyState(pre_change_acceptance=0.8),
        0.2,
    ),
}
"""Per threshold: a reading, a state and another value of that threshold alone that together
change the decision from the one the defaults give."""


def test_every_threshold_changes_some_decision() -> None:
    """A threshold the policy never reads is a knob that does nothing: each must have a case."""
    assert set(THRESHOLD_CASES) == set(Thresholds.model_fields)
    ladder = [{"model": "org/llama-70b-int8", "quantization": "int8"}]
    for field, (reading, state, value) in THRESHOLD_CASES.items():
        actions = []
        for thresholds in (Thresholds(), Thresholds().model_copy(update={field: value})):
            spec = policy(failureLimit=1, quantizationLadder=ladder).model_copy(
                update={"thresholds": thresholds}
            )
            actions.append(decide(signals(T0, **reading), state, spec, T0).action)
        assert actions[0] is not actions[1], f"{field} did not change the decision: {actions}"


def test_mixed_workload_warning() -> None:
    decision = run(
        [
            {
                "acceptance": 0.7,
                "p50_tpot": 0.010,
                "baseline_p50_tpot": 0.016,
                "p99_tpot": 0.031,
                "baseline_p99_tpot": 0.030,
            }
        ]
    )[0]
    assert decision.action is Action.KEEP
    assert any("mixed workload" in w.message for w in decision.warnings)


def test_re_enable_after_load_stays_below_the_crossover_for_the_success_window() -> None:
    off = PolicyState(speculation_on=False, crossover_load=40, last_change=T0)
    spec = policy(consecutiveSuccessLimit=3)
    busy = {"load": 35}  # above 80% of 40
    quiet = {"load": 10}
    start = T0 + datetime.timedelta(minutes=20)
    state = off
    actions = []
    for i, reading in enumerate([quiet, busy, quiet, quiet, quiet]):
        now = start + datetime.timedelta(seconds=30 * i)
        decision = decide(signals(now, **reading), state, spec, now)
        state = decision.state
        actions.append(decision.action)
    assert actions == [Action.KEEP] * 4 + [Action.ENABLE]
    assert state.speculation_on is True


def test_cooldown_blocks_a_second_restart() -> None:
    state = PolicyState(speculation_on=False, crossover_load=40, last_change=T0)
    decisions = run([{"load": 1}] * 8, spec=policy(consecutiveSuccessLimit=2), state=state)
    # 10 minutes of cooldown after T0: 8 checks at 30 s intervals cover only 3.5 minutes.
    assert all(d.action is Action.KEEP for d in decisions)
    assert "cooldown" in decisions[-1].reason


def test_missing_or_stale_metrics_hold_and_never_count() -> None:
    state = PolicyState(breaches=2)
    now = T0
    failed = decide(signals(now, error="connection refused"), state, policy(), now)
    assert failed.action is Action.HOLD
    assert "connection refused" in failed.reason
    assert failed.state == state
    stale = decide(
        signals(now - datetime.timedelta(minutes=5), acceptance=0.1), state, policy(), now
    )
    assert stale.action is Action.HOLD
    assert "stale" in stale.reason
    empty = decide(signals(now), state, policy(), now)
    assert empty.action is Action.HOLD


def test_recommend_mode_reports_without_acting() -> None:
    decisions = run([{"acceptance": 0.3}] * 3, spec=policy(mode="recommend"))
    assert decisions[-1].action is Action.DISABLE
    assert decisions[-1].acted is False
    assert decisions[-1].state.speculation_on is True
    assert decisions[-1].reason.startswith("recommend mode, not acting")


def test_off_mode_does_nothing() -> None:
    assert run([{"acceptance": 0.1}] * 5, spec=policy(mode="off"))[-1].action is Action.KEEP


def test_quantization_acceptance_drop_steps_back_along_the_ladder() -> None:
    spec = policy(quantizationLadder=[{"model": "org/llama-70b-int8", "quantization": "int8"}])
    state = PolicyState(pre_change_acceptance=0.74, checkpoint_index=0)
    decisions = run([{"acceptance": 0.66}] * 3, spec=spec, state=state)
    assert decisions[-1].action is Action.STEP_QUANTIZATION
    assert "org/llama-70b-int8" in decisions[-1].reason
    assert decisions[-1].state.checkpoint_index == 1


def test_a_collapse_after_a_quantization_change_undoes_the_change_before_speculation() -> None:
    """0.43 < 0.50 would disable speculation, but the cheaper target caused it: step back."""
    spec = policy(quantizationLadder=[{"model": "org/llama-70b-int8", "quantization": "int8"}])
    state = PolicyState(pre_change_acceptance=0.53, checkpoint_index=0)
    decisions = run([{"acceptance": 0.43}] * 3, spec=spec, state=state)
    assert decisions[-1].action is Action.STEP_QUANTIZATION
    assert decisions[-1].state.speculation_on is True
    assert "fell more than 0.05 below 0.53 measured before the quantization change" in (
        decisions[-1].reason
    )
    # the more precise step did not bring acceptance back: the traffic is the cause, so the
    # same collapse on the step undoes it and turns speculation off, in one change
    stepped = decisions[-1].state.model_copy(update={"last_change": None})  # cooled down
    after = run([{"acceptance": 0.43}] * 3, spec=spec, state=stepped)
    assert after[-1].action is Action.UNDO_QUANTIZATION_STEP
    assert after[-1].state.checkpoint_index == 0
    assert after[-1].state.speculation_on is False
    assert after[-1].state.crossover_load is None  # low acceptance: probed, not load-gated
    assert after[-1].reason.endswith(
        "back to spec.target without speculation (acceptance is low on the step too)"
    )


def test_acceptance_drift_warning() -> None:
    decision = run([{"acceptance": 0.62}], state=PolicyState(rollout_acceptance=0.8))[0]
    assert any("acceptance drift" in w.message for w in decision.warnings)


@given(
    readings=st.lists(
        st.fixed_dictionaries(
            {
                "acceptance": st.one_of(st.none(), st.floats(0, 1)),
                "load": st.one_of(st.none(), st.floats(0, 100)),
                "error": st.one_of(st.none(), st.just("timeout")),
            }
        ),
        max_size=80,
    )
)
def test_never_more_than_one_change_per_cooldown_except_ending_a_failed_probe(
    readings: list[dict[str, Any]],
) -> None:
    decisions = run(readings)
    changes = [(i, d) for i, d in enumerate(decisions) if d.acted]
    for (a, first), (b, second) in itertools.pairwise(changes):
        if "to probe" in first.reason and second.action is Action.DISABLE:
            assert b - a >= 3  # failureLimit checks of the probe
        else:
            assert b - a >= 20  # 10 min / 30 s


def test_probes_wait_at_least_two_intervals_and_the_window_whatever_the_cooldown() -> None:
    state = PolicyState(speculation_on=False, last_change=T0)  # disabled for low acceptance
    for fields, first in (({}, 300), ({"window": "20s"}, 60)):  # the 5m window; 2 x 30s
        spec = policy(cooldown="0s", **fields)
        waits, start, current = [], T0, state
        for _ in range(5):
            probed, last = probe_cycle(current, spec, start, low=True)
            waits.append((probed.state.last_change - start).total_seconds())
            current, start = last.state, last.state.last_change
        assert waits == [first, 2 * first, 4 * first, 8 * first, 8 * first]


FLAPPING = {"cooldown": "1m", "failureLimit": 1, "consecutiveSuccessLimit": 1}
HOT = {"acceptance": 0.7, "p99_tpot": 0.040, "baseline_p99_tpot": 0.029, "load": 40}
QUIET = {"load": 10}


def flap(spec: PolicySpec, ceiling: int, checks: int, step: float = 60) -> list[Any]:
    """Latency breaches while on, low load while off: each check would change the pods."""
    state, out = PolicyState(), []
    for i in range(checks):
        now = T0 + datetime.timedelta(seconds=step * i)
        fields = HOT if state.speculation_on else QUIET
        decision = decide(signals(now, **fields), state, spec, now, ceiling)
        state = decision.state
        out.append(decision)
    return out


def test_an_action_beyond_the_hourly_ceiling_is_held() -> None:
    decisions = flap(policy(**FLAPPING), ceiling=2, checks=62)
    acted = [i for i, d in enumerate(decisions) if d.acted]
    # changes at 0 s and 60 s; the third waits until the first is an hour old (3600 s), the
    # fourth until the second is
    assert acted == [0, 1, 60, 61]
    held = decisions[2:60]
    assert all(d.action is Action.HOLD for d in held)
    assert all(d.state == decisions[1].state for d in held)  # nothing counted or changed
    message = held[0].warnings[-1].message
    assert held[0].warnings[-1].code == "ChangeLimitReached"
    assert "2 changes in the last hour, the ceiling is 2 per hour" in message
    assert "would disable speculation (P99 TPOT 40.0 ms is 38% above" in message
    assert "specpilot run --max-changes-per-hour" in message
    assert "control.maxChangesPerHour" in message
    assert len(decisions[-1].state.recent_changes) == 2  # bounded by the ceiling


def test_a_probe_starts_only_with_room_for_the_disable_that_may_end_it() -> None:
    spec = policy(cooldown="5m")
    state = PolicyState(speculation_on=False, last_change=T0, recent_changes=[T0])
    low = {"acceptance": 0.3, "load": 10}
    speculating, now = [], T0
    for _ in range(150):  # 75 minutes
        now += datetime.timedelta(seconds=30)
        fields = low if state.speculation_on else {"load": 10}
        decision = decide(signals(now, **fields), state, spec, now, 3)
        state = decision.state
        speculating.append(state.speculation_on)
        assert len(state.recent_changes) <= 3
    # the disable at 0 s, the probe at 300 s and its disable at 390 s make three changes; the
    # next probe (due at 990 s) waits until two of them are an hour old (3900 s), rather than
    # start with no room left to end it
    probes = [
        i for i, (a, b) in enumerate(itertools.pairwise([False, *speculating])) if b and not a
    ]
    assert [(i + 1) * 30 for i in probes] == [300, 3900]
    assert sum(speculating) == 6  # each probe ran three checks, never stuck on


@given(
    readings=st.lists(
        st.fixed_dictionaries(
            {
                "acceptance": st.one_of(st.none(), st.floats(0, 1)),
                "p99_tpot": st.one_of(st.none(), st.floats(0.01, 0.05)),
                "baseline_p99_tpot": st.just(0.03),
                "load": st.one_of(st.none(), st.floats(0, 100)),
            }
        ),
        max_size=240,
    ),
    ceiling=st.integers(1, 6),
)
def test_never_more_changes_in_an_hour_than_the_ceiling(
    readings: list[dict[str, Any]], ceiling: int
) -> None:
    spec = policy(cooldown="1m", failureLimit=1, consecutiveSuccessLimit=1, window="1m")
    decisions = run(readings, spec=spec, max_changes_per_hour=ceiling)
    changes = [i for i, d in enumerate(decisions) if d.acted]
    for i in changes:
        assert sum(1 for j in changes if i - 120 < j <= i) <= ceiling  # 120 checks: an hour


def findings_by_code(**fields: Any) -> dict[str, Any]:
    return {(f.code, f.path): f for f in flapping_findings(policy(**fields))}


def test_the_flapping_policy_of_the_issue_is_refused_and_warned_about() -> None:
    found = findings_by_code(
        interval="2s", cooldown="0s", failureLimit=1, consecutiveSuccessLimit=1
    )
    refused = found["CooldownTooShort", "spec.policy.cooldown"]
    assert refused.severity is Severity.ERROR
    assert "cooldown 0s is shorter than two intervals (4s at interval 2s)" in refused.message
    assert refused.fix.startswith("set spec.policy.cooldown to at least 4s")
    assert found["SingleCheckActs", "spec.policy.failureLimit"].severity is Severity.WARNING
    single = found["SingleCheckActs", "spec.policy.consecutiveSuccessLimit"]
    assert single.fix == "set spec.policy.consecutiveSuccessLimit to 2 or more (the default is 5)."


def test_cooldown_floors() -> None:
    assert "CooldownTooShort" in {c for c, _ in findings_by_code(cooldown="59s")}
    at_floor = findings_by_code(cooldown="1m")  # two 30 s intervals: accepted, warned
    assert [(c, f.severity) for (c, _), f in at_floor.items()] == [
        ("CooldownShorterThanRestart", Severity.WARNING)
    ]
    assert findings_by_code(cooldown="5m") == {}
    assert flapping_findings(PolicySpec()) == []  # the defaults


def test_the_local_demo_policy_is_accepted_with_a_warning() -> None:
    found = flapping_findings(PolicySpec.model_validate(FAST_POLICY))
    assert [(f.code, f.severity) for f in found] == [
        ("CooldownShorterThanRestart", Severity.WARNING)
    ]


def test_validation_refuses_the_flapping_policy() -> None:
    flapping = {"interval": "2s", "cooldown": "0s", "failureLimit": 1, "consecutiveSuccessLimit": 1}
    result = assess(manifest(policy=flapping))
    assert not result.valid
    codes = {(f.code, f.severity) for f in result.findings}
    assert ("CooldownTooShort", Severity.ERROR) in codes
    assert ("SingleCheckActs", Severity.WARNING) in codes
    assert assess(manifest(policy=FAST_POLICY)).valid


# --- the cost of acting (issue 17) ------------------------------------------------------------

RESTART = RestartCost(startup_s=205, replicas_affected=1, source="startup 205s (test)")


def priced_run(readings: list[dict[str, Any]], restart: RestartCost = RESTART, **spec: Any) -> Any:
    state, out = PolicyState(), []
    for i, fields in enumerate(readings):
        now = T0 + datetime.timedelta(seconds=30 * i)
        decision = decide(signals(now, **fields), state, policy(**spec), now, restart=restart)
        state = decision.state
        out.append(decision)
    return out


def test_a_regression_smaller_than_the_restart_it_would_cost_is_kept_with_the_numbers() -> None:
    # 38% above the baseline: keeping loses 1 - 29/40 = 27.5% of a replica over the 10m cooldown,
    # 165 replica-seconds; the restart costs 205
    worse = {"acceptance": 0.7, "p99_tpot": 0.040, "baseline_p99_tpot": 0.029, "load": 40}
    decisions = priced_run([worse] * 4)
    assert [d.action for d in decisions] == [Action.KEEP] * 4
    assert decisions[-1].state.breaches == 4  # still counted: a worse reading acts at once
    assert (
        "keeping loses 28% of 1 replica(s)' capacity (P99 TPOT) over the 600s cooldown = "
        "165 replica-seconds, not more than the restart's 205s x 1 = 205" in decisions[-1].reason
    )
    assert decisions[-1].reason.endswith("not restarting")


def test_a_regression_that_outweighs_the_restart_disables_and_says_why() -> None:
    worse = {"acceptance": 0.7, "p99_tpot": 0.080, "baseline_p99_tpot": 0.029, "load": 40}
    decisions = priced_run([worse] * 3)
    assert decisions[-1].action is Action.DISABLE
    assert (
        "keeping loses 64% of 1 replica(s)' capacity (P99 TPOT) over the 600s cooldown = "
        "382 replica-seconds, more than the restart's 205s x 1 = 205 (startup 205s (test))"
        in decisions[-1].reason
    )


def test_the_same_regression_is_worth_it_with_a_faster_start() -> None:
    worse = {"acceptance": 0.7, "p99_tpot": 0.040, "baseline_p99_tpot": 0.029, "load": 40}
    fast = RestartCost(startup_s=60, replicas_affected=2)
    decisions = priced_run([worse] * 3, restart=fast)
    assert decisions[-1].action is Action.DISABLE
    assert (
        "over the 600s cooldown = 330 replica-seconds, more than the restart's 60s x 2 = 120"
        in decisions[-1].reason
    )


def test_the_cooldown_is_at_least_the_startup_plus_the_rate_window() -> None:
    spec = policy(cooldown="1m", window="2m")
    assert cooldown_seconds(spec, None) == 60
    assert cooldown_seconds(spec, RestartCost(startup_s=205)) == 325
    assert cooldown_seconds(policy(cooldown="10m"), RestartCost(startup_s=205)) == 600


def test_load_readings_that_still_cover_the_restart_count_no_success() -> None:
    """The outage's missing completions read as low load: after a latency disable, a quiet
    reading within startup + window of the change is not a success."""
    state = PolicyState(speculation_on=False, crossover_load=10.0, last_change=T0)
    spec = policy(window="5m", consecutiveSuccessLimit=1, cooldown="1m")
    early = T0 + datetime.timedelta(seconds=400)  # < 205 + 300
    held = decide(signals(early, load=1.0), state, spec, early, restart=RESTART)
    assert held.action is Action.KEEP
    assert held.state.successes == 0
    assert "readings cover the restart until 505s" in held.reason
    late = T0 + datetime.timedelta(seconds=520)
    assert decide(signals(late, load=1.0), state, spec, late, restart=RESTART).action is (
        Action.ENABLE
    )
    # without a restart cost the old rule counts it at once
    assert decide(signals(early, load=1.0), state, spec, early).action is Action.ENABLE


def test_low_acceptance_without_a_baseline_is_not_priced_and_the_probe_names_its_price() -> None:
    decisions = priced_run([{"acceptance": 0.41, "load": 40}] * 3)
    assert decisions[-1].action is Action.DISABLE
    assert "replica-seconds" not in decisions[-1].reason  # nothing to measure the loss against
    state = decisions[-1].state
    # a failed probe costs two restarts of 205 s: at most 10% of the capacity in between is
    # 4100 s between probes, not the 10m cooldown
    early = T0 + datetime.timedelta(seconds=60 + 600)
    waiting = decide(signals(early, load=40), state, policy(), early, restart=RESTART)
    assert waiting.action is Action.KEEP
    assert "probing again in 3500s" in waiting.reason
    later = T0 + datetime.timedelta(seconds=60 + 4100)
    probe = decide(signals(later, load=40), state, policy(), later, restart=RESTART)
    assert probe.action is Action.ENABLE
    assert "a failed probe costs two restarts of 205s x 1 replica(s)" in probe.reason


LADDER = [{"model": "org/llama-70b-int8", "quantization": "int8"}]
STEPPED = PolicyState(checkpoint_index=1, target="org/llama-70b-awq@int4")
LOSING = {"acceptance": 0.72, "p99_tpot": 0.040, "baseline_p99_tpot": 0.029, "load": 8}


def test_a_step_slower_than_spec_target_without_speculation_is_undone() -> None:
    decisions = run([LOSING] * 3, spec=policy(quantizationLadder=LADDER), state=STEPPED)
    assert [d.action for d in decisions] == [
        Action.KEEP,
        Action.KEEP,
        Action.UNDO_QUANTIZATION_STEP,
    ]
    assert "(1/3 checks)" in decisions[0].reason
    last = decisions[-1]
    assert last.acted
    assert last.reason.startswith(
        "the quantization ladder step to org/llama-70b-int8 (int8) with speculation against "
        "org/llama-70b-awq@int4 without it (the baseline): P99 TPOT 40.0 ms is 38% above the "
        "baseline's 29.0 ms (more than 10%) at acceptance 0.72 >= 0.65 for 3 checks over 90s"
    )
    assert last.reason.endswith("undoing it, back to spec.target")
    # speculation stays on: on spec.target the ordinary rule judges it
    assert (last.state.checkpoint_index, last.state.speculation_on) == (0, True)
    assert last.state.pre_change_acceptance is None  # no step again until spec.target changes
    assert last.state.last_change == T0 + datetime.timedelta(seconds=60)
    assert last.state.crossover_load is None
    # the same readings on spec.target: the ordinary disable, not another step
    cooled = last.state.model_copy(update={"last_change": None})
    after = run([LOSING] * 3, spec=policy(quantizationLadder=LADDER), state=cooled)
    assert after[-1].action is Action.DISABLE


def test_the_same_loss_at_spec_target_disables_and_on_a_step_undoes() -> None:
    """The latency comparison, its margin and the failure count are the disable's."""
    spec = policy(quantizationLadder=LADDER, failureLimit=2)
    within = {**LOSING, "p99_tpot": 0.0315}  # 8.6% above: within the 10% margin
    assert {d.action for d in run([within] * 4, spec=spec, state=STEPPED)} == {Action.KEEP}
    assert run([LOSING] * 2, spec=spec, state=STEPPED)[-1].action is (Action.UNDO_QUANTIZATION_STEP)
    assert run([LOSING] * 2, spec=spec)[-1].action is Action.DISABLE
    # a good check resets the count, as for the disable
    broken = run([LOSING, within, LOSING], spec=spec, state=STEPPED)
    assert {d.action for d in broken} == {Action.KEEP}


def test_a_step_that_beats_spec_target_without_speculation_is_kept() -> None:
    better = {**LOSING, "p99_tpot": 0.025}
    decisions = run([better] * 5, spec=policy(quantizationLadder=LADDER), state=STEPPED)
    assert {d.action for d in decisions} == {Action.KEEP}
    assert decisions[-1].state.checkpoint_index == 1
    assert decisions[-1].reason.startswith("speculation pays")


def test_an_undo_is_priced_with_the_restart() -> None:
    spec = policy(quantizationLadder=LADDER)
    cheap = RestartCost(startup_s=60, replicas_affected=1, source="startup 60s")
    dear = RestartCost(startup_s=300, replicas_affected=1, source="startup 300s")

    def last(restart: RestartCost) -> Any:
        state = STEPPED
        for i in range(3):
            now = T0 + datetime.timedelta(seconds=30 * i)
            decision = decide(signals(now, **LOSING), state, spec, now, restart=restart)
            state = decision.state
        return decision

    # keeping loses 1 - 29/40 = 27.5% over the 10m cooldown: 165 replica-seconds
    assert last(cheap).action is Action.UNDO_QUANTIZATION_STEP
    assert "165 replica-seconds, more than the restart's 60s x 1 = 60" in last(cheap).reason
    kept = last(dear)
    assert kept.action is Action.KEEP
    assert "not more than the restart's 300s x 1 = 300 (startup 300s): not restarting" in (
        kept.reason
    )
    assert kept.state.checkpoint_index == 1


def test_an_undo_waits_for_the_cooldown_and_recommend_mode_only_reports_it() -> None:
    recent = STEPPED.model_copy(update={"last_change": T0 - datetime.timedelta(minutes=2)})
    waiting = run([LOSING] * 3, spec=policy(quantizationLadder=LADDER), state=recent)
    assert waiting[-1].action is Action.KEEP
    assert waiting[-1].reason.endswith("(cooldown)")
    recommend = policy(quantizationLadder=LADDER, mode="recommend")
    advised = run([LOSING] * 3, spec=recommend, state=STEPPED)
    assert advised[-1].action is Action.UNDO_QUANTIZATION_STEP
    assert not advised[-1].acted
    assert advised[-1].state.checkpoint_index == 1
    assert advised[-1].reason.startswith(
        "recommend mode, not acting: would undo the quantization ladder step"
    )


EQUAL = {
    "acceptance": 0.72,
    "p50_tpot": 0.016,
    "baseline_p50_tpot": 0.016,
    "p99_tpot": 0.030,
    "baseline_p99_tpot": 0.030,
    "p50_ttft": 0.100,
    "baseline_p50_ttft": 0.100,
    "p99_ttft": 0.400,
    "baseline_p99_ttft": 0.400,
    "load": 8,
}
"""Speculating and baseline alike: every latency equal."""
SLO_FIELDS = {
    Slo.P99_TPOT: "p99_tpot",
    Slo.MEDIAN_TPOT: "p50_tpot",
    Slo.MEDIAN_TTFT: "p50_ttft",
    Slo.P99_TTFT: "p99_ttft",
}


@pytest.mark.parametrize("regressed", list(Slo))
def test_only_the_stated_slo_decides_the_latency_breach(regressed: Slo) -> None:
    """One latency 30% above the baseline's (within the median-TTFT queueing margin of 2.5x):
    a breach for the SLO that names it, kept for every other SLO."""
    field = SLO_FIELDS[regressed]
    reading = {**EQUAL, field: EQUAL[field] * 1.3}
    for slo in Slo:
        decisions = run([reading] * 3, spec=policy(slo=slo.value))
        if slo is regressed:
            assert decisions[-1].action is Action.DISABLE, slo
            assert f"{SLO_NAMES[slo]} " in decisions[-1].reason
            assert "is 30% above the baseline's" in decisions[-1].reason
            assert "(more than 10%)" in decisions[-1].reason
            assert decisions[-1].state.crossover_load == 8  # a latency disable
        else:
            assert {d.action for d in decisions} == {Action.KEEP}, slo
            assert f"{SLO_NAMES[slo]} " in decisions[-1].reason
            assert "is within 10% of the baseline's" in decisions[-1].reason


def test_the_default_slo_is_p99_tpot() -> None:
    assert PolicySpec().slo is Slo.P99_TPOT
    assert policy().model_dump(by_alias=True)["slo"] == "P99TPOT"


def test_a_median_tpot_slo_keeps_a_mixed_workload_and_the_warning_stays() -> None:
    """P50 TPOT improves, P99 regresses 38%: the default disables; a median TPOT SLO keeps."""
    mixed = {**EQUAL, "p50_tpot": 0.010, "p99_tpot": 0.0415}
    default = run([mixed] * 3)
    assert default[-1].action is Action.DISABLE
    median = run([mixed] * 3, spec=policy(slo="MedianTPOT"))
    assert {d.action for d in median} == {Action.KEEP}
    assert "median TPOT 10.0 ms is within 10% of the baseline's 16.0 ms" in median[-1].reason
    for decisions in (default, median):
        assert "MixedWorkload" in [w.code for w in decisions[-1].warnings]


def test_median_ttft_queueing_is_a_breach_whatever_the_slo() -> None:
    queued = {**EQUAL, "p50_ttft": 0.440, "baseline_p50_ttft": 0.103}
    for slo in Slo:
        decisions = run([queued] * 3, spec=policy(slo=slo.value))
        assert decisions[-1].action is Action.DISABLE, slo
        assert "median TTFT 440.0 ms is 327% above the baseline's 103.0 ms" in (
            decisions[-1].reason
        )


def test_without_a_baseline_for_the_slo_the_review_band_holds_naming_it() -> None:
    review = {"acceptance": 0.58, "p99_tpot": 0.030, "baseline_p99_tpot": 0.029, "p99_ttft": 0.4}
    (held,) = run([review], spec=policy(slo="P99TTFT"))
    assert held.action is Action.HOLD
    assert "where P99 TTFT against a baseline decides, and there is no baseline" in held.reason
    (kept,) = run([review])  # the P99 TPOT baseline is there
    assert kept.action is Action.KEEP


def test_the_restart_is_priced_on_the_slo_latency() -> None:
    """P99 TTFT 60% above the baseline's loses 1 - 1/1.6 = 37.5% over the 600s cooldown: 225
    replica-seconds, more than a 200 s restart; the P99 TPOT SLO sees no loss and no breach."""
    slow_start = {**EQUAL, "p99_ttft": 0.640}
    restart = RestartCost(startup_s=200, replicas_affected=1, source="startup 200s")
    state, spec = PolicyState(), policy(slo="P99TTFT")
    for i in range(3):
        now = T0 + datetime.timedelta(seconds=30 * i)
        decision = decide(signals(now, **slow_start), state, spec, now, restart=restart)
        state = decision.state
    assert decision.action is Action.DISABLE
    assert (
        "keeping loses 38% of 1 replica(s)' capacity (P99 TTFT) over the 600s cooldown = 225 "
        "replica-seconds, more than the restart's 200s x 1 = 200" in decision.reason
    )


def test_above_the_crossover_the_last_acceptance_stands_in_and_a_loss_counts() -> None:
    """With k=0 from batch 16 the engine drafts nothing at batch 20, so the window has no
    acceptance: the last one measured stands in (no hold), and a loss there still counts: k=0
    removes the draft's passes, not its memory."""
    scheduled = PolicyState(engine_schedule_from=16, last_acceptance=0.7)
    worse = {"p99_tpot": 0.040, "baseline_p99_tpot": 0.029, "batch": 20}
    decisions = run([worse] * 3, state=scheduled)
    assert [d.action for d in decisions] == [Action.KEEP, Action.KEEP, Action.DISABLE]
    assert "at acceptance 0.70" in decisions[-1].reason
    # below the crossover the engine drafts: no acceptance in the window is a hold, as ever
    below = run([{**worse, "batch": 12}], state=scheduled)
    assert below[-1].action is Action.HOLD


def test_queueing_above_the_crossover_still_counts_the_drafts_memory_is_held() -> None:
    """k=0 removes the draft's passes, not its weights and KV cache: requests queueing past the
    TTFT allowance above the crossover count, and turning speculation off gives the memory back."""
    scheduled = PolicyState(engine_schedule_from=16)
    queued = {
        "acceptance": 0.7,
        "p99_tpot": 0.040,
        "baseline_p99_tpot": 0.029,
        "p50_ttft": 0.400,
        "baseline_p50_ttft": 0.100,
        "batch": 20,
    }
    assert run([queued] * 3, state=scheduled)[-1].action is Action.DISABLE


def memory_bound(batch: float, **more: Any) -> dict[str, Any]:
    """A saturated peak: both roles' latencies alike (they queue behind one router), the
    server's KV cache full with requests waiting, the control replica at max_num_seqs."""
    return {
        "acceptance": 0.7,
        "p99_tpot": 0.100,
        "baseline_p99_tpot": 0.100,
        "p50_ttft": 20.0,
        "baseline_p50_ttft": 12.0,
        "kv_cache_usage": 0.99,
        "waiting": 300.0,
        "batch": batch,
        "baseline_batch": 256.0,
        **more,
    }


def test_the_batch_the_drafts_memory_takes_counts_and_is_priced_alone() -> None:
    """With the KV cache full and requests waiting, the server runs fewer requests than the
    control replicas: that share is the loss, whatever the queue does to the latencies (here a
    median TTFT 67% above, which would price the loss at 40%)."""
    restart = RestartCost(startup_s=208, replicas_affected=1, source="startup 208s")
    state, spec = PolicyState(), policy()
    for i in range(3):
        now = T0 + datetime.timedelta(seconds=30 * i)
        decision = decide(signals(now, **memory_bound(180)), state, spec, now, restart=restart)
        state = decision.state
    assert decision.action is Action.KEEP
    assert (
        "KV cache 99% full with 300 request(s) waiting per replica: the server runs 180 "
        "requests per replica against the control replicas' 256, 30% fewer for the draft's "
        "weights and KV cache at acceptance 0.70 >= 0.65 for 3 checks" in decision.reason
    )
    assert (
        "keeping loses 30% of 1 replica(s)' capacity (the batch the draft's memory takes) "
        "over the 600s cooldown = 178 replica-seconds, not more than the restart's 208s"
        in decision.reason
    )
    (warning,) = decision.warnings
    assert warning.code == "DraftMemoryLimitsBatch"
    assert "a smaller or quantized draft" in warning.message
    # A draft that halves the batch is worth the restart; the memory is given back by turning
    # speculation off (crossover load recorded: it comes back on once the load falls).
    state = PolicyState()
    for i in range(3):
        now = T0 + datetime.timedelta(seconds=30 * i)
        more = memory_bound(120, load=40)
        decision = decide(signals(now, **more), state, spec, now, restart=restart)
        state = decision.state
    assert decision.action is Action.DISABLE
    assert "keeping loses 53% of 1 replica(s)' capacity" in decision.reason
    assert decision.state.crossover_load == 40


@pytest.mark.parametrize(
    "what",
    [
        {"kv_cache_usage": 0.85},  # room in the cache: a smaller batch is less demand
        {"waiting": 0.5},  # less than a request waiting per replica: nothing is turned away
        {"batch": 240.0},  # 6% fewer: within a scrape's noise
        {"baseline_batch": None},  # no control replicas to compare with
    ],
)
def test_a_smaller_batch_is_no_memory_loss_without_a_full_cache_a_queue_and_a_margin(
    what: dict[str, Any],
) -> None:
    decisions = run([memory_bound(180) | what] * 3)
    assert [d.action for d in decisions] == [Action.KEEP] * 3
    assert all(d.state.breaches == 0 and not d.warnings for d in decisions), decisions[-1]
