"""bench/decision_quality.py on tiny traces: the JSON's shape and the invariants that hold
whatever the figures (no timing, no target asserted: the benchmark reports those)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench import decision_quality as bench

POLICIES = (
    "static-on",
    "static-off",
    "operator",
    "operator-recorded",
    "operator-schedule",
    "operator-schedule-next-day",
    "oracle",
    "oracle-window",
)
KEYS = {
    "p50_tpot_ms",
    "p99_tpot_ms",
    "p50_ttft_ms",
    "p99_ttft_ms",
    "goodput_tokens_per_s",
    "restarts",
    "restarts_by_cause",
    "load_restarts",
    "lost_capacity_s",
    "window_p99_tpot_ms",
}


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = tmp_path_factory.mktemp("bench") / "dq.json"
    args = ["--scale", "0.05", "--scenario", "temperature", "--scenario", "quantization"]
    bench.main([*args, "--json", str(path)], out=lambda _: None)
    document: dict[str, Any] = json.loads(Path(path).read_text())
    return document


def test_every_trace_has_every_policy_with_the_same_windows(figures: dict[str, Any]) -> None:
    assert set(figures) == {"temperature", "quantization", "_meta"}
    for trace in ("temperature", "quantization"):
        assert set(figures[trace]) == set(POLICIES)
        lengths = {len(figures[trace][p]["window_p99_tpot_ms"]) for p in POLICIES}
        windows = bench.SCENARIOS[[s.name for s in bench.SCENARIOS].index(trace)]
        assert lengths == {windows.scaled(0.05).windows}
        for policy in POLICIES:
            assert set(figures[trace][policy]) >= KEYS
            assert figures[trace][policy]["goodput_tokens_per_s"] > 0


def test_the_oracles_bound_the_statics_on_the_objective_they_minimise(
    figures: dict[str, Any],
) -> None:
    for trace in ("temperature", "quantization"):
        f = figures[trace]
        free, paid = f["oracle-window"]["objective"], f["oracle"]["objective"]
        assert free <= paid + 1e-9
        assert paid <= min(f["static-on"]["objective"], f["static-off"]["objective"]) + 1e-9


def test_restarts_are_the_switches_and_only_restarts_lose_capacity(
    figures: dict[str, Any],
) -> None:
    for trace in ("temperature", "quantization"):
        f = figures[trace]
        # without control replicas each change of the server configuration is one restart
        for policy in ("static-on", "static-off", "operator-recorded", "oracle", "oracle-window"):
            assert f[policy]["restarts"] == f[policy]["switches"], (trace, policy)
        assert f["oracle-window"]["lost_capacity_s"] == 0  # free switching
        for policy in POLICIES:
            assert (f[policy]["lost_capacity_s"] > 0) == (
                f[policy]["restarts"] > 0 and policy != "oracle-window"
            ), (trace, policy)
        for policy in POLICIES:  # every restart has its cause, once
            assert sum(f[policy]["restarts_by_cause"].values()) == f[policy]["restarts"]
            assert f[policy]["load_restarts"] == f[policy]["restarts_by_cause"].get("load", 0)
    # the user's edit of the target restarts everyone's pods; the temperature trace has none
    assert figures["quantization"]["static-on"]["restarts"] == 1
    assert figures["quantization"]["static-on"]["restarts_by_cause"] == {"edit": 1}
    assert figures["temperature"]["static-off"]["restarts"] == 0
    assert figures["temperature"]["static-off"]["restarts_by_cause"] == {}


def test_the_targets_name_the_per_window_figures(figures: dict[str, Any]) -> None:
    targets = figures["_meta"]["targets"]
    for trace in ("temperature", "quantization"):
        for policy in bench.OPERATORS:
            t = targets[trace][policy]
            assert t["better_static_per_window"] in ("static-on", "static-off")
            assert t["window_geomean_vs_oracle_window"] > 0
            assert t["load_restarts"] == figures[trace][policy]["load_restarts"]
        for policy in ("operator-schedule", "operator-schedule-next-day"):
            assert set(targets[trace][policy]["issue_targets"]) == {
                "p99_tpot_within_10pct_of_oracle",
                "window_geomean_within_10pct_of_oracle",
            }


def test_the_window_gain_is_in_log_terms_against_the_static_choice() -> None:
    static = [10.0, 20.0, None, 40.0]
    assert bench.window_gain([10.0, 10.0, 5.0, 40.0], static) == pytest.approx(math.log(2))
    # an outage (nothing finished) counts as the policy's worst window
    assert bench.window_gain([5.0, None, 5.0, 40.0], static) == pytest.approx(
        math.log(2) + math.log(0.5)
    )


def test_histogram_quantile_interpolates_inside_the_bucket_like_prometheus() -> None:
    bounds = (0.01, 0.05, 0.1)
    # 10 observations: 4 in (0, 0.01], 6 in (0.05, 0.1]; the median's rank 5 is the first of the
    # 6, interpolated 1/6 into (0.05, 0.1]
    values = [0.005] * 4 + [0.07] * 6
    assert bench.histogram_quantile(0.5, values, bounds) == pytest.approx(0.05 + 0.05 / 6)
    assert bench.histogram_quantile(0.99, [1.0], bounds) == 0.1  # +Inf: the highest bound
    assert math.isnan(bench.histogram_quantile(0.5, [], bounds))


def test_the_dynamic_programme_pays_kappa_per_switch() -> None:
    costs = {"a": [0.0, 5.0, 5.0, 0.0], "b": [1.0, 0.0, 0.0, 1.0]}
    assert bench.best_schedule(costs, 4, 0.0) == ["a", "b", "b", "a"]
    assert bench.best_schedule(costs, 4, 100.0) == ["b", "b", "b", "b"]
    assert bench.objective(costs, ["a", "b", "b", "a"], 3.0) == 6.0
    # a price per window: a switch is cheap at windows 1 and 3 only (low load), dear at 2
    prices = [0.0, 0.5, 100.0, 0.5]
    assert bench.best_schedule(costs, 4, prices) == ["a", "b", "b", "a"]
    assert bench.objective(costs, ["a", "b", "b", "a"], prices) == 1.0
    assert bench.interpolate([(1, 2.0), (3, 6.0)], 5) == [2.0, 2.0, 4.0, 6.0, 6.0]


@dataclass(frozen=True)
class Seen:
    key: tuple[str, ...]
    startup_s: float
    ready_at: float
    serving: bool


def _rollout(schedule: list[tuple[bool, int]]) -> tuple[bench.Outcome, list[list[Seen]]]:
    """The world under a fixed schedule at 1 QPS per replica: the server replicas alive at each
    window's end."""
    scenario = bench.Scenario("t", "t", (bench.Phase(len(schedule), 1, 0.1),))
    loop = bench.Loop(scenario, bench.trace(scenario, 1), 1, spare_gpus=0)
    alive: list[list[Seen]] = []

    def look(w: int, t: float, readings: Any) -> None:
        alive.append(
            [
                Seen(r.config.key, r.config.startup_s, r.ready_at, r.serving(t))
                for r in loop.replicas
                if r.alive and r.role == "server"
            ]
        )

    return loop.run(bench.scheduled(scenario, schedule), look), alive


