"""The control policy as a pure state machine: thresholds, hysteresis, cooldown, modes, holds."""

from __future__ import annotations

import datetime
import itertools
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from specpilot.api.models import PolicySpec
from specpilot.policy import Action, PolicyState, Signals, decide

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
) -> list[Any]:
    spec = spec or policy()
    state = state or PolicyState()
    out = []
    for i, fields in enumerate(readings):
        now = T0 + datetime.timedelta(seconds=step * i)
        decision = decide(signals(now, **fields), state, spec, now)
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
        decision = decide(signals(now, load=10), state, spec, now)
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
    assert all(d.action is Action.KEEP for d in run([fine] * 5))
    decisions = run([worse] * 3)
    assert decisions[-1].action is Action.DISABLE
    assert "38% above the baseline's 29.0 ms" in decisions[-1].reason


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
    # with the ladder used up, the same collapse disables speculation
    stepped = decisions[-1].state.model_copy(update={"last_change": None})  # cooled down
    after = run([{"acceptance": 0.43}] * 3, spec=spec, state=stepped)
    assert after[-1].action is Action.DISABLE


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
