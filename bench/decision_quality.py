"""Decision quality as a closed loop: the operator's control check against static and oracle
policies, every switch paying for its restart.

Three traces play through the simulator's engine in simulated time (discrete events, no sleeping,
deterministic for a seed): (a) a compressed day, QPS from low to saturating and back; (b) a shift
of the temperature mix from mostly greedy to mostly T=1.0 and back; (c) a quantization change, the
target edited from INT8 to AWQ-INT4 mid-trace (the ladder holds the INT8 checkpoint).

The loop is closed: each policy drives one simulation of its own.

- A finite GPU pool of two replicas (2x H100 each): `replicas: 2`, or, for the operator with a
  control replica, `replicas: 1` and `controlReplicas: 1`. A router sends each request to the
  serving replica with the fewest requests in hand; with none serving it waits at the router.
- A change of a Deployment (speculation off or on, a ladder step, the user's edit) restarts its
  replicas. A restarted replica serves nothing for the startup time of its new configuration
  (`specpilot.planning.startup`: weight bytes, target plus draft, at the stated load bandwidth,
  plus CUDA graph capture and engine start). Without spare GPUs (the default, `--spare-gpus 0`)
  the replicas roll one at a time, as the rendered Deployment's strategy (maxSurge 0,
  maxUnavailable 1, `specpilot.planning.rollout.strategy`) has Kubernetes do: the oldest old
  replica stops, its requests go back to the router (their progress lost) and are served by the
  other replicas or wait, and its replacement loads for the startup; once that one is ready the
  next old replica stops, and so on. N replicas serve N-1 strong for N x startup (a single
  replica is an outage for the startup); `lost_capacity_s` counts the startup of every
  replacement. A change arriving during a rollout rolls to the newest configuration, as the
  Deployment controller does with a newer template: a replacement still loading a superseded
  configuration is given up (its slot loads the newest one at once; only the part of its
  startup already spent counts as lost), replicas already on the newest configuration stay (a
  revert keeps the old replicas not yet replaced), and every other replica is replaced one at a
  time, oldest first. With spare GPUs (`--spare-gpus 2`: the strategy maxSurge 1,
  maxUnavailable 0) the replicas also roll one at a time, oldest first, but surging: the new pod
  loads on spare GPUs while the old one serves, the old one drains once the new one is Ready,
  and the next new pod starts once two GPUs are free (Pending until the drained pod is gone); a
  change during a surge rolls likewise to the newest template (a new pod loading a superseded
  one is given up, its old pod serving on); no capacity is lost. The server
  first, then the control replicas (`reconcile.deferred_change`): a new template of the control
  replicas' Deployment waits while the server's rollout is not complete (its pods keep running
  their old configuration) and is applied once the server's replicas are all Ready on the
  newest one; then it rolls as usual.
- The operator's readings are what its PromQL would answer at each check: over the policy's
  rate window (5m, the default) of completed requests: TPOT and TTFT quantiles interpolated in
  vLLM's histogram buckets like `histogram_quantile`, load as completions per second per
  serving replica (a replica down has no series), acceptance from the sampled draft and accepted
  token counts. The policy is the production default (30s interval, 5m window, 10m cooldown,
  failureLimit 3, consecutiveSuccessLimit 5). The operator runs in three variants, each with
  its own world: `operator` (one control replica, vLLM 0.23.0: restarts only),
  `operator-recorded` (no control replica: the baseline it recorded), `operator-schedule` (one
  control replica, vLLM 0.33.0: the learned engine schedule); and `operator-schedule-next-day`,
  the last on the same trace one day later, starting from the status its first day ended with
  (the learned curve and schedule, as an operator restart keeps them).
- Static on / off: speculation on, or off, throughout (the pool all serving replicas).
- Oracle (cost-aware): the offline schedule over the trace's configurations (speculation on or
  off; on the quantization trace also the INT8 ladder checkpoint) that minimises the objective
  J = sum over windows of log(P99 TPOT of the window) + kappa(w) per switch at window w, by
  dynamic programming over 30 s windows, where a window's P99 TPOT is the configuration's in its
  static closed-loop run and kappa(w) is the measured price of a restart in this world: J with a
  restart forced at window w minus J without, in the better static run. A rolling restart's
  price depends on the load (at 1 QPS per replica one replica carries the pool's traffic and a
  restart costs little; near saturation it queues for N x startup), so one price measured at
  the median load would overprice switches at low load and underprice them at the peak: kappa
  is measured in the middle of every phase of the trace and interpolated linearly in between
  (flat before the first and after the last). The forced restart goes through the same rollout
  as any switch, so the price is that of a rolling restart. Still approximations: the price is
  measured restarting the better static configuration into itself (a switch's new
  configuration may have more or less capacity), and two switches closer than a rollout are
  priced as two whole restarts (the world gives up the first's loading replacement). The
  schedule is then replayed in the closed loop, paying its restarts like everyone else, so its
  figures are the world's, not the model's.
- Oracle-window: the best configuration in every window, switching for free (no startup), the
  queue carried over.
- Goodput: tokens per second of the requests that finished within the trace.

    .venv/bin/python bench/decision_quality.py [--seed 1] [--scale 1] [--json PATH]
"""

from __future__ import annotations

import argparse
import bisect
import copy
import datetime
import itertools
import json
import math
import random
import statistics
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from specpilot.api.models import PolicyState, SpeculativeInferenceSpec, SpeculativeInferenceStatus
from specpilot.control.check import check
from specpilot.control.policy import Action
from specpilot.control.signals import Signal
from specpilot.planning.startup import LOCAL_LOAD_GB_PER_S, plan_startup
from specpilot.reconcile import desired, target_identity
from specpilot.rendering.manifests import LABEL_ROLE
from specpilot_lab.sim import physics
from specpilot_lab.sim.engine import Arrival, Engine, Request
from specpilot_lab.sim.metrics import TPOT_BUCKETS, TTFT_BUCKETS
from specpilot_lab.sim.podrunner import pod_template
from specpilot_lab.sim.vllm_args import ServerConfig, parse_server_args

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "manifests" / "examples" / "llama-70b-int8-draft.yaml"
INT8 = "RedHatAI/Meta-Llama-3.1-70B-Instruct-quantized.w8a8"
AWQ = "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4"
INTERVAL_S = 30
WINDOW_S = 300
POLICY = {
    "mode": "auto",
    "interval": f"{INTERVAL_S}s",
    "window": f"{WINDOW_S // 60}m",
    "failureLimit": 3,
    "consecutiveSuccessLimit": 5,
    "cooldown": "10m",
    "quantizationLadder": [{"model": INT8, "quantization": "int8"}],
}
RESTART_RELEASE = "0.23.0"
"""The restart-based operator's vLLM: the newest release without the per-batch-size schedule
(num_speculative_tokens_per_batch_size, 0.24.0 and later), where draft_model already runs on V1
(0.15.0 and later): the operator can switch speculation off and on only by restarting the pods."""
SCHEDULE_RELEASE = "0.33.0"
"""The example's vLLM (the newest verified): the operator may also set the learned schedule."""
POOL_REPLICAS = 2
"""Replicas (of 2 GPUs) in the pool every policy gets."""
TOLERANCE = 1.10


