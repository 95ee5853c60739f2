"""Bad input: every problem reported at once, each naming the field and the fix."""

from __future__ import annotations

from typing import Any

import pytest

from specpilot.assessment import Assessment, assess
from specpilot.findings import Severity
from tests.conftest import manifest


def error_paths(result: Assessment) -> dict[str, str]:
    return {f.path: f.code for f in result.findings if f.severity is Severity.ERROR}


def test_valid_base_manifest() -> None:
    result = assess(manifest())
    assert result.valid, result.findings
    assert result.plan is not None
    assert result.plan.verdict == "fits"


def test_many_problems_reported_together() -> None:
    doc = manifest(
        target={
            "model": "meta-llama/Llama-3.1-70B-Instruct",
            "tensorParallelSize": "two",
            "maxModelLen": 8192,
        },
        speculation={"method": "medusa-ish", "numSpeculativeTokens": 0},
        gpus={"type": "H100-80GB", "count": 3, "memoryUtilization": 1.5},
        replicas=-1,
    )
    doc["spec"]["vllm"]["extraArgs"] = ["--tensor-parallel-size=4"]
    result = assess(doc)
    assert not result.valid
    paths = error_paths(result)
    assert paths["spec.target.tensorParallelSize"] == "InvalidField"
    assert paths["spec.speculation.method"] == "InvalidField"
    assert paths["spec.speculation.numSpeculativeTokens"] == "InvalidField"
    assert paths["spec.gpus.memoryUtilization"] == "InvalidField"
    assert paths["spec.replicas"] == "InvalidField"
    assert paths["spec.vllm.extraArgs[0]"] == "ManagedFlagInExtraArgs"
    # GPU count 3 vs TP: TP itself is wrong, so no contradiction is claimed about a guessed value.
    assert "spec.gpus.count" not in paths
    for f in result.findings:
        assert f.fix, f"{f.code} at {f.path} has no fix"


def test_cross_field_checks_run_beside_type_errors() -> None:
    doc = manifest(gpus={"type": "H100-80GB", "count": 3}, replicas="many")
    paths = error_paths(assess(doc))
    assert paths["spec.replicas"] == "InvalidField"
    assert paths["spec.gpus.count"] == "GPUCountMismatch"


def test_gpu_count_must_match_parallelism() -> None:
    doc = manifest(gpus={"type": "H100-80GB", "count": 4})
    finding = next(f for f in assess(doc).findings if f.code == "GPUCountMismatch")
    assert finding.path == "spec.gpus.count"
    assert "set spec.gpus.count to 2" in finding.fix


def test_unknown_gpu_type_lists_the_catalog() -> None:
    result = assess(manifest(gpus={"type": "H800", "count": 2}))
    finding = next(f for f in result.findings if f.path == "spec.gpus.type")
    assert "H800" in finding.message
    assert "H100-80GB" in finding.fix
    assert "L4-24GB" in finding.fix


def test_draft_model_without_a_draft() -> None:
    result = assess(manifest(speculation={"method": "draft_model"}))
    assert error_paths(result)["spec.speculation.draft"] == "DraftRequired"


def test_draft_larger_than_target() -> None:
    doc = manifest(
        target={
            "model": "meta-llama/Llama-3.1-8B-Instruct",
            "tensorParallelSize": 2,
            "maxModelLen": 8192,
        },
        speculation={
            "method": "draft_model",
            "draft": {"model": "meta-llama/Llama-3.1-70B-Instruct"},
        },
    )
    assert error_paths(assess(doc))["spec.speculation.draft.model"] == "DraftNotSmaller"


def test_impossible_memory() -> None:
    doc = manifest(
        target={
            "model": "meta-llama/Llama-3.1-405B-Instruct",
            "tensorParallelSize": 2,
            "maxModelLen": 8192,
        }
    )
    result = assess(doc)
    assert error_paths(result)["spec.gpus"] == "WeightsExceedMemory"
    assert result.plan is not None
    assert result.plan.verdict == "does-not-fit"


def test_unknown_field_suggests_the_right_name() -> None:
    doc = manifest()
    doc["spec"]["target"]["tensorParalellSize"] = 2
    finding = next(f for f in assess(doc).findings if f.code == "UnknownField")
    assert finding.path == "spec.target.tensorParalellSize"
    assert "did you mean tensorParallelSize?" in finding.fix


def test_unknown_method_lists_the_methods() -> None:
    finding = next(
        f
        for f in assess(manifest(speculation={"method": "lookahead"})).findings
        if f.path == "spec.speculation.method"
    )
    assert "'draft_model'" in finding.fix
    assert "'eagle3'" in finding.fix