def test_without_spare_gpus_a_change_rolls_one_replica_at_a_time() -> None:
    on, off = (True, 0), (False, 0)
    outcome, alive = _rollout([on] * 5 + [off] * 20)
    assert outcome.restarts == 1
    startup = alive[-1][0].startup_s  # the configuration without the draft
    assert outcome.lost_capacity_s == pytest.approx(bench.POOL_REPLICAS * startup)
    assert all(len(a) == bench.POOL_REPLICAS for a in alive)
    # replica 2 serves until replica 1's replacement is ready, then that replacement serves
    assert all(sum(r.serving for r in a) >= bench.POOL_REPLICAS - 1 for a in alive)
    assert any(sum(r.serving for r in a) == bench.POOL_REPLICAS - 1 for a in alive)
    # the second replacement is ready two startups after the change at window 5
    assert max(r.ready_at for r in alive[-1]) == pytest.approx(5 * bench.INTERVAL_S + 2 * startup)
    assert {r.key for r in alive[-1]} != {r.key for r in alive[0]}


def test_a_change_during_a_rollout_rolls_to_the_newest_template() -> None:
    on, off = (True, 0), (False, 0)
    # off at window 5 (150 s), on again at window 15 (450 s) while the second replacement loads
    outcome, alive = _rollout([on] * 5 + [off] * 10 + [on] * 20)
    assert outcome.restarts == 2
    first = alive[0][0]
    assert {r.key for r in alive[-1]} == {first.key}  # every replica back on, none left off
    startup_off = next(r for a in alive for r in a if r.key != first.key).startup_s
    # the first off replica serves from 150 + 187 s; the second, loading since then, is given
    # up at 450 s for an on replica; then the first off replica is replaced by another
    given_up = 15 * bench.INTERVAL_S - (5 * bench.INTERVAL_S + startup_off)
    assert outcome.lost_capacity_s == pytest.approx(startup_off + given_up + 2 * first.startup_s)
    assert all(sum(r.serving for r in a) >= 1 for a in alive)


