"""The simulator honours enable_adaptive_verification (vLLM 0.30.0+ for model-based drafters).

vLLM refuses it where it refuses it, with its messages; otherwise each engine step verifies the
number of its k drafts that maximises expected tokens per second, from an online acceptance
estimate and the simulator's own step time. docs/simulator.md describes the model.
"""

from __future__ import annotations

import json

import pytest

from specpilot_lab.sim import physics, serve
from specpilot_lab.sim.engine import Arrival, Engine, Request
from specpilot_lab.sim.serve import build_engine
from specpilot_lab.sim.vllm_args import SimArgsError, parse_server_args
from tests.lab.engine_runs import counter, poisson_arrivals, spec_decode_counters

TARGET = "RedHatAI/Meta-Llama-3.1-70B-Instruct-quantized.w8a8"
DRAFT = "meta-llama/Llama-3.1-8B-Instruct"
SMALL = "meta-llama/Llama-3.1-8B-Instruct"
EAGLE3 = "yuhuili/EAGLE3-LLaMA3.1-Instruct-8B"
KEY = "enable_adaptive_verification"


def pair(adaptive: object = None, k: int = 5, **extra: object) -> list[str]:
    """The example pair: the 70B W8A8 target with an 8B draft, k = 5, TP 2."""
    config: dict[str, object] = {
        "method": "draft_model",
        "model": DRAFT,
        "num_speculative_tokens": k,
        "draft_tensor_parallel_size": 2,
    }
    if adaptive is not None:
        config[KEY] = adaptive
    config.update(extra)
    return [
        TARGET,
        "--tensor-parallel-size",
        "2",
        "--max-model-len",
        "8192",
        "--speculative-config",
        json.dumps(config),
    ]


def small(method: str = "eagle3", adaptive: object = True, *flags: str) -> list[str]:
    config: dict[str, object] = {"method": method, "num_speculative_tokens": 3}
    if method in ("eagle", "eagle3"):
        config["model"] = EAGLE3
    if method == "draft_model":
        config["model"] = "meta-llama/Llama-3.2-1B-Instruct"
    if adaptive is not None:
        config[KEY] = adaptive
    return [SMALL, "--max-model-len", "8192", *flags, "--speculative-config", json.dumps(config)]


PLAIN = [TARGET, "--tensor-parallel-size", "2", "--max-model-len", "8192"]


def release(version: str) -> dict[str, str]:
    return {"SPECPILOT_SIM_VLLM_VERSION": version}


# --- what vLLM refuses, release by release -------------------------------------------------------

V1 = "Model Runner V1 does not support: adaptive draft verification"
EAGER = (
    "Adaptive verification requires full CUDA graphs. Use cudagraph mode FULL, "
    "FULL_DECODE_ONLY, or FULL_AND_PIECEWISE, or disable adaptive verification."
)
PP = "Adaptive verification is not currently compatible with pipeline parallelism"
DSPARK = "Adaptive verification only supported with DSpark"
ARGMAX = (
    "Adaptive verification estimates per-position acceptance from the draft logits, which "
    "use_local_argmax_reduction never materializes. Disable one of them."
)
REFUSED = [
    # (release, argv, the pydantic model that raises, vLLM's message)
    ("0.28.0", small("eagle3"), "SpeculativeConfig", DSPARK),
    ("0.29.0", small("draft_model"), "SpeculativeConfig", DSPARK),
    ("0.29.0", small("eagle3", True, "--enforce-eager"), "SpeculativeConfig", DSPARK),
    ("0.30.0", small("draft_model"), "VllmConfig", V1),
    ("0.30.0", small("draft_model", True, "--enforce-eager"), "VllmConfig", V1),
    ("0.30.0", small("ngram"), "VllmConfig", V1),
    ("0.31.0", small("ngram"), "VllmConfig", V1),
    ("0.33.0", small("suffix"), "VllmConfig", V1),
    ("0.30.0", small("eagle3", True, "--enforce-eager"), "VllmConfig", EAGER),
    ("0.33.0", small("mtp", True, "--enforce-eager"), "VllmConfig", EAGER),
    (
        "0.33.0",
        small("eagle3", True, "--enforce-eager", "--pipeline-parallel-size", "2"),
        "VllmConfig",
        EAGER,
    ),
    ("0.33.0", small("eagle3", True, "--pipeline-parallel-size", "2"), "VllmConfig", PP),
    ("0.31.0", small("draft_model", True, "--pipeline-parallel-size", "2"), "VllmConfig", PP),
    (
        "0.32.0",
        [
            SMALL,
            "--speculative-config",
            json.dumps(
                {
                    "method": "eagle3",
                    "model": EAGLE3,
                    "num_speculative_tokens": 3,
                    KEY: True,
                    "use_local_argmax_reduction": True,
                }
            ),
        ],
        "SpeculativeConfig",
        ARGMAX,
    ),
]


