"""What the simulator's engine tests share: its counters, and seeded Poisson arrivals."""

from __future__ import annotations

import random

from specpilot_lab.sim.engine import Arrival, Engine

SPEC_DECODE_COUNTERS = (
    "generation_tokens",
    "spec_decode_num_drafts",
    "spec_decode_num_draft_tokens",
    "spec_decode_num_accepted_tokens",
)


def counter(engine: Engine, name: str, **labels: str) -> float:
    value = engine.metrics.registry.get_sample_value(
        f"vllm:{name}_total", {**engine.metrics.labels, **labels}
    )
    assert value is not None, name
    return value


def spec_decode_counters(engine: Engine) -> dict[str, float]:
    return {name: counter(engine, name) for name in SPEC_DECODE_COUNTERS}


def poisson_arrivals(
    seed: int,
    count: int,
    qps: float,
    prompt: tuple[int, int],
    output: tuple[int, int],
    temperatures: tuple[float, ...],
) -> list[Arrival]:
    """`count` arrivals at `qps`, prompt and output lengths and temperature drawn uniformly."""
    rng = random.Random(seed)
    t, arrivals = 0.0, []
    for _ in range(count):
        t += rng.expovariate(qps)
        arrivals.append(
            Arrival(t, rng.randint(*prompt), rng.randint(*output), rng.choice(temperatures))
        )
    return arrivals
