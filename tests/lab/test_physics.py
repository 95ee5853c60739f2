"""Physics properties the simulator must keep: load, speculation, temperature, quantization."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from specpilot.api.models import Quantization, SpeculationMethod
from specpilot.catalog import MODELS
from specpilot_lab.sim import physics
from specpilot_lab.sim.engine import Engine
from specpilot_lab.sim.vllm_args import parse_server_args

LLAMA_70B = MODELS["meta-llama/Llama-3.1-70B-Instruct"]
LLAMA_8B = MODELS["meta-llama/Llama-3.1-8B-Instruct"]
ARGS = [
    "meta-llama/Llama-3.1-70B-Instruct",
    "--tensor-parallel-size",
    "4",
    "--max-model-len",
    "8192",
]
DRAFT = [
    "--speculative-config",
    '{"method": "draft_model", "model": '
    '"meta-llama/Llama-3.2-1B-Instruct", "num_speculative_tokens": 4}',
]
NGRAM = ["--speculative-config", '{"method": "ngram", "num_speculative_tokens": 5}']


def tpot(argv: list[str], batch: int, temperature: float = 0.0, echo: float = 0.6) -> float:
    """Simulated seconds per output token for a steady decode batch of `batch` requests."""
    engine = Engine(parse_server_args(argv, {"SPECPILOT_SIM_GPU": "H100-80GB"}))
    context = batch * 1500
    step = physics.STEP_OVERHEAD_S + engine.target.step_seconds(
        engine.hw, batch * (engine.k + 1), context
    )
    tokens = 1.0
    if engine.k:
        if engine.draft is not None:
            step += engine.k * (
                engine.draft.step_seconds(engine.hw, batch, context) + physics.PROPOSER_OVERHEAD_S
            )
        else:
            step += batch * physics.NGRAM_LOOKUP_S_PER_REQUEST
        rate = engine.acceptance.rate(temperature, echo)
        tokens = physics.expected_tokens_per_step(physics.per_token_alpha(rate, engine.k), engine.k)
    return step / tokens


def test_more_load_means_slower_tokens() -> None:
    for argv in (ARGS, ARGS + DRAFT, ARGS + NGRAM):
        values = [tpot(argv, batch) for batch in (1, 8, 64, 256)]
        assert values == sorted(values), argv


@pytest.mark.parametrize("speculation", [DRAFT, NGRAM], ids=["draft", "ngram"])
def test_speculation_wins_at_low_load_and_loses_at_saturation(speculation: list[str]) -> None:
    assert tpot(ARGS + speculation, 1) < tpot(ARGS, 1)
    assert tpot(ARGS + speculation, 256) > tpot(ARGS, 256)


def test_acceptance_falls_with_temperature() -> None:
    model = physics.acceptance_model(
        SpeculationMethod.DRAFT_MODEL, LLAMA_70B, LLAMA_8B, Quantization.NONE
    )
    rates = [model.rate(t, 0.0) for t in (0.0, 0.4, 0.8, 1.0)]
    assert rates == sorted(rates, reverse=True)
    # The decision framework's illustrative curve for a well-matched pair.
    assert rates == pytest.approx([0.81, 0.71, 0.52, 0.38], abs=0.02)


def test_int4_target_lowers_acceptance_more_than_int8() -> None:
    def rate(quantization: Quantization) -> float:
        model = physics.acceptance_model(
            SpeculationMethod.DRAFT_MODEL, LLAMA_70B, LLAMA_8B, quantization
        )
        return model.rate(0.7, 0.0)

    assert rate(Quantization.NONE) > rate(Quantization.INT8) > rate(Quantization.AWQ)


def test_smaller_drafts_are_accepted_less() -> None:
    tiny = MODELS["meta-llama/Llama-3.2-1B-Instruct"]
    good = physics.acceptance_model(
        SpeculationMethod.DRAFT_MODEL, LLAMA_70B, LLAMA_8B, Quantization.NONE
    )
    weak = physics.acceptance_model(
        SpeculationMethod.DRAFT_MODEL, LLAMA_70B, tiny, Quantization.NONE
    )
    assert weak.rate(0.0, 0.0) < good.rate(0.0, 0.0)


def test_ngram_acceptance_follows_how_much_the_output_echoes_the_prompt() -> None:
    model = physics.acceptance_model(SpeculationMethod.NGRAM, LLAMA_70B, None, Quantization.NONE)
    assert model.rate(0.0, 0.9) > model.rate(0.0, 0.2)


@given(rate=st.floats(min_value=0.02, max_value=0.95), k=st.integers(min_value=1, max_value=8))
def test_per_token_alpha_inverts_the_acceptance_rate(rate: float, k: int) -> None:
    alpha = physics.per_token_alpha(rate, k)
    assert physics.acceptance_rate(alpha, k) == pytest.approx(rate, abs=1e-4)


def test_sampled_acceptance_matches_the_rate() -> None:
    rng = random.Random(7)
    alpha, k, steps = physics.per_token_alpha(0.6, 5), 5, 20000
    accepted = sum(physics.sample_accepted(alpha, k, rng) for _ in range(steps))
    assert accepted / (steps * k) == pytest.approx(0.6, abs=0.01)


def test_expected_tokens_per_step_is_leviathans_formula() -> None:
    assert physics.expected_tokens_per_step(0.0, 5) == 1.0
    assert physics.expected_tokens_per_step(0.5, 1) == pytest.approx(1.5)
    assert physics.expected_tokens_per_step(1.0, 4) == 5.0