@pytest.mark.parametrize(
    ("version", "argv", "model", "message"),
    REFUSED,
    ids=[f"{v}-{' '.join(a[3:-2]) or 'plain'}-{m[:30]}" for v, a, _, m in REFUSED],
)
def test_what_vllm_refuses_is_refused_with_its_message(
    version: str, argv: list[str], model: str, message: str
) -> None:
    with pytest.raises(SimArgsError) as refused:
        parse_server_args(argv, release(version))
    text = str(refused.value)
    assert text.startswith(
        f"pydantic_core._pydantic_core.ValidationError: 1 validation error for {model}\n"
    )
    assert f"  Value error, {message} [type=value_error" in text


@pytest.mark.parametrize("value", [True, False])
@pytest.mark.parametrize("version", ["0.24.0", "0.27.1"])
def test_releases_before_0_28_do_not_know_the_key(value: bool, version: str) -> None:
    with pytest.raises(SimArgsError) as refused:
        parse_server_args(small("eagle3", value), release(version))
    assert str(refused.value) == (
        "pydantic_core._pydantic_core.ValidationError: 1 validation error for "
        "SpeculativeConfig\nenable_adaptive_verification\n  Unexpected keyword argument "
        f"[type=unexpected_keyword_argument, input_value={value}, input_type=bool]"
    )


ACCEPTED = [
    ("0.28.0", small("eagle3", False), False),  # the field exists: false is fine anywhere
    ("0.29.0", small("draft_model", False, "--enforce-eager"), False),
    ("0.30.0", small("eagle3"), True),
    ("0.30.0", small("eagle"), True),
    ("0.30.0", small("mtp"), True),
    ("0.30.0", small("draft_model", False), False),
    ("0.31.0", small("draft_model"), True),
    ("0.33.0", small("draft_model"), True),
    ("0.32.0", small("ngram"), False),  # Model Runner V2 runs ngram, with no adaptive verifier
    ("0.33.0", small("ngram"), False),
    ("0.33.0", small("eagle3", "true"), True),  # pydantic's lax bool, as vLLM's field takes it
    ("0.33.0", small("eagle3", 0), False),
]


@pytest.mark.parametrize(("version", "argv", "adapts"), ACCEPTED)
def test_what_vllm_accepts_is_accepted_and_adapts_only_where_vllm_does(
    version: str, argv: list[str], adapts: bool
) -> None:
    config = parse_server_args(argv, release(version))
    assert config.speculation is not None
    if config.speculation.method.value == "mtp":  # no MTP checkpoint to build an engine from
        assert config.speculation.adaptive_verification is adapts
        return
    engine = Engine(config)
    assert engine.adaptive is adapts
    assert (engine.estimator is not None) is adapts


def test_the_server_does_not_start_when_vllm_would_not(capsys: pytest.CaptureFixture[str]) -> None:
    assert serve.main(small("eagle3", True, "--enforce-eager")) == 2
    assert "Adaptive verification requires full CUDA graphs" in capsys.readouterr().err


# --- without the key, nothing changes ------------------------------------------------------------


