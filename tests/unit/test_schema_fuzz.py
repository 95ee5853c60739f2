"""Documents drawn from the CRD's own schema, mostly valid in shape and now and then wrong in any
way JSON allows, never crash `review` or the admission webhook: each gets a verdict.

hypothesis-jsonschema would draw them, but its newest release (0.23.1) calls a Hypothesis internal
that the installed Hypothesis no longer has; the strategy here covers the structural subset the
CRD uses (type, properties, required, items, additionalProperties, enum, bounds,
x-kubernetes-preserve-unknown-fields).
"""

from __future__ import annotations

from typing import Any

import kopf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specpilot.adapters.handlers import validate
from specpilot.adapters.runner import RunOptions
from specpilot.api.crd import custom_resource_definition
from specpilot.review import review

Schema = dict[str, Any]

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
"""Any JSON value: what a wrong field may hold."""


def from_schema(schema: Schema) -> st.SearchStrategy[Any]:
    """Values the schema describes, or (one time in ten) any JSON value instead."""
    if "x-kubernetes-preserve-unknown-fields" in schema:
        return JSON
    shaped = _shaped(schema)
    return st.integers(0, 9).flatmap(lambda roll: JSON if roll == 0 else shaped)


def _shaped(schema: Schema) -> st.SearchStrategy[Any]:
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        if "properties" in schema:
            required = set(schema.get("required", ()))
            properties = schema["properties"]
            return st.fixed_dictionaries(
                {k: from_schema(v) for k, v in properties.items() if k in required},
                optional={k: from_schema(v) for k, v in properties.items() if k not in required},
            )
        if "additionalProperties" in schema:
            return st.dictionaries(
                st.text(max_size=8), from_schema(schema["additionalProperties"]), max_size=3
            )
        return st.dictionaries(st.text(max_size=8), JSON, max_size=3)
    if kind == "array":
        return st.lists(
            from_schema(schema["items"]),
            min_size=schema.get("minItems", 0),
            max_size=min(schema.get("maxItems", 3), 3),
        )
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        return st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True).filter(
                lambda s: len(s) <= schema.get("maxLength", 64)
            )
        return st.text(min_size=schema.get("minLength", 0), max_size=schema.get("maxLength", 16))
    return JSON


def _root() -> Schema:
    crd = custom_resource_definition()
    schema: Schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


DOCUMENTS = st.builds(
    lambda spec, name: {
        "apiVersion": "specpilot.io/v1alpha1",
        "kind": "SpeculativeInference",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    },
    from_schema(_root()["properties"]["spec"]),
    st.from_regex(r"[a-z]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True),
)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(DOCUMENTS)
def test_review_gives_every_drawn_document_a_verdict(doc: dict[str, Any]) -> None:
    result = review(doc)
    assert result.valid or any(f.severity == "error" for f in result.findings)


@FUZZ
@given(DOCUMENTS)
def test_the_webhook_accepts_or_refuses_every_drawn_document(doc: dict[str, Any]) -> None:
    """kopf.AdmissionError is the webhook's refusal; any other exception is a crash."""
    refusal = None
    try:
        validate(body=kopf.Body(doc), warnings=[], memo=kopf.Memo(options=RunOptions()))
    except kopf.AdmissionError as refused:
        refusal = str(refused)
    assert refusal is None or "error(s)" in refusal


def test_the_strategy_reaches_the_memory_plan() -> None:
    """Else the fuzzing would only ever reach the structural errors."""
    planned: list[bool] = []

    @FUZZ
    @given(DOCUMENTS)
    def draw(doc: dict[str, Any]) -> None:
        planned.append(review(doc).plan is not None)

    draw()
    assert any(planned)