@pytest.mark.parametrize(
    ("section", "value", "path", "code"),
    [
        (
            "speculation",
            {"method": "ngram", "ngram": {"promptLookupMin": 5, "promptLookupMax": 2}},
            "spec.speculation.ngram.promptLookupMin",
            "NgramBoundsInverted",
        ),
        (
            "speculation",
            {"method": "ngram", "draft": {"model": "meta-llama/Llama-3.2-1B"}},
            "spec.speculation.draft",
            "DraftNotUsed",
        ),
        ("speculation", {"method": "eagle3"}, "spec.speculation.draft", "DraftRequired"),
        (
            "policy",
            {"thresholds": {"disableBelowAcceptance": 0.7}},
            "spec.policy.thresholds.reviewBelowAcceptance",
            "ThresholdsInverted",
        ),
        ("gpus", {"type": "custom", "count": 2}, "spec.gpus.memoryGB", "CustomGPUNeedsMemory"),
        (
            "speculation",
            {
                "method": "ngram",
                "numSpeculativeTokens": 3,
                "schedule": [{"minBatchSize": 1, "maxBatchSize": 8, "numSpeculativeTokens": 4}],
            },
            "spec.speculation.schedule[0].numSpeculativeTokens",
            "ScheduleAboveNumSpeculativeTokens",
        ),
        (
            "speculation",
            {
                "method": "ngram",
                "schedule": [{"minBatchSize": 2, "maxBatchSize": 8, "numSpeculativeTokens": 4}],
            },
            "spec.speculation.schedule",
            "ScheduleMustStartAtOne",
        ),
        (
            "speculation",
            {
                "method": "ngram",
                "schedule": [
                    {"minBatchSize": 1, "maxBatchSize": 8, "numSpeculativeTokens": 4},
                    {"minBatchSize": 8, "maxBatchSize": 64, "numSpeculativeTokens": 2},
                ],
            },
            "spec.speculation.schedule[1]",
            "ScheduleOverlap",
        ),
        (
            "speculation",
            {
                "method": "ngram",
                "schedule": [{"minBatchSize": 9, "maxBatchSize": 8, "numSpeculativeTokens": 4}],
            },
            "spec.speculation.schedule[0]",
            "ScheduleRangeInverted",
        ),
        ("vllm", {"image": "vllm/vllm-openai:latest"}, "spec.vllm.version", "VLLMVersionUnknown"),
        (
            "vllm",
            {"image": "vllm/vllm-openai:v0.4.2"},
            "spec.vllm.version",
            "VLLMVersionUnsupported",
        ),
        (
            "vllm",
            {"extraArgs": ["--max-num-seqs", "64", "--speculative-config={}"]},
            "spec.vllm.extraArgs[2]",
            "ManagedFlagInExtraArgs",
        ),
        (
            "vllm",
            {"extraArgs": ["--served-model-name\nx"]},
            "spec.vllm.extraArgs[0]",
            "ControlCharacterInExtraArgs",
        ),
    ],
)
def test_cross_field_errors(section: str, value: Any, path: str, code: str) -> None:
    result = assess(manifest(**{section: value}))
    assert error_paths(result).get(path) == code, result.findings


def test_hostile_model_name_is_rejected() -> None:
    doc = manifest()
    doc["spec"]["target"]["model"] = "meta-llama/x; rm -rf / #"
    finding = next(f for f in assess(doc).findings if f.path == "spec.target.model")
    assert "Hugging Face id" in finding.fix


def test_explicit_version_wins_over_image_tag() -> None:
    doc = manifest(vllm={"image": "registry.local/vllm:prod", "version": "0.11.0"})
    result = assess(doc)
    assert result.vllm_version == "0.11.0"
    # draft_model is not available on 0.11: the refusal names version and field.
    finding = next(f for f in result.findings if f.code == "MethodUnsupportedByVersion")
    assert finding.path == "spec.speculation.method"
    assert "0.11.0" in finding.message


def test_not_a_mapping() -> None:
    result = assess(["not", "a", "mapping"])
    assert not result.valid
    assert result.findings[0].code == "NotAnObject"


def test_wrong_kind_and_name() -> None:
    doc = manifest()
    doc["kind"] = "Deployment"
    doc["metadata"]["name"] = "Llama_70B"
    paths = error_paths(assess(doc))
    assert "kind" in paths
    assert "metadata.name" in paths


@pytest.mark.parametrize(
    ("section", "key", "meant"),
    [
        ("target", "tensor_parallel_size", "spec.target.tensorParallelSize"),
        ("target", "tensor-parallel-size", "spec.target.tensorParallelSize"),
        ("target", "MaxModelLen", "spec.target.maxModelLen"),
        ("gpus", "memory_utilization", "spec.gpus.memoryUtilization"),
        ("gpus", "memory_gb", "spec.gpus.memoryGB"),
    ],
)
def test_another_spelling_of_a_field_is_refused_not_applied(
    section: str, key: str, meant: str
) -> None:
    doc = manifest()
    doc["spec"][section][key] = 1
    result = assess(doc)
    finding = next(f for f in result.findings if f.code == "UnknownField")
    assert finding.path == f"spec.{section}.{key}"
    assert "field names are camelCase, and this one is not applied" in finding.message
    assert finding.fix == f"did you mean {meant}? Otherwise remove it."
    assert not result.valid


def test_a_field_under_the_wrong_parent_points_to_where_it_lives() -> None:
    doc = manifest()
    doc["spec"]["vllm"]["tensor_parallel_size"] = 4
    finding = next(f for f in assess(doc).findings if f.code == "UnknownField")
    assert str(finding) == (
        "spec.vllm.tensor_parallel_size: not a field of spec.vllm, so it is not applied. Fix: "
        "did you mean spec.target.tensorParallelSize or "
        "spec.speculation.draft.tensorParallelSize? Otherwise remove it."
    )


def test_a_snake_case_field_never_reaches_the_plan() -> None:
    """A snake_case field is not applied, and no plan is made from the fields around it."""
    doc = manifest()
    doc["spec"]["target"]["tensor_parallel_size"] = 1
    result = assess(doc)
    assert result.plan is None  # spec.target lost a field: nothing is planned with the rest
    assert result.verdict == "cannot-be-deployed"
