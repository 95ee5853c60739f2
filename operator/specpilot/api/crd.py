"""The CustomResourceDefinition, generated from the pydantic models so schema and code never drift.

Kubernetes wants a structural OpenAPI v3 schema: no $ref, no anyOf-with-null, boolean
exclusiveMinimum, and x-kubernetes-preserve-unknown-fields where the content is free-form.
"""

from __future__ import annotations

from typing import Any

import yaml

from specpilot.api.models import (
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    SpeculativeInferenceSpec,
    SpeculativeInferenceStatus,
)

JSONSchema = dict[str, Any]

_KEPT_KEYWORDS = (
    "type",
    "description",
    "enum",
    "default",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "format",
)

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {
        "name": "Speculation",
        "type": "string",
        "jsonPath": ".status.effective.speculation",
        "description": "Whether the running pods speculate (on/off).",
    },
    {
        "name": "Acceptance",
        "type": "number",
        "jsonPath": ".status.lastMetrics.acceptanceRate",
        "description": "Share of draft tokens the target accepted over the policy window.",
    },
    {
        "name": "P99 TPOT",
        "type": "number",
        "jsonPath": ".status.lastMetrics.p99TpotMs",
        "description": "P99 time per output token, milliseconds.",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _resolve(node: JSONSchema, defs: dict[str, JSONSchema]) -> JSONSchema:
    """Inline $ref and collapse Optional (anyOf with null) into the single real alternative."""
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**target, **node}
    if "anyOf" in node:
        alternatives = [alt for alt in node.pop("anyOf") if alt != {"type": "null"}]
        if len(alternatives) != 1:
            raise ValueError(f"union types have no structural schema: {alternatives}")
        inner = _resolve(alternatives[0], defs)
        node = {**inner, **{k: v for k, v in node.items() if k != "default" or v is not None}}
    if "const" in node:
        node["enum"] = [node.pop("const")]
    return node


def structural(node: JSONSchema, defs: dict[str, JSONSchema]) -> JSONSchema:
    node = _resolve(node, defs)
    out: JSONSchema = {k: node[k] for k in _KEPT_KEYWORDS if k in node}
    if out.get("default", 0) is None:
        del out["default"]
    for bound in ("exclusiveMinimum", "exclusiveMaximum"):
        if bound in node:
            out["minimum" if bound == "exclusiveMinimum" else "maximum"] = node[bound]
            out[bound] = True
    if node.get("type") == "object":
        properties = node.get("properties", {})
        extra = node.get("additionalProperties")
        if properties:
            out["properties"] = {
                name: _with_object_default(name, schema, node, defs)
                for name, schema in properties.items()
            }
            if node.get("required"):
                out["required"] = list(node["required"])
        elif isinstance(extra, dict) and extra:
            out["additionalProperties"] = structural(extra, defs)
        else:
            out["x-kubernetes-preserve-unknown-fields"] = True
    if node.get("type") == "array":
        out["items"] = structural(node["items"], defs)
    return out


def _with_object_default(
    name: str, schema: JSONSchema, parent: JSONSchema, defs: dict[str, JSONSchema]
) -> JSONSchema:
    """Default nested objects built by default_factory to {} so their own defaults apply."""
    converted = structural(schema, defs)
    optional = name not in parent.get("required", ())
    has_factory_default = "default" not in schema and "default" not in _resolve(schema, defs)
    if optional and has_factory_default and "properties" in converted:
        converted["default"] = {}
    return converted


def _schema_of(model: type[SpeculativeInferenceSpec | SpeculativeInferenceStatus]) -> JSONSchema:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return structural(raw, raw.get("$defs", {}))


def _without_defaults(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_defaults(v) for k, v in node.items() if k != "default"}
    if isinstance(node, list):
        return [_without_defaults(v) for v in node]
    return node


def _status_schema() -> JSONSchema:
    """Only the operator writes status, so it carries no defaults (1.20 rejects '' there)."""
    schema: JSONSchema = _without_defaults(_schema_of(SpeculativeInferenceStatus))
    conditions = schema["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    conditions["items"]["required"] = ["type", "status"]
    return schema


def custom_resource_definition() -> dict[str, Any]:
    spec_schema = _schema_of(SpeculativeInferenceSpec)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": ["specpilot"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A vLLM deployment with speculative decoding, "
                            "planned, rendered and controlled by specpilot.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": _status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


def crd_yaml() -> str:
    header = "# Generated by `specpilot crd` from operator/specpilot/api/models.py. Do not edit.\n"
    return header + yaml.safe_dump(custom_resource_definition(), sort_keys=False, width=100)