@dataclass(frozen=True)
class Phase:
    windows: int
    qps: float
    """Requests per second per replica of the pool."""
    hot_share: float = 0.1
    """Share of requests sampled at temperature 1.0 (the rest are greedy)."""
    quantization: str = "int8"


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    phases: tuple[Phase, ...]

    @property
    def windows(self) -> int:
        return sum(p.windows for p in self.phases)

    def phase_at(self, window: int) -> Phase:
        for phase in self.phases:
            if window < phase.windows:
                return phase
            window -= phase.windows
        return self.phases[-1]

    def scaled(self, scale: float) -> Scenario:
        phases = tuple(
            Phase(max(1, round(p.windows * scale)), p.qps, p.hot_share, p.quantization)
            for p in self.phases
        )
        return Scenario(self.name, self.title, phases)


DAY = (1, 2, 3, 4, 6, 8, 10, 12, 12, 10, 8, 6, 4, 3, 2, 1)
"""QPS per replica per phase: 12 is where a 2x H100 replica saturates without speculation."""
SCENARIOS = (
    Scenario(
        "day",
        "(a) compressed day: 1 to 12 QPS per replica and back, 5 minutes per step",
        tuple(Phase(10, q) for q in DAY),
    ),
    Scenario(
        "temperature",
        "(b) temperature mix: 10% to 90% of requests at T=1.0 and back, 4 QPS per replica",
        (Phase(20, 4, 0.1), Phase(40, 4, 0.9), Phase(20, 4, 0.1)),
    ),
    Scenario(
        "quantization",
        "(c) quantization change: target INT8 edited to AWQ-INT4, 4 QPS per replica, half at T=1.0",
        (Phase(20, 4, 0.5), Phase(60, 4, 0.5, "awq")),
    ),
)


def trace(scenario: Scenario, seed: int) -> list[Arrival]:
    """Poisson arrivals for the whole pool, chat-like lengths (ShareGPT-like, as calibrated)."""
    rng = random.Random(seed)
    arrivals: list[Arrival] = []
    start = 0.0
    for phase in scenario.phases:
        end = start + phase.windows * INTERVAL_S
        t = start
        while (t := t + rng.expovariate(phase.qps * POOL_REPLICAS)) < end:
            prompt = min(4096, max(8, int(rng.lognormvariate(math.log(180), 1.0))))
            output = min(2048, max(4, int(rng.lognormvariate(math.log(220), 0.8))))
            temperature = 1.0 if rng.random() < phase.hot_share else 0.0
            arrivals.append(Arrival(t, prompt, output, temperature, echo=0.2))
        start = end
    return arrivals


# --- the engine without its serving side -----------------------------------------------------


class FastEngine(Engine):
    """The simulator's engine (same admission, step times and acceptance sampling) without the
    HTTP side: no token text, no client streams, no Prometheus objects per step. It counts the
    drafted and accepted tokens (vLLM's spec-decode counters) and the first tokens itself."""

    def __init__(self, config: ServerConfig, seed: int) -> None:
        super().__init__(config, seed=seed)
        self.clock = 0.0
        self.drafted = 0
        self.accepted = 0
        self.finished: list[Request] = []
        self.first_tokens: list[tuple[float, float]] = []
        self._alphas: dict[tuple[float, float], float] = {}

    def _publish_gauges(self) -> None:
        return None

    def _alpha(self, request: Request) -> float:
        key = (request.temperature, request.echo)
        if key not in self._alphas:
            rate = self.acceptance.rate(request.temperature, request.echo)
            self._alphas[key] = physics.per_token_alpha(rate, self.k)
        return self._alphas[key]

    def _advance(self, step: float, now: float) -> None:
        k = self.step_k()  # num_speculative_tokens, or the schedule's k for this batch size
        self.step_counts[len(self.running), k] += 1
        for request in list(self.running):
            if not request.prefilled:
                request.prefilled = True
                if request.first_token_at is None:
                    request.first_token_at = now
                    self.first_tokens.append((now, now - request.arrival))
                    self._emit(request, 1, now)
                continue
            tokens = 1
            if k:
                accepted = physics.sample_accepted(self._alpha(request), k, self.rng)
                self.drafted += k
                self.accepted += accepted
                tokens = accepted + 1
            self._emit(request, tokens, now)
        self._preempt_if_full()

    def _emit(self, request: Request, tokens: int, now: float) -> None:
        request.generated += min(tokens, request.max_tokens - request.generated)
        if request.generated >= request.max_tokens:
            request.finished_at = now
            self.running.remove(request)
            self.finished.append(request)

    def advance(self, until: float) -> None:
        """Run steps until the engine's clock reaches `until` (a step may end after it)."""
        while self.clock < until:
            self._admit(self.clock)
            if not self.running:
                self.clock = until
                return
            step = self._step_seconds()
            self.clock += step
            self._advance(step, self.clock)


# --- configurations -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    key: tuple[str, ...]
    server: ServerConfig
    startup_s: float
    choice: tuple[str, ...] = ()
    """The key without the vLLM release and the engine schedule: the configuration as the
    oracle's options name it (speculation on or off, the checkpoint)."""


SCHEDULE_KEY = "num_speculative_tokens_per_batch_size"
VERSION_ENV = "SPECPILOT_SIM_VLLM_VERSION="


def choice_of(key: tuple[str, ...]) -> tuple[str, ...]:
    """A configuration's key without the release and the per-batch-size schedule."""
    kept = []
    for item in key:
        if item.startswith(VERSION_ENV):
            continue
        if item.startswith("{") and SCHEDULE_KEY in item:
            data = json.loads(item)
            data.pop(SCHEDULE_KEY)
            item = json.dumps(data, sort_keys=True)
        kept.append(item)
    return tuple(kept)


def configuration(deployment: dict[str, Any], cache: dict[tuple[str, ...], Config]) -> Config:
    template = pod_template(deployment)
    key = (*template.args, *sorted(f"{k}={v}" for k, v in template.env.items()))
    if key not in cache:
        server = parse_server_args(template.args, template.env)
        probe = FastEngine(server, seed=0)
        estimate = plan_startup(probe.plan)
        assert estimate is not None, "the example's architectures are in the catalog"
        cache[key] = Config(key, server, estimate.seconds, choice_of(key))
    return cache[key]


