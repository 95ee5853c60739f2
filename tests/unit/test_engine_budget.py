"""The KV budget as the engine each release runs sizes it: V0 or V1 by release and speculation
method, and V0's profiling pass growing with max_model_len."""

from __future__ import annotations

from typing import Any

import pytest
from packaging.version import Version

from specpilot.api.models import SpeculativeInferenceSpec
from specpilot.planning.memory import plan
from specpilot.vllm_versions import Engine, engine
from tests.conftest import manifest

LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"
EAGLE_8B = "yuhuili/EAGLE-LLaMA3.1-Instruct-8B"


@pytest.mark.parametrize(
    ("version", "method", "expected"),
    [
        ("0.7.3", None, Engine.V0),
        ("0.7.3", "ngram", Engine.V0),
        ("0.8.0", None, Engine.V1),
        ("0.8.2", "ngram", Engine.V1),
        ("0.8.2", "eagle", Engine.V0),  # no V1 EAGLE proposer before 0.8.3
        ("0.9.1", "eagle", Engine.V1),
        ("0.9.2", "eagle3", Engine.V1),
        ("0.9.2", "draft_model", Engine.V0),  # the V1 oracle fell back to V0
        ("0.10.0", None, Engine.V1),
        ("0.33.0", "draft_model", Engine.V1),
    ],
)
def test_engine_by_release_and_method(version: str, method: str | None, expected: Engine) -> None:
    assert engine(Version(version), method) is expected


def spec(max_model_len: int, speculation: dict[str, Any] | None = None) -> Any:
    doc = manifest(
        target={"model": LLAMA_8B, "tensorParallelSize": 1, "maxModelLen": max_model_len},
        speculation=speculation,
        gpus={"type": "A100-80GB", "count": 1},
    )
    return SpeculativeInferenceSpec.model_validate(doc["spec"])


def test_eagle_on_0_9_1_runs_v1_and_gets_no_v0_draft_finding() -> None:
    eagle = {"method": "eagle", "draft": {"model": EAGLE_8B}}
    on_v1 = plan(spec(8192, eagle), Version("0.9.1"))
    assert on_v1.engine is Engine.V1
    assert "V0DraftWeightsUnprofiled" not in {f.code for f in on_v1.findings}
    draft = {"method": "draft_model", "draft": {"model": "meta-llama/Llama-3.2-1B-Instruct"}}
    on_v0 = plan(spec(8192, draft), Version("0.9.1"))
    assert on_v0.engine is Engine.V0
    assert "V0DraftWeightsUnprofiled" in {f.code for f in on_v0.findings}


def test_v0_activation_peak_grows_with_max_model_len_until_chunked_prefill() -> None:
    v0 = Version("0.6.6")
    short, long, chunked = (plan(spec(n), v0) for n in (8192, 32768, 65536))
    assert (short.profiled_tokens, long.profiled_tokens, chunked.profiled_tokens) == (
        8192,
        32768,
        2048,
    )
    assert short.overhead_gb_per_gpu < long.overhead_gb_per_gpu
    assert chunked.overhead_gb_per_gpu < short.overhead_gb_per_gpu
    # V1 profiles a fixed token budget whatever the context length.
    v1 = [plan(spec(n), Version("0.33.0")) for n in (8192, 32768)]
    assert v1[0].overhead_gb_per_gpu == v1[1].overhead_gb_per_gpu
