"""The simulator refuses enable_adaptive_verification where vLLM does, with vLLM's messages."""

from __future__ import annotations

import json

import pytest

from specpilot_lab.sim import serve
from specpilot_lab.sim.engine import Engine
from specpilot_lab.sim.vllm_args import SimArgsError, parse_server_args

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


def counter(engine: Engine, name: str, **labels: str) -> float:
    value = engine.metrics.registry.get_sample_value(
        f"vllm:{name}_total", {**engine.metrics.labels, **labels}
    )
    assert value is not None, name
    return value


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


def test_the_server_does_not_start_when_vllm_would_not(capsys: pytest.CaptureFixture[str]) -> None:
    assert serve.main(small("eagle3", True, "--enforce-eager")) == 2
    assert "Adaptive verification requires full CUDA graphs" in capsys.readouterr().err
