"""The simulator's physics: how long an engine step takes and how many tokens it yields.

A roofline per GPU: a step costs the larger of reading the weights and KV cache from HBM and
doing the matmuls at the GPU's BF16 rate, plus tensor-parallel communication and a fixed launch
overhead. Speculation adds the draft's proposals and makes the target verify k+1 positions per
request; a request then gains 1..k+1 tokens, per-token acceptance alpha giving
(1 - alpha^(k+1)) / (1 - alpha) on average (Leviathan et al.). docs/simulator.md has the numbers.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from itertools import pairwise

from specpilot.api.models import Quantization, SpeculationMethod
from specpilot.catalog import GPUType, ModelArchitecture

BANDWIDTH_EFFICIENCY = 0.8
"""Share of peak HBM bandwidth a decode step achieves."""
COMPUTE_EFFICIENCY = 0.5
"""Share of peak BF16 FLOP/s large batched matmuls achieve."""
STEP_OVERHEAD_S = 0.002
"""Scheduling, sampling and kernel launches per engine step."""
ALLREDUCE_S = 12e-6
"""One tensor-parallel all-reduce (two per layer)."""
PROPOSER_OVERHEAD_S = 0.0004
"""Per draft forward pass: launches and bookkeeping beyond its roofline time (V1)."""
V0_PROPOSER_OVERHEAD_S = 0.0015
"""The same on the V0 engine (vLLM < 0.10), whose proposer ran through the Python worker."""
V0_VERIFY_OVERHEAD_S = 0.003
"""V0's scorer and rejection sampler per speculative step. V0 also scored by batch expansion:
each of the k+1 positions was a sequence of its own, re-reading that request's KV cache."""
NGRAM_LOOKUP_S_PER_REQUEST = 0.00002
"""CPU prompt lookup for one request (n-gram and suffix methods, V1)."""
V0_NGRAM_LOOKUP_S_PER_REQUEST = 0.0004
"""V0's n-gram proposer looped over sequences in Python with GPU tensor ops for each one."""
PIECEWISE_CUDA_GRAPH_S_PER_LAYER = 20e-6
"""An assumption, not a measurement: what the target's forward pass loses per layer when its
CUDA graphs are PIECEWISE instead of FULL (attention runs outside the captured graphs, its
kernels launched one by one). vLLM forces PIECEWISE when the speculative config carries
num_speculative_tokens_per_batch_size on Model Runner V1 (docs/vllm-versions.md section 4), so
there every step pays it, speculating or not; Model Runner V2 keeps full graphs. Issue 18 cites
about 14% slower single-stream decoding without full CUDA graphs; 20 us per layer is a more
modest 8% of a single Llama-3.1-8B stream on an H100 (32 layers: 0.64 ms on an 8 ms step), 9%
for Llama-3.1-70B on 4 x H100, and less as batches grow, being a fixed launch cost per pass.
Draft passes are left as they are (docs/simulator.md)."""

ADAPTIVE_ACCEPTANCE_PRIOR = 0.7
"""An assumption: the per-token acceptance adaptive verification (enable_adaptive_verification)
assumes before the target has verified any draft. vLLM's OnlineAcceptanceEstimator has no prior
rate: it starts from coefficients fitted across five models (slope 0.5, intercept -0.2 on the
draft distribution's logit(max q)), which the simulator, having no draft logits, cannot apply."""
ESTIMATOR_PRIOR_OBSERVATIONS = 50.0
"""How many verified drafts the prior weighs as; vLLM damps each refit by n / (n + 50)."""
ESTIMATOR_MEMORY_STEPS = 100.0
"""What the estimate remembers: each step's observations lose weight by a factor e per this many
steps. vLLM refits every 100 steps from the drafts verified since the last refit."""

# Acceptance at temperature 0 for a same-family draft near the 1:8-1:12 sweet spot, and the
# framework's temperature curve for such a pair (0.81, 0.71, 0.52, 0.38 at T = 0, 0.4, 0.8, 1.0).
TEMPERATURE_CURVE = ((0.0, 1.0), (0.4, 0.877), (0.8, 0.642), (1.0, 0.469), (2.0, 0.2))
BASE_ACCEPTANCE = {
    SpeculationMethod.DRAFT_MODEL: 0.81,
    SpeculationMethod.EAGLE: 0.74,
    SpeculationMethod.EAGLE3: 0.80,
    SpeculationMethod.MTP: 0.85,
}
TARGET_QUANTIZATION_PENALTY = {
    Quantization.FP8: 0.015,
    Quantization.INT8: 0.02,
    Quantization.INT4: 0.08,
    Quantization.AWQ: 0.08,
    Quantization.GPTQ: 0.08,
    Quantization.BITSANDBYTES: 0.09,
}
"""Acceptance points lost when the target is quantized (more with sampling: x (1 + T))."""
FAMILY_MISMATCH_PENALTY = 0.12
LOOKUP_ACCEPTANCE_PER_ECHO = 0.9
"""n-gram/suffix: per-token acceptance is about this times how much the output echoes the prompt."""


@dataclass(frozen=True)
class Hardware:
    gpu: GPUType
    tensor_parallel: int

    @property
    def bandwidth(self) -> float:
        return self.gpu.hbm_tb_per_s * 1e12 * BANDWIDTH_EFFICIENCY

    @property
    def flops(self) -> float:
        return self.gpu.bf16_tflops * 1e12 * COMPUTE_EFFICIENCY


