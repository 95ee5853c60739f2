"""Documents drawn from the CRD's own schema by hypothesis-jsonschema, valid in shape and, one in
two, with one field replaced by any JSON value, never crash `review` or the admission webhook:
each gets a verdict.

hypothesis-jsonschema 0.23.1 (its newest) needs Hypothesis 6.170.0 or older (6.170.17 dropped an
internal it calls), so pyproject pins both.
"""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import kopf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from specpilot.adapters.checkpoints import CheckpointReader
from specpilot.adapters.handlers import validate
from specpilot.adapters.runner import RunOptions
from specpilot.api.crd import custom_resource_definition
from specpilot.assessment import assess

Schema = dict[str, Any]

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
"""Any JSON value: what a wrong field may hold."""


def _without_kubernetes_keywords(schema: Any) -> Any:
    """The schema as plain JSON Schema (the x-kubernetes-* keywords mean nothing to it)."""
    if isinstance(schema, dict):
        return {
            k: _without_kubernetes_keywords(v)
            for k, v in schema.items()
            if not k.startswith("x-kubernetes-")
        }
    if isinstance(schema, list):
        return [_without_kubernetes_keywords(v) for v in schema]
    return schema


def _root() -> Schema:
    crd = custom_resource_definition()
    schema: Schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _one_field_wrong(spec: dict[str, Any], rng: random.Random, value: Any) -> dict[str, Any]:
    """`spec` with one field, at any depth, replaced by `value`."""
    fields: list[tuple[dict[str, Any], str]] = []
    todo: list[Any] = [spec]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            fields += [(node, key) for key in node]
            todo += node.values()
        elif isinstance(node, list):
            todo += node
    if fields:
        parent, key = rng.choice(fields)
        parent[key] = value
    return spec


SPEC = from_schema(_without_kubernetes_keywords(_root()["properties"]["spec"]))
SPECS = SPEC | st.builds(_one_field_wrong, SPEC, st.randoms(use_true_random=False), JSON)

DOCUMENTS = st.builds(
    lambda spec, name: {
        "apiVersion": "specpilot.io/v1alpha1",
        "kind": "SpeculativeInference",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    },
    SPECS,
    st.from_regex(r"[a-z]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True),
)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(DOCUMENTS)
def test_review_gives_every_drawn_document_a_verdict(doc: dict[str, Any]) -> None:
    result = assess(doc)
    assert result.valid or any(f.severity == "error" for f in result.findings)


RUNTIME = SimpleNamespace(checkpoints=CheckpointReader(use_hub=False))
"""What the webhook reads of the operator's runtime: its checkpoint reader (the hub off)."""


@FUZZ
@given(DOCUMENTS)
def test_the_webhook_accepts_or_refuses_every_drawn_document(doc: dict[str, Any]) -> None:
    """kopf.AdmissionError is the webhook's refusal; any other exception is a crash."""
    refusal = None
    try:
        validate(
            body=kopf.Body(doc), warnings=[], memo=kopf.Memo(options=RunOptions(), runtime=RUNTIME)
        )
    except kopf.AdmissionError as refused:
        refusal = str(refused)
    assert refusal is None or "error(s)" in refusal


def test_the_strategy_reaches_the_memory_plan() -> None:
    """Else the fuzzing would only ever reach the structural errors."""
    planned: list[bool] = []

    @FUZZ
    @given(DOCUMENTS)
    def draw(doc: dict[str, Any]) -> None:
        planned.append(assess(doc).plan is not None)

    draw()
    assert any(planned)
