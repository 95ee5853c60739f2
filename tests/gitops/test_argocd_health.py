"""The Argo CD health check, run by a real Lua 5.1 (lupa) on statuses the operator's own
reconcile core writes: Healthy, Progressing and Degraded where an SRE would expect them."""

from __future__ import annotations

import copy
import datetime
from typing import Any

import lupa.lua51 as lua51
import pytest

from specpilot import reconcile
from specpilot.reconcile import Observed
from tests.conftest import REPO, manifest

SCRIPT = (REPO / "manifests" / "gitops" / "argocd-health.lua").read_text()


def health(obj: dict[str, Any]) -> tuple[str, str]:
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = runtime.table_from(obj, recursive=True)
    result = runtime.execute(SCRIPT)
    return str(result["status"]), str(result["message"])


def body(**spec: Any) -> dict[str, Any]:
    doc = manifest(**spec)
    doc["metadata"].update(uid="u-1", generation=2, resourceVersion="10")
    return doc


def reconciled(doc: dict[str, Any], ready: bool = True, errors: list[str] | None = None) -> Any:
    wanted = reconcile.desired(doc)
    deployments = []
    for obj in wanted.objects:
        if obj["kind"] != "Deployment":
            continue
        applied = copy.deepcopy(obj)
        applied["metadata"]["generation"] = 1
        replicas = applied["spec"].get("replicas", 1)
        applied["status"] = {
            "observedGeneration": 1,
            "availableReplicas": replicas if ready else 0,
            "updatedReplicas": replicas,
        }
        deployments.append(applied)
    observed = Observed(deployments=deployments, apply_errors=errors or [])
    at = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    status, _ = reconcile.status_after_apply(doc, wanted, observed, at)
    return {**doc, "status": status}


def test_ready_resource_is_healthy_and_says_whether_it_speculates() -> None:
    assert health(reconciled(body())) == ("Healthy", "Ready; speculation on (SpeculationOn)")


def test_rolling_out_is_progressing_with_what_it_waits_for() -> None:
    status, message = health(reconciled(body(), ready=False))
    assert status == "Progressing"
    assert "llama 0/1 available" in message


def test_invalid_spec_is_degraded_with_the_field_and_fix() -> None:
    doc = body()
    doc["spec"]["gpus"]["count"] = 3
    status, message = health(reconciled(doc))
    assert status == "Degraded"
    assert message.startswith("Invalid spec: ")
    assert "spec.gpus.count" in message


def test_apply_failure_is_degraded() -> None:
    status, message = health(reconciled(body(), errors=["apply Deployment ml/llama: forbidden"]))
    assert (status, message) == ("Degraded", "apply Deployment ml/llama: forbidden")


@pytest.mark.parametrize(
    "status",
    [None, {}, {"phase": "Pending"}],
)
def test_not_yet_reconciled_is_progressing(status: dict[str, Any] | None) -> None:
    doc = body()
    if status is not None:
        doc["status"] = status
    assert health(doc)[0] == "Progressing"


def test_a_new_generation_not_yet_observed_is_progressing() -> None:
    doc = reconciled(body())
    doc["metadata"]["generation"] = 3
    assert health(doc) == ("Progressing", "Waiting for the operator to observe generation 3")
