"""The pure reconcile core: objects, conditions with observedGeneration, and transition events."""

from __future__ import annotations

import copy
import datetime
from typing import Any

from specpilot import reconcile
from specpilot.api.models import PolicyState, SpeculativeInferenceStatus
from specpilot.reconcile import Observed
from tests.conftest import manifest

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
LATER = datetime.datetime(2026, 1, 1, 0, 5, 0, 250_000, tzinfo=datetime.UTC)
"""An operator's clock has fractions of a second; the times in status have whole seconds."""
NOW_TEXT, LATER_TEXT = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def body(**spec: Any) -> dict[str, Any]:
    doc = manifest(**spec)
    doc["metadata"].update(uid="u-1", generation=3, resourceVersion="10")
    return doc


def ready_deployment(obj: dict[str, Any], available: int = 1) -> dict[str, Any]:
    applied = copy.deepcopy(obj)
    applied["metadata"]["generation"] = 1
    applied["status"] = {
        "observedGeneration": 1,
        "availableReplicas": available,
        "updatedReplicas": available,
    }
    return applied


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_valid_resource_renders_objects_and_reports_progress() -> None:
    b = body()
    wanted = reconcile.desired(b)
    assert [o["kind"] for o in wanted.objects] == ["Deployment", "Service"]
    status, events = reconcile.status_after_apply(
        b, wanted, Observed(deployments=[wanted.objects[0]]), NOW
    )
    c = conditions(status)
    assert status["phase"] == "Progressing"
    assert status["observedGeneration"] == 3
    assert all(cond["observedGeneration"] == 3 for cond in status["conditions"])
    assert c["Planned"]["status"] == "True"
    assert c["Planned"]["reason"] == "PlanFits"
    assert c["SpeculationActive"]["status"] == "True"
    assert c["Ready"]["status"] == "False"
    assert c["Invalid"]["status"] == "False"
    assert c["MetricsAvailable"]["status"] == "Unknown"
    assert status["effective"]["speculation"] == "on"
    assert status["plan"]["verdict"] == "fits"
    assert {e.reason for e in events} == {"PlanFits", "SpeculationOn"}


def test_ready_when_every_deployment_is_available() -> None:
    b = body()
    wanted = reconcile.desired(b)
    observed = Observed(deployments=[ready_deployment(wanted.objects[0])])
    status, events = reconcile.status_after_apply(b, wanted, observed, NOW)
    assert status["phase"] == "Ready"
    assert conditions(status)["Ready"]["status"] == "True"
    assert "DeploymentsReady" in {e.reason for e in events}


def test_invalid_resource_applies_nothing_and_warns() -> None:
    b = body(gpus={"type": "H100-80GB", "count": 3})
    wanted = reconcile.desired(b)
    assert wanted.objects == []
    status, events = reconcile.status_after_apply(b, wanted, Observed(), NOW)
    c = conditions(status)
    assert status["phase"] == "Invalid"
    assert c["Invalid"]["status"] == "True"
    assert c["Invalid"]["reason"] == "GPUCountMismatch"
    assert "spec.gpus.count" in c["Invalid"]["message"]
    warning = next(e for e in events if e.reason == "GPUCountMismatch")
    assert warning.type == "Warning"


def test_apply_errors_degrade() -> None:
    b = body()
    wanted = reconcile.desired(b)
    status, events = reconcile.status_after_apply(
        b, wanted, Observed(apply_errors=["apply Service x/y: forbidden by RBAC"]), NOW
    )
    assert status["phase"] == "Degraded"
    assert conditions(status)["Degraded"]["status"] == "True"
    assert any(e.reason == "ApplyFailed" and e.type == "Warning" for e in events)


def test_second_pass_emits_nothing_and_keeps_transition_times() -> None:
    b = body()
    wanted = reconcile.desired(b)
    observed = Observed(deployments=[ready_deployment(wanted.objects[0])])
    first, _ = reconcile.status_after_apply(b, wanted, observed, NOW)
    b["status"] = first
    second, events = reconcile.status_after_apply(b, reconcile.desired(b), observed, LATER)
    assert events == []
    assert second == first  # nothing to write either
    assert all(c["lastTransitionTime"] == NOW_TEXT for c in second["conditions"])