def seeded_run(argv: list[str]) -> tuple[dict[str, float], float, float]:
    """Poisson arrivals at QPS 3 for the example pair, half of them at temperature 1."""
    engine = build_engine(argv, {"SPECPILOT_SIM_SEED": "11"})
    requests = engine.simulate(poisson_arrivals(5, 80, 3.0, (100, 800), (50, 300), (0.0, 1.0)))
    return (
        spec_decode_counters(engine),
        sum(r.finished_at or 0 for r in requests),
        sum(r.first_token_at or 0 for r in requests),
    )


PINNED = (
    {
        "generation_tokens": 15240.0,
        "spec_decode_num_drafts": 4421.0,
        "spec_decode_num_draft_tokens": 22105.0,
        "spec_decode_num_accepted_tokens": 10880.0,
    },
    1415.4159187900061,
    1216.6174233090799,
)
"""The seeded run's figures before adaptive verification existed (commit 8ecb302)."""


@pytest.mark.parametrize("adaptive", [None, False], ids=["no key", "false"])
def test_without_adaptive_verification_a_seeded_run_is_what_it_was(adaptive: object) -> None:
    assert seeded_run(pair(adaptive)) == PINNED


# --- what it does --------------------------------------------------------------------------------


def burst(engine: Engine, requests: int, temperature: float) -> tuple[list[Request], float]:
    """`requests` requests arriving together; output tokens per second until the last ends."""
    arrivals = [Arrival(0.0, 400, 300, temperature) for _ in range(requests)]
    done = engine.simulate(arrivals)
    assert all(r.generated == 300 for r in done)
    end = max(r.finished_at or 0.0 for r in done)
    return done, 300 * requests / end


def mean_verified(engine: Engine) -> float:
    """Drafts verified per decoding request, over all steps."""
    steps = [(v, n) for (_, v), n in engine.verified_counts.items()]
    return sum(v * n for v, n in steps) / sum(n for _, n in steps)


def test_at_high_load_it_verifies_fewer_drafts_and_beats_fixed_k_where_fixed_k_loses() -> None:
    # 64 requests at temperature 1: acceptance about 0.34, where verifying 6 positions per
    # request costs the compute-bound target more than the extra tokens bring.
    _, plain = burst(build_engine(PLAIN, {}), 64, 1.0)
    fixed_engine = build_engine(pair(), {})
    _, fixed = burst(fixed_engine, 64, 1.0)
    adaptive_engine = build_engine(pair(True), {})
    _, adaptive = burst(adaptive_engine, 64, 1.0)

    assert fixed < plain  # fixed k = 5 loses to no speculation here
    assert adaptive > 1.05 * fixed  # and adaptive verification recovers part of it
    assert all(v == 5 for _, v in fixed_engine.verified_counts)
    assert mean_verified(adaptive_engine) < 4.0
    # The drafter still drafts 5 per request: adaptive verification trims verification only,
    # so the draft passes keep it below no speculation with this heavy 8B draft.
    assert adaptive < plain


def test_at_low_load_with_high_acceptance_it_verifies_every_draft() -> None:
    """One request, EAGLE-3 at temperature 0 (acceptance 0.80): verification is nearly free in a
    memory-bound step, so every step verifies all k, and the run is the fixed-k run exactly."""
    arrivals = [Arrival(0.0, 200, 400, 0.0)]
    fixed = build_engine(small("eagle3", None), {})
    adaptive = build_engine(small("eagle3", True), {})
    (alone,) = fixed.simulate(arrivals)
    (trimmed,) = adaptive.simulate(list(arrivals))
    assert {v for _, v in adaptive.verified_counts} == {3}
    assert trimmed.finished_at == alone.finished_at
    assert counter(adaptive, "spec_decode_num_accepted_tokens") == counter(
        fixed, "spec_decode_num_accepted_tokens"
    )


