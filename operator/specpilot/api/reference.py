"""A Markdown field reference generated from the CRD schema, so docs and API never disagree."""

from __future__ import annotations

import json
from typing import Any

from specpilot.api.crd import JSONSchema, custom_resource_definition


def _type(node: JSONSchema) -> str:
    kind = str(node.get("type", "object"))
    if kind == "array":
        return f"list of {_type(node.get('items', {}))}"
    if kind == "object" and "additionalProperties" in node:
        return f"map of {_type(node['additionalProperties'])}"
    return kind


def _constraints(node: JSONSchema) -> str:
    parts = []
    if "enum" in node:
        parts.append("one of " + ", ".join(f"`{v}`" for v in node["enum"]))
    low = node.get("minimum")
    high = node.get("maximum")
    if low is not None:
        parts.append(f"{'>' if node.get('exclusiveMinimum') else '>='} {low}")
    if high is not None:
        parts.append(f"{'<' if node.get('exclusiveMaximum') else '<='} {high}")
    if "maxLength" in node:
        parts.append(f"at most {node['maxLength']} characters")
    if "maxItems" in node:
        parts.append(f"at most {node['maxItems']} items")
    if "pattern" in node:
        parts.append(f"pattern `{node['pattern']}`")
    return "; ".join(parts)


def _rows(node: JSONSchema, path: str, required: bool, rows: list[list[str]]) -> None:
    default = node.get("default")
    shown_default = "" if default in (None, {}) else f"`{json.dumps(default)}`"
    description = " ".join(str(node.get("description", "")).split())
    rows.append(
        [
            f"`{path}`",
            _type(node),
            "yes" if required else "",
            shown_default,
            description + (f" ({_constraints(node)})" if _constraints(node) else ""),
        ]
    )
    target = node.get("items", node) if node.get("type") == "array" else node
    needed = set(target.get("required", ()))
    suffix = "[]" if node.get("type") == "array" else ""
    for name, child in target.get("properties", {}).items():
        _rows(child, f"{path}{suffix}.{name}", name in needed, rows)


def markdown_reference() -> str:
    crd: dict[str, Any] = custom_resource_definition()
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rows: list[list[str]] = []
    _rows(schema["properties"]["spec"], "spec", True, rows)
    status_rows: list[list[str]] = []
    _rows(schema["properties"]["status"], "status", False, status_rows)
    header = ["field", "type", "required", "default", "description"]

    def table(body: list[list[str]]) -> str:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |" for r in body]
        return "\n".join(lines)

    return (
        "# SpeculativeInference reference (specpilot.io/v1alpha1)\n\n"
        "Generated from the CRD schema by `specpilot crd --format markdown`; do not edit.\n"
        "`kubectl explain specinf.spec.<field>` shows the same descriptions in a cluster.\n\n"
        "## spec\n\n"
        + table(rows)
        + "\n\n## status (written by the operator)\n\n"
        + table(status_rows)
        + "\n"
    )
