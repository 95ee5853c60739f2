"""A continuous-batching engine loop, with the planner's KV cache and the physics' step times.

Time runs `time_scale` times faster than the wall clock: every duration the engine reports (to
clients and in metrics) is simulated time, so a scaled run looks like a real one, only shorter.
Steps follow one another on the engine's own clock, paced by the wall clock: a step that starts
late because the machine is busy is made up by sleeping less after it, so what the engine
reports does not depend on how loaded the machine is (up to MAX_LAG_SECONDS behind).
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter, deque
from dataclasses import dataclass, field

from packaging.version import Version

from specpilot.api.models import SpeculationMethod, SpeculativeInferenceSpec
from specpilot.catalog import GPU_TYPES, lookup_model
from specpilot.findings import Severity
from specpilot.planning.memory import MemoryPlan, ModelFootprint, plan
from specpilot.vllm_versions import (
    Feature,
    adaptive_verification_methods,
    runs_model_runner_v2,
    supports,
)
from specpilot_lab.sim import physics
from specpilot_lab.sim.metrics import VLLMMetrics
from specpilot_lab.sim.vllm_args import ServerConfig, SimArgsError

MAX_LAG_SECONDS = 1.0
"""How far behind its schedule (wall seconds) the engine catches up; beyond it, the machine cannot
run the engine at this load and time scale, and the lost time shows as latency."""

WORDS = ("the", "model", "answers", "with", "a", "short", "and", "useful", "sentence", "here")


@dataclass(frozen=True)
class Arrival:
    at: float
    prompt_tokens: int
    max_tokens: int
    temperature: float = 0.0
    echo: float = 0.3


@dataclass
class Request:
    prompt_tokens: int
    max_tokens: int
    temperature: float
    echo: float
    arrival: float
    stream: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    generated: int = 0
    prefilled: bool = False
    first_token_at: float | None = None
    finished_at: float | None = None
    scheduled_at: float | None = None
    """When the engine first scheduled it (the end of its queue time)."""

    @property
    def context(self) -> int:
        return self.prompt_tokens + self.generated


def _cost(footprint: ModelFootprint, layers: int) -> physics.ModelCost:
    return physics.ModelCost(
        parameters=footprint.parameters_billions * 1e9,
        weight_bytes_per_gpu=footprint.weights_gb_per_gpu * 1e9,
        kv_bytes_per_token_per_gpu=footprint.kv_bytes_per_token_per_gpu,
        layers=layers,
        tensor_parallel=footprint.tensor_parallel_size,
    )


def plan_for(config: ServerConfig) -> MemoryPlan:
    """The planner's view of this server: what real vLLM would have for its KV cache."""
    speculation = None
    if config.speculation is not None:
        s = config.speculation
        speculation = {
            "method": s.method.value,
            "numSpeculativeTokens": s.num_speculative_tokens,
            **(
                {
                    "draft": {
                        "model": s.draft_model,
                        **(
                            {"tensorParallelSize": s.draft_tensor_parallel_size}
                            if s.draft_tensor_parallel_size
                            else {}
                        ),
                    }
                }
                if s.draft_model
                else {}
            ),
        }
    tp, pp = config.tensor_parallel_size, config.pipeline_parallel_size
    spec = SpeculativeInferenceSpec.model_validate(
        {
            "target": {
                "model": config.model,
                "quantization": config.quantization.value,
                "tensorParallelSize": tp,
                "pipelineParallelSize": pp,
                "maxModelLen": config.max_model_len,
                "kvCacheDtype": "auto" if config.kv_cache_dtype == "auto" else "fp8",
            },
            "speculation": speculation,
            "gpus": {
                "type": config.gpu,
                "count": tp * pp,
                "memoryUtilization": config.gpu_memory_utilization,
            },
        }
    )
    return plan(spec, Version(config.vllm_version))


def _dense_schedule(
    schedule: list[tuple[int, int, int]] | None, k: int, max_num_seqs: int
) -> list[int] | None:
    """k by batch size 0..max_num_seqs, as vLLM's scheduler looks it up: each range's k capped at
    num_speculative_tokens; a gap and the tail after the last range keep the previous range's k.
    Index 0 (no request) is unused."""
    if schedule is None:
        return None
    dense = [0] * (max_num_seqs + 1)
    for index, (start, _, steps) in enumerate(schedule):
        # From its start up to the next range's: the range itself, then the gap it leaves.
        following = schedule[index + 1][0] if index + 1 < len(schedule) else max_num_seqs + 1
        for batch in range(start, min(following, max_num_seqs + 1)):
            dense[batch] = min(k, steps)
    return dense


