"""One control check, pure: readings -> status, Events and re-rendering, and what renders after."""

from __future__ import annotations

import datetime
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packaging.version import Version

from specpilot import reconcile
from specpilot.api.admin import AdminPolicy
from specpilot.api.finite import non_finite_paths
from specpilot.api.models import PolicyState, ScheduleStep, SpeedupBand
from specpilot.control import check as control
from specpilot.control import curve
from specpilot.control.check import CheckResult
from specpilot.control.policy import Action
from specpilot.control.signals import QUERIES, Readings, Signal, implausible, parse_answers
from tests.conftest import manifest

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
POLICY = {"interval": "30s", "cooldown": "1m", "failureLimit": 3, "consecutiveSuccessLimit": 2}


MODEL_CACHE = {"persistentVolumeClaim": {"claimName": "models"}}
"""The weights on a volume: a restart loads them (208 s for the example) instead of downloading."""


def body(**policy: Any) -> dict[str, Any]:
    doc = manifest(policy={**POLICY, **policy})
    doc["metadata"].update(uid="u-1", generation=2, resourceVersion="7")
    doc["spec"]["modelCache"] = MODEL_CACHE
    return doc


def reading(
    acceptance: float | None = 0.75,
    p99: float = 0.030,
    rps: float = 2.0,
    replicas: float = 1,
    baseline_p99: float | None = None,
    name: str = "llama",
) -> Readings:
    server = {
        Signal.TPOT_P50: p99 * 0.7,
        Signal.TPOT_P99: p99,
        Signal.REQUESTS_PER_SECOND: rps,
        Signal.REPLICAS: replicas,
        Signal.KV_CACHE_USAGE: 0.4,
    }
    if acceptance is not None:
        server[Signal.ACCEPTANCE] = acceptance
    readings: Readings = {("inference", name, "server"): server}
    if baseline_p99 is not None:
        readings["inference", name, "baseline"] = {
            Signal.TPOT_P50: baseline_p99 * 0.7,
            Signal.TPOT_P99: baseline_p99,
        }
    return readings


def play(
    doc: dict[str, Any],
    readings: list[Readings | None],
    error: str | None = None,
    step: float = 30,
    admin: AdminPolicy | None = None,
) -> list[CheckResult]:
    """Checks `step` seconds apart, each seeing the status the previous one wrote (the control
    loop writes it when the check changed something, posted an Event or re-renders)."""
    results = []
    for i, reading_ in enumerate(readings):
        now = T0 + datetime.timedelta(seconds=step * i)
        result = control.check(doc, reading_, error, now, now, admin)
        assert result is not None
        if result.worth_writing:
            doc["status"] = result.status
        results.append(result)
    return results


def args(doc: dict[str, Any]) -> list[str]:
    server = reconcile.desired(doc).objects[0]
    container = server["spec"]["template"]["spec"]["containers"][0]
    return [str(a) for a in container["args"]]


def test_low_acceptance_turns_speculation_off_and_the_pods_render_without_it() -> None:
    doc = body()
    assert any("--speculative-config" in a for a in args(doc))
    results = play(doc, [reading(acceptance=0.41, rps=6)] * 3)
    assert [r.action for r in results] == [Action.KEEP, Action.KEEP, Action.DISABLE]
    assert [r.rerender for r in results] == [False, False, True]
    disabled = [e for e in results[-1].events if e.reason == "SpeculationDisabled"]
    assert disabled[0].type == "Warning"
    assert "acceptance 0.41 < 0.50 for 3 checks over 90s; speculation disabled" in (
        disabled[0].message
    )
    status = doc["status"]
    assert status["control"]["speculationOn"] is False
    assert "crossoverLoad" not in status["control"]  # low acceptance: probed, not load-gated
    assert status["decisions"][-1]["action"] == "disable-speculation"
    assert status["lastMetrics"]["acceptanceRate"] == 0.41
    assert not any("--speculative-config" in a for a in args(doc))


def test_speculation_comes_back_when_load_stays_below_the_crossover() -> None:
    doc = body(window="1m")  # a probe waits at least the rate window
    doc["metadata"]["annotations"] = {control.STARTUP_ANNOTATION: "5"}  # pods start in 5 s
    play(doc, [reading(acceptance=0.41, rps=6)] * 3)
    later = play(doc, [reading(acceptance=None, rps=1)] * 10, step=40)  # from T0 again
    actions = [r.action for r in later]
    assert Action.ENABLE in actions
    # the disable was at 60 s; a failed probe's two restarts of 5 s may cost at most 10% of the
    # capacity in between: 100 s (more than the cost-aware cooldown, 5 s + the 1m window)
    assert actions.index(Action.ENABLE) * 40 - 60 >= 100
    assert actions.index(Action.ENABLE) * 40 - 60 < 140
    enabled = later[actions.index(Action.ENABLE)]
    assert any(e.reason == "SpeculationEnabled" for e in enabled.events)
    assert doc["status"]["control"]["speculationOn"] is True
    assert any("--speculative-config" in a for a in args(doc))


def test_a_restart_neither_forgets_nor_repeats_the_action() -> None:
    doc = body()
    play(doc, [reading(acceptance=0.41, rps=6)] * 3)
    # A new operator process sees only the stored resource: still low acceptance is no news.
    results = play(doc, [reading(acceptance=None, rps=6)] * 3)
    assert all(r.action is Action.KEEP and not r.rerender for r in results)
    assert [d["action"] for d in doc["status"]["decisions"]] == ["disable-speculation"]


def test_metrics_unavailable_holds_and_says_so_once() -> None:
    doc = body()
    before = play(doc, [reading(acceptance=0.41)] * 2)[-1].status["control"]
    results = play(doc, [None] * 5, error="Prometheus at http://p:9090 unreachable")
    assert all(r.action is Action.HOLD and not r.rerender for r in results)
    condition = next(c for c in doc["status"]["conditions"] if c["type"] == "MetricsAvailable")
    assert condition["status"] == "False"
    assert "unreachable" in condition["message"]
    posted = [e for r in results for e in r.events]
    assert [e.reason for e in posted] == ["MetricsUnavailable"]
    after = doc["status"]["control"]
    assert after["breaches"] == before["breaches"] == 2  # holds do not count
    back = play(doc, [reading()])[0]
    assert [e.reason for e in back.events] == ["MetricsRead"]


def test_a_check_that_moves_only_its_own_time_changes_nothing() -> None:
    """Then the control loop skips the status write (a thousand holding resources cost reads)."""
    doc = body()
    first, *held = play(doc, [None] * 4, error="Prometheus at http://p:9090 unreachable")
    assert first.changed  # the condition and the Event are new
    assert [r.changed for r in held] == [False, False, False]
    assert play(doc, [reading(acceptance=0.41)])[0].changed  # a breach is counted