def test_a_change_of_both_deployments_rolls_the_server_first_then_the_control_replica() -> None:
    # one server replica and one control replica at 1 QPS per replica, speculation on; the
    # user's edit to AWQ-INT4 at window 5 (150 s) changes both Deployments
    scenario = bench.Scenario("t", "t", (bench.Phase(5, 1, 0.1), bench.Phase(20, 1, 0.1, "awq")))
    loop = bench.Loop(scenario, bench.trace(scenario, 1), 1, spare_gpus=0)
    alive: list[dict[str, list[Seen]]] = []

    def plan(w: int) -> dict[str, Any]:
        body = bench.resource(scenario.phase_at(w), 1)
        body["status"] = bench.status_for(body, True, 0)
        return body

    def look(w: int, t: float, readings: Any) -> None:
        alive.append(
            {
                role: [
                    Seen(r.config.key, r.config.startup_s, r.ready_at, r.serving(t))
                    for r in loop.replicas
                    if r.alive and r.role == role
                ]
                for role in ("server", "baseline")
            }
        )

    outcome = loop.run(plan, look)
    assert outcome.restarts == 2
    assert outcome.restarts_by_cause == {"edit": 2}  # the server's rollout, then the deferred one
    assert all(len(a["server"]) == len(a["baseline"]) == 1 for a in alive)
    server, baseline = alive[-1]["server"][0], alive[-1]["baseline"][0]
    assert server.key != alive[0]["server"][0].key
    assert baseline.key != alive[0]["baseline"][0].key
    change = 5 * bench.INTERVAL_S
    # the server rolls at once (AWQ with the draft, 164 s); the control replica keeps its INT8
    # pod serving meanwhile, and rolls (143 s) once the server's new replica is Ready
    assert server.ready_at == pytest.approx(change + server.startup_s)
    assert baseline.ready_at == pytest.approx(change + server.startup_s + baseline.startup_s)
    during = alive[5 + int(server.startup_s // bench.INTERVAL_S) - 1]  # the server still loading
    assert not during["server"][0].serving
    assert during["baseline"][0].key == alive[0]["baseline"][0].key
    assert during["baseline"][0].serving
    assert outcome.lost_capacity_s == pytest.approx(server.startup_s + baseline.startup_s)
    # one of the two serves at every window's end: never an outage
    assert all(any(r.serving for role in a.values() for r in role) for a in alive)


class Watched(bench.Loop):
    """The world, checking at every event that the surge keeps the pool's capacity: every
    server replica being replaced serves until its replacement is Ready, at most one extra pod."""

    def _rolls(self, t: float, outcome: bench.Outcome) -> None:
        super()._rolls(t, outcome)
        server = [r for r in self.replicas if r.alive and r.role == "server"]
        assert sum(r.serving(t) for r in server) >= bench.POOL_REPLICAS, t
        assert len(server) <= bench.POOL_REPLICAS + 1, t
        for r in server:
            if r.replaces is not None and r.ready_at > t:
                assert r.replaces.serving(t), t


def _surge(scenario: bench.Scenario, schedule: list[tuple[bool, int]]) -> tuple[Watched, Any]:
    loop = Watched(scenario, bench.trace(scenario, 1), 1, spare_gpus=2)
    return loop, loop.run(bench.scheduled(scenario, schedule))


def test_with_spare_gpus_an_edit_surges_each_replica_once_and_loses_no_capacity() -> None:
    # the user's edit of the target to AWQ-INT4 at window 5 (150 s), 1 QPS per replica
    scenario = bench.Scenario("t", "t", (bench.Phase(5, 1, 0.1), bench.Phase(20, 1, 0.1, "awq")))
    loop, outcome = _surge(scenario, [(True, 0)] * scenario.windows)
    assert outcome.restarts == 1  # one rollout, not restarted again while it is under way
    assert outcome.lost_capacity_s == 0
    assert loop.born == 2 * bench.POOL_REPLICAS  # each old replica replaced exactly once
    old, new = loop.replicas[: bench.POOL_REPLICAS], loop.replicas[bench.POOL_REPLICAS :]
    assert not any(r.alive for r in old)
    assert all(r.alive and r.serving(scenario.windows * bench.INTERVAL_S) for r in new)
    assert [r.replaces for r in new] == old  # oldest first
    assert len({r.config.key for r in new}) == 1
    assert new[0].config.key != old[0].config.key
    # the first surges at once; the second once the first's old pod has drained its GPUs
    startup = new[0].config.startup_s
    assert new[0].ready_at == pytest.approx(5 * bench.INTERVAL_S + startup)
    assert new[1].ready_at >= new[0].ready_at + startup


def test_with_spare_gpus_a_change_during_a_surge_rolls_to_the_newest_template() -> None:
    on, off = (True, 0), (False, 0)
    # off at window 5 (150 s); on again at window 15 (450 s) while the second off pod loads
    scenario = bench.Scenario("t", "t", (bench.Phase(35, 1, 0.1),))
    loop, outcome = _surge(scenario, [on] * 5 + [off] * 10 + [on] * 20)
    assert outcome.restarts == 2
    assert outcome.lost_capacity_s == 0
    first, second, off_1, off_2, on_1 = loop.replicas  # the loading off pod given up, no other
    assert [off_1.replaces, off_2.replaces, on_1.replaces] == [first, second, off_1]
    assert not off_2.alive
    assert off_2.ready_at > 15 * bench.INTERVAL_S
    alive = [r for r in loop.replicas if r.alive]
    assert alive == [second, on_1]  # back on: the old on replica stays, the off one replaced
    assert on_1.ready_at == pytest.approx(15 * bench.INTERVAL_S + first.config.startup_s)


def test_the_restart_cause_follows_the_operators_reason() -> None:
    state = bench.PolicyState(speculation_on=True)
    off_for_load = bench.PolicyState(speculation_on=False, crossover_load=5.3)
    off_for_acceptance = bench.PolicyState(speculation_on=False)
    probing = bench.PolicyState(speculation_on=True, probes=1)
    cause = bench.restart_cause
    assert cause(bench.Action.DISABLE, state, off_for_load) == "load"
    assert cause(bench.Action.DISABLE, state, off_for_acceptance) == "acceptance"
    assert cause(bench.Action.ENABLE, off_for_load, state) == "load"
    assert cause(bench.Action.ENABLE, off_for_acceptance, probing) == "acceptance"
    assert cause(bench.Action.SET_ENGINE_SCHEDULE, state, state) == "schedule"
    assert cause(bench.Action.STEP_QUANTIZATION, state, state) == "quantization"


def _server(release: str, schedule_from: int | None = None) -> bench.Config:
    body = bench.resource(bench.Phase(1, 1), 1, release)
    body["status"] = bench.status_for(body, True, 0)
    if schedule_from is not None:
        body["status"]["control"]["engineScheduleFrom"] = schedule_from
    return bench.configuration(bench.deployments(body)["server"], {})


def test_both_releases_worlds_are_the_same_physics_but_for_the_schedule() -> None:
    old, new = _server(bench.RESTART_RELEASE), _server(bench.SCHEDULE_RELEASE)
    assert old.server.vllm_version == "0.23.0"
    assert new.server.vllm_version == "0.33.0"
    assert old.choice == new.choice
    assert old.startup_s == new.startup_s
    scenario = bench.Scenario("t", "t", (bench.Phase(4, 6, 0.1),))
    arrivals = bench.trace(scenario, 1)[:200]
    runs = [bench.FastEngine(c.server, seed=3).simulate(arrivals) for c in (old, new)]
    assert [r.finished_at for r in runs[0]] == [r.finished_at for r in runs[1]]
    # the schedule is rendered only where the release has the lever
    assert _server(bench.RESTART_RELEASE, 16).key == old.key
    scheduled = _server(bench.SCHEDULE_RELEASE, 16)
    assert scheduled.server.speculation is not None
    assert scheduled.server.speculation.schedule == [(1, 15, 5), (16, 4096, 0)]
    assert scheduled.choice == new.choice


def _band(low: int, high: int, speedup: float) -> dict[str, Any]:
    return {
        "minBatch": low,
        "maxBatch": high,
        "readings": 10,
        "logSpeedup": math.log(speedup),
        "logVariance": 0.001,
    }


def test_the_operator_sets_the_schedule_and_the_server_runs_it_without_a_load_restart() -> None:
    # a curve already settled (speculation pays up to batch 15, loses from 16): at 1 QPS per
    # replica the first check sets the schedule; then a surge to 12 QPS per replica
    scenario = bench.Scenario("t", "t", (bench.Phase(12, 1, 0.1), bench.Phase(6, 12, 0.1)))
    status = bench.status_for(bench.resource(scenario.phases[0], 1), True, 0)
    status["control"]["speedupCurve"] = [
        _band(1, 1, 1.3),
        _band(2, 3, 1.3),
        _band(4, 7, 1.2),
        _band(8, 15, 1.1),
        _band(16, 31, 0.8),
    ]
    loop = bench.Loop(scenario, bench.trace(scenario, 1), 1, spare_gpus=0)
    outcome = bench.run_operator(loop, 1, bench.SCHEDULE_RELEASE, status)
    assert [(w, reason) for w, reason, _ in outcome.decisions] == [(0, "EngineScheduleSet")]
    assert outcome.restarts_by_cause == {"schedule": 1}
    servers = [r for r in loop.replicas if r.role == "server"]
    first, scheduled = servers  # the one restart replaced the server replica once
    assert first.engine.schedule is None
    assert not first.alive
    assert scheduled.engine.schedule == [(1, 15, 5), (16, 4096, 0)]
    steps = scheduled.engine.step_counts
    assert sum(n for (batch, k), n in steps.items() if batch >= 16 and k == 0) > 0  # the surge
    assert all(k == 0 for batch, k in steps if batch >= 16)
    assert all(k == 5 for batch, k in steps if batch < 16)
    # the control replica never speculates
    (control,) = [r for r in loop.replicas if r.role == "baseline"]
    assert all(k == 0 for _, k in control.engine.step_counts)


def test_the_next_day_starts_from_the_status_the_first_day_left() -> None:
    # a day with a surge, the schedule not yet learned: the surge sets it (one restart caused
    # by load); the next day, from the status the first left, the engine runs it from the
    # start and the surge restarts nothing
    scenario = bench.Scenario(
        "t",
        "t",
        (
            bench.Phase(16, 1, 0.1),
            bench.Phase(24, 6, 0.1),
            bench.Phase(40, 1, 0.1),
        ),
    )
    first = bench.run_operator(
        bench.Loop(scenario, bench.trace(scenario, 1), 1, spare_gpus=0), 1, bench.SCHEDULE_RELEASE
    )
    assert first.final_status is not None
    learned = first.final_status["control"]["engineScheduleFrom"]
    assert [reason for _, reason, _ in first.decisions] == ["EngineScheduleSet"]
    loop = bench.Loop(scenario, bench.trace(scenario, 1), 1, spare_gpus=0)
    next_day = bench.run_operator(loop, 1, bench.SCHEDULE_RELEASE, first.final_status, day=1)
    assert next_day.restarts == 0, next_day.decisions
    (server,) = [r for r in loop.replicas if r.role == "server"]
    assert server.engine.schedule is not None
    assert server.engine.schedule[1][0] == learned
