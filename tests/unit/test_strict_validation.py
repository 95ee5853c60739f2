"""Validation as strict as the API server, and beyond it: types as the CRD's schema has them,
bounded nesting, and names that collide with no other resource's objects."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from packaging.version import Version

from specpilot.api.documents import safe_load_all
from specpilot.api.validation import BASELINE_SUFFIX, MAX_DEPTH
from specpilot.assessment import assess
from specpilot.findings import Finding, Severity
from specpilot.rendering.manifests import manifests
from tests.conftest import manifest


def errors_at(doc: dict[str, Any], path: str) -> list[Finding]:
    return [f for f in assess(doc).findings if f.severity is Severity.ERROR and f.path == path]


def with_value(path: str, value: Any) -> dict[str, Any]:
    doc = manifest()
    *parents, last = path.split(".")
    target = doc
    for part in parents:
        target = target.setdefault(part, {})
    target[last] = value
    return doc


def nested(levels: int) -> dict[str, Any]:
    """A mapping `levels` deep, built without recursion."""
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("path", "value", "words", "fix"),
    [
        ("spec.target.tensorParallelSize", "2", "a valid integer", "give a whole number."),
        ("spec.target.pipelineParallelSize", True, "a valid integer", "give a whole number."),
        ("spec.gpus.count", "2", "a valid integer", "give a whole number."),
        ("spec.gpus.memoryUtilization", "0.9", "a valid number", "give a number."),
        ("spec.gpus.memoryUtilization", True, "a valid number", "give a number."),
        ("spec.monitoring.podMonitor", "true", "a valid boolean", "give true or false."),
        ("spec.monitoring.podMonitor", 1, "a valid boolean", "give true or false."),
    ],
)
def test_values_the_crd_schema_refuses_are_not_coerced(
    path: str, value: Any, words: str, fix: str
) -> None:
    (finding,) = errors_at(with_value(path, value), path)
    assert finding.code == "InvalidField"
    assert finding.message == f"input should be {words} (got {value!r})."
    assert finding.fix == fix


def test_a_string_number_is_named_like_any_other_type_error() -> None:
    doc = with_value("spec.target.tensorParallelSize", "5")
    (finding,) = errors_at(doc, "spec.target.tensorParallelSize")
    assert str(finding) == (
        "spec.target.tensorParallelSize: input should be a valid integer (got '5'). "
        "Fix: give a whole number."
    )


def test_a_required_field_of_the_wrong_type_is_not_also_reported_missing() -> None:
    result = assess(with_value("spec.gpus.count", "2"))
    assert [f.code for f in result.findings if f.path == "spec.gpus.count"] == ["InvalidField"]
    assert not any("required" in f.message for f in result.findings)


def test_enums_and_literals_take_their_string_values() -> None:
    doc = manifest()
    doc["spec"]["target"] |= {
        "model": "meta-llama/Llama-3.1-70B-Instruct",
        "quantization": "fp8",
        "dtype": "bfloat16",
    }
    doc["spec"]["policy"] = {"mode": "recommend"}
    result = assess(doc)
    assert result.resource is not None, result.findings
    assert result.resource.spec.policy.mode.value == "recommend"


def test_a_whole_float_is_an_integer_as_the_api_server_stores_it() -> None:
    """The API server accepts 2.0 for an integer field and hands back 2."""
    result = assess(with_value("spec.target.tensorParallelSize", 2.0))
    assert result.resource is not None, result.findings
    assert result.resource.spec.target.tensor_parallel_size == 2
    (finding,) = errors_at(
        with_value("spec.target.tensorParallelSize", 2.5), "spec.target.tensorParallelSize"
    )
    assert finding.code == "InvalidField"


def test_keys_json_cannot_spell_are_read_as_kubectl_sends_them() -> None:
    doc = manifest(pod={"nodeSelector": {1: "a", False: "b", None: "c"}})
    result = assess(doc)
    assert result.resource is not None, result.findings
    assert result.resource.spec.pod.node_selector == {"1": "a", "false": "b", "null": "c"}


@pytest.mark.parametrize(
    "where",
    ["spec.pod.affinity", "spec.pod.resources", "status.kopf", "metadata.annotations"],
)
def test_a_free_form_field_nested_hundreds_deep_is_refused_naming_it(where: str) -> None:
    result = assess(with_value(where, nested(600)))
    (finding,) = [f for f in result.findings if f.code == "NestingTooDeep"]
    assert finding.path.startswith(where + ".a.a")
    assert f"more than {MAX_DEPTH} levels" in finding.message
    assert finding.fix
    assert not result.valid


def test_nesting_is_measured_from_the_document_root_up_to_the_limit() -> None:
    above = 3  # the document, spec and pod hold the affinity
    fits = assess(with_value("spec.pod.affinity", nested(MAX_DEPTH - above)))
    deeper = assess(with_value("spec.pod.affinity", nested(MAX_DEPTH - above + 1)))
    assert not any(f.code == "NestingTooDeep" for f in fits.findings)
    assert any(f.code == "NestingTooDeep" for f in deeper.findings)


def test_deep_lists_and_other_problems_are_reported_together() -> None:
    deep: list[Any] = []
    for _ in range(600):
        deep = [deep]
    doc = manifest(replicas=-1)
    doc["spec"]["vllm"]["extraArgs"] = deep
    result = assess(doc)
    codes = {f.path: f.code for f in result.findings if f.severity is Severity.ERROR}
    assert codes["spec.replicas"] == "InvalidField"
    assert any(
        p.startswith("spec.vllm.extraArgs[0]") and c == "NestingTooDeep" for p, c in codes.items()
    )


def test_a_document_containing_itself_is_refused_not_unrolled() -> None:
    """YAML aliases can make a list contain itself (twice: unrolled, 2**32 items)."""
    (doc,) = safe_load_all(yaml.safe_dump(manifest()) + "extra: &loop [*loop, *loop]\n")
    doc["spec"]["vllm"]["extraArgs"] = doc.pop("extra")
    result = assess(doc)
    (finding,) = [f for f in result.findings if f.code == "NestingTooDeep"]
    assert finding.path == "spec.vllm.extraArgs[0]"
    assert "1 more place" in finding.message


def test_the_input_document_is_not_changed() -> None:
    doc = manifest(replicas="many", pod={"affinity": nested(100)})
    before = copy.deepcopy(doc)
    assess(doc)
    assert doc == before


def test_yaml_nested_beyond_the_limit_is_a_yaml_error_naming_the_line() -> None:
    text = "spec:\n  pod:\n    affinity: " + "{a: " * 600 + "1" + "}" * 600 + "\n"
    with pytest.raises(yaml.YAMLError) as refused:
        list(safe_load_all(text))
    assert f"more than {MAX_DEPTH} levels" in str(refused.value)
    assert "line 3" in str(refused.value)


def test_yaml_within_the_limit_loads_as_safe_load_all_does() -> None:
    text = yaml.safe_dump_all([manifest(pod={"affinity": nested(20)}), {"b": [1, 2]}])
    assert list(safe_load_all(text)) == list(yaml.safe_load_all(text))


def test_a_name_ending_in_the_baseline_suffix_is_refused() -> None:
    doc = manifest()
    doc["metadata"]["name"] = "llama" + BASELINE_SUFFIX
    (finding,) = errors_at(doc, "metadata.name")
    assert finding.code == "ReservedNameSuffix"
    assert "'llama'" in finding.message
    assert BASELINE_SUFFIX in finding.fix


@pytest.mark.parametrize("name", ["baseline", "llama-baselines", "baseline-llama"])
def test_names_that_only_resemble_the_suffix_are_fine(name: str) -> None:
    doc = manifest()
    doc["metadata"]["name"] = name
    assert not errors_at(doc, "metadata.name")


def test_every_child_object_is_named_after_its_resource_or_with_the_reserved_suffix() -> None:
    """So two resources' objects can only collide through the refused suffix."""
    doc = manifest()
    doc["spec"]["policy"] = {"controlReplicas": 1}
    doc["spec"]["monitoring"] = {"podMonitor": True}
    result = assess(doc)
    assert result.resource is not None, result.findings
    name = result.resource.metadata.name
    children = manifests(result.resource, Version(result.vllm_version or ""))
    assert {o["kind"] for o in children} == {"Deployment", "Service", "PodMonitor"}
    assert {o["metadata"]["name"] for o in children} == {name, name + BASELINE_SUFFIX}


def test_the_api_servers_managed_fields_mirroring_a_deep_spec_are_not_what_is_named() -> None:
    """managedFields repeats the spec's shape (f:spec, f:pod, ...), so a deep spec makes it as
    deep; the finding names the field the user wrote."""
    doc = with_value("spec.pod.affinity", nested(600))
    doc["metadata"]["managedFields"] = [{"manager": "kubectl", "fieldsV1": nested(600)}]
    result = assess(doc)
    (finding,) = [f for f in result.findings if f.code == "NestingTooDeep"]
    assert finding.path.startswith("spec.pod.affinity.")
    assert "more place" not in finding.message
