"""The simulator honours num_speculative_tokens_per_batch_size (vLLM 0.24.0+) step by step.

Each engine step takes its k from the number of requests it schedules; k = 0 is a plain decode
step that vLLM's spec-decode counters do not see. docs/simulator.md describes the model.
"""

from __future__ import annotations

import json

import pytest

from specpilot_lab.sim import physics, serve
from specpilot_lab.sim.engine import Arrival, Engine, Request
from specpilot_lab.sim.serve import build_engine
from specpilot_lab.sim.vllm_args import SimArgsError
from tests.lab.engine_runs import counter, poisson_arrivals, spec_decode_counters

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
EAGLE3 = "yuhuili/EAGLE3-LLaMA3.1-Instruct-8B"


def argv(k: int = 5, schedule: object = None, **extra: object) -> list[str]:
    config: dict[str, object] = {"method": "eagle3", "model": EAGLE3, "num_speculative_tokens": k}
    if schedule is not None:
        config["num_speculative_tokens_per_batch_size"] = schedule
    config.update(extra)
    return [MODEL, "--max-model-len", "8192", "--speculative-config", json.dumps(config)]


class Recording(Engine):
    """The engine, keeping a record per step: batch size, k, decoding requests, drafts counted."""

    trace: list[tuple[int, int, int, float]]

    def _advance(self, step: float, now: float) -> None:
        if not hasattr(self, "trace"):
            self.trace = []
        batch, k = len(self.running), self.step_k()
        decoding = sum(1 for r in self.running if r.prefilled)
        drafts = counter(self, "spec_decode_num_drafts")
        super()._advance(step, now)
        self.trace.append((batch, k, decoding, counter(self, "spec_decode_num_drafts") - drafts))


def batch_of(engine: Engine, size: int) -> int:
    """The k the engine picks with `size` requests scheduled."""
    engine.running = [Request(10, 10, 0.0, 0.3, arrival=0.0) for _ in range(size)]
    return engine.step_k()


def test_low_concurrency_speculates_and_high_concurrency_does_not_in_one_run() -> None:
    engine = Recording(build_engine(argv(5, [[1, 4, 5], [5, 4096, 0]]), {}).config, seed=1)
    alone = [Arrival(0.0, 100, 60)]
    crowd = [Arrival(30.0, 100, 60) for _ in range(12)]
    later = [Arrival(60.0, 100, 60), Arrival(60.0, 120, 60)]
    requests = engine.simulate(alone + crowd + later)
    assert all(r.generated == 60 for r in requests)

    for batch, k, decoding, drafts in engine.trace:
        assert k == (5 if batch <= 4 else 0)
        assert drafts == (decoding if k else 0)  # only drafting steps count as drafts
    ks = [k for _, k, _, _ in engine.trace]
    # Speculating alone, plain decoding in the crowd, speculating again as it thins: no restart.
    first_off = ks.index(0)
    back_on = ks.index(5, first_off)
    assert 0 < first_off < back_on
    assert engine.step_counts[1, 5] > 0
    assert engine.step_counts[12, 0] > 0

    drafts = counter(engine, "spec_decode_num_drafts")
    drafting_requests = sum(d for b, k, d, _ in engine.trace if k)
    assert drafts == drafting_requests
    assert counter(engine, "spec_decode_num_draft_tokens") == 5 * drafts
    accepted = counter(engine, "spec_decode_num_accepted_tokens")
    per_position = [
        counter(engine, "spec_decode_num_accepted_tokens_per_pos", position=str(p))
        for p in range(5)
    ]
    assert sum(per_position) == accepted
    assert per_position == sorted(per_position, reverse=True)
    assert counter(engine, "generation_tokens") == 60 * len(requests)


def test_k_is_the_smaller_of_num_speculative_tokens_and_the_schedules() -> None:
    engine = build_engine(argv(3, [[1, 2, 8], [3, 4, 2], [7, 8, 0], [10, 12, 6]]), {})
    ks = [batch_of(engine, size) for size in range(1, 15)]
    # 1-2: min(3, 8); 3-4: 2, and the gap 5-6 keeps it; 7-8: 0, and 9; 10-12: min(3, 6), and
    # the tail after the last range keeps that.
    assert ks == [3, 3, 2, 2, 2, 2, 0, 0, 0, 3, 3, 3, 3, 3]
    assert engine.schedule == [(1, 2, 8), (3, 4, 2), (7, 8, 0), (10, 12, 6)]


def test_a_step_with_fewer_tokens_than_configured_counts_only_those_positions() -> None:
    engine = build_engine(argv(5, [[1, 1, 2], [2, 256, 5]]), {})
    engine.simulate([Arrival(0.0, 100, 200, 0.0)])  # alone: every step drafts 2 tokens
    drafts = counter(engine, "spec_decode_num_drafts")
    assert drafts > 0
    assert counter(engine, "spec_decode_num_draft_tokens") == 2 * drafts
    for position in ("2", "3", "4"):
        assert counter(engine, "spec_decode_num_accepted_tokens_per_pos", position=position) == 0
    assert counter(engine, "spec_decode_num_accepted_tokens_per_pos", position="0") > 0