def test_fresh_numbers_alone_are_written_at_most_once_a_minute() -> None:
    doc = body()
    varying = [reading(acceptance=0.70 + i / 100, p99=0.030 + i / 1000) for i in range(8)]
    results = play(doc, varying, step=10)
    assert [r.changed for r in results] == [True] + [False] * 5 + [True, False]
    written = results[6].status["lastMetrics"]
    assert written["acceptanceRate"] == 0.76  # the write carries the newest numbers
    # a decision is written at once, however fresh the numbers
    assert play(doc, [reading(acceptance=0.41)], step=10)[0].changed


def test_a_resource_missing_from_prometheus_is_held() -> None:
    doc = body()
    first = play(doc, [reading(name="someone-else")])[0]
    assert first.action is Action.HOLD
    condition = first.status["conditions"][-1]
    # not scraped yet (a new resource): a Normal wait, not a Warning
    assert (condition["status"], condition["reason"]) == ("Unknown", "AwaitingMetrics")
    assert "no series for this resource" in condition["message"]
    assert [(e.type, e.reason) for e in first.events] == [("Normal", "AwaitingMetrics")]
    play(doc, [reading()])
    gone = play(doc, [reading(name="someone-else")])[0]  # was read before: now it is a problem
    assert [(e.type, e.reason) for e in gone.events] == [("Warning", "MetricsUnavailable")]


def test_control_replicas_give_a_live_baseline_for_the_p99_comparison() -> None:
    doc = body(controlReplicas=1, cooldown="10m")
    slower = reading(acceptance=0.72, p99=0.070, rps=20, baseline_p99=0.035)
    results = play(doc, [slower] * 3)
    assert results[-1].action is Action.DISABLE
    assert (
        "P99 TPOT 70.0 ms is 100% above the baseline's 35.0 ms"
        in results[-1].status["decisions"][-1]["reason"]
    )
    assert doc["status"]["lastMetrics"]["baselineP99TpotMs"] == 35.0


def test_queueing_at_saturation_shows_in_ttft_against_the_control_replicas() -> None:
    """TPOT alike (the batch is capped), but requests wait: the median TTFT is the tell."""
    doc = body(controlReplicas=1)
    saturated = reading(acceptance=0.78, p99=0.095, rps=14, baseline_p99=0.087)
    saturated["inference", "llama", "server"][Signal.TTFT_P50] = 0.440
    saturated["inference", "llama", "baseline"][Signal.TTFT_P50] = 0.103
    results = play(doc, [saturated] * 3)
    assert results[-1].action is Action.DISABLE
    reason = results[-1].status["decisions"][-1]["reason"]
    assert "median TTFT 440.0 ms is 327% above the baseline's 103.0 ms" in reason
    modest = reading(acceptance=0.78, p99=0.027, rps=2, baseline_p99=0.039)
    modest["inference", "llama", "server"][Signal.TTFT_P50] = 0.076
    modest["inference", "llama", "baseline"][Signal.TTFT_P50] = 0.041  # longer steps, no queue
    assert all(r.action is Action.KEEP for r in play(body(controlReplicas=1), [modest] * 4))


def test_without_control_replicas_the_reading_while_off_is_the_baseline() -> None:
    doc = body()
    play(doc, [reading(acceptance=0.41, rps=6)] * 3)  # off now
    play(doc, [reading(acceptance=None, p99=0.020, rps=6)])  # recorded as the baseline
    assert doc["status"]["control"]["baselineP99Tpot"] == 0.020
    assert doc["status"]["control"]["baselineLoad"] == 6
    # at a comparable load it is the baseline; at a far different one it is not used
    near = control.signals_for("inference", "llama", reading(rps=6.5), None, _state(doc), T0)
    far = control.signals_for("inference", "llama", reading(rps=20), None, _state(doc), T0)
    assert near.baseline_p99_tpot == 0.020
    assert far.baseline_p99_tpot is None


def _state(doc: dict[str, Any]) -> Any:
    from specpilot.api.models import PolicyState

    return PolicyState.model_validate(doc["status"]["control"])


AWQ_70B = "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4"
LADDER = [{"model": "RedHatAI/Meta-Llama-3.1-70B-Instruct-quantized.w8a8", "quantization": "int8"}]


def test_an_int4_target_whose_acceptance_drops_steps_back_to_int8() -> None:
    doc = body(quantizationLadder=LADDER, window="1m")
    play(doc, [reading(acceptance=0.78)] * 2)
    # the user's change: a cheaper target
    doc["spec"]["target"].update(model=AWQ_70B, quantization="int4")
    doc["metadata"]["generation"] = 3
    # the rollout's pods (51 GB) start in about 158 s: the checks before that are not counted;
    # then 3 breaches at 180, 240 and 300 s
    results = play(doc, [reading(acceptance=0.70)] * 6, step=60)
    assert [r.status["control"]["breaches"] for r in results[:3]] == [0, 0, 0]
    assert doc["status"]["control"].get("preChangeAcceptance") is None  # consumed by the step
    assert results[-1].action is Action.STEP_QUANTIZATION
    assert results[-1].rerender
    stepped = [e for e in results[-1].events if e.reason == "QuantizationSteppedBack"]
    assert "acceptance 0.70 fell more than 0.05 below 0.78" in stepped[0].message
    wanted = reconcile.desired(doc)
    assert wanted.checkpoint_index == 1
    assert wanted.assessment.resource is not None
    assert wanted.assessment.resource.spec.target.quantization.value == "int8"
    server = wanted.objects[0]["spec"]["template"]
    assert server["metadata"]["annotations"]["specpilot.io/target-quantization"] == "int8"
    args = server["spec"]["containers"][0]["args"]
    assert args[0] == "RedHatAI/Meta-Llama-3.1-70B-Instruct-quantized.w8a8"
    # clients keep the name they use: the one in spec.target
    assert args[args.index("--served-model-name") + 1] == AWQ_70B


def test_a_step_that_does_not_fit_is_refused_with_the_plan() -> None:
    ladder = [{"model": "meta-llama/Llama-3.1-70B-Instruct", "quantization": "none"}]
    doc = body(quantizationLadder=ladder, window="1m")
    play(doc, [reading(acceptance=0.78)])
    doc["spec"]["target"].update(model=AWQ_70B, quantization="int4")
    results = play(doc, [reading(acceptance=0.70)] * 6, step=60)
    assert results[-1].action is Action.HOLD
    refused = [e for e in results[-1].events if e.reason == "QuantizationStepRefused"]
    assert "not stepping the target to meta-llama/Llama-3.1-70B-Instruct (none)" in (
        refused[0].message
    )
    assert reconcile.desired(doc).checkpoint_index == 0


INT8_70B = LADDER[0]["model"]


def stepped(**policy: Any) -> dict[str, Any]:
    """The user's INT4 target with control replicas, the server stepped back to the INT8 rung."""
    doc = body(quantizationLadder=LADDER, controlReplicas=1, cooldown="10m", **policy)
    doc["spec"]["target"].update(model=AWQ_70B, quantization="int4")
    doc["status"] = {
        "control": {"checkpointIndex": 1, "target": f"{AWQ_70B}@int4", "rolloutAcceptance": 0.7}
    }
    return doc