class Engine:
    def __init__(self, config: ServerConfig, time_scale: float = 1.0, seed: int = 0) -> None:
        target = lookup_model(config.model)
        if target is None:
            raise SimArgsError(f"the simulator has no architecture for {config.model}")
        memory = plan_for(config)
        blocking = [f for f in memory.findings if f.severity is Severity.ERROR]
        if blocking or memory.target is None:
            raise SimArgsError("vLLM would not start: " + "; ".join(str(f) for f in blocking))
        self.config = config
        self.plan = memory
        self.time_scale = time_scale
        self.rng = random.Random(seed)
        self.max_model_len = memory.max_model_len or 0
        self.capacity = memory.kv_cache_tokens
        self.hw = physics.Hardware(GPU_TYPES[config.gpu], config.tensor_parallel_size)
        self.target = _cost(memory.target, target.layers)
        speculation = config.speculation
        self.k = speculation.num_speculative_tokens if speculation else 0
        """num_speculative_tokens: every step's k without a schedule, the most any step uses."""
        self.schedule = speculation.schedule if speculation and self.k else None
        """num_speculative_tokens_per_batch_size (vLLM 0.24.0+), sorted ranges, or None."""
        self._k_by_batch = _dense_schedule(self.schedule, self.k, config.max_num_seqs)
        self.method = speculation.method if speculation else SpeculationMethod.NONE
        version = Version(config.vllm_version)
        self.adaptive = bool(
            speculation
            and speculation.adaptive_verification
            and self.method.value in adaptive_verification_methods(version)
        )
        """enable_adaptive_verification (vLLM 0.30.0+ for the methods that do it): each step
        verifies the number of its drafts that maximises expected tokens per second."""
        self.estimator = physics.AcceptanceEstimator() if self.adaptive else None
        """Adaptive verification's online acceptance estimate (None without it)."""
        self.piecewise_graphs = self.schedule is not None and not runs_model_runner_v2(
            version, self.method.value
        )
        """vLLM forces PIECEWISE CUDA graphs when a schedule is set, on Model Runner V1: every
        step pays for it. On Model Runner V2 (the default for most methods from 0.29.0, and the
        only runner adaptive verification runs on) a schedule keeps the full graphs
        (_maybe_override_dynamic_sd_cudagraph_mode, 0.24.0 to 0.33.0)."""
        self.step_counts: Counter[tuple[int, int]] = Counter()
        """Engine steps by (batch size, k): the requests scheduled and the draft tokens each
        decoding request got (0: a plain decode step). Bounded by max_num_seqs x distinct k."""
        self.verified_counts: Counter[tuple[int, int]] = Counter()
        """Engine steps by (batch size, drafts verified per decoding request): k but under
        adaptive verification, which may verify fewer than it drafted (0: none)."""
        self._verified: int | None = None
        """The drafts per decoding request the step under way verifies, set with its time."""
        self.target_layers = target.layers
        draft_arch = (
            lookup_model(speculation.draft_model)
            if speculation and speculation.draft_model
            else None
        )
        self.draft = (
            _cost(memory.draft, draft_arch.layers if draft_arch else 1) if memory.draft else None
        )
        self.acceptance = physics.acceptance_model(
            self.method, target, draft_arch, config.quantization
        )
        self.v0 = supports(version, Feature.V0_ENGINE)
        self.metrics = VLLMMetrics(config.served_model_name, version, self.k)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self._wake = asyncio.Event()
        self._start = 0.0
        self._clock = 0.0
        """Simulated time the steps have reached (serving HTTP)."""
        self._step_end: float | None = None
        """When the step under way ends, in simulated time (serving HTTP)."""
        self._words = itertools.cycle(WORDS)

    def now(self) -> float:
        """Simulated seconds since the engine started."""
        return (asyncio.get_running_loop().time() - self._start) * self.time_scale

    def submit(
        self,
        prompt_tokens: int,
        max_tokens: int,
        temperature: float,
        echo: float,
        at: float | None = None,
    ) -> Request:
        """Queue a request; `at` is its arrival in simulated time (now, when serving HTTP: at
        the latest the end of the step under way, which a late engine has not reached yet)."""
        if at is not None:
            arrival = at
        elif self._step_end is not None:
            arrival = min(self.now(), self._step_end)
        else:
            arrival = self.now()
        request = Request(prompt_tokens, max_tokens, temperature, echo, arrival=arrival)
        self.waiting.append(request)
        self.metrics.waiting.labels(**self.metrics.labels).set(len(self.waiting))
        self._wake.set()
        return request

    async def run(self) -> None:
        """Serve: each step lasts its simulated duration on the engine's clock, and sleeps until
        the wall clock (scaled) reaches its end; the time spent outside the sleep (this loop's
        own work, the HTTP handlers, waiting for a CPU) is part of the step, not added to it."""
        self._start = asyncio.get_running_loop().time()
        while True:
            self._admit(self._clock)
            if not self.running:
                self._wake.clear()
                await self._wake.wait()
                self._clock = self.now()  # idle until now: the next step starts on arrival
                continue
            seconds = self._step_seconds()
            self._clock = max(self._clock, self.now() - MAX_LAG_SECONDS * self.time_scale)
            self._step_end = self._clock + seconds
            await asyncio.sleep(max(0.0, (self._step_end - self.now()) / self.time_scale))
            self._clock, self._step_end = self._step_end, None
            self._advance(seconds, self._clock)

    def simulate(self, arrivals: list[Arrival]) -> list[Request]:
        """Play arrivals in simulated time only (discrete events, no sleeping, deterministic).

        The HTTP server runs the same steps against the wall clock; this mode is for calibration
        and benchmarks, where a simulated hour should take seconds and never depend on load.
        """
        pending = deque(sorted(arrivals, key=lambda a: a.at))
        requests: list[Request] = []
        clock = 0.0
        while pending or self.waiting or self.running:
            while pending and pending[0].at <= clock:
                a = pending.popleft()
                requests.append(
                    self.submit(a.prompt_tokens, a.max_tokens, a.temperature, a.echo, at=a.at)
                )
            self._admit(clock)
            if not self.running:
                if not pending:
                    break  # waiting requests that can never fit: vLLM would reject them too
                clock = pending[0].at
                continue
            step = self._step_seconds()
            clock += step
            self._advance(step, clock)
        return requests

    def _kv_used(self) -> int:
        """KV cache tokens the running requests hold."""
        return sum(r.context for r in self.running)

    def kv_usage(self) -> float:
        """vllm:kv_cache_usage_perc: the share of the KV cache the running requests hold."""
        return min(1.0, self._kv_used() / max(1, self.capacity))

    def _admit(self, now: float) -> None:
        used = self._kv_used()
        while (
            self.waiting
            and len(self.running) < self.config.max_num_seqs
            and used + self.waiting[0].context + 1 <= self.capacity
        ):
            request = self.waiting.popleft()
            if request.scheduled_at is None:
                request.scheduled_at = max(now, request.arrival)
            self.running.append(request)
            used += request.context
        self._publish_gauges()

    def _publish_gauges(self) -> None:
        m = self.metrics
        m.running.labels(**m.labels).set(len(self.running))
        m.waiting.labels(**m.labels).set(len(self.waiting))
        m.kv_usage.labels(**m.labels).set(self.kv_usage())

    def step_k(self) -> int:
        """This step's draft tokens per request: num_speculative_tokens, or with a schedule the
        k of the range holding the batch size (every request scheduled in the step, as vLLM
        counts it), capped at num_speculative_tokens. 0: the step does not speculate."""
        if self._k_by_batch is None:
            return self.k
        return self._k_by_batch[min(len(self.running), len(self._k_by_batch) - 1)]

    def _step_seconds(self) -> float:
        """The step's duration; under adaptive verification it also decides what it verifies."""
        decoding = [r for r in self.running if r.prefilled]
        prefill = sum(r.context for r in self.running if not r.prefilled)
        batch = len(decoding)
        context = sum(r.context for r in decoding)
        k = self.step_k()
        verified = k
        if self.estimator is not None and batch and k:
            prefilling = len(self.running) - batch
            verified = self._verification_budget(k, batch, prefill, context, prefilling)
        self._verified = verified
        return self._seconds(k, verified, batch, prefill, context)

    def _verification_budget(
        self, k: int, batch: int, prefill: int, context: int, prefilling: int
    ) -> int:
        """Adaptive verification: the drafts per decoding request, 0..k, that maximise expected
        tokens per second, batch * E[1 + accepted] (+ one first token per prefilling request)
        over the step's time, with the online acceptance estimate and the simulator's own step
        time as the cost model. The drafter has proposed k whatever is verified; the smallest
        count wins a tie. The same count for every request: one estimate covers them all."""
        assert self.estimator is not None
        alpha = self.estimator.value
        best, best_rate = 0, -1.0
        for verified in range(k + 1):
            tokens = batch * physics.expected_tokens_per_step(alpha, verified) + prefilling
            rate = tokens / self._seconds(k, verified, batch, prefill, context)
            if rate > best_rate:
                best, best_rate = verified, rate
        return best

    def _seconds(self, k: int, verified: int, batch: int, prefill: int, context: int) -> float:
        """A step drafting k tokens per decoding request and verifying `verified` of them."""
        per_request = verified + 1
        expansion = per_request if self.v0 else 1  # V0 scored each position as a sequence
        seconds = physics.STEP_OVERHEAD_S + self.target.step_seconds(
            self.hw,
            batch * per_request + min(prefill, self.config.max_num_batched_tokens),
            context * expansion,
        )
        if self.piecewise_graphs:
            seconds += self.target_layers * physics.PIECEWISE_CUDA_GRAPH_S_PER_LAYER
        if batch and k:
            if self.v0:
                seconds += physics.V0_VERIFY_OVERHEAD_S
            if self.draft is not None:
                one = self.draft.step_seconds(self.hw, batch, context)
                overhead = (
                    physics.V0_PROPOSER_OVERHEAD_S if self.v0 else (physics.PROPOSER_OVERHEAD_S)
                )
                seconds += k * (one + overhead)
            else:
                lookup = (
                    physics.V0_NGRAM_LOOKUP_S_PER_REQUEST
                    if self.v0
                    else (physics.NGRAM_LOOKUP_S_PER_REQUEST)
                )
                seconds += batch * lookup
        return seconds

    def _advance(self, step: float, now: float) -> None:
        m, lab = self.metrics, self.metrics.labels
        accepted_counts = []
        k = self.step_k()
        verified = k if self._verified is None else min(k, self._verified)
        self._verified = None
        self.step_counts[len(self.running), k] += 1
        self.verified_counts[len(self.running), verified] += 1
        for request in list(self.running):
            if not request.prefilled:
                request.prefilled = True
                if request.first_token_at is None:  # not a recompute after preemption
                    request.first_token_at = now
                    m.prompt_tokens.labels(**lab).inc(request.prompt_tokens)
                    m.record_prefill(request.prompt_tokens)
                    m.ttft.labels(**lab).observe(now - request.arrival)
                    self._emit(request, 1, now)
                continue
            tokens = 1
            if k:
                # Per-position acceptance is the draft's: alpha is fitted to the configured
                # num_speculative_tokens, so a step with fewer positions keeps their odds.
                # Drafts left unverified (adaptive verification) are not accepted.
                rate = self.acceptance.rate(request.temperature, request.echo)
                alpha = physics.per_token_alpha(rate, self.k)
                accepted = physics.sample_accepted(alpha, verified, self.rng)
                accepted_counts.append(accepted)
                tokens = accepted + 1
            self._emit(request, tokens, now)
            if m.itl is not None:
                m.itl.labels(**lab).observe(step)
            if m.old_tpot is not None:
                m.old_tpot.labels(**lab).observe(step / tokens)
        # vLLM's counters count the drafts the scheduler scheduled (k per request), verified or
        # not: the scheduler never learns what adaptive verification trimmed on the GPU.
        m.record_step(len(accepted_counts), k, accepted_counts)
        if self.estimator is not None and verified and accepted_counts:
            # Graded: the accepted drafts and the first rejected one, if within the verified.
            graded = sum(a + (1 if a < verified else 0) for a in accepted_counts)
            self.estimator.update(sum(accepted_counts), graded)
        self._preempt_if_full()
        self._publish_gauges()

    def _emit(self, request: Request, tokens: int, now: float) -> None:
        tokens = min(tokens, request.max_tokens - request.generated)
        request.generated += tokens
        self.metrics.generation_tokens.labels(**self.metrics.labels).inc(tokens)
        text = "".join(" " + next(self._words) for _ in range(tokens))
        request.stream.put_nowait(text)
        if request.generated >= request.max_tokens:
            self._finish(request, now)

    def _finish(self, request: Request, now: float) -> None:
        m, lab = self.metrics, self.metrics.labels
        request.finished_at = now
        self.running.remove(request)
        request.stream.put_nowait(None)
        m.e2e.labels(**lab).observe(now - request.arrival)
        if request.first_token_at is not None and request.scheduled_at is not None:
            m.record_finished(request.arrival, request.scheduled_at, request.first_token_at, now)
        if m.request_tpot is not None and request.generated > 1 and request.first_token_at:
            m.request_tpot.labels(**lab).observe(
                (now - request.first_token_at) / (request.generated - 1)
            )

    def _preempt_if_full(self) -> None:
        """Out of KV blocks: the newest request goes back to waiting and recomputes later."""
        while self.running and self._kv_used() > self.capacity:
            victim = self.running.pop()
            victim.prefilled = False
            self.metrics.record_preemption()
            self.waiting.appendleft(victim)