def test_transition_moves_only_the_changed_condition() -> None:
    b = body()
    wanted = reconcile.desired(b)
    first, _ = reconcile.status_after_apply(
        b, wanted, Observed(deployments=[wanted.objects[0]]), NOW
    )
    b["status"] = first
    ready = Observed(deployments=[ready_deployment(wanted.objects[0])])
    second, events = reconcile.status_after_apply(b, wanted, ready, LATER)
    c = conditions(second)
    assert c["Ready"]["lastTransitionTime"] == LATER_TEXT
    assert c["Planned"]["lastTransitionTime"] == NOW_TEXT
    assert [e.reason for e in events] == ["DeploymentsReady"]


def test_becoming_invalid_keeps_decisions_and_warns() -> None:
    b = body()
    b["status"] = {
        "decisions": [{"time": NOW_TEXT, "action": "disable", "reason": "acceptance 0.4"}]
    }
    b["spec"]["speculation"] = {"method": "draft_model"}  # draft missing
    status, events = reconcile.status_after_apply(b, reconcile.desired(b), Observed(), LATER)
    assert status["decisions"][0]["action"] == "disable"
    assert any(e.type == "Warning" and e.reason == "DraftRequired" for e in events)


def test_tight_plan_is_a_warning_event() -> None:
    b = body(
        target={
            "model": "RedHatAI/Meta-Llama-3.1-70B-Instruct-quantized.w8a8",
            "quantization": "int8",
            "tensorParallelSize": 2,
            "maxModelLen": 32768,
        }
    )
    wanted = reconcile.desired(b)
    status, events = reconcile.status_after_apply(b, wanted, Observed(), NOW)
    assert status["plan"]["verdict"] == "tight"
    tight = next(e for e in events if e.reason == "PlanTight")
    assert tight.type == "Warning"


def test_the_drift_event_names_the_last_writer_of_the_spec_other_than_specpilot() -> None:
    def entry(manager: str, time: str, *fields: str) -> dict[str, Any]:
        return {"manager": manager, "time": time, "fieldsV1": {f: {} for f in fields}}

    deployment = {
        "metadata": {
            "managedFields": [
                entry("specpilot", "2026-11-25T10:00:09Z", "f:metadata", "f:spec"),
                entry("kubectl-edit", "2026-11-25T10:00:01Z", "f:spec"),
                entry("intruder", "2026-11-25T10:00:05Z", "f:spec"),
                # the Deployment controller: revision annotation and status, never the spec
                entry("kube-controller-manager", "2026-11-25T10:00:07Z", "f:metadata", "f:status"),
            ]
        }
    }
    assert reconcile.spec_writer(deployment) == "intruder"
    assert reconcile.spec_writer({"metadata": {}}) is None


def test_status_times_keep_the_wire_format_older_versions_wrote() -> None:
    """Times are datetimes in the models and the same strings on the wire, fractions of a second
    only where the operator wrote some (status.control's times)."""
    older = {
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "DeploymentsReady",
                "message": "all replicas available",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ],
        "lastMetrics": {"sampledAt": "2026-01-01T00:00:30Z", "acceptanceRate": 0.41},
        "control": {
            **PolicyState().model_dump(by_alias=True, exclude_none=True, mode="json"),
            "lastCheck": "2026-01-01T00:00:30.123456Z",
            "lastChange": "2026-01-01T00:00:00Z",
            "recentChanges": ["2026-01-01T00:00:30.500000Z"],
        },
        "decisions": [
            {"time": "2026-01-01T00:00:30Z", "action": "disable-speculation", "reason": "x"}
        ],
    }
    status = SpeculativeInferenceStatus.model_validate(older)
    assert status.decisions[0].time == NOW + datetime.timedelta(seconds=30)
    written = status.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert written == older
    # reconciles wrote status.control's times with an offset (the client's isoformat)
    offset = SpeculativeInferenceStatus.model_validate(
        {"control": {"lastCheck": "2026-01-01T00:00:30.123456+00:00"}}
    )
    assert offset.model_dump(by_alias=True, mode="json")["control"]["lastCheck"] == (
        "2026-01-01T00:00:30.123456Z"
    )