def deployments(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    wanted = reconcile.desired(doc)
    return {o["metadata"]["name"]: o for o in wanted.objects if o["kind"] == "Deployment"}


def container_args(deployment: dict[str, Any]) -> list[str]:
    return [str(a) for a in deployment["spec"]["template"]["spec"]["containers"][0]["args"]]


def test_a_ladder_step_changes_the_server_only_the_control_replicas_run_spec_target() -> None:
    doc = stepped()
    on_step = deployments(doc)
    user = json.loads(json.dumps(doc))
    del user["status"]
    before = deployments(user)
    assert container_args(on_step["llama"])[0] == INT8_70B
    assert any("--speculative-config" in a for a in container_args(on_step["llama"]))
    assert container_args(before["llama"])[0] == AWQ_70B
    # the control replicas: the user's INT4 target without speculation, whatever the step
    baseline = on_step["llama-baseline"]
    assert container_args(baseline)[0] == AWQ_70B
    assert not any("--speculative-config" in a for a in container_args(baseline))
    template = baseline["spec"]["template"]
    assert template["metadata"]["annotations"]["specpilot.io/target-quantization"] == "int4"
    # unchanged by the step: the operator restarts only the server (no deferred change)
    digest = reconcile.ANNOTATION_TEMPLATE_DIGEST
    assert (
        baseline["metadata"]["annotations"][digest]
        == (before["llama-baseline"]["metadata"]["annotations"][digest])
    )
    assert baseline == before["llama-baseline"]


def test_a_step_that_loses_to_spec_target_without_speculation_is_undone() -> None:
    doc = stepped()
    losing = reading(acceptance=0.72, p99=0.070, rps=20, baseline_p99=0.035)
    results = play(doc, [losing] * 3)
    assert [r.action for r in results] == [Action.KEEP, Action.KEEP, Action.UNDO_QUANTIZATION_STEP]
    assert [r.rerender for r in results] == [False, False, True]
    (undone,) = [e for e in results[-1].events if e.reason == "QuantizationStepUndone"]
    assert undone.type == "Warning"
    assert (
        f"the quantization ladder step to {INT8_70B} (int8) with speculation against "
        f"{AWQ_70B}@int4 without it (the baseline): P99 TPOT 70.0 ms is 100% above the "
        "baseline's 35.0 ms (more than 10%) at acceptance 0.72 >= 0.65 for 3 checks over 90s"
    ) in undone.message
    assert "keeping loses 50% of 1 replica(s)' capacity (P99 TPOT) over the 600s cooldown" in (
        undone.message
    )
    assert undone.message.endswith("undoing it, back to spec.target")
    control_state = doc["status"]["control"]
    assert control_state["checkpointIndex"] == 0
    assert control_state["speculationOn"] is True  # the ordinary rule decides from here
    assert doc["status"]["decisions"][-1]["action"] == "undo-quantization-step"
    servers = deployments(doc)
    assert container_args(servers["llama"])[0] == AWQ_70B
    assert any("--speculative-config" in a for a in container_args(servers["llama"]))


def test_a_step_that_beats_spec_target_without_speculation_is_kept() -> None:
    doc = stepped()
    winning = reading(acceptance=0.72, p99=0.030, rps=20, baseline_p99=0.035)
    results = play(doc, [winning] * 5)
    assert {r.action for r in results} == {Action.KEEP}
    assert doc["status"]["control"]["checkpointIndex"] == 1
    assert container_args(deployments(doc)["llama"])[0] == INT8_70B


def test_a_stuck_undo_is_reverted_to_the_step() -> None:
    doc = stepped()
    play(doc, [reading(acceptance=0.72, p99=0.070, rps=20, baseline_p99=0.035)] * 3)
    undone_at = T0 + datetime.timedelta(seconds=60)
    rolled_out(doc, "False", "RolloutStuck", undone_at)
    at = undone_at + datetime.timedelta(seconds=30)
    result = control.check(doc, reading(acceptance=0.72), None, at, at)
    assert result is not None
    assert result.rerender
    assert any(e.reason == "RolloutReverted" for e in result.events)
    assert result.status["control"]["checkpointIndex"] == 1


def test_recommend_mode_reports_an_undo_and_keeps_the_step() -> None:
    doc = stepped(mode="recommend")
    results = play(doc, [reading(acceptance=0.72, p99=0.070, rps=20, baseline_p99=0.035)] * 3)
    (advice,) = [e for e in results[-1].events if e.reason == "RecommendQuantizationStepUndo"]
    assert advice.message.startswith(
        "recommend mode, not acting: would undo the quantization ladder step: the quantization "
        "ladder step to"
    )
    assert not any(r.rerender for r in results)
    assert doc["status"]["control"]["checkpointIndex"] == 1


def test_recommend_mode_reports_once_per_cooldown_and_changes_nothing() -> None:
    doc = body(mode="recommend")
    results = play(doc, [reading(acceptance=0.41)] * 10, step=15)
    advice = [(i * 15, e) for i, r in enumerate(results) for e in r.events if e.type == "Normal"]
    advice = [(t, e) for t, e in advice if e.reason == "RecommendDisableSpeculation"]
    # advised at 30 s, the same advice at 75 s is within the 1m cooldown, at 120 s it is not
    assert [t for t, _ in advice] == [30, 120]
    assert advice[0][1].message.startswith(
        "recommend mode, not acting: would disable speculation: acceptance 0.41 < 0.50"
    )
    assert not any(r.rerender for r in results)
    assert doc["status"]["control"]["speculationOn"] is True
    assert any("--speculative-config" in a for a in args(doc))


def test_warnings_are_posted_when_they_appear_not_every_check() -> None:
    doc = body(controlReplicas=1)
    mixed = reading(acceptance=0.80, p99=0.032, baseline_p99=0.031)
    mixed["inference", "llama", "server"][Signal.TPOT_P50] = 0.010  # P50 much better
    results = play(doc, [mixed] * 3)
    posted = [e.reason for r in results for e in r.events]
    assert posted.count("MixedWorkload") == 1


def test_invalid_resources_are_not_checked() -> None:
    doc = body()
    doc["spec"]["gpus"]["count"] = 3
    assert control.check(doc, reading(), None, T0, T0) is None


def test_the_change_beyond_the_ceiling_is_held_with_one_warning_per_streak() -> None:
    doc = body(controlReplicas=1, failureLimit=1, consecutiveSuccessLimit=1, window="1m")
    # 5.7x the baseline's P99: worth a restart of about 205 s (the cost rule)
    hot = reading(acceptance=0.72, p99=0.200, rps=20, baseline_p99=0.035)
    quiet = reading(acceptance=None, rps=2, baseline_p99=0.035)
    calm = reading(acceptance=0.72, p99=0.030, rps=2, baseline_p99=0.035)
    admin = AdminPolicy(max_changes_per_hour=2)
    # checks 5 minutes apart: the cost-aware cooldown is startup + window, about 265 s
    results = play(doc, [hot, quiet, hot, hot, hot, calm, hot], step=300, admin=admin)
    assert [r.action for r in results] == [
        Action.DISABLE,
        Action.ENABLE,
        *[Action.HOLD] * 3,
        Action.KEEP,
        Action.HOLD,
    ]
    posted = [[e.reason for e in r.events if e.reason == "ChangeLimitReached"] for r in results]
    assert posted == [[], [], ["ChangeLimitReached"], [], [], [], ["ChangeLimitReached"]]
    (warning,) = [e for e in results[2].events if e.reason == "ChangeLimitReached"]
    assert warning.type == "Warning"
    assert warning.message.startswith(
        "change limit reached: 2 changes in the last hour, the ceiling is 2 per hour"
    )
    assert "`specpilot run --max-changes-per-hour` (chart: control.maxChangesPerHour)" in (
        warning.message
    )
    assert not any(r.rerender for r in results[2:])
    assert [d["action"] for d in doc["status"]["decisions"]] == [
        "disable-speculation",
        "enable-speculation",
    ]
    assert len(doc["status"]["control"]["recentChanges"]) == 2


# --- readings that cannot be true ------------------------------------------------------------


def metrics_condition(status: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in status["conditions"] if c["type"] == "MetricsAvailable")
    return found


def test_an_impossible_acceptance_holds_says_why_and_stores_nothing() -> None:
    doc = body()
    play(doc, [reading(acceptance=0.75)])
    before = doc["status"]
    results = play(doc, [reading(acceptance=7.0)] * 4)
    assert all(r.action is Action.HOLD and not r.rerender for r in results)
    condition = metrics_condition(doc["status"])
    assert (condition["status"], condition["reason"]) == ("False", "ImplausibleMetrics")
    assert "Prometheus answered acceptance 7.0: not a rate in [0, 1]" in condition["message"]
    posted = [(e.type, e.reason) for r in results for e in r.events]
    assert posted == [("Warning", "ImplausibleMetrics")]  # on the transition only
    assert doc["status"]["control"]["lastAcceptance"] == 0.75
    assert doc["status"]["control"]["rolloutAcceptance"] == 0.75
    assert doc["status"]["lastMetrics"] == before["lastMetrics"]
    back = play(doc, [reading(acceptance=0.8)])[0]
    assert [e.reason for e in back.events] == ["MetricsRead"]


def test_a_first_reading_that_cannot_be_true_stores_nothing() -> None:
    doc = body()
    play(doc, [reading(acceptance=7.0)])
    control_state = doc["status"]["control"]
    assert "lastAcceptance" not in control_state
    assert "rolloutAcceptance" not in control_state
    assert "lastMetrics" not in doc["status"]


def test_a_negative_acceptance_never_disables() -> None:
    doc = body()
    results = play(doc, [reading(acceptance=-1.0, rps=6)] * 8)
    assert all(r.action is Action.HOLD for r in results)
    assert doc["status"]["control"]["speculationOn"] is True
    assert doc["status"]["control"]["breaches"] == 0
    assert doc["status"].get("decisions", []) == []
    assert any("--speculative-config" in a for a in args(doc))


def test_a_negative_latency_never_becomes_a_baseline() -> None:
    doc = body()
    play(doc, [reading(acceptance=0.41, rps=6)] * 3)  # off: readings now are the baseline
    held = play(doc, [reading(acceptance=None, p99=-0.020, rps=6)])[0]
    assert held.action is Action.HOLD
    assert (
        "Prometheus answered tpotP99 -0.02: not a latency"
        in (metrics_condition(doc["status"])["message"])
    )
    assert "baselineP99Tpot" not in doc["status"]["control"]
    play(doc, [reading(acceptance=None, p99=0.020, rps=6)])
    assert doc["status"]["control"]["baselineP99Tpot"] == 0.020


def test_the_control_replicas_readings_are_checked_too() -> None:
    doc = body(controlReplicas=1)
    result = play(doc, [reading(acceptance=0.72, baseline_p99=-0.035)])[0]
    assert result.action is Action.HOLD
    assert (
        "tpotP99 -0.035 for the control replicas: not a latency"
        in (metrics_condition(doc["status"])["message"])
    )


@pytest.mark.parametrize("latency", [1e308, math.inf])
def test_an_absurd_latency_never_reaches_the_status(latency: float) -> None:
    doc = body()
    play(doc, [reading()])
    result = play(doc, [reading(p99=latency)])[0]
    assert result.action is Action.HOLD
    assert metrics_condition(result.status)["reason"] == "ImplausibleMetrics"
    assert non_finite_paths(result.status) == []
    json.dumps(result.status, allow_nan=False)  # what the API server accepts
    assert result.status["lastMetrics"]["p99TpotMs"] == 30.0  # the last believable reading


def test_one_resources_impossible_series_does_not_hold_another() -> None:
    answer = reading(acceptance=0.75) | reading(acceptance=7.0, name="other")
    mine = control.check(body(), answer, None, T0, T0)
    assert mine is not None
    assert mine.action is Action.KEEP
    assert metrics_condition(mine.status)["reason"] == "MetricsRead"
    other = body()
    other["metadata"]["name"] = "other"
    theirs = control.check(other, answer, None, T0, T0)
    assert theirs is not None
    assert metrics_condition(theirs.status)["reason"] == "ImplausibleMetrics"


def test_a_status_with_a_non_finite_number_is_held_instead(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The last guard, should a value slip past the plausibility check."""
    monkeypatch.setattr(control, "implausible", lambda values, role="server": [])
    doc = body()
    result = play(doc, [reading(p99=math.inf)])[0]
    assert result.action is Action.HOLD
    condition = metrics_condition(result.status)
    assert condition["reason"] == "ImplausibleMetrics"
    assert "status.lastMetrics.p99TpotMs" in condition["message"]
    assert non_finite_paths(result.status) == []


def prometheus_number(value: float) -> str:
    """A sample value as Prometheus writes it in JSON."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def answers(values: dict[tuple[str, Signal], float]) -> dict[str, Any]:
    """/api/v1/query answers carrying these (role, signal) values for inference/llama."""
    by_query: dict[str, list[dict[str, Any]]] = {name: [] for name in QUERIES}
    for (role, signal), value in values.items():
        query = next(name for name, signals in QUERIES.items() if signal in signals)
        metric = {
            "namespace": "inference",
            "specpilot_io_resource": "llama",
            "specpilot_io_role": role,
            "specpilot_signal": signal.value,
        }
        by_query[query].append({"metric": metric, "value": [1.7e9, prometheus_number(value)]})
    return {
        name: {"status": "success", "data": {"resultType": "vector", "result": result}}
        for name, result in by_query.items()
    }


@settings(max_examples=150, deadline=None)
@given(
    checks=st.lists(
        st.dictionaries(
            st.tuples(st.sampled_from(["server", "baseline"]), st.sampled_from(list(Signal))),
            st.floats(allow_nan=True, allow_infinity=True),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_no_answer_from_prometheus_puts_a_non_finite_number_in_the_status(
    checks: list[dict[tuple[str, Signal], float]],
) -> None:
    doc = body(controlReplicas=1)
    play(doc, [reading(acceptance=0.41, rps=6)] * 3)  # off at 60 s: more state to store
    for i, values in enumerate(checks):
        readings = parse_answers(answers(values))
        now = T0 + datetime.timedelta(seconds=90 + 30 * i)
        result = control.check(doc, readings, None, now, now)
        assert result is not None
        doc["status"] = result.status
        assert non_finite_paths(result.status) == []
        condition = metrics_condition(result.status)
        assert "non-finite" not in condition["message"]  # the plausibility check sufficed
        if ("inference", "llama", "server") in readings:  # else: no series, held as such
            believable = not any(implausible(v, key[2]) for key, v in readings.items())
            assert (condition["reason"] != "ImplausibleMetrics") == believable


def test_the_restart_is_priced_from_the_weights_or_the_measured_startup() -> None:
    doc = body(controlReplicas=1, cooldown="10m")
    spec = reconcile.desired(doc).assessment
    assert spec.resource is not None
    cost = control.restart_cost(spec.resource.spec, spec.plan)
    assert round(cost.startup_s) == 208  # 89 GB at 0.75 GB/s + 60 s graphs + 30 s engine
    assert cost.source.startswith("startup 208s (118s loading 89 GB")
    # no model cache: every new pod downloads the 89 GB from the Hub at 0.5 GB/s first
    uncached_doc = body(controlReplicas=1, cooldown="10m")
    del uncached_doc["spec"]["modelCache"]
    uncached = reconcile.desired(uncached_doc).assessment
    assert uncached.resource is not None
    download = control.restart_cost(uncached.resource.spec, uncached.plan)
    assert round(download.startup_s) == 386
    assert download.source.startswith("startup 386s (177s download at 0.5 GB/s + 118s loading")
    # 43% above the baseline: keeping loses 30% of a replica over 10 minutes (180 replica-
    # seconds), less than restarting the pods
    slower = reading(acceptance=0.72, p99=0.050, rps=20, baseline_p99=0.035)
    kept = play(doc, [slower] * 3)[-1]
    assert kept.action is Action.KEEP
    assert kept.status["control"]["breaches"] == 3
    # pods measured to start in 5 s: the same regression is worth a restart
    cheap = body(controlReplicas=1, cooldown="10m")
    cheap["metadata"]["annotations"] = {control.STARTUP_ANNOTATION: "5"}
    acted = play(cheap, [slower] * 3)[-1]
    assert acted.action is Action.DISABLE
    assert (
        "the restart's 5s x 1 = 5 (startup 5s from the specpilot.io/startup-seconds"
        in (acted.status["decisions"][-1]["reason"])
    )
    # an annotation that is not a number of seconds is ignored
    bad = control.restart_cost(spec.resource.spec, spec.plan, {control.STARTUP_ANNOTATION: "x"})
    assert bad == cost


def rolled_out(doc: dict[str, Any], status: str, reason: str, since: datetime.datetime) -> None:
    """The RolledOut condition as the reconcile writes it from the Deployments' status."""
    doc.setdefault("status", {}).setdefault("conditions", [])
    doc["status"]["conditions"] = [
        c for c in doc["status"]["conditions"] if c["type"] != "RolledOut"
    ]
    doc["status"]["conditions"].append({
        "type": "RolledOut", "status": status, "reason": reason,
        "message": "rollout in progress: llama 1 of 2 pods updated, 2 available",
        "lastTransitionTime": since.strftime("%Y-%m-%dT%H:%M:%SZ"),
    })  # fmt: skip


def test_a_rollout_holds_the_check_and_its_readings_count_only_a_window_after_it() -> None:
    doc = body(window="1m")
    rolled_out(doc, "False", "RolloutInProgress", T0)
    held = play(doc, [reading(acceptance=0.41, rps=6)] * 4)
    assert {r.action for r in held} == {Action.HOLD}
    metrics = metrics_condition(doc["status"])
    assert (metrics["status"], metrics["reason"]) == ("Unknown", "AwaitingRollout")
    assert "1 of 2 pods updated" in metrics["message"]
    assert [e.reason for e in held[0].events] == ["AwaitingRollout"]
    control_state = doc["status"]["control"]
    assert control_state.get("breaches", 0) == 0
    assert "lastAcceptance" not in control_state
    assert "lastMetrics" not in doc["status"]  # nothing of the old pods is kept
    # Complete at T0 + 100 s: a reading at +130 s still covers 30 s of the old pods.
    rolled_out(doc, "True", "RolloutComplete", T0 + datetime.timedelta(seconds=100))
    at = T0 + datetime.timedelta(seconds=130)
    result = control.check(doc, reading(acceptance=0.41, rps=6), None, at, at)
    assert result is not None
    assert result.action is Action.HOLD
    assert (
        "its rate window (60s) still holds the pods it replaced"
        in (metrics_condition(result.status)["message"])
    )
    at = T0 + datetime.timedelta(seconds=160)
    result = control.check(doc, reading(acceptance=0.41, rps=6), None, at, at)
    assert result is not None
    assert result.action is Action.KEEP  # counted: the first breach of three
    assert result.status["control"]["lastAcceptance"] == 0.41


def test_a_stuck_rollout_holds_and_no_baseline_is_recorded_from_it() -> None:
    doc = body()
    doc["status"] = {"control": {"speculationOn": False}}
    rolled_out(doc, "False", "RolloutStuck", T0)
    (result,) = play(doc, [reading(acceptance=None, p99=0.02)])
    assert result.action is Action.HOLD
    assert "baselineP99Tpot" not in result.status["control"]


def test_the_operators_own_stuck_rollout_is_reverted_a_users_is_only_reported() -> None:
    doc = body()
    results = play(doc, [reading(acceptance=0.41, rps=6)] * 3)
    assert results[-1].action is Action.DISABLE
    disabled_at = T0 + datetime.timedelta(seconds=60)
    assert not any("--speculative-config" in a for a in args(doc))
    user = json.loads(json.dumps(doc))
    # The disable's rollout began right after the decision and got stuck (GPUs, deadline...).
    rolled_out(doc, "False", "RolloutStuck", disabled_at)
    at = disabled_at + datetime.timedelta(seconds=30)
    result = control.check(doc, reading(acceptance=0.41, rps=6), None, at, at)
    assert result is not None
    assert result.rerender
    (reverted,) = [e for e in result.events if e.reason == "RolloutReverted"]
    assert reverted.type == "Warning"
    assert "the rollout of disable-speculation at 2026-01-01T00:01:00Z is stuck" in reverted.message
    # The hour's hold on the same change is announced with the revert.
    assert "not trying disable-speculation again before 2026-01-01T01:01:30Z" in reverted.message
    doc["status"] = result.status
    assert doc["status"]["control"]["speculationOn"] is True
    assert doc["status"]["decisions"][-1]["action"] == "revert-rollout"
    assert any("--speculative-config" in a for a in args(doc))  # what ran before
    # Reverted once: the next check, still stuck until the pods are back, does not again.
    later = at + datetime.timedelta(seconds=30)
    again = control.check(doc, reading(acceptance=0.41, rps=6), None, later, later)
    assert again is not None
    assert not again.rerender
    # A rollout that began long after the operator's last change is the user's: not reverted.
    rolled_out(user, "False", "RolloutStuck", disabled_at + datetime.timedelta(minutes=10))
    at = disabled_at + datetime.timedelta(minutes=11)
    result = control.check(user, reading(acceptance=0.41, rps=6), None, at, at)
    assert result is not None
    assert not result.rerender
    assert "RolloutReverted" not in [e.reason for e in result.events]
    assert result.status["control"]["speculationOn"] is False


def test_a_change_reverted_as_stuck_is_not_retried_within_the_hour() -> None:
    doc = body()
    play(doc, [reading(acceptance=0.41, rps=6)] * 3)
    disabled_at = T0 + datetime.timedelta(seconds=60)
    rolled_out(doc, "False", "RolloutStuck", disabled_at)
    at = disabled_at + datetime.timedelta(seconds=30)
    result = control.check(doc, reading(acceptance=0.41, rps=6), None, at, at)
    assert result is not None
    doc["status"] = result.status
    rolled_out(doc, "True", "RolloutComplete", at)
    # Past the cooldown and the window, acceptance still low: the policy would disable again
    # (as it does for the same status without the revert in its history).
    checks = [at + datetime.timedelta(minutes=15, seconds=30 * i) for i in range(4)]
    unreverted = json.loads(json.dumps(doc))
    unreverted["status"]["decisions"] = unreverted["status"]["decisions"][:-1]

    def run(resource: dict[str, Any], times: list[datetime.datetime]) -> list[CheckResult]:
        results = []
        for now in times:
            result = control.check(resource, reading(acceptance=0.41, rps=6), None, now, now)
            assert result is not None
            if result.worth_writing:
                resource["status"] = result.status
            results.append(result)
        return results

    assert Action.DISABLE in [r.action for r in run(unreverted, checks)]
    assert not any(r.rerender for r in run(doc, checks))
    assert doc["status"]["control"]["speculationOn"] is True
    assert doc["status"]["decisions"][-1]["action"] == "revert-rollout"
    # An hour later it may try again.
    later = at + datetime.timedelta(hours=1, minutes=5)
    results = run(doc, [later + datetime.timedelta(seconds=30 * i) for i in range(4)])
    assert Action.DISABLE in [r.action for r in results]


def at_batch(
    batch: float, speedup: float, acceptance: float = 0.75, baseline_batch: float | None = None
) -> Readings:
    """One check with a control replica: the server runs `batch` requests, and the control
    replica's median TPOT is `speedup` times the server's (the same traffic, no speculation);
    the control replica runs `baseline_batch` requests, when given."""
    server_p50 = 0.020
    running = (
        {}
        if baseline_batch is None
        else {Signal.REQUESTS_RUNNING: baseline_batch, Signal.REPLICAS: 1}
    )
    return {
        ("inference", "llama", "server"): {
            Signal.TPOT_P50: server_p50,
            Signal.TPOT_P99: server_p50 * 1.3,
            Signal.REQUESTS_PER_SECOND: batch / 4,
            Signal.REQUESTS_RUNNING: batch,
            Signal.REPLICAS: 1,
            Signal.KV_CACHE_USAGE: 0.4,
            Signal.ACCEPTANCE: acceptance,
        },
        ("inference", "llama", "baseline"): {
            Signal.TPOT_P50: server_p50 * speedup,
            Signal.TPOT_P99: server_p50 * speedup * 1.3,
            **running,
        },
    }


def test_the_learned_crossover_goes_into_the_engine_once_at_low_load() -> None:
    doc = body(controlReplicas=1, cooldown="5m")
    low, high = at_batch(2, 1.5), at_batch(20, 0.85)
    # Checks a minute apart (the curve keeps at most one reading per refresh period).
    results = play(doc, [low, high, low, high, low, high], step=60)
    assert all(r.action is not Action.SET_ENGINE_SCHEDULE for r in results)
    bands = doc["status"]["control"]["speedupCurve"]
    assert [(b["minBatch"], b["maxBatch"], b["readings"]) for b in bands] == [
        (2, 3, 3),
        (16, 31, 3),
    ]
    # Settled: 1.5x at batch 2-3, 0.85x at 16-31. At a high-load check nothing is set (the
    # restart would meet the peak); at the next low-load one it is.
    later = T0 + datetime.timedelta(seconds=60 * 6)
    held = control.check(doc, high, None, later, later)
    assert held is not None
    assert held.action is not Action.SET_ENGINE_SCHEDULE
    later += datetime.timedelta(seconds=60)
    result = control.check(doc, low, None, later, later)
    assert result is not None
    assert result.action is Action.SET_ENGINE_SCHEDULE
    assert result.rerender
    (event,) = [e for e in result.events if e.reason == "EngineScheduleSet"]
    assert "speculation stops paying from batch 16 per replica" in event.message
    assert "batch 16-31: 0.85x" in event.message
    assert "restarts the pods once (208s x 1)" in event.message
    doc["status"] = result.status
    assert doc["status"]["control"]["engineScheduleFrom"] == 16
    assert doc["status"]["decisions"][-1]["action"] == "set-engine-schedule"
    config = next(a for a in args(doc) if "num_speculative_tokens_per_batch_size" in a)
    assert '"num_speculative_tokens_per_batch_size": [[1, 15, 5], [16, 4096, 0]]' in config
    assert reconcile.desired(doc).engine_schedule == [(1, 15, 5), (16, 4096, 0)]
    baseline = reconcile.desired(doc).objects[1]["spec"]["template"]["spec"]["containers"][0]
    assert not any("speculative" in str(a) for a in baseline["args"])
    # From now on the engine does not speculate at batch 16 and up: readings there teach
    # nothing about speculation, and are not counted.
    before = doc["status"]["control"]["speedupCurve"]
    later += datetime.timedelta(seconds=120)
    after = control.check(doc, high, None, later, later)
    assert after is not None
    assert after.status["control"]["speedupCurve"] == before
    assert after.action is not Action.SET_ENGINE_SCHEDULE  # once per target


def test_no_engine_schedule_without_the_lever_or_against_the_users() -> None:
    doc = body(controlReplicas=1, cooldown="5m")
    spec = reconcile.desired(doc).assessment.resource
    assert spec is not None
    version = Version("0.33.0")
    assert curve.engine_schedule_possible(spec.spec, version)
    assert not curve.engine_schedule_possible(spec.spec, Version("0.23.0"))  # before the field
    users = spec.spec.model_copy(
        update={
            "speculation": spec.spec.speculation.model_copy(  # type: ignore[union-attr]
                update={"schedule": [ScheduleStep(min_batch_size=1, max_batch_size=8,
                                                  num_speculative_tokens=3)]}
            )
        }
    )  # fmt: skip
    assert not curve.engine_schedule_possible(users, version)
    # Recommend mode learns, but does not act.
    recommend = body(controlReplicas=1, cooldown="5m", mode="recommend")
    low, high = at_batch(2, 1.5), at_batch(20, 0.85)
    results = play(recommend, [low, high] * 4, step=60)
    assert len(recommend["status"]["control"]["speedupCurve"]) == 2
    assert all(r.action is not Action.SET_ENGINE_SCHEDULE for r in results)
    # Without control replicas there is no live A/B: nothing is learned.
    alone = body(cooldown="5m")
    play(alone, [{k: v for k, v in low.items() if k[2] == "server"}] * 3, step=60)
    assert alone["status"]["control"].get("speedupCurve", []) == []


def test_a_ttft_slo_is_read_from_the_control_replicas_and_recorded_while_off() -> None:
    slow_start = reading(acceptance=0.78, p99=0.030, rps=4, baseline_p99=0.031)
    slow_start["inference", "llama", "server"][Signal.TTFT_P99] = 0.900
    slow_start["inference", "llama", "baseline"][Signal.TTFT_P99] = 0.500
    assert all(r.action is Action.KEEP for r in play(body(controlReplicas=1), [slow_start] * 4))
    doc = body(controlReplicas=1, cooldown="10m", slo="P99TTFT")
    results = play(doc, [slow_start] * 3)
    assert results[-1].action is Action.DISABLE
    assert (
        "P99 TTFT 900.0 ms is 80% above the baseline's 500.0 ms (more than 10%)"
        in (results[-1].status["decisions"][-1]["reason"])
    )
    # without control replicas, the P99 TTFT read while speculation is off is the baseline
    alone = body(slo="P99TTFT")
    play(alone, [reading(acceptance=0.41, rps=6)] * 3)  # off now, for low acceptance
    off = reading(acceptance=None, p99=0.020, rps=6)
    off["inference", "llama", "server"][Signal.TTFT_P99] = 0.450
    play(alone, [off])
    assert alone["status"]["control"]["baselineP99Ttft"] == 0.450
    near = control.signals_for("inference", "llama", reading(rps=6.5), None, _state(alone), T0)
    assert near.baseline_p99_ttft == 0.450


def test_a_latency_loss_sets_the_engine_schedule_instead_of_turning_speculation_off() -> None:
    """Where vLLM has the lever, the one restart a latency loss costs sets k=0 from the
    crossover instead of turning speculation off: the engine keeps speculating below it, and
    neither the fall of the load nor the next surge needs a restart."""
    doc = body(controlReplicas=1, cooldown="10m")
    low, high = at_batch(2, 1.5), at_batch(20, 0.5)
    # Low load settles 1.5x; then the load rises, speculation loses half (priced: 50% of the
    # replica over the 10 min cooldown, more than the 208 s restart).
    results = play(doc, [low] * 3 + [high] * 3, step=60)
    assert results[-1].action is Action.SET_ENGINE_SCHEDULE
    assert results[-1].rerender
    (event,) = [e for e in results[-1].events if e.reason == "EngineScheduleSet"]
    assert "instead of turning speculation off" in event.message
    assert "the engine now runs k=5 up to batch 15 and 0 from 16" in event.message
    control_state = doc["status"]["control"]
    assert control_state["speculationOn"] is True
    assert control_state["engineScheduleFrom"] == 16
    assert "[[1, 15, 5], [16, 4096, 0]]" in next(a for a in args(doc) if "per_batch_size" in a)
    # The surge goes on (the server, at k=0 there, as fast as the control replica) and the load
    # falls: the engine handles both, no restart.
    level = at_batch(20, 1.0)
    later = []
    for i in range(6, 20):
        at = T0 + datetime.timedelta(seconds=60 * i)
        result = control.check(doc, level if i < 12 else low, None, at, at)
        assert result is not None
        if result.worth_writing:
            doc["status"] = result.status
        later.append(result)
    assert {r.action for r in later} == {Action.KEEP}
    assert not any(r.rerender for r in later)
    # A loss below the crossover lowers it, the same way: one restart, speculation stays on.
    lower = []
    for i in range(20, 40):
        at = T0 + datetime.timedelta(seconds=60 * i)
        result = control.check(doc, at_batch(10, 0.5), None, at, at)
        assert result is not None
        if result.worth_writing:
            doc["status"] = result.status
        lower.append(result.action)
        if result.action is not Action.KEEP:
            break
    assert lower[-1] is Action.SET_ENGINE_SCHEDULE, lower
    (event,) = [e for e in result.events if e.reason == "EngineScheduleSet"]
    assert "0 from 8 (lowered from batch 16)" in event.message
    assert doc["status"]["control"]["engineScheduleFrom"] == 8
    assert "[[1, 7, 5], [8, 4096, 0]]" in next(a for a in args(doc) if "per_batch_size" in a)


def test_a_queue_for_memory_turns_speculation_off_even_where_the_engine_has_the_lever() -> None:
    """Requests queueing with the KV cache full wait for the memory the draft's weights and
    cache take whatever k: the schedule would not give it back, so the restart-based rule turns
    speculation off. With room in the cache the queue is the draft's passes: k=0 removes it."""
    for usage, action in ((0.97, Action.DISABLE), (0.6, Action.SET_ENGINE_SCHEDULE)):
        doc = body(controlReplicas=1, cooldown="10m")
        queued = at_batch(20, 1.0)
        queued["inference", "llama", "server"][Signal.TTFT_P50] = 0.400
        queued["inference", "llama", "server"][Signal.KV_CACHE_USAGE] = usage
        queued["inference", "llama", "baseline"][Signal.TTFT_P50] = 0.100
        results = play(doc, [at_batch(2, 1.5)] * 3 + [queued] * 3, step=60)
        assert results[-1].action is action, usage
        assert ("engineScheduleFrom" in doc["status"]["control"]) is (usage < 0.9)


def test_re_enabling_after_low_acceptance_carries_the_learned_schedule() -> None:
    """A probe after low acceptance restarts the pods anyway: a settled crossover comes with it."""
    doc = body(controlReplicas=1, cooldown="10m")
    settled = [
        {"minBatch": 2, "maxBatch": 3, "readings": 5, "logSpeedup": 0.4, "logVariance": 0.0},
        {"minBatch": 16, "maxBatch": 31, "readings": 5, "logSpeedup": -0.4, "logVariance": 0.0},
    ]
    results = play(doc, [at_batch(2, 0.5, acceptance=0.3)] * 3, step=60)
    assert results[-1].action is Action.DISABLE
    doc["status"]["control"]["speedupCurve"] = settled
    enabled = None
    for i in range(1, 40):  # the probe waits until its two restarts are worth it (70 min)
        at = T0 + datetime.timedelta(seconds=300 * i)
        result = control.check(doc, at_batch(2, 1.5), None, at, at)
        assert result is not None
        if result.worth_writing:
            doc["status"] = result.status
        if result.action is Action.ENABLE:
            enabled = result
            break
    assert enabled is not None, doc["status"]
    (event,) = [e for e in enabled.events if e.reason == "SpeculationEnabled"]
    assert "with the learned schedule: speculation stops paying from batch 16" in event.message
    assert doc["status"]["control"]["engineScheduleFrom"] == 16
    assert "[[1, 15, 5], [16, 4096, 0]]" in next(a for a in args(doc) if "per_batch_size" in a)


def test_a_latency_disable_places_the_crossover_at_the_batch_without_speculation() -> None:
    """A losing speculating server queues: its batch is inflated past where the loss began.
    The control replicas' batch is what the engine runs at that load without speculation."""
    surge = [at_batch(70, 0.5, baseline_batch=24)] * 3
    doc = body(controlReplicas=1, cooldown="10m")
    results = play(doc, [at_batch(2, 1.5)] * 3 + surge, step=60)
    assert results[-1].action is Action.SET_ENGINE_SCHEDULE
    assert doc["status"]["control"]["crossoverBatch"] == 16
    assert doc["status"]["control"]["engineScheduleFrom"] == 16
    # Without the control replicas' batch, the band of the server's own (the loss was read
    # there, and nowhere lower).
    alone = body(controlReplicas=1, cooldown="10m")
    play(alone, [at_batch(2, 1.5)] * 3 + [at_batch(70, 0.5)] * 3, step=60)
    assert alone["status"]["control"]["crossoverBatch"] == 64


def test_the_curves_first_guess_is_the_lowest_loss_with_none_paying_above() -> None:
    def band(start: int, speedup: float) -> SpeedupBand:
        return SpeedupBand(
            min_batch=start, max_batch=2 * start - 1, readings=1, log_speedup=math.log(speedup)
        )

    assert curve.first_losing([band(1, 1.5), band(8, 0.9), band(16, 0.6)]) == 8
    # a band at or above break-even above it: the loss below is noise, the next one counts
    assert curve.first_losing([band(4, 0.8), band(8, 1.1), band(16, 0.6)]) == 16
    # within the margin of break-even is no loss
    assert curve.first_losing([band(4, 0.97), band(8, 0.98)]) is None
    assert curve.first_losing([]) is None


def test_queueing_behind_the_draft_reads_as_a_loss_on_the_curve() -> None:
    """Near saturation the median TPOT of a speculating server can still beat the baseline
    while requests queue: median TTFT at the policy's allowance (2.5x) counts as break-even."""
    doc = body(controlReplicas=1, cooldown="5m")
    queued = at_batch(40, 1.2)
    queued["inference", "llama", "server"][Signal.TTFT_P50] = 0.400
    queued["inference", "llama", "baseline"][Signal.TTFT_P50] = 0.100
    play(doc, [queued] * 3, step=60)
    (band,) = doc["status"]["control"]["speedupCurve"]
    assert (band["minBatch"], band["readings"]) == (32, 3)
    assert math.exp(band["logSpeedup"]) == pytest.approx(2.5 * 0.100 / 0.400)
    # Within the allowance, the SLO latency alone is the reading.
    calm = body(controlReplicas=1, cooldown="5m")
    waiting = at_batch(40, 1.2)
    waiting["inference", "llama", "server"][Signal.TTFT_P50] = 0.150
    waiting["inference", "llama", "baseline"][Signal.TTFT_P50] = 0.100
    play(calm, [waiting] * 3, step=60)
    assert math.exp(calm["status"]["control"]["speedupCurve"][0]["logSpeedup"]) == (
        pytest.approx(1.2)
    )


def test_a_latency_loss_gives_the_schedule_a_provisional_crossover() -> None:
    """On the rise, the load passes through several batch bands in as many checks: none has
    the readings to settle, but the policy's own breaches say where speculation stopped
    paying, and the curve read the loss from batch 16 on."""
    doc = body(controlReplicas=1, cooldown="10m")
    rising = [at_batch(20, 0.5), at_batch(40, 0.5), at_batch(70, 0.5)]
    results = play(doc, [at_batch(2, 1.5)] * 3 + rising, step=60)
    assert results[-1].action is Action.SET_ENGINE_SCHEDULE
    # The lowest band read as a loss on the way up (one reading each: the curve settles none)
    assert doc["status"]["control"]["crossoverBatch"] == 16
    assert curve.crossover(
        [SpeedupBand.model_validate(b) for b in doc["status"]["control"]["speedupCurve"]]
    ) is None  # fmt: skip
    (event,) = [e for e in results[-1].events if e.reason == "EngineScheduleSet"]
    assert "provisionally from where the loss was read" in event.message
    assert doc["status"]["control"]["engineScheduleFrom"] == 16
    # On a release without the lever, the restart-based rule turns speculation off.
    old = body(controlReplicas=1, cooldown="10m")
    old["spec"]["vllm"]["image"] = "vllm/vllm-openai:v0.23.0"
    results = play(old, [at_batch(2, 1.5)] * 3 + rising, step=60)
    assert results[-1].action is Action.DISABLE
    assert "engineScheduleFrom" not in old["status"]["control"]
    # Not when the curve measured speculation paying up there.
    paying = body(controlReplicas=1, cooldown="10m")
    paying["status"] = {"control": {**doc["status"]["control"], "engineScheduleFrom": None}}
    paying["status"]["control"]["speedupCurve"] = [
        {"minBatch": 64, "maxBatch": 127, "readings": 5, "logSpeedup": 0.4, "logVariance": 0.0}
    ]
    assert not control._provisional_crossover(
        PolicyState.model_validate(paying["status"]["control"]),
        [SpeedupBand.model_validate(b) for b in paying["status"]["control"]["speedupCurve"]],
    )


def test_a_full_cache_halving_the_batch_turns_speculation_off_where_latency_says_nothing() -> None:
    """A saturated peak: the server's KV cache is full, requests wait, and it runs half the
    control replica's batch with the same latencies. k=0 would keep the draft's memory, so the
    restart-based rule turns speculation off; the warning says why first."""
    doc = body(controlReplicas=1, cooldown="10m")
    peak = at_batch(100, 1.0, baseline_batch=256)
    peak["inference", "llama", "server"] |= {
        Signal.KV_CACHE_USAGE: 0.98,
        Signal.REQUESTS_WAITING: 400,
    }
    results = play(doc, [at_batch(2, 1.5)] * 3 + [peak] * 3, step=60)
    warned = [e for r in results for e in r.events if e.reason == "DraftMemoryLimitsBatch"]
    assert len(warned) == 1
    assert "the server runs 100 requests per replica against the control replicas' 256" in (
        warned[0].message
    )
    assert results[-1].action is Action.DISABLE
    (event,) = [e for e in results[-1].events if e.reason == "SpeculationDisabled"]
    assert "61% fewer for the draft's weights and KV cache" in event.message
    assert "engineScheduleFrom" not in doc["status"]["control"]
