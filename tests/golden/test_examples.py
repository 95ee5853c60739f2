"""Golden tests: every example renders exactly as reviewed, and every manifest is valid Kubernetes.

Regenerate after an intended change with `UPDATE_GOLDEN=1 pytest tests/golden` and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from specpilot.assessment import assess, render
from specpilot.findings import InvalidResourceError
from tests.conftest import EXAMPLES, load_example

GOLDEN = Path(__file__).parent / "expected"
KUBERNETES_VERSION = "1.30.0"
NOT_IN_CORE_SCHEMAS = {"PodMonitor"}  # a Prometheus Operator CRD, checked for shape below

RENDERABLE = [p for p in EXAMPLES if assess(load_example(p)).valid]


def _render_text(path: Path) -> str:
    try:
        objects = render(load_example(path))
    except InvalidResourceError as exc:
        return "# refused\n" + "\n".join(f"# {f}" for f in exc.findings) + "\n"
    return yaml.safe_dump_all(objects, sort_keys=False, width=1000)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_matches_golden(path: Path) -> None:
    expected = GOLDEN / f"{path.stem}.yaml"
    actual = _render_text(path)
    if os.environ.get("UPDATE_GOLDEN"):
        expected.parent.mkdir(exist_ok=True)
        expected.write_text(actual)
    assert expected.exists(), f"no golden file; run UPDATE_GOLDEN=1 pytest {__file__}"
    assert actual == expected.read_text()


def test_required_examples_exist() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {
        "llama-70b-int8-draft",
        "ngram-summarization",
        "eagle3-single-h100",
        "legacy-vllm-0.6",
        "does-not-fit",
    } <= names
    assert not assess(load_example(EXAMPLES[0].parent / "does-not-fit.yaml")).valid


@pytest.mark.parametrize("path", RENDERABLE, ids=lambda p: p.stem)
@pytest.mark.parametrize("speculation", [True, False], ids=["on", "off"])
def test_rendered_manifests_are_valid_kubernetes(path: Path, speculation: bool) -> None:
    for obj in render(load_example(path), speculation=speculation):
        if obj["kind"] in NOT_IN_CORE_SCHEMAS:
            _check_pod_monitor(obj)
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def _check_pod_monitor(obj: dict[str, Any]) -> None:
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    endpoint = obj["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] == "http"
    assert endpoint["path"] == "/metrics"
    assert obj["spec"]["selector"]["matchLabels"]


def test_schema_validation_catches_a_broken_manifest() -> None:
    """The offline schema check itself can fail: a Deployment with args as one string does."""
    deployment = render(load_example(RENDERABLE[0]))[0]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["args"] = " ".join(container["args"])
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
