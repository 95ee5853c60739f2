"""Kubernetes' own schemas for spec.pod's free-form fields, and a checker of the part of JSON Schema
they use.

The CRD keeps spec.pod.affinity, tolerations, env, volumes, volumeMounts, resources and
imagePullSecrets free-form, so the API server first sees them inside the Deployment the operator
applies, long after admission said yes: a typo there is either dropped silently or refused with
nothing running. They are checked here against the core/v1 definitions instead, shipped as package
data (tests/kube_schemas.py generates the file from kubernetes-validate, a dev dependency only; a
unit test keeps it current).
"""

from __future__ import annotations

import difflib
import json
from functools import cache
from importlib import resources
from typing import Any

from specpilot.findings import Finding, error, shown

Schema = dict[str, Any]

SCHEMA_FILE = "api/kubernetes-pod-schemas.json"
REF_PREFIX = "#/$defs/"
KEYWORDS = ("type", "properties", "additionalProperties", "required", "items", "$ref", "oneOf")
"""Every keyword the shipped schemas keep: the generator drops the rest (descriptions, formats,
list and patch hints), so a keyword the checker does not know cannot slip in."""
ROOTS = {
    "affinity": "io.k8s.api.core.v1.Affinity",
    "tolerations": "io.k8s.api.core.v1.Toleration",
    "env": "io.k8s.api.core.v1.EnvVar",
    "volumes": "io.k8s.api.core.v1.Volume",
    "volumeMounts": "io.k8s.api.core.v1.VolumeMount",
    "resources": "io.k8s.api.core.v1.ResourceRequirements",
    "imagePullSecrets": "io.k8s.api.core.v1.LocalObjectReference",
}
"""spec.pod's fields (list fields: each item) and the definition each must meet."""

QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
QUANTITY_FIX = "give a quantity such as 500m, 2Gi or 4."
_TYPE_WORDS = {
    "object": ("a valid dictionary", "give a mapping."),
    "array": ("a valid list", "give a list."),
    "string": ("a valid string", "give a string (quote it in YAML)."),
    "integer": ("a valid integer", "give a whole number."),
    "number": ("a valid number", "give a number."),
    "boolean": ("a valid boolean", "give true or false."),
}


@cache
def definitions() -> dict[str, Schema]:
    text = resources.files("specpilot").joinpath(SCHEMA_FILE).read_text()
    found: dict[str, Schema] = json.loads(text)["$defs"]
    return found


def check(value: Any, definition: str, path: str) -> list[Finding]:
    """Every way `value` (the field at `path`) breaks the named definition."""
    found: list[Finding] = []
    _check(value, {"$ref": REF_PREFIX + definition}, path, found)
    return found


def _check(value: Any, schema: Schema, path: str, found: list[Finding]) -> None:
    name = ""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix(REF_PREFIX)
        schema = definitions()[name]
    if "oneOf" in schema:
        _check_one_of(value, schema["oneOf"], path, found, QUANTITY_FIX if name == QUANTITY else "")
        return
    allowed = schema.get("type", [])
    allowed = [allowed] if isinstance(allowed, str) else allowed
    if allowed and not any(_is(value, kind) for kind in allowed):
        words, fix = _TYPE_WORDS[next(k for k in allowed if k != "null")]
        found.append(
            error("InvalidField", path, f"input should be {words} (got {shown(value)}).", fix)
        )
        return
    if isinstance(value, dict):
        _check_object(value, schema, path, found)
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _check(item, schema["items"], f"{path}[{i}]", found)


def _check_object(value: dict[str, Any], schema: Schema, path: str, found: list[Finding]) -> None:
    properties: dict[str, Schema] = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for key in schema.get("required", []):
        if key not in value:
            found.append(
                error(
                    "InvalidField", f"{path}.{key}", "field required.", "add this required field."
                )
            )
    for key, item in value.items():
        if key in properties:
            _check(item, properties[key], f"{path}.{key}", found)
        elif isinstance(extra, dict):
            _check(item, extra, f"{path}.{key}", found)
        elif extra is False:
            found.append(
                error(
                    "UnknownField", f"{path}.{key}", "unknown field.", _unknown_fix(key, properties)
                )
            )


def _check_one_of(
    value: Any, alternatives: list[Schema], path: str, found: list[Finding], fix: str
) -> None:
    passing = 0
    for alternative in alternatives:
        failures: list[Finding] = []
        _check(value, alternative, path, failures)
        passing += not failures
    if passing != 1:
        kinds = [a["type"][0] if isinstance(a["type"], list) else a["type"] for a in alternatives]
        words = " or ".join(_TYPE_WORDS[k][0] for k in kinds)
        message = f"input should be {words} (got {shown(value)})."
        found.append(
            error("InvalidField", path, message, fix or f"give {words.replace('a valid ', 'a ')}.")
        )


def _is(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    types: dict[str, type | tuple[type, ...]] = {
        "object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
    }  # fmt: skip
    return isinstance(value, types[kind])


def _unknown_fix(key: str, properties: dict[str, Schema]) -> str:
    close = difflib.get_close_matches(key, list(properties), n=1)
    if close:
        return f"did you mean {close[0]}? Otherwise remove it."
    return f"remove it (known fields: {', '.join(properties)})."