def test_an_all_zero_schedule_never_drafts_and_pays_for_piecewise_graphs() -> None:
    """On Model Runner V1 (eagle3 before 0.29.0) vLLM drops a scheduled engine's CUDA graphs to
    PIECEWISE; from 0.29.0 eagle3 runs on V2, which keeps them full."""
    arrivals = [Arrival(0.0, 100, 100)]
    v1 = {"SPECPILOT_SIM_VLLM_VERSION": "0.28.0"}
    off = build_engine([MODEL, "--max-model-len", "8192"], v1)
    zero = build_engine(argv(5, [[1, 256, 0]]), v1)
    assert zero.piecewise_graphs
    assert not build_engine(argv(5, [[1, 256, 0]]), {}).piecewise_graphs  # 0.33.0: V2
    (plain,) = off.simulate(arrivals)
    (scheduled,) = zero.simulate(list(arrivals))
    assert counter(zero, "spec_decode_num_drafts") == 0
    assert counter(zero, "spec_decode_num_draft_tokens") == 0
    assert plain.finished_at is not None
    assert scheduled.finished_at is not None
    extra = zero.target_layers * physics.PIECEWISE_CUDA_GRAPH_S_PER_LAYER
    steps = sum(zero.step_counts.values())
    assert scheduled.finished_at == pytest.approx(plain.finished_at + steps * extra)


INVALID = [
    ([], "must not be empty"),
    ({"1-16": 3}, "must be a non-empty list"),
    ([[1, 4]], "3-item sequence"),
    ([[2, 8, 3]], "The first batch-size range must start at 1"),
    ([[1, 8, 3], [8, 16, 1]], "non-overlapping and sorted"),
    ([[1, 8, 3], [16, 9, 1]], r"start must be <= end for \(16, 9, 1\)"),
    ([[1, 8, -1]], "values must be >= 0"),
    ([[0, 8, 1]], r"\(0, 8\) must be positive"),
    ([[1, "x", 1]], "invalid literal for int"),
]


@pytest.mark.parametrize(("schedule", "message"), INVALID, ids=[m for _, m in INVALID])
def test_schedules_vllm_rejects_are_refused(schedule: object, message: str) -> None:
    with pytest.raises(SimArgsError, match=message):
        build_engine(argv(3, schedule), {})


def test_the_server_does_not_start_on_a_rejected_schedule(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert serve.main(argv(3, [[4, 64, 2]])) == 2
    assert "first batch-size range must start at 1" in capsys.readouterr().err


def test_releases_before_the_schedule_ignore_the_key() -> None:
    old = build_engine(argv(3, [[2, 8, 3]]), {"SPECPILOT_SIM_VLLM_VERSION": "0.23.0"})
    assert old.schedule is None
    assert not old.piecewise_graphs
    assert build_engine(argv(3, None), {}).schedule is None


def run(engine: Engine) -> tuple[list[Request], dict[str, float]]:
    requests = engine.simulate(poisson_arrivals(3, 60, 4.0, (50, 400), (20, 200), (0.0, 0.7)))
    return requests, spec_decode_counters(engine)


def test_without_a_schedule_a_seeded_run_is_what_it_was() -> None:
    """Figures of this run before the schedule existed (commit 2ee9941): a change of them is a
    change of the default physics, to be made on purpose."""
    requests, counters = run(build_engine(argv(3), {"SPECPILOT_SIM_SEED": "7"}))
    assert counters == {
        "generation_tokens": 6872.0,
        "spec_decode_num_drafts": 2360.0,
        "spec_decode_num_draft_tokens": 7080.0,
        "spec_decode_num_accepted_tokens": 4531.0,
    }
    assert sum(r.finished_at or 0 for r in requests) == pytest.approx(475.43967354562307, rel=1e-9)


def test_a_flat_schedule_without_the_graph_cost_is_the_engine_without_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With every batch size at num_speculative_tokens and piecewise graphs free, a schedule
    changes nothing: same steps, same sampling, same counters."""
    monkeypatch.setattr(physics, "PIECEWISE_CUDA_GRAPH_S_PER_LAYER", 0.0)
    plain_requests, plain = run(build_engine(argv(3), {"SPECPILOT_SIM_SEED": "7"}))
    flat_requests, flat = run(build_engine(argv(3, [[1, 256, 3]]), {"SPECPILOT_SIM_SEED": "7"}))
    assert flat == plain
    assert [(r.first_token_at, r.finished_at) for r in flat_requests] == [
        (r.first_token_at, r.finished_at) for r in plain_requests
    ]
