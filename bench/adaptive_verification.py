"""Adaptive verification in the simulator against the published effect, side by side in one run.

The example pair (RedHatAI/Meta-Llama-3.1-70B-Instruct-quantized.w8a8 with a
meta-llama/Llama-3.1-8B-Instruct draft, k = 5, TP 2 on H100s, vLLM 0.33.0) at concurrency 1, 8,
64 and 256: no speculation, fixed k = 1..5, and k = 5 with `enable_adaptive_verification`. Each
concurrency is a closed loop (a client sends its next request when its answer ends, as `vllm
bench serve --max-concurrency` does), played in simulated time by the engine itself (its step
times, admission, acceptance sampling and the adaptive decision), so the figures are
deterministic for a seed. Measured over a window after a warm-up: output tokens per second,
median TPOT (per request, (end - first token) / (tokens - 1)), acceptance (vLLM's counters:
accepted / drafted), drafts verified per decoding request, mean running batch.

Workloads: temperature 1.0 (PR #52228's setting) and greedy; prompts 256-1024 and answers
256-512 tokens. A third block puts an EAGLE-3 head (yuhuili/EAGLE3-LLaMA3.3-Instruct-70B, one
layer) on meta-llama/Llama-3.3-70B-Instruct, TP 4, at temperature 1.0: a drafter whose k passes
cost little, as in the published runs (MTP, DFlash, DSpark).

Published (PR #52228, concurrency 64, adaptive on vs off): +19.0% output tokens/s, -16.4% median
TPOT, accepted/drafted -3.54 points. vLLM blog (DSpark, DeepSeek-V4-Pro, concurrency 256): +41%
over no speculation, +90% over the best fixed draft length.

    .venv/bin/python bench/adaptive_verification.py [--duration 180] [--seed 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from specpilot_lab.sim.engine import Engine, Request
from specpilot_lab.sim.vllm_args import parse_server_args

TARGET = "RedHatAI/Meta-Llama-3.1-70B-Instruct-quantized.w8a8"
DRAFT = "meta-llama/Llama-3.1-8B-Instruct"
EAGLE_TARGET = "meta-llama/Llama-3.3-70B-Instruct"
EAGLE_HEAD = "yuhuili/EAGLE3-LLaMA3.3-Instruct-70B"
ENV = {"SPECPILOT_SIM_GPU": "H100-80GB", "SPECPILOT_SIM_VLLM_VERSION": "0.33.0"}
CONCURRENCY = (1, 8, 64, 256)
K = 5
PUBLISHED = {
    "pr_52228_concurrency_64": {
        "output_tokens_per_s": 0.190,
        "median_tpot": -0.164,
        "acceptance_points": -3.54,
    },
    "blog_concurrency_256": {"over_no_speculation": 0.41, "over_best_fixed_k": 0.90},
}


@dataclass(frozen=True)
class Pair:
    name: str
    base: tuple[str, ...]
    speculative_config: dict[str, object]

    def argv(self, k: int | None, adaptive: bool = False) -> list[str]:
        if k is None:
            return list(self.base)
        config = {**self.speculative_config, "num_speculative_tokens": k}
        if adaptive:
            config["enable_adaptive_verification"] = True
        return [*self.base, "--speculative-config", json.dumps(config)]


DRAFT_PAIR = Pair(
    "70B W8A8 + 8B draft, TP 2",
    (TARGET, "--tensor-parallel-size", "2", "--max-model-len", "8192"),
    {"method": "draft_model", "model": DRAFT, "draft_tensor_parallel_size": 2},
)
EAGLE_PAIR = Pair(
    "Llama-3.3-70B + EAGLE-3 head, TP 4",
    (EAGLE_TARGET, "--tensor-parallel-size", "4", "--max-model-len", "8192"),
    {"method": "eagle3", "model": EAGLE_HEAD},
)
CASES = ((DRAFT_PAIR, 1.0), (DRAFT_PAIR, 0.0), (EAGLE_PAIR, 1.0))
ARMS: tuple[tuple[str, int | None, bool], ...] = (
    ("off", None, False),
    *((f"k={k}", k, False) for k in range(1, K + 1)),
    ("adaptive", K, True),
)


@dataclass
class Row:
    pair: str
    temperature: float
    concurrency: int
    arm: str
    output_tokens_per_s: float
    median_tpot_ms: float
    acceptance: float | None
    verified_per_request: float | None
    mean_batch: float


def counter(engine: Engine, name: str) -> float:
    value = engine.metrics.registry.get_sample_value(f"vllm:{name}_total", engine.metrics.labels)
    return value or 0.0


def closed_loop(
    engine: Engine, concurrency: int, temperature: float, duration: float, seed: int
) -> tuple[float, float, float | None, float | None, float]:
    """`concurrency` clients for `duration` simulated seconds; figures over the last 5/6."""
    rng = random.Random(seed)
    warmup = duration / 6

    def send(at: float) -> Request:
        return engine.submit(rng.randint(256, 1024), rng.randint(256, 512), temperature, 0.3, at)

    clients = [send(0.0) for _ in range(concurrency)]
    finished: list[Request] = []
    clock, start = 0.0, None
    batch_steps, batch_time, verified, decoding = 0.0, 0.0, 0, 0
    while clock < duration:
        engine._admit(clock)
        step = engine._step_seconds()
        if start is not None:
            batch_steps += len(engine.running) * step
            batch_time += step
            requests = sum(1 for r in engine.running if r.prefilled)
            if engine.step_k():
                # What this step verifies (the engine decided it with the step's time).
                verified += requests * (engine._verified or 0)
                decoding += requests
        clock += step
        engine._advance(step, clock)
        for index, request in enumerate(clients):
            if request.finished_at is not None:
                finished.append(request)
                clients[index] = send(clock)
        if start is None and clock >= warmup:
            start = (
                clock,
                counter(engine, "generation_tokens"),
                counter(engine, "spec_decode_num_draft_tokens"),
                counter(engine, "spec_decode_num_accepted_tokens"),
            )
    assert start is not None
    begun, tokens, drafted, accepted = start
    drafted = counter(engine, "spec_decode_num_draft_tokens") - drafted
    accepted = counter(engine, "spec_decode_num_accepted_tokens") - accepted
    tpot = [
        (r.finished_at - r.first_token_at) / (r.generated - 1) * 1000
        for r in finished
        if r.finished_at is not None
        and r.first_token_at is not None
        and r.first_token_at >= begun
        and r.generated > 1
    ]
    return (
        (counter(engine, "generation_tokens") - tokens) / (clock - begun),
        statistics.median(tpot),
        accepted / drafted if drafted else None,
        verified / decoding if decoding else None,
        batch_steps / batch_time,
    )


def measure(duration: float, seed: int) -> list[Row]:
    rows = []
    for pair, temperature in CASES:
        for concurrency in CONCURRENCY:
            for arm, k, adaptive in ARMS:
                engine = Engine(parse_server_args(pair.argv(k, adaptive), ENV), seed=seed)
                tps, tpot, acceptance, verified, batch = closed_loop(
                    engine, concurrency, temperature, duration, seed
                )
                rows.append(
                    Row(
                        pair.name,
                        temperature,
                        concurrency,
                        arm,
                        round(tps, 1),
                        round(tpot, 2),
                        None if acceptance is None else round(acceptance, 3),
                        None if verified is None else round(verified, 2),
                        round(batch, 1),
                    )
                )
    return rows


def find(rows: list[Row], pair: str, temperature: float, concurrency: int, arm: str) -> Row:
    (row,) = [
        r
        for r in rows
        if (r.pair, r.temperature, r.concurrency, r.arm) == (pair, temperature, concurrency, arm)
    ]
    return row


def comparisons(rows: list[Row]) -> list[dict[str, object]]:
    """Adaptive against fixed k = 5, no speculation and the best fixed k, per point."""
    out: list[dict[str, object]] = []
    for pair, temperature in CASES:
        for concurrency in CONCURRENCY:
            at = {arm: find(rows, pair.name, temperature, concurrency, arm) for arm, _, _ in ARMS}
            adaptive, fixed, off = at["adaptive"], at[f"k={K}"], at["off"]
            best = max((at[f"k={k}"] for k in range(1, K + 1)), key=lambda r: r.output_tokens_per_s)
            points = None
            if adaptive.acceptance is not None and fixed.acceptance is not None:
                points = round((adaptive.acceptance - fixed.acceptance) * 100, 2)
            out.append(
                {
                    "pair": pair.name,
                    "temperature": temperature,
                    "concurrency": concurrency,
                    "tokens_per_s_vs_fixed_k": round(
                        adaptive.output_tokens_per_s / fixed.output_tokens_per_s - 1, 3
                    ),
                    "median_tpot_vs_fixed_k": round(
                        adaptive.median_tpot_ms / fixed.median_tpot_ms - 1, 3
                    ),
                    "acceptance_points_vs_fixed_k": points,
                    "tokens_per_s_vs_off": round(
                        adaptive.output_tokens_per_s / off.output_tokens_per_s - 1, 3
                    ),
                    "best_fixed_k": best.arm,
                    "tokens_per_s_vs_best_fixed_k": round(
                        adaptive.output_tokens_per_s / best.output_tokens_per_s - 1, 3
                    ),
                }
            )
    return out


def pct(value: object) -> str:
    assert isinstance(value, float)
    return f"{value * 100:+.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=float, default=180.0, help="simulated seconds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    rows = measure(args.duration, args.seed)
    shown = ("off", f"k={K}", "adaptive")
    for pair, temperature in CASES:
        print(f"\n{pair.name}, temperature {temperature:g}")
        print(
            "| concurrency | speculation | output tok/s | median TPOT (ms) | acceptance "
            "| verified drafts per request | mean batch |"
        )
        print("|---|---|---|---|---|---|---|")
        for concurrency in CONCURRENCY:
            for arm in shown:
                r = find(rows, pair.name, temperature, concurrency, arm)
                label = {"off": "off", "adaptive": f"k = {K}, adaptive"}.get(arm, f"k = {K}")
                acceptance = "-" if r.acceptance is None else f"{r.acceptance:.3f}"
                verified = "-" if r.verified_per_request is None else f"{r.verified_per_request}"
                print(
                    f"| {concurrency} | {label} | {r.output_tokens_per_s:.0f} "
                    f"| {r.median_tpot_ms:.2f} | {acceptance} | {verified} | {r.mean_batch:g} |"
                )
    compared = comparisons(rows)
    print("\nAdaptive (k = 5) against fixed k = 5, no speculation and the best fixed k (1-5)")
    print(
        "| pair | T | concurrency | tok/s vs k = 5 | median TPOT vs k = 5 | acceptance (points) "
        "| tok/s vs off | best fixed k | tok/s vs best fixed |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for c in compared:
        points = c["acceptance_points_vs_fixed_k"]
        print(
            f"| {c['pair']} | {c['temperature']:g} | {c['concurrency']} "
            f"| {pct(c['tokens_per_s_vs_fixed_k'])} | {pct(c['median_tpot_vs_fixed_k'])} "
            f"| {'-' if points is None else f'{points:+.2f}'} | {pct(c['tokens_per_s_vs_off'])} "
            f"| {c['best_fixed_k']} | {pct(c['tokens_per_s_vs_best_fixed_k'])} |"
        )
    pr = PUBLISHED["pr_52228_concurrency_64"]
    blog = PUBLISHED["blog_concurrency_256"]
    print(
        f"\nPublished: PR #52228 at concurrency 64, on vs off: "
        f"{pct(pr['output_tokens_per_s'])} tok/s, {pct(pr['median_tpot'])} median TPOT, "
        f"{pr['acceptance_points']:+.2f} points accepted/drafted; vLLM blog at concurrency "
        f"256: {pct(blog['over_no_speculation'])} over no speculation, "
        f"{pct(blog['over_best_fixed_k'])} over the best fixed k."
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "setup": {
                        "env": ENV,
                        "duration_s": args.duration,
                        "warmup_s": args.duration / 6,
                        "seed": args.seed,
                        "prompt_tokens": [256, 1024],
                        "output_tokens": [256, 512],
                    },
                    "published": PUBLISHED,
                    "rows": [asdict(r) for r in rows],
                    "comparisons": compared,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
