"""The bad-input corpus against the real API server: refused at admission with the field named,
or, without the webhook, marked Invalid with a Warning Event and nothing applied, while a valid
resource beside them keeps being served."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from specpilot.api.models import GROUP, PLURAL, VERSION
from specpilot_lab.local.controlplane import ControlPlane
from specpilot_lab.local.operator_process import OperatorProcess, free_port, wait_for
from tests.corpus.cases import DEEP_LEVELS, Case, cases
from tests.integration.conftest import example

pytestmark = pytest.mark.integration

CASES = cases()


def placed(case: Case, namespace: str) -> dict[str, Any]:
    return case.document | {"metadata": {"name": case.name, "namespace": namespace}}


def apply(control_plane: ControlPlane, doc: dict[str, Any]) -> tuple[int, str]:
    result = control_plane.kubectl("apply", "-f", "-", input=json.dumps(doc), check=False)
    return result.returncode, result.stderr


def names(message: str, field: str) -> bool:
    """Whether a refusal names `field`: as specpilot writes it, as the API server's schema check
    writes it (list indices dropped), or as kubectl's client-side check does (`spec.target:
    missing required field "model"`)."""
    plain = re.sub(r"\[\d+\]", "", field)
    parent, _, leaf = plain.rpartition(".")
    return (
        field in message
        or plain in message
        or (f'"{leaf}"' in message and parent.rsplit(".", 1)[-1] in message)
    )


@contextmanager
def stack_for_deep_documents() -> Iterator[None]:
    """The kubernetes client serializes a body recursively, two frames per level: the deep case
    (cases.DEEP_LEVELS) needs more than Python's default stack to be sent at all."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(limit + 4 * DEEP_LEVELS)
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)


def served(api: k8s.ApiClient, namespace: str, name: str) -> Any:
    """The valid neighbour's Deployment, once the operator has applied it."""
    return k8s.AppsV1Api(api).read_namespaced_deployment(name, namespace)


def test_every_bad_input_is_refused_at_admission_naming_its_field(
    api: k8s.ApiClient, control_plane: ControlPlane, namespace: str
) -> None:
    with OperatorProcess(
        control_plane.kubeconfig, "--standalone", "-n", namespace,
        "--webhook-port", str(free_port()), "--webhook-address", "127.0.0.1",
    ) as process:  # fmt: skip
        neighbour = example("llama-70b-int8-draft.yaml", namespace)
        wait_for(lambda: apply(control_plane, neighbour)[0] == 0, what=process.output)
        before = wait_for(lambda: served(api, namespace, "llama-70b-chat")).metadata
        # the webhook is registered once a resource the CRD's schema lets through is refused
        first = placed(next(c for c in CASES if c.name == "gpu-count-contradicts-parallelism"),
                       namespace)  # fmt: skip
        wait_for(lambda: "admission webhook" in apply(control_plane, first)[1], what=process.output)
        outcomes = {}
        for case in CASES:
            code, message = apply(control_plane, placed(case, namespace))
            outcomes[case.name] = (code, message)
        accepted = [name for name, (code, _) in outcomes.items() if code == 0]
        assert not accepted, f"accepted: {accepted}"
        unnamed = [
            (case.name, case.field, outcomes[case.name][1][:300])
            for case in CASES
            if not names(outcomes[case.name][1], case.field)
        ]
        assert not unnamed, unnamed
        stored = k8s.CustomObjectsApi(api).list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL
        )["items"]
        assert [o["metadata"]["name"] for o in stored] == ["llama-70b-chat"]
        after = served(api, namespace, "llama-70b-chat").metadata
        assert after.resource_version == before.resource_version  # the neighbour untouched
        assert process.process is not None
        assert process.process.poll() is None  # still running


def test_without_the_webhook_bad_inputs_are_marked_invalid_and_nothing_is_applied(
    api: k8s.ApiClient, operator: OperatorProcess, namespace: str
) -> None:
    custom = k8s.CustomObjectsApi(api)
    neighbour = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, example("llama-70b-int8-draft.yaml", namespace)
    )["metadata"]["name"]
    before = wait_for(lambda: served(api, namespace, neighbour)).metadata
    stored, refused = [], {}
    for case in CASES:
        try:
            with stack_for_deep_documents():
                custom.create_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, placed(case, namespace)
                )
            stored.append(case)
        except ApiException as exc:  # the CRD's schema refuses it before any operator sees it
            refused[case.name] = (exc.status, str(exc.body))
    for name, (status, body) in refused.items():
        field = next(c.field for c in CASES if c.name == name)
        assert status == 422, (name, status, body[:300])
        assert names(body, field), (name, body[:300])

    def marked(case: Case) -> dict[str, Any] | None:
        body: dict[str, Any] = custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, case.name
        )
        return body if body.get("status", {}).get("phase") == "Invalid" else None

    for case in stored:
        body = wait_for(lambda case=case: marked(case), timeout=60, what=operator.output)
        invalid = next(c for c in body["status"]["conditions"] if c["type"] == "Invalid")
        assert invalid["status"] == "True"
        assert case.field.split("[")[0].rsplit(".", 1)[0] in invalid["message"], (
            case.name,
            invalid["message"],
        )
        events = (
            k8s.CoreV1Api(api)
            .list_namespaced_event(namespace, field_selector=f"involvedObject.name={case.name}")
            .items
        )
        assert any(e.type == "Warning" for e in events), case.name
        with pytest.raises(ApiException) as missing:
            served(api, namespace, case.name)
        assert missing.value.status == 404
    after = served(api, namespace, neighbour).metadata
    assert after.resource_version == before.resource_version
    assert operator.process is not None
    assert operator.process.poll() is None
    print(f"{len(refused)} refused by the CRD schema, {len(stored)} marked Invalid by the operator")