def resource(phase: Phase, control_replicas: int, release: str | None = None) -> dict[str, Any]:
    """The example resource for this phase; `release`: the vLLM image's (default the example's)."""
    body: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    if release is not None:
        body["spec"]["vllm"]["image"] = f"vllm/vllm-openai:v{release}"
    body["metadata"]["generation"] = 1
    body["spec"]["replicas"] = POOL_REPLICAS - control_replicas
    body["spec"]["policy"] = {**POLICY, "controlReplicas": control_replicas}
    # The world's pods load from a local cache; so does the operator's restart cost.
    body["spec"]["modelCache"] = {"persistentVolumeClaim": {"claimName": "models"}}
    if phase.quantization == "awq":
        body["spec"]["target"].update(model=AWQ, quantization="awq")
    return body


def deployments(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The Deployments the operator renders, by role (server, baseline)."""
    found = {}
    for o in desired(body).objects:
        if o["kind"] == "Deployment":
            found[o["spec"]["template"]["metadata"]["labels"][LABEL_ROLE]] = o
    return found


def status_for(body: dict[str, Any], speculation: bool, checkpoint: int) -> dict[str, Any]:
    spec = SpeculativeInferenceSpec.model_validate(body["spec"])
    return {
        "control": {
            "speculationOn": speculation,
            "checkpointIndex": checkpoint,
            "target": target_identity(spec.target),
        }
    }


# --- the closed loop --------------------------------------------------------------------------


@dataclass
class Replica:
    role: str
    config: Config
    engine: FastEngine
    ready_at: float
    alive: bool = True
    draining: bool = False
    replaces: Replica | None = None
    """The old pod a surging new one takes over from once ready."""

    def serving(self, t: float) -> bool:
        return self.alive and not self.draining and self.ready_at <= t

    def up(self, t: float) -> bool:
        """Has series in Prometheus: started and not deleted."""
        return self.alive and self.ready_at <= t

    def in_hand(self) -> int:
        return len(self.engine.waiting) + len(self.engine.running)


@dataclass
class Rollout:
    """A role's rollout without surge in progress: the newest template, the old replicas still
    to replace (oldest first), and the replacement loading now."""

    config: Config
    old: list[Replica]
    loading: Replica | None = None


@dataclass
class Outcome:
    """What one policy's run delivered, and what it did."""

    finished: list[Request]
    first_tokens: list[float]
    """TTFT of every request's first token (killed attempts included, as vLLM observes them)."""
    schedule: list[tuple[str, ...]]
    """The server configuration's key in each window."""
    restarts: int = 0
    switches: int = 0
    lost_capacity_s: float = 0.0
    decisions: list[tuple[int, str, str]] = field(default_factory=list)
    restarts_by_cause: dict[str, int] = field(default_factory=dict)
    """Rollouts by what changed the template (`Loop.run`'s `cause`): `edit` (the user's edit of
    the target), `plan` (a static's or an oracle's schedule), `forced` (kappa's probe), or the
    operator's reason: `load`, `acceptance`, `schedule`, `quantization`, `revert`."""
    final_status: dict[str, Any] | None = None
    """The operator's: the resource's status after the last check (`run_operator`)."""


Controller = Callable[[int, dict[str, Any], dict[tuple[str, str, str], dict[Signal, float]]], None]


def histogram_quantile(q: float, values: Sequence[float], bounds: Sequence[float]) -> float:
    """Prometheus' histogram_quantile over these observations in these buckets: linear
    interpolation inside the bucket holding the rank; the highest finite bound for +Inf."""
    if not values:
        return math.nan
    counts = [0] * (len(bounds) + 1)
    for v in values:
        counts[bisect.bisect_left(bounds, v)] += 1
    rank = q * len(values)
    cumulative = 0
    for i, count in enumerate(counts):
        if cumulative + count >= rank and count:
            if i == len(bounds):
                return bounds[-1]
            lower = bounds[i - 1] if i else 0.0
            return lower + (bounds[i] - lower) * (rank - cumulative) / count
        cumulative += count
    return bounds[-1]


class Loop:
    """One policy's closed-loop run over one trace."""

    def __init__(
        self,
        scenario: Scenario,
        arrivals: list[Arrival],
        seed: int,
        spare_gpus: int,
        free_switching: bool = False,
    ) -> None:
        self.scenario = scenario
        self.arrivals = arrivals
        self.seed = seed
        self.spare_gpus = spare_gpus
        self.free = free_switching
        self.replicas: list[Replica] = []
        self.router: deque[Arrival] = deque()
        self.born = 0
        self.configs: dict[tuple[str, ...], Config] = {}
        self.finished: dict[str, list[tuple[float, float]]] = {"server": [], "baseline": []}
        """(finished_at, TPOT) per role, in time order (harvested at each window's end)."""
        self.ttfts: dict[str, list[tuple[float, float]]] = {"server": [], "baseline": []}
        self.counters: list[tuple[int, int]] = []
        """Cumulative (drafted, accepted) of the server role at each window's end."""
        self._harvested: dict[int, tuple[int, int]] = {}
        self.templates: dict[str, tuple[str, ...]] = {}
        """The newest configuration rendered per role (the Deployment's template)."""
        self.rollouts: dict[str, Rollout] = {}
        self.deferred: dict[str, tuple[Config, str]] = {}
        """The control replicas' newest template (and its cause), waiting for the server's
        rollout to complete."""

    # replicas
    def _spawn(self, role: str, config: Config, ready_at: float) -> Replica:
        self.born += 1
        engine = FastEngine(config.server, seed=self.seed * 1000 + self.born)
        engine.clock = ready_at
        replica = Replica(role, config, engine, ready_at)
        self.replicas.append(replica)
        return replica

    def _gpus_in_use(self) -> int:
        return sum(2 for r in self.replicas if r.alive)

    def _kill(self, replica: Replica) -> None:
        replica.alive = False
        lost = list(replica.engine.running) + list(replica.engine.waiting)
        replica.engine.running.clear()
        replica.engine.waiting.clear()
        for request in sorted(lost, key=lambda r: r.arrival):
            self.router.append(
                Arrival(
                    request.arrival,
                    request.prompt_tokens,
                    request.max_tokens,
                    request.temperature,
                    request.echo,
                )
            )

    def _dispatch(self, t: float) -> None:
        serving = [r for r in self.replicas if r.serving(t)]
        while self.router and serving:
            a = self.router.popleft()
            target = min(serving, key=Replica.in_hand)
            target.engine.submit(a.prompt_tokens, a.max_tokens, a.temperature, a.echo, at=a.at)

    def _advance(self, t: float) -> None:
        for r in self.replicas:
            if r.alive and r.ready_at <= t:
                r.engine.advance(t)

    def _ready_events(self, until: float) -> list[float]:
        return sorted(r.ready_at for r in self.replicas if r.alive and r.ready_at < until)

    def apply(
        self,
        role: str,
        config: Config,
        t: float,
        outcome: Outcome,
        force: bool = False,
        cause: str = "plan",
    ) -> None:
        """Make the role's replicas run `config`: restart those that do not (all, `force`),
        one at a time (`_roll`): without spare GPUs in place, with them surging. `cause`: what
        changed the template, counted in `outcome.restarts_by_cause`."""
        if not force and self.templates.get(role) == config.key:
            return  # the newest template already: its rollout, if any, goes on
        outcome.restarts += 1
        outcome.restarts_by_cause[cause] = outcome.restarts_by_cause.get(cause, 0) + 1
        self.templates[role] = config.key
        startup = 0.0 if self.free else config.startup_s
        previous = self.rollouts.get(role)
        loading = previous.loading if previous is not None else None
        if loading is not None and loading.ready_at <= t:
            loading = None  # ready: an ordinary replica now
        if loading is not None and (force or loading.config.key != config.key):
            # the controller scales an old ReplicaSet's unready pod down first: the replacement
            # loading the superseded template goes, and its slot loads the newest one
            self._kill(loading)
            if self._surging():
                loading = None  # its old pod serves on, replaced like the others (`_roll`)
            else:
                outcome.lost_capacity_s -= loading.ready_at - t  # its startup not spent
                loading = self._spawn(role, config, t + startup)
                outcome.lost_capacity_s += startup
        taken = loading.replaces if loading is not None else None
        old = [
            r
            for r in self.replicas
            if r.alive and r.role == role and not r.draining and r is not loading
            and r is not taken and (force or r.config.key != config.key)
        ]  # fmt: skip
        self.rollouts[role] = Rollout(config, old, loading)
        self._roll(role, t, outcome)
        self._dispatch(t)

    def _surging(self) -> bool:
        """The rendered strategy with surge (maxSurge 1, maxUnavailable 0) where a replica's
        GPUs are spare; switching for free replaces in place (no startup to bridge)."""
        return self.spare_gpus >= 2 and not self.free

    def _roll(self, role: str, t: float, outcome: Outcome) -> None:
        """The rendered strategy, one replica at a time, oldest first. Without surge
        (maxSurge 0, maxUnavailable 1): once the last replacement is ready, the next old
        replica stops, its requests go back to the router, and its replacement loads for the
        startup. With surge (maxSurge 1, maxUnavailable 0): the replacement loads on spare
        GPUs while the old replica serves; once it is ready the old one drains (`_surges`),
        and the next replacement starts once two GPUs are free (Pending until then)."""
        rollout = self.rollouts.get(role)
        surging = self._surging()
        while rollout is not None:
            if rollout.loading is not None:
                if rollout.loading.ready_at > t:
                    return
                rollout.loading = None
            while rollout.old and (not rollout.old[0].alive or rollout.old[0].draining):
                rollout.old.pop(0)
            if not rollout.old:
                del self.rollouts[role]
                return
            startup = 0.0 if self.free else rollout.config.startup_s
            if surging:
                if self.spare_gpus + 2 * POOL_REPLICAS - self._gpus_in_use() < 2:
                    return  # Pending: the drained old pod has not freed its GPUs yet
                rollout.loading = self._spawn(role, rollout.config, t + startup)
                rollout.loading.replaces = rollout.old.pop(0)
                continue
            old = rollout.old.pop(0)
            self._kill(old)
            rollout.loading = self._spawn(role, rollout.config, t + startup)
            outcome.lost_capacity_s += startup

    def _rolls(self, t: float, outcome: Outcome) -> None:
        for role in list(self.rollouts):
            self._roll(role, t, outcome)
        waiting = self.deferred.get("baseline")
        if waiting is not None and self._rolled_out("server", t):
            # the reconcile that the server's completed rollout triggers applies the template
            del self.deferred["baseline"]
            self.apply("baseline", waiting[0], t, outcome, cause=waiting[1])

    def _rolled_out(self, role: str, t: float) -> bool:
        """The role's rollout is complete: every pod it runs is Ready on its newest template,
        none old left (reconcile.deployment_rollout)."""
        return role not in self.rollouts and all(
            r.config.key == self.templates.get(role) and r.ready_at <= t and not r.draining
            for r in self.replicas
            if r.alive and r.role == role
        )

    def _defers(self, role: str, config: Config, t: float, cause: str = "plan") -> bool:
        """reconcile.deferred_change: a new template of the control replicas waits (their pods
        keep running) while the server's rollout is not complete, then rolls as usual."""
        if role != "baseline":
            return False
        if config.key == self.templates.get(role) or self._rolled_out("server", t):
            self.deferred.pop(role, None)  # unchanged (a revert drops what waited), or applied now
            return False
        waiting = self.deferred.get(role)
        if waiting is None or waiting[0].key != config.key:
            self.deferred[role] = (config, cause)  # the newest template waits, with its cause
        return True

    def _surges(self, t: float) -> None:
        for r in self.replicas:
            if r.alive and r.replaces is not None and r.ready_at <= t and r.replaces.alive:
                r.replaces.draining = True
        for r in self.replicas:  # drained: the old pod goes, its GPUs free
            if r.draining and r.alive and not r.in_hand():
                r.alive = False

    def _harvest(self) -> None:
        """Collect the completions and first tokens since the last window, in time order."""
        new: dict[str, list[tuple[float, float]]] = {"server": [], "baseline": []}
        firsts: dict[str, list[tuple[float, float]]] = {"server": [], "baseline": []}
        for r in self.replicas:
            done, seen = self._harvested.get(id(r), (0, 0))
            e = r.engine
            for request in e.finished[done:]:
                assert request.finished_at is not None
                assert request.first_token_at is not None
                tpot = (
                    (request.finished_at - request.first_token_at) / (request.generated - 1)
                    if request.generated > 1
                    else math.nan
                )
                new[r.role].append((request.finished_at, tpot))
            firsts[r.role].extend(e.first_tokens[seen:])
            self._harvested[id(r)] = (len(e.finished), len(e.first_tokens))
        for role in new:
            self.finished[role].extend(sorted(new[role]))
            self.ttfts[role].extend(sorted(firsts[role]))
        self.counters.append(
            (
                sum(r.engine.drafted for r in self.replicas if r.role == "server"),
                sum(r.engine.accepted for r in self.replicas if r.role == "server"),
            )
        )

    def readings(self, t: float, w: int) -> dict[tuple[str, str, str], dict[Signal, float]]:
        """What the operator's PromQL answers at `t` over the rate window, per role."""
        answer = {}
        for role in ("server", "baseline"):
            up = [r for r in self.replicas if r.role == role and r.up(t)]
            if not up:
                continue  # no pod of the role serves: no series
            done = self.finished[role]
            lo = bisect.bisect_right(done, (t - WINDOW_S, math.inf))
            tpots = [v for _, v in done[lo:] if not math.isnan(v)]
            firsts = self.ttfts[role]
            lo_f = bisect.bisect_right(firsts, (t - WINDOW_S, math.inf))
            ttfts = [v for _, v in firsts[lo_f:]]
            values: dict[Signal, float] = {
                Signal.TPOT_P50: histogram_quantile(0.5, tpots, TPOT_BUCKETS),
                Signal.TPOT_P95: histogram_quantile(0.95, tpots, TPOT_BUCKETS),
                Signal.TPOT_P99: histogram_quantile(0.99, tpots, TPOT_BUCKETS),
                Signal.TTFT_P50: histogram_quantile(0.5, ttfts, TTFT_BUCKETS),
                Signal.TTFT_P99: histogram_quantile(0.99, ttfts, TTFT_BUCKETS),
                Signal.REQUESTS_PER_SECOND: (len(done) - lo) / WINDOW_S,
                Signal.REPLICAS: float(len(up)),
                # vllm:num_requests_running and _waiting summed over the role's pods, as last
                # scraped; vllm:kv_cache_usage_perc averaged over them
                Signal.REQUESTS_RUNNING: float(sum(len(r.engine.running) for r in up)),
                Signal.REQUESTS_WAITING: float(sum(len(r.engine.waiting) for r in up)),
                Signal.KV_CACHE_USAGE: statistics.fmean(r.engine.kv_usage() for r in up),
            }
            if role == "server":
                back = w - WINDOW_S // INTERVAL_S
                before = self.counters[back] if back >= 0 else (0, 0)
                drafted = self.counters[-1][0] - before[0]
                accepted = self.counters[-1][1] - before[1]
                if drafted:
                    values[Signal.ACCEPTANCE] = accepted / drafted
            answer["ns", "name", role] = {k: v for k, v in values.items() if not math.isnan(v)}
        return answer

    def run(
        self,
        plan: Callable[[int], dict[str, Any]],
        controller: Callable[[int, float, dict[tuple[str, str, str], dict[Signal, float]]], None]
        | None = None,
        force_restart_at: int | None = None,
        cause: Callable[[int], str] | None = None,
    ) -> Outcome:
        """`plan(w)`: the resource (with the status to render) for window w; `controller(w, t,
        readings)` is called at the end of window w (before plan(w + 1)); `cause(w)`: why
        plan(w) changed the templates, if it did (default `plan`; a change of the scenario's
        target is the user's `edit` whatever the policy)."""
        outcome = Outcome([], [], [])
        pending = deque(self.arrivals)
        for w in range(self.scenario.windows):
            t0, t1 = w * INTERVAL_S, (w + 1) * INTERVAL_S
            body = plan(w)
            rendered = deployments(body)
            for role in ("server", "baseline"):
                count = 0
                if role in rendered:
                    count = int(rendered[role]["spec"].get("replicas") or 1)
                if not count:
                    continue
                config = configuration(rendered[role], self.configs)
                if w == 0:
                    self.templates[role] = config.key
                    for _ in range(count):
                        self._spawn(role, config, 0.0)
                    continue
                force = w == force_restart_at and role == "server"
                edited = self.scenario.phase_at(w).quantization != (
                    self.scenario.phase_at(w - 1).quantization
                )
                why = "forced" if force else "edit" if edited else cause(w) if cause else "plan"
                if not force and self._defers(role, config, t0, why):
                    continue
                self.apply(role, config, t0, outcome, force, why)
            outcome.schedule.append(configuration(rendered["server"], self.configs).key)
            while True:
                ready = self._ready_events(t1)
                next_ready = next((r for r in ready if r > self._now), math.inf)
                next_arrival = pending[0].at if pending else math.inf
                t = min(next_ready, next_arrival)
                if t >= t1:
                    break
                self._advance(t)
                self._now = t
                self._surges(t)
                self._rolls(t, outcome)
                if t == next_arrival:
                    self.router.append(pending.popleft())
                self._dispatch(t)
            self._advance(t1)
            self._now = t1
            self._surges(t1)
            self._rolls(t1, outcome)
            self._dispatch(t1)
            self._harvest()
            if controller is not None:
                controller(w, t1, self.readings(t1, w))
        outcome.finished = [r for rep in self.replicas for r in rep.engine.finished]
        outcome.first_tokens = [v for role in self.ttfts.values() for _, v in role]
        outcome.switches = sum(1 for a, b in itertools.pairwise(outcome.schedule) if a != b)
        return outcome

    _now = 0.0


# --- the policies ------------------------------------------------------------------------------


EPOCH = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def fixed(scenario: Scenario, speculation: bool, checkpoint: int = 0) -> Callable[[int], Any]:
    def plan(w: int) -> dict[str, Any]:
        body = resource(scenario.phase_at(w), 0)
        body["status"] = status_for(body, speculation, checkpoint)
        return body

    return plan


def scheduled(scenario: Scenario, choices: list[tuple[bool, int]]) -> Callable[[int], Any]:
    def plan(w: int) -> dict[str, Any]:
        body = resource(scenario.phase_at(w), 0)
        body["status"] = status_for(body, *choices[w])
        return body

    return plan


def restart_cause(action: Action, before: PolicyState, after: PolicyState) -> str:
    """Why the operator's change restarts the pods: `load` (speculation off on a latency or
    load breach, on again once load fell), `acceptance` (off for low acceptance, a probe back
    on; or the engine schedule set instead of that disable), `schedule` (set-engine-schedule at
    low load), `quantization` (a ladder step or its undo)."""
    if action is Action.SET_ENGINE_SCHEDULE:  # set for a latency loss (it records the load) or
        return "load" if after.crossover_load != before.crossover_load else "schedule"  # at rest
    if action is Action.DISABLE:
        return "load" if after.crossover_load is not None else "acceptance"
    if action is Action.ENABLE:
        return "acceptance" if after.probes > before.probes else "load"
    if action in (Action.STEP_QUANTIZATION, Action.UNDO_QUANTIZATION_STEP):
        return "quantization"
    return "revert"


def run_operator(
    loop: Loop,
    control_replicas: int,
    release: str | None = None,
    status: dict[str, Any] | None = None,
    day: int = 0,
) -> Outcome:
    """`control.check` at each window's end on the PromQL-like readings; its status drives the
    next window's Deployments. `release`: the vLLM image's (default the example's); `status`:
    the resource's status to start from (default none); `day`: the trace plays that many days
    after the epoch (a status from an earlier day then has its times in the past)."""
    status = copy.deepcopy(status or {})
    decisions: list[tuple[int, str, str]] = []
    causes: dict[int, str] = {}
    """Why plan(w) changes the Deployments: the action of the check at the end of window w-1."""

    def plan(w: int) -> dict[str, Any]:
        body = resource(loop.scenario.phase_at(w), control_replicas, release)
        body["status"] = copy.deepcopy(status)
        return body

    def controller(w: int, t: float, answer: dict[tuple[str, str, str], Any]) -> None:
        nonlocal status
        body = plan(w)
        readings = {(body["metadata"]["namespace"], body["metadata"]["name"], role): v
                    for (_, _, role), v in answer.items()}  # fmt: skip
        now = EPOCH + datetime.timedelta(days=day, seconds=t)
        result = check(body, readings, None, now, now)
        assert result is not None, "the example resource is valid"
        if result.rerender:
            before = SpeculativeInferenceStatus.model_validate(status).control
            after = SpeculativeInferenceStatus.model_validate(result.status).control
            assert after is not None
            causes[w + 1] = restart_cause(result.action, before or after, after)
        if result.worth_writing:
            status = result.status
        for event in result.events:
            if event.reason.startswith(("Speculation", "Quantization", "EngineSchedule")):
                decisions.append((w, event.reason, event.message))

    outcome = loop.run(plan, controller, cause=lambda w: causes.get(w, "plan"))
    outcome.decisions = decisions
    outcome.final_status = status
    return outcome


# --- figures -----------------------------------------------------------------------------------


def quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def tpot(r: Request) -> float | None:
    if r.finished_at is None or r.first_token_at is None or r.generated <= 1:
        return None
    return (r.finished_at - r.first_token_at) / (r.generated - 1)


def window_p99(outcome: Outcome, windows: int) -> list[float | None]:
    """Exact P99 TPOT of the requests that finished in each 30 s window (None: none finished)."""
    by_window: list[list[float]] = [[] for _ in range(windows)]
    for r in outcome.finished:
        value = tpot(r)
        assert r.finished_at is not None
        w = int(r.finished_at // INTERVAL_S)
        if value is not None and w < windows:
            by_window[w].append(value)
    return [quantile(v, 0.99) if v else None for v in by_window]


def summary(outcome: Outcome, windows: int) -> dict[str, Any]:
    end = windows * INTERVAL_S
    done = [r for r in outcome.finished if r.finished_at is not None and r.finished_at <= end]
    tpots = [v for r in done if (v := tpot(r)) is not None]
    per_window = window_p99(outcome, windows)
    return {
        "p50_tpot_ms": round(quantile(tpots, 0.5) * 1000, 2),
        "p99_tpot_ms": round(quantile(tpots, 0.99) * 1000, 2),
        "p50_ttft_ms": round(quantile(outcome.first_tokens, 0.5) * 1000, 1),
        "p99_ttft_ms": round(quantile(outcome.first_tokens, 0.99) * 1000, 1),
        "goodput_tokens_per_s": round(sum(r.generated for r in done) / end, 1),
        "restarts": outcome.restarts,
        "restarts_by_cause": dict(sorted(outcome.restarts_by_cause.items())),
        "load_restarts": outcome.restarts_by_cause.get("load", 0),
        "windows_with_engine_schedule": sum(
            1 for key in outcome.schedule[:windows] if any(SCHEDULE_KEY in item for item in key)
        ),
        "switches": outcome.switches,
        "lost_capacity_s": round(outcome.lost_capacity_s, 1),
        "window_p99_tpot_ms": [None if v is None else round(v * 1000, 2) for v in per_window],
    }


Kappa = float | Sequence[float]
"""The price of a switch in J: one for every window, or per window (the switch's first)."""


def _kappa_at(kappa: Kappa, w: int) -> float:
    return kappa if isinstance(kappa, float | int) else kappa[w]


def objective(costs: dict[Any, list[float]], schedule: Sequence[Any], kappa: Kappa) -> float:
    """J: the sum of the windows' log P99 TPOT (from each configuration's static run) plus
    kappa per switch (the price at the window the new configuration starts)."""
    total = sum(costs[c][w] for w, c in enumerate(schedule))
    switches = [w for w in range(1, len(schedule)) if schedule[w] != schedule[w - 1]]
    return total + sum(_kappa_at(kappa, w) for w in switches)


def best_schedule(costs: dict[Any, list[float]], windows: int, kappa: Kappa) -> list[Any]:
    """Dynamic programming over windows: the schedule minimising J."""
    options = list(costs)
    best = {c: costs[c][0] for c in options}
    back: list[dict[Any, Any]] = []
    for w in range(1, windows):
        step, came = {}, {}
        price = _kappa_at(kappa, w)
        for c in options:
            prev = min(options, key=lambda p: best[p] + (price if p != c else 0.0))
            step[c] = best[prev] + (price if prev != c else 0.0) + costs[c][w]
            came[c] = prev
        best = step
        back.append(came)
    last = min(options, key=lambda c: best[c])
    path = [last]
    for came in reversed(back):
        path.append(came[path[-1]])
    return list(reversed(path))


def log_costs(p99s: list[float | None]) -> list[float]:
    """log P99 TPOT per window; a window where nothing finished costs as the worst one."""
    worst = max((v for v in p99s if v is not None), default=1.0)
    return [math.log(v if v is not None else worst) for v in p99s]


@dataclass
class Evaluation:
    figures: dict[str, dict[str, Any]]
    objectives: dict[str, float]
    kappa: list[tuple[int, float]]
    """The measured price of a restart: (window of the forced restart, kappa)."""
    operator_decisions: dict[str, list[tuple[int, str, str]]]
    targets: dict[str, Any]


def geomean_ratio(a: list[float | None], b: list[float | None], skip: set[int]) -> float:
    logs = [
        math.log(x / y)
        for w, (x, y) in enumerate(zip(a, b, strict=True))
        if x and y and w not in skip
    ]
    return math.exp(statistics.fmean(logs)) if logs else math.nan


def evaluate(
    scenario: Scenario, seed: int, spare_gpus: int, out: Callable[[str], None]
) -> Evaluation:
    arrivals = trace(scenario, seed)
    windows = scenario.windows

    def loop(free: bool = False) -> Loop:
        return Loop(scenario, arrivals, seed, spare_gpus, free)

    options: list[tuple[bool, int]] = [(True, 0), (False, 0)]
    if any(p.quantization != "int8" for p in scenario.phases):
        options += [(True, 1), (False, 1)]
    statics = {c: loop().run(fixed(scenario, *c)) for c in options}
    p99s = {c: window_p99(o, windows) for c, o in statics.items()}
    costs = {c: log_costs(p99s[c]) for c in options}
    # kappa: the price of a restart, measured in the better static run in the middle of every
    # phase and interpolated in between (a rolling restart costs little at low load)
    better = min(((True, 0), (False, 0)), key=lambda c: sum(costs[c]))
    measured = []
    for at in restart_probes(scenario):
        run = loop().run(fixed(scenario, *better), force_restart_at=at)
        price = sum(log_costs(window_p99(run, windows))) - sum(costs[better])
        measured.append((at, max(0.0, price)))
    kappa = interpolate(measured, windows)
    schedule = best_schedule(costs, windows, kappa)
    free = best_schedule(costs, windows, 0.0)
    runs: dict[str, Outcome] = {
        "static-on": statics[True, 0],
        "static-off": statics[False, 0],
        "operator": run_operator(loop(), 1, RESTART_RELEASE),
        "operator-recorded": run_operator(loop(), 0, RESTART_RELEASE),
        "operator-schedule": (first_day := run_operator(loop(), 1, SCHEDULE_RELEASE)),
        # the same trace the next day, from the status the first day left: what was learned
        # (the curve, the engine schedule) is kept in status, as across an operator restart
        "operator-schedule-next-day": run_operator(
            loop(), 1, SCHEDULE_RELEASE, first_day.final_status, day=1
        ),
        "oracle": loop().run(scheduled(scenario, schedule)),
        "oracle-window": loop(free=True).run(scheduled(scenario, free)),
    }
    figures = {name: summary(o, windows) for name, o in runs.items()}
    # each run's schedule in the oracle's terms (the configuration it ran per window; another
    # release, or speculation with the engine schedule, counts as the same option without it)
    by_key = {choice_of(statics[c].schedule[w]): c for c in options for w in range(windows)}
    objectives = {}
    for name, o in runs.items():
        chosen = [by_key.get(choice_of(k), better) for k in o.schedule]
        objectives[name] = round(objective(costs, chosen, kappa), 3)
    objectives["oracle"] = round(objective(costs, schedule, kappa), 3)
    objectives["oracle-window"] = round(objective(costs, free, 0.0), 3)
    for name in figures:
        figures[name]["objective"] = objectives[name]
    targets = judge(scenario, figures, p99s)
    report(scenario, len(arrivals), figures, measured, runs, targets, out)
    return Evaluation(
        figures,
        objectives,
        measured,
        {k: runs[k].decisions for k in OPERATORS},
        targets,
    )


def restart_probes(scenario: Scenario) -> list[int]:
    """The windows where the price of a restart is measured: the middle of every phase."""
    probes, start = [], 0
    for phase in scenario.phases:
        probes.append(max(1, start + phase.windows // 2))
        start += phase.windows
    return sorted(set(probes))


def interpolate(points: list[tuple[int, float]], windows: int) -> list[float]:
    """A value per window, linear between the measured points, flat beyond the first and last."""
    values = []
    for w in range(windows):
        if w <= points[0][0]:
            values.append(points[0][1])
        elif w >= points[-1][0]:
            values.append(points[-1][1])
        else:
            i = bisect.bisect_right([p for p, _ in points], w)
            (a, ka), (b, kb) = points[i - 1], points[i]
            values.append(ka + (kb - ka) * (w - a) / (b - a))
    return values


def reaction_windows() -> int:
    """Windows after a change of the better static choice in which the operator may still lag:
    the rate window filling with the new traffic, failureLimit checks, and the new pods'
    startup (about 205 s)."""
    return WINDOW_S // INTERVAL_S + int(POLICY["failureLimit"]) + math.ceil(205 / INTERVAL_S)  # type: ignore[call-overload]


OPERATORS = ("operator", "operator-recorded", "operator-schedule", "operator-schedule-next-day")
WINDOW_GEOMEAN_TARGET = 1.05
"""Issue 18: the schedule operator per window within 5% of the free-switching oracle (day)."""
CAPTURED_TARGET = 0.90
"""Issue 18: at least 90% of oracle-window's per-window gain over the better static (day)."""


def window_gain(policy: list[float | None], static: list[float | None]) -> float:
    """Sum over windows of log(static's P99 / the policy's): the policy's per-window gain over
    the static choice in log terms. Windows where the static finished nothing are left out; a
    window where the policy finished nothing (an outage) counts as its worst window."""
    worst = max((v for v in policy if v is not None), default=1.0)
    return sum(
        math.log(s / (p if p is not None else worst))
        for p, s in zip(policy, static, strict=True)
        if s is not None
    )


def judge(
    scenario: Scenario, figures: dict[str, dict[str, Any]], p99s: dict[Any, list[float | None]]
) -> dict[str, Any]:
    """The issue's targets for the operator variants: the restart-based operator (with control
    replicas, and with the recorded baseline) and the one that sets the learned schedule."""
    oracle, free = figures["oracle"], figures["oracle-window"]
    on, off = figures["static-on"], figures["static-off"]
    better_static = on if on["p99_tpot_ms"] <= off["p99_tpot_ms"] else off
    # the better static choice per window in log terms: the lower sum of log window P99 (J
    # without switches; windows where either finished nothing left out)
    pairs = [(a, b) for a, b in zip(on["window_p99_tpot_ms"], off["window_p99_tpot_ms"],
                                    strict=True) if a and b]  # fmt: skip
    log_on_off = sum(math.log(a / b) for a, b in pairs)
    static_name = "static-on" if log_on_off <= 0 else "static-off"
    static_w = figures[static_name]["window_p99_tpot_ms"]
    free_gain = window_gain(free["window_p99_tpot_ms"], static_w)
    on_w, off_w = on["window_p99_tpot_ms"], off["window_p99_tpot_ms"]
    better = [(a or math.inf) <= (b or math.inf) for a, b in zip(on_w, off_w, strict=True)]
    last_change, inside = 0, set()  # the start counts as a change: the operator starts as told
    for w in range(len(better)):
        if w and better[w] != better[w - 1]:
            last_change = w
        if w - last_change < reaction_windows():
            inside.add(w)
    result: dict[str, Any] = {}
    for name in OPERATORS:
        f = figures[name]
        worse = []
        for w, v in enumerate(f["window_p99_tpot_ms"]):
            statics = [x for x in (on_w[w], off_w[w]) if x is not None]
            if w in inside or not statics:
                continue
            if v is None or v > TOLERANCE * min(statics):  # nothing finished: an outage
                worse.append(w)
        result[name] = {
            "p99_tpot_vs_oracle": round(f["p99_tpot_ms"] / oracle["p99_tpot_ms"], 3),
            "goodput_vs_oracle": round(
                f["goodput_tokens_per_s"] / oracle["goodput_tokens_per_s"], 3
            ),
            "window_geomean_vs_oracle": round(
                geomean_ratio(f["window_p99_tpot_ms"], oracle["window_p99_tpot_ms"], set()), 3
            ),
            "p99_tpot_vs_better_static": round(f["p99_tpot_ms"] / better_static["p99_tpot_ms"], 3),
            "windows_over_10pct_outside_reaction": worse,
            "window_geomean_vs_oracle_window": round(
                geomean_ratio(f["window_p99_tpot_ms"], free["window_p99_tpot_ms"], set()), 3
            ),
            "better_static_per_window": static_name,
            "window_gain_vs_better_static": round(
                window_gain(f["window_p99_tpot_ms"], static_w), 3
            ),
            "oracle_window_gain_vs_better_static": round(free_gain, 3),
            "window_gain_captured": round(
                window_gain(f["window_p99_tpot_ms"], static_w) / free_gain, 3
            )
            if free_gain > 0
            else None,
            "load_restarts": f["load_restarts"],
        }
    for s in (result["operator-schedule"], result["operator-schedule-next-day"]):
        if scenario.name == "day":
            s["issue_targets"] = {
                "window_geomean_within_5pct_of_oracle_window": s["window_geomean_vs_oracle_window"]
                <= WINDOW_GEOMEAN_TARGET,
                "captures_90pct_of_oracle_window_gain": s["window_gain_captured"] is not None
                and s["window_gain_captured"] >= CAPTURED_TARGET,
                "no_load_restart": s["load_restarts"] == 0,
            }
        else:
            s["issue_targets"] = {
                "p99_tpot_within_10pct_of_oracle": s["p99_tpot_vs_oracle"] <= TOLERANCE,
                "window_geomean_within_10pct_of_oracle": s["window_geomean_vs_oracle"] <= TOLERANCE,
            }
    return result


def report(
    scenario: Scenario,
    requests: int,
    figures: dict[str, dict[str, Any]],
    kappa: list[tuple[int, float]],
    runs: dict[str, Outcome],
    targets: dict[str, Any],
    out: Callable[[str], None],
) -> None:
    out(f"\n### {scenario.title}\n")
    prices = ", ".join(f"{k:.1f} at window {w}" for w, k in kappa)
    out(f"{requests} requests, {scenario.windows} windows of {INTERVAL_S}s; a restart costs "
        f"kappa = {prices} in the oracle's objective (interpolated in between)\n")  # fmt: skip
    out("| policy | P50 TPOT ms | P99 TPOT ms | P50 TTFT ms | P99 TTFT ms | goodput tok/s "
        "| restarts (by load) | lost replica-s | objective J |")  # fmt: skip
    out("|---|---|---|---|---|---|---|---|---|")
    for name, f in figures.items():
        out(
            f"| {name} | {f['p50_tpot_ms']:.1f} | {f['p99_tpot_ms']:.1f} | {f['p50_ttft_ms']:.0f} "
            f"| {f['p99_ttft_ms']:.0f} | {f['goodput_tokens_per_s']:.0f} | {f['restarts']} "
            f"({f['load_restarts']}) | {f['lost_capacity_s']:.0f} | {f['objective']:.1f} |"
        )
    out("")
    for name, t in targets.items():
        worse = t["windows_over_10pct_outside_reaction"]
        out(
            f"- {name}: P99 TPOT {t['p99_tpot_vs_oracle']:.2f}x the cost-aware oracle's, "
            f"goodput {t['goodput_vs_oracle']:.2f}x, per-window geomean "
            f"{t['window_geomean_vs_oracle']:.2f}x; {t['p99_tpot_vs_better_static']:.2f}x the "
            f"better static; windows >10% worse than the better static outside the reaction "
            f"time: {len(worse)} {worse}"
        )
        captured = t["window_gain_captured"]
        out(
            f"  per window: geomean {t['window_geomean_vs_oracle_window']:.3f}x oracle-window's; "
            f"gain over {t['better_static_per_window']} {t['window_gain_vs_better_static']:.2f} "
            f"of oracle-window's {t['oracle_window_gain_vs_better_static']:.2f} (log terms"
            + (f", {captured:.0%} captured" if captured is not None else "")
            + f"); restarts by cause {runs[name].restarts_by_cause or {}}"
            + (f"; issue targets {t['issue_targets']}" if "issue_targets" in t else "")
        )
        for w, reason, message in runs[name].decisions:
            out(f"  - window {w}: {reason}: {message}")


def plot(name: str, title: str, figures: dict[str, dict[str, Any]], path: Path) -> None:
    """P99 TPOT per window (log scale) for every policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    for policy, f in figures.items():
        values = f["window_p99_tpot_ms"]
        minutes = [(w + 0.5) * INTERVAL_S / 60 for w in range(len(values))]
        style = {"linewidth": 2.0} if policy.startswith("operator") else {"linestyle": "--"}
        ax.plot(minutes, [math.nan if v is None else v for v in values], label=policy, **style)
    ax.set_yscale("log")
    ax.set_ylabel("P99 TPOT per 30 s window (ms)")
    ax.set_xlabel("simulated minutes")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None, out: Callable[[str], None] = print) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="phase lengths x this (0.25 for a quick look)")  # fmt: skip
    parser.add_argument("--spare-gpus", type=int, default=0)
    parser.add_argument("--scenario", choices=[s.name for s in SCENARIOS], action="append")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--plots", type=Path, help="write decision-quality-<trace>.png here")
    args = parser.parse_args(argv)
    chosen = [
        s.scaled(args.scale) for s in SCENARIOS if not args.scenario or s.name in args.scenario
    ]
    out(f"startup per restart from the weights at {LOCAL_LOAD_GB_PER_S} GB/s (local cache); "
        f"spare GPUs {args.spare_gpus}")  # fmt: skip
    results = {s.name: evaluate(s, args.seed, args.spare_gpus, out) for s in chosen}
    document = {name: e.figures for name, e in results.items()}
    if args.plots is not None:
        for s in chosen:
            plot(
                s.name,
                s.title,
                results[s.name].figures,
                args.plots / f"decision-quality-{s.name}.png",
            )
    if args.json is not None:
        meta = {
            "seed": args.seed,
            "scale": args.scale,
            "spare_gpus": args.spare_gpus,
            "kappa": {name: [[w, round(k, 3)] for w, k in e.kappa] for name, e in results.items()},
            "targets": {name: e.targets for name, e in results.items()},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**document, "_meta": meta}, indent=1) + "\n")
    return document


if __name__ == "__main__":
    main()
