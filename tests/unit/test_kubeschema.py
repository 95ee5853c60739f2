"""The shipped Kubernetes schemas are kubernetes-validate's, and the small checker judges them as
a full JSON Schema validator (jsonschema) does."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource

from specpilot.api.kubeschema import REF_PREFIX, ROOTS, check, definitions
from tests import kube_schemas


def test_the_shipped_schemas_are_current() -> None:
    assert kube_schemas.SHIPPED.read_text() == kube_schemas.rendered(), (
        "operator/specpilot/api/kubernetes-pod-schemas.json is out of date: run "
        "`python -m tests.kube_schemas`"
    )


def shipped_validator(definition: str) -> jsonschema.Validator:
    schema = {"$ref": REF_PREFIX + definition, "$defs": definitions()}
    return jsonschema.Draft202012Validator(schema)


def source_validator(definition: str) -> jsonschema.Validator:
    """kubernetes-validate's own, unreduced definitions, with their references as written."""
    uri = "https://kubernetes.io/api/_definitions.json"
    contents = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": uri,
        "$defs": kube_schemas._source_definitions(),
    }
    registry: Registry[Any] = Registry().with_resource(uri, Resource.from_contents(contents))
    return jsonschema.Draft202012Validator(
        {"$ref": f"{uri}#/$defs/{definition}"}, registry=registry
    )


CASES: list[tuple[str, Any]] = [
    (
        "affinity",
        {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "a", "operator": "In", "values": ["b"]}]}
                    ]
                }
            }
        },
    ),
    (
        "affinity",
        {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpresions": []}]
                }
            }
        },
    ),
    (
        "affinity",
        {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": "50", "podAffinityTerm": {"topologyKey": "h"}}
                ]
            }
        },
    ),
    (
        "affinity",
        {
            "podAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {}}]
            }
        },
    ),
    ("affinity", []),
    ("tolerations", {"key": "k", "operator": "Exists", "effect": None}),
    ("tolerations", {"key": "k", "tolerationSeconds": 1.5}),
    ("tolerations", {"key": "k", "tolerationSeconds": True}),
    ("env", {"name": "A", "value": "1"}),
    ("env", {"name": "A", "value": 1}),
    ("env", {"value": "1"}),
    (
        "env",
        {"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k", "optional": True}}},
    ),
    (
        "env",
        {
            "name": "A",
            "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}},
        },
    ),
    (
        "env",
        {
            "name": "A",
            "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": False}},
        },
    ),
    ("volumes", {"name": "v", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}),
    ("volumes", {"name": "v", "emptyDir": {"sizeLimit": None}}),
    (
        "volumes",
        {
            "name": "v",
            "ephemeral": {
                "volumeClaimTemplate": {
                    "metadata": {"labels": {"a": "b"}},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "1Gi"}},
                    },
                }
            },
        },
    ),
    (
        "volumes",
        {
            "name": "v",
            "ephemeral": {"volumeClaimTemplate": {"spec": {"resources": {"request": {}}}}},
        },
    ),
    (
        "volumes",
        {
            "name": "v",
            "projected": {
                "sources": [{"serviceAccountToken": {"path": "t", "expirationSeconds": 600}}]
            },
        },
    ),
    ("volumes", {"emptyDir": {}}),
    ("volumeMounts", {"name": "v", "mountPath": "/m", "readOnly": True}),
    ("volumeMounts", {"name": "v", "mountPath": "/m", "subpath": "x"}),
    ("resources", {"limits": {"cpu": 2, "memory": "1Gi"}, "claims": [{"name": "gpu"}]}),
    ("resources", {"limits": {"cpu": [2]}}),
    ("resources", {"claims": [{}]}),
    ("imagePullSecrets", {"name": "r"}),
    ("imagePullSecrets", {"name": 5}),
]


@pytest.mark.parametrize(("field", "value"), CASES)
def test_the_checker_agrees_with_jsonschema_on_the_shipped_and_the_source_schemas(
    field: str, value: Any
) -> None:
    definition = ROOTS[field]
    mine = check(value, definition, f"spec.pod.{field}")
    shipped = list(shipped_validator(definition).iter_errors(value))
    source = list(source_validator(definition).iter_errors(value))
    assert bool(mine) == bool(shipped) == bool(source), (mine, shipped, source)