def test_the_counters_count_every_drafted_token_verified_or_not() -> None:
    """vLLM's scheduler counts the drafts it scheduled (k per request); adaptive verification
    trims on the GPU, so trimmed drafts count as drafted and not accepted."""
    engine = build_engine(pair(True), {})
    burst(engine, 64, 1.0)
    drafts = counter(engine, "spec_decode_num_drafts")
    assert counter(engine, "spec_decode_num_draft_tokens") == 5 * drafts
    most = max(v for _, v in engine.verified_counts)
    accepted = [
        counter(engine, "spec_decode_num_accepted_tokens_per_pos", position=str(p))
        for p in range(5)
    ]
    assert sum(accepted) == counter(engine, "spec_decode_num_accepted_tokens")
    assert all(a == 0 for a in accepted[most:])
    # Accepted over drafted is below the fixed-k run's: fewer drafts verified, as many counted.
    fixed = build_engine(pair(), {})
    burst(fixed, 64, 1.0)
    rate = counter(engine, "spec_decode_num_accepted_tokens") / counter(
        engine, "spec_decode_num_draft_tokens"
    )
    fixed_rate = counter(fixed, "spec_decode_num_accepted_tokens") / counter(
        fixed, "spec_decode_num_draft_tokens"
    )
    assert rate < fixed_rate - 0.03


def test_the_estimate_starts_from_the_prior_and_learns_the_acceptance() -> None:
    engine = build_engine(small("eagle3", True), {})
    assert engine.estimator is not None
    assert engine.estimator.value == pytest.approx(physics.ADAPTIVE_ACCEPTANCE_PRIOR)
    engine.simulate([Arrival(0.0, 200, 400, 0.0) for _ in range(4)])
    rate = engine.acceptance.rate(0.0, 0.3)
    truth = physics.per_token_alpha(rate, engine.k)
    assert truth > 0.85  # far from the 0.7 prior: the estimate has to move
    assert engine.estimator.value == pytest.approx(truth, abs=0.03)


def test_the_draft_is_paid_for_all_k_and_verification_for_what_is_verified() -> None:
    engine = build_engine(pair(True), {})
    plain = build_engine(PLAIN, {})
    batch, prefill, context = 64, 0, 64 * 600
    assert engine.draft is not None
    draft_pass = engine.draft.step_seconds(engine.hw, batch, context)
    drafting = 5 * (draft_pass + physics.PROPOSER_OVERHEAD_S)
    assert engine._seconds(5, 0, batch, prefill, context) == pytest.approx(
        plain._seconds(0, 0, batch, prefill, context) + drafting
    )
    verify_all = engine._seconds(5, 5, batch, prefill, context)
    assert verify_all - drafting == pytest.approx(
        physics.STEP_OVERHEAD_S + engine.target.step_seconds(engine.hw, batch * 6, context)
    )


def test_with_a_schedule_the_schedule_caps_k_and_adaptive_verification_trims_within_it() -> None:
    schedule = [[1, 8, 5], [9, 4096, 2]]
    engine = build_engine(pair(True, num_speculative_tokens_per_batch_size=schedule), {})
    assert engine.adaptive
    assert engine.schedule == [(1, 8, 5), (9, 4096, 2)]
    # Model Runner V2 (which adaptive verification needs) keeps full CUDA graphs with a schedule.
    assert not engine.piecewise_graphs
    # Without it, draft_model runs on V1 in 0.30.0 (on V2 from 0.31.0)
    v1 = {"SPECPILOT_SIM_VLLM_VERSION": "0.30.0"}
    assert build_engine(pair(num_speculative_tokens_per_batch_size=schedule), v1).piecewise_graphs
    burst(engine, 64, 1.0)
    for (batch, k), _ in engine.step_counts.items():
        assert k == (5 if batch <= 8 else 2)
    for (batch, verified), _ in engine.verified_counts.items():
        assert verified <= (5 if batch <= 8 else 2)
    assert any(v < 2 for b, v in engine.verified_counts if b > 8)  # trimmed within the cap
    drafts = counter(engine, "spec_decode_num_drafts")
    assert counter(engine, "spec_decode_num_draft_tokens") < 5 * drafts
