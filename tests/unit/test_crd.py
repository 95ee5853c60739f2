"""The CRD in crds/ is generated from the models; it must be current and structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from specpilot.api.crd import crd_yaml, custom_resource_definition
from tests.conftest import REPO

CRD_FILE = REPO / "crds" / "specpilot.io_speculativeinferences.yaml"


def test_crds_folder_is_up_to_date() -> None:
    assert CRD_FILE.read_text() == crd_yaml(), (
        "crds/ is out of date: run `specpilot crd > crds/specpilot.io_speculativeinferences.yaml`"
    )


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, value in node.items():
            found += _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _walk(value, f"{path}[{i}]")
    return found


def _schema() -> dict[str, Any]:
    version = custom_resource_definition()["spec"]["versions"][0]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def test_schema_is_structural() -> None:
    for path, node in _walk(_schema()):
        assert "$ref" not in node, path
        assert "anyOf" not in node, path
        assert "title" not in node, path
        if path.endswith(".properties") or path.endswith("additionalProperties"):
            continue
        if "properties" in node or "items" in node or "enum" in node or "pattern" in node:
            assert "type" in node, f"{path} has no type"
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True


def test_spec_fields_are_documented_for_kubectl_explain() -> None:
    spec = _schema()["properties"]["spec"]
    for section in ("vllm", "target", "speculation", "gpus", "policy", "monitoring"):
        assert spec["properties"][section].get("description"), section
    target = spec["properties"]["target"]["properties"]
    assert target["tensorParallelSize"]["minimum"] == 1
    assert target["tensorParallelSize"]["default"] == 1
    assert "awq" in target["quantization"]["enum"]
    gpus = spec["properties"]["gpus"]["properties"]
    assert "H100-80GB" in gpus["type"]["enum"]
    thresholds = spec["properties"]["policy"]["properties"]["thresholds"]
    assert thresholds["default"] == {}
    assert thresholds["properties"]["disableBelowAcceptance"]["default"] == 0.5
    assert thresholds["properties"]["reviewBelowAcceptance"]["default"] == 0.65


def test_printer_columns_and_status_subresource() -> None:
    version = custom_resource_definition()["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Phase", "Speculation", "Acceptance", "P99 TPOT", "Age"]
    crd = custom_resource_definition()
    assert crd["spec"]["names"]["shortNames"] == ["specinf"]
    assert crd["metadata"]["name"] == "speculativeinferences.specpilot.io"


def test_crd_file_parses_as_one_document() -> None:
    docs = list(yaml.safe_load_all(Path(CRD_FILE).read_text()))
    assert len(docs) == 1
    assert docs[0]["kind"] == "CustomResourceDefinition"


def test_field_reference_is_up_to_date() -> None:
    from specpilot.api.reference import markdown_reference

    assert (REPO / "docs" / "resource.md").read_text() == markdown_reference(), (
        "docs/resource.md is stale: run specpilot crd --format markdown > docs/resource.md"
    )
