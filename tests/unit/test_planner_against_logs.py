"""The planner against real vLLM startup logs: weights and KV cache per GPU as vLLM printed them.

Each record in tests/fixtures/startup-logs.yaml describes a logged deployment the way a
SpeculativeInference would, plans it with the repository's checkpoint fixtures (as the operator
would read them), and holds the planner to the record's tolerance. docs/planner.md lists every
record with its source and the planner's error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.version import Version

from specpilot.adapters.checkpoints import CheckpointReader
from specpilot.api.models import SpeculativeInferenceSpec
from specpilot.planning.memory import MemoryPlan, plan
from tests.conftest import CHECKPOINTS, manifest

GIB = 2**30
RECORDS: list[dict[str, Any]] = yaml.safe_load(
    (Path(__file__).parent.parent / "fixtures" / "startup-logs.yaml").read_text()
)
READER = CheckpointReader(local_dir=CHECKPOINTS, use_hub=False)


def planned(record: dict[str, Any]) -> MemoryPlan:
    gpus = dict(record["gpus"])
    if "memoryGiB" in gpus:  # what the log printed; the planner takes GB
        gpus["memoryGB"] = round(gpus.pop("memoryGiB") * GIB / 1e9, 3)
    doc = manifest(target=record["target"], speculation=record.get("speculation"), gpus=gpus)
    doc["spec"]["vllm"] = {"image": f"vllm/vllm-openai:v{record['vllm']}"}
    spec = SpeculativeInferenceSpec.model_validate(doc["spec"])
    draft = spec.speculation.draft if spec.speculation else None
    models = [spec.target.model, *([draft.model] if draft else [])]
    return plan(spec, Version(record["vllm"]), READER.read(models))


def relative_error(planned_gib: float, logged_gib: float) -> float:
    return (planned_gib - logged_gib) / logged_gib


@pytest.mark.parametrize("record", RECORDS, ids=[r["id"] for r in RECORDS])
def test_planner_against_startup_log(record: dict[str, Any]) -> None:
    p = planned(record)
    logged, checks = record["logged"], record["checks"]
    assert p.target is not None
    weights = p.target.weights_gb_per_gpu * 1e9 / GIB
    if checks.get("weights_include_draft"):  # V1 logs one figure for target and drafter
        assert p.draft is not None
        weights += p.draft.weights_gb_per_gpu * 1e9 / GIB
    error = relative_error(weights, logged["weights_gib_per_gpu"])
    assert abs(error) <= checks["weights_tolerance"], f"weights {weights:.3f} GiB ({error:+.1%})"
    assert p.engine == checks.get("planned_engine", logged["engine"])
    if "kv_cache_gib_per_gpu" in logged:
        kv = p.kv_cache_gb_per_gpu * 1e9 / GIB
        error = relative_error(kv, logged["kv_cache_gib_per_gpu"])
        assert abs(error) <= checks["kv_tolerance"], f"KV {kv:.2f} GiB ({error:+.1%})"


def test_fp8_awq_and_gptq_checkpoints_are_planned_within_three_percent() -> None:
    """The issue's target: a pre-quantized FP8, AWQ and GPTQ checkpoint each within 3%."""
    by_method: dict[str, list[float]] = {}
    for record in RECORDS:
        p = planned(record)
        assert p.target is not None
        method = p.target.checkpoint_quantization
        if method is None:
            continue
        weights = p.target.weights_gb_per_gpu * 1e9 / GIB
        error = relative_error(weights, record["logged"]["weights_gib_per_gpu"])
        by_method.setdefault(method, []).append(abs(error))
    assert {"fp8", "awq", "gptq"} <= set(by_method)
    assert all(max(errors) <= 0.03 for errors in by_method.values()), by_method
