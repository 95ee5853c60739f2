"""Simulator vs the vLLM team's published speculative-decoding results, side by side.

Setup as published (Oct 2024): Llama-3-70B on 4x H100; a Qwama-0.5B draft on ShareGPT-like chat
and n-gram prompt lookup on CNN/DailyMail-like summarization, at QPS 1 and at a saturating QPS.
Plus the decision framework's acceptance-versus-temperature curve. Everything runs in simulated
time (the engine's discrete-event mode), so the figures are deterministic for a seed.

    .venv/bin/python bench/calibrate_sim.py [--duration 600] [--seed 1]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
from dataclasses import dataclass

from specpilot_lab.sim.engine import Arrival, Engine, Request
from specpilot_lab.sim.vllm_args import parse_server_args

TARGET = "meta-llama/Llama-3.1-70B-Instruct"
BASE = [TARGET, "--tensor-parallel-size", "4", "--max-model-len", "8192"]
# The published runs were on the V0 engine (vLLM 0.6), with its per-flag options; Qwama's 14
# attention heads cannot be split over 4 GPUs, so its draft ran with tensor parallelism 1.
DRAFT = [
    "--speculative-model",
    "turboderp/Qwama-0.5B-Instruct",
    "--num-speculative-tokens",
    "4",
    "--speculative-draft-tensor-parallel-size",
    "1",
]
NGRAM = [
    "--speculative-model",
    "[ngram]",
    "--num-speculative-tokens",
    "4",
    "--ngram-prompt-lookup-max",
    "4",
    "--ngram-prompt-lookup-min",
    "1",
]
ENV = {"SPECPILOT_SIM_GPU": "H100-80GB", "SPECPILOT_SIM_VLLM_VERSION": "0.6.3"}


@dataclass(frozen=True)
class Workload:
    name: str
    prompt_median: float
    prompt_sigma: float
    output_median: float
    output_sigma: float
    echo: float
    temperature: float = 0.0


SHAREGPT = Workload("ShareGPT-like chat", 180, 1.0, 220, 0.8, echo=0.2)
CNN_DM = Workload("CNN/DailyMail-like summarization", 780, 0.35, 70, 0.3, echo=0.6)
SATURATING_QPS = {SHAREGPT.name: 24.0, CNN_DM.name: 14.0}
"""Where the server without speculation is at its limit (TPOT several times its QPS-1 value);
prefill-heavy summarization saturates at a lower QPS than chat."""


def arrivals(workload: Workload, qps: float, duration: float, seed: int) -> list[Arrival]:
    rng = random.Random(seed)
    t, out = 0.0, []
    while True:
        t += rng.expovariate(qps)
        if t > duration:
            return out
        prompt = min(
            4096,
            max(
                8, int(rng.lognormvariate(math.log(workload.prompt_median), workload.prompt_sigma))
            ),
        )
        output = min(
            2048,
            max(
                4, int(rng.lognormvariate(math.log(workload.output_median), workload.output_sigma))
            ),
        )
        out.append(Arrival(t, prompt, output, workload.temperature, workload.echo))


def mean_tpot_ms(requests: list[Request]) -> float:
    values = [
        (r.finished_at - r.first_token_at) / (r.generated - 1) * 1000
        for r in requests
        if r.finished_at is not None and r.first_token_at is not None and r.generated > 1
    ]
    return statistics.fmean(values)


def run(argv: list[str], workload: Workload, qps: float, duration: float, seed: int) -> float:
    engine = Engine(parse_server_args(argv, ENV), seed=seed)
    return mean_tpot_ms(engine.simulate(arrivals(workload, qps, duration, seed)))


def acceptance_at(temperature: float, duration: float, seed: int) -> float:
    argv = [
        *BASE,
        "--speculative-config",
        '{"method": "draft_model", "model": '
        '"meta-llama/Llama-3.1-8B-Instruct", "num_speculative_tokens": 5}',
    ]
    engine = Engine(parse_server_args(argv, {"SPECPILOT_SIM_GPU": "H100-80GB"}), seed=seed)
    work = Workload("chat", 180, 1.0, 220, 0.8, echo=0.2, temperature=temperature)
    engine.simulate(arrivals(work, 1.0, duration, seed))
    counters = {m.name: m for m in engine.metrics.registry.collect()}
    accepted = counters["vllm:spec_decode_num_accepted_tokens"].samples[0].value
    drafted = counters["vllm:spec_decode_num_draft_tokens"].samples[0].value
    return float(accepted / drafted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="simulated seconds")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rows = []
    for workload, speculation, label, saturating, published in (
        (SHAREGPT, DRAFT, "draft Qwama-0.5B", SATURATING_QPS[SHAREGPT.name], (1.5, 1 / 1.4)),
        (CNN_DM, NGRAM, "n-gram", SATURATING_QPS[CNN_DM.name], (2.8, 1 / 1.8)),
    ):
        for qps, expected in ((1.0, published[0]), (saturating, published[1])):
            off = run(BASE, workload, qps, args.duration, args.seed)
            on = run(BASE + speculation, workload, qps, args.duration, args.seed)
            rows.append((workload.name, label, qps, off, on, off / on, expected))
    print(
        "| workload | speculation | QPS | mean TPOT off (ms) | on (ms) | simulated speedup "
        "| published |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, label, qps, off, on, speedup, expected in rows:
        print(
            f"| {name} | {label} | {qps:g} | {off:.1f} | {on:.1f} | {speedup:.2f}x "
            f"| {expected:.2f}x |"
        )
    print()
    print("| temperature | simulated acceptance (8B draft -> 70B, k=5) | decision framework |")
    print("|---|---|---|")
    for temperature, framework in ((0.0, 0.81), (0.4, 0.71), (0.8, 0.52), (1.0, 0.38)):
        measured = acceptance_at(temperature, args.duration / 2, args.seed)
        print(f"| {temperature:g} | {measured:.2f} | {framework:.2f} |")


if __name__ == "__main__":
    main()