@dataclass(frozen=True)
class ModelCost:
    """What one forward pass of a model costs per GPU."""

    parameters: float
    weight_bytes_per_gpu: float
    kv_bytes_per_token_per_gpu: float
    layers: int
    tensor_parallel: int

    def step_seconds(self, hw: Hardware, tokens: int, context_tokens: int) -> float:
        """One forward pass over `tokens` new tokens reading `context_tokens` cached ones."""
        memory = (
            self.weight_bytes_per_gpu + context_tokens * self.kv_bytes_per_token_per_gpu
        ) / hw.bandwidth
        compute = 2 * self.parameters * tokens / self.tensor_parallel / hw.flops
        communication = 2 * self.layers * ALLREDUCE_S if self.tensor_parallel > 1 else 0.0
        return max(memory, compute) + communication


def temperature_factor(temperature: float) -> float:
    """The framework's curve, linearly interpolated (clamped at both ends)."""
    points = TEMPERATURE_CURVE
    if temperature <= points[0][0]:
        return points[0][1]
    for (t0, f0), (t1, f1) in pairwise(points):
        if temperature <= t1:
            return f0 + (f1 - f0) * (temperature - t0) / (t1 - t0)
    return points[-1][1]


def draft_size_factor(target: ModelArchitecture, draft: ModelArchitecture) -> float:
    """Drafts far from the 1:8-1:12 sweet spot are accepted less often."""
    ratio = target.parameters_billions / max(draft.parameters_billions, 1e-3)
    distance = max(0.0, math.log2(ratio / 10.0))  # a 1:10 draft loses nothing, 1:160 four steps
    return max(0.35, 1.0 - 0.09 * distance)


@dataclass(frozen=True)
class AcceptanceModel:
    method: SpeculationMethod
    base: float
    """Acceptance rate at temperature 0 for this pair, before quantization."""
    target_quantization: Quantization

    def rate(self, temperature: float, echo: float) -> float:
        """Expected acceptance rate (accepted / proposed draft tokens) for one request."""
        if self.method in (SpeculationMethod.NGRAM, SpeculationMethod.SUFFIX):
            # Prompt lookup does not depend on sampling much: it copies spans of the prompt.
            return min(0.97, LOOKUP_ACCEPTANCE_PER_ECHO * echo)
        penalty = TARGET_QUANTIZATION_PENALTY.get(self.target_quantization, 0.0)
        value = self.base * temperature_factor(temperature) - penalty * (1 + temperature)
        return min(0.97, max(0.01, value))


def acceptance_model(
    method: SpeculationMethod,
    target: ModelArchitecture,
    draft: ModelArchitecture | None,
    target_quantization: Quantization,
) -> AcceptanceModel:
    base = BASE_ACCEPTANCE.get(method, 0.0)
    if method is SpeculationMethod.DRAFT_MODEL and draft is not None:
        base *= draft_size_factor(target, draft)
        if draft.family and target.family and draft.family != target.family:
            base -= FAMILY_MISMATCH_PENALTY
    return AcceptanceModel(method=method, base=base, target_quantization=target_quantization)


def acceptance_rate(alpha: float, k: int) -> float:
    """Share of k proposed tokens accepted when each is accepted with probability alpha."""
    if alpha >= 1.0:
        return 1.0
    return alpha * (1 - alpha**k) / ((1 - alpha) * k)


def per_token_alpha(rate: float, k: int) -> float:
    """The per-token acceptance that yields `rate` with k draft tokens (bisection)."""
    low, high = 0.0, 0.9999
    for _ in range(50):
        middle = (low + high) / 2
        if acceptance_rate(middle, k) < rate:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def expected_tokens_per_step(alpha: float, k: int) -> float:
    """Mean tokens a request gains per verification step, including the bonus token."""
    if alpha >= 1.0:
        return float(k + 1)
    return (1 - alpha ** (k + 1)) / (1 - alpha)


def sample_accepted(alpha: float, k: int, rng: random.Random) -> int:
    """Draft tokens accepted in one step: the prefix until the first rejection."""
    accepted = 0
    while accepted < k and rng.random() < alpha:
        accepted += 1
    return accepted


class AcceptanceEstimator:
    """Adaptive verification's online estimate of the per-token acceptance: the probability that
    a verified draft is accepted when every draft before it was. It learns from what the target
    verified, as vLLM's OnlineAcceptanceEstimator labels it: each request's accepted drafts
    (accepted) and its first rejected one (observed, not accepted); drafts after a rejection or
    not verified tell nothing. Exponentially weighted by step, starting from a prior that weighs
    as ESTIMATOR_PRIOR_OBSERVATIONS drafts and fades like any other observation.

    vLLM fits a logistic model of each draft's own confidence (logit(max q) of the draft
    distribution, one intercept per position), so it ranks drafts request by request. The
    simulator draws acceptance per request from one per-token probability and has no draft
    logits: one rate for all positions and requests is what it can estimate."""

    def __init__(self, prior: float = ADAPTIVE_ACCEPTANCE_PRIOR) -> None:
        self.accepted = prior * ESTIMATOR_PRIOR_OBSERVATIONS
        self.observed = ESTIMATOR_PRIOR_OBSERVATIONS
        self._decay = math.exp(-1.0 / ESTIMATOR_MEMORY_STEPS)

    @property
    def value(self) -> float:
        return self.accepted / self.observed

    def update(self, accepted: int, observed: int) -> None:
        """One step's verification: `accepted` drafts accepted out of `observed` graded."""
        self.accepted = self.accepted * self._decay + accepted
        self.observed = self.observed * self._decay + observed
