"""The operator on a real API server: reconcile, status, events, drift, restart, webhook, RBAC."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from specpilot_lab.local.controlplane import ControlPlane
from specpilot_lab.local.operator_process import OperatorProcess, free_port, wait_for
from tests.integration.conftest import (
    account_without,
    condition,
    container_args,
    create,
    deployment,
    event_reasons,
    example,
    get,
    patch_spec,
    reconciled,
    service_account_kubeconfig,
)

pytestmark = pytest.mark.integration

EXAMPLE = "llama-70b-int8-draft.yaml"


def test_create_applies_owned_objects_and_reports_status(
    api: k8s.ApiClient, control_plane: ControlPlane, operator: OperatorProcess, namespace: str
) -> None:
    created = create(api, example(EXAMPLE, namespace))
    name = created["metadata"]["name"]
    body = wait_for(lambda: reconciled(api, namespace, name), what="status")
    d = deployment(api, namespace, name)
    owner = d.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.uid) == (
        "SpeculativeInference",
        name,
        created["metadata"]["uid"],
    )
    assert owner.controller is True
    assert "specpilot" in {f.manager for f in d.metadata.managed_fields}
    assert d.spec.template.spec.containers[0].resources.limits["nvidia.com/gpu"] == "2"
    service = k8s.CoreV1Api(api).read_namespaced_service(name, namespace)
    assert service.metadata.owner_references[0].uid == created["metadata"]["uid"]
    # Labels from the parent (e.g. Argo CD's tracking label) are never copied to children.
    assert not any(k.startswith("argocd") for k in (d.metadata.labels or {}))

    assert body["status"]["phase"] == "Progressing"  # the test server runs no pods
    assert condition(body, "Planned")["status"] == "True"
    assert condition(body, "Planned")["observedGeneration"] == body["metadata"]["generation"]
    assert condition(body, "SpeculationActive")["status"] == "True"
    assert condition(body, "Invalid")["status"] == "False"
    assert condition(body, "Ready")["reason"] == "DeploymentsProgressing"
    assert body["status"]["effective"]["vllmVersion"] == "0.33.0"
    wanted = {"Applied", "PlanFits", "SpeculationOn"}
    reasons = wait_for(  # each Event is its own write: wait for all three, not the first
        lambda: wanted <= set(events := event_reasons(api, namespace, name)) and events,
        what=lambda: f"events {wanted}; have {event_reasons(api, namespace, name)}",
    )
    assert wanted <= set(reasons)

    table = control_plane.kubectl("get", "specinf", "-n", namespace).stdout
    assert table.split()[:6] == ["NAME", "PHASE", "SPECULATION", "ACCEPTANCE", "P99", "TPOT"]
    assert f"{name}   Progressing   on" in table
    described = control_plane.kubectl("describe", "specinf", name, "-n", namespace).stdout
    assert "SpeculationOn" in described
    assert "specpilot" in described  # the "From" column of the events


def test_spec_change_rolls_a_new_pod_spec(
    api: k8s.ApiClient, operator: OperatorProcess, namespace: str
) -> None:
    name = create(api, example(EXAMPLE, namespace))["metadata"]["name"]
    wait_for(lambda: reconciled(api, namespace, name))
    before = deployment(api, namespace, name)
    patch_spec(api, namespace, name, {"target": {"tensorParallelSize": 4}, "gpus": {"count": 4}})
    body = wait_for(lambda: reconciled(api, namespace, name), what="new generation")
    assert body["metadata"]["generation"] == 2
    after = deployment(api, namespace, name)
    assert after.metadata.generation == before.metadata.generation + 1
    assert after.spec.template.spec.containers[0].resources.requests["nvidia.com/gpu"] == "4"
    args = after.spec.template.spec.containers[0].args
    assert args[args.index("--tensor-parallel-size") + 1] == "4"
    assert (
        json.loads(args[args.index("--speculative-config") + 1])["draft_tensor_parallel_size"] == 4
    )


def test_invalid_resource_without_webhook_is_marked_and_nothing_applied(
    api: k8s.ApiClient, operator: OperatorProcess, namespace: str
) -> None:
    doc = example(EXAMPLE, namespace)
    doc["spec"]["gpus"]["count"] = 3
    name = create(api, doc)["metadata"]["name"]
    body = wait_for(lambda: reconciled(api, namespace, name))
    assert body["status"]["phase"] == "Invalid"
    invalid = condition(body, "Invalid")
    assert invalid["status"] == "True"
    assert invalid["reason"] == "GPUCountMismatch"
    assert "spec.gpus.count" in invalid["message"]
    wait_for(lambda: "GPUCountMismatch" in event_reasons(api, namespace, name))
    with pytest.raises(ApiException) as missing:
        deployment(api, namespace, name)
    assert missing.value.status == 404


def test_valid_resource_edited_into_an_invalid_one_keeps_its_pods(
    api: k8s.ApiClient, operator: OperatorProcess, namespace: str
) -> None:
    name = create(api, example(EXAMPLE, namespace))["metadata"]["name"]
    wait_for(lambda: reconciled(api, namespace, name))
    version = deployment(api, namespace, name).metadata.resource_version
    patch_spec(api, namespace, name, {"speculation": {"draft": None}})  # draft_model needs one
    body = wait_for(lambda: reconciled(api, namespace, name))
    assert body["status"]["phase"] == "Invalid"
    assert deployment(api, namespace, name).metadata.resource_version == version


def test_drift_in_owned_fields_is_restored_and_other_fields_are_left_alone(
    api: k8s.ApiClient, operator: OperatorProcess, namespace: str
) -> None:
    doc = example(EXAMPLE, namespace)
    del doc["spec"]["replicas"]  # replicas belong to an autoscaler
    name = create(api, doc)["metadata"]["name"]
    wait_for(lambda: reconciled(api, namespace, name))
    apps = k8s.AppsV1Api(api)
    original = container_args(api, namespace, name)
    container = {"name": "vllm", "args": [*original, "--max-num-seqs", "999"]}
    apps.patch_namespaced_deployment(
        name,
        namespace,
        {
            "metadata": {"annotations": {"team.example.com/owner": "ml-platform"}},
            "spec": {"replicas": 3, "template": {"spec": {"containers": [container]}}},
        },
    )
    wait_for(lambda: container_args(api, namespace, name) == original, what="drift restored")
    d = deployment(api, namespace, name)
    assert d.metadata.annotations["team.example.com/owner"] == "ml-platform"
    assert d.spec.replicas == 3
    # the Event follows the apply (after the status write): wait for it, do not race it
    wait_for(lambda: "DriftCorrected" in event_reasons(api, namespace, name), what="the Event")


def test_operator_never_writes_the_spec_or_metadata(
    api: k8s.ApiClient, operator: OperatorProcess, namespace: str
) -> None:
    created = create(api, example(EXAMPLE, namespace))
    name = created["metadata"]["name"]
    body = wait_for(lambda: reconciled(api, namespace, name))
    assert body["spec"] == created["spec"]
    assert body["metadata"].get("annotations", {}) == created["metadata"].get("annotations", {})
    assert not body["metadata"].get("finalizers")
    managers = {f["manager"]: f for f in body["metadata"]["managedFields"]}
    assert "specpilot" in managers
    for manager in ("specpilot", "kopf"):  # the operator's own writes: status and nothing else
        if manager in managers:
            assert set(managers[manager]["fieldsV1"]) == {"f:status"}, managers[manager]


def test_restart_resumes_without_new_applies_or_lost_status(
    api: k8s.ApiClient, control_plane: ControlPlane, namespace: str
) -> None:
    with OperatorProcess(control_plane.kubeconfig, "--standalone", "-n", namespace) as process:
        name = create(api, example(EXAMPLE, namespace))["metadata"]["name"]
        wait_for(lambda: reconciled(api, namespace, name))
        wait_for(lambda: "Applied" in event_reasons(api, namespace, name))
        # the example's Prometheus does not exist here: the control loop holds and says so
        wait_for(
            lambda: "MetricsUnavailable" in event_reasons(api, namespace, name),
            what=process.output,
        )
        first = get(api, namespace, name)
    version = deployment(api, namespace, name).metadata.resource_version
    events_before = event_reasons(api, namespace, name)
    with OperatorProcess(control_plane.kubeconfig, "--standalone", "-n", namespace) as again:
        resumed = 'specpilot_reconciles_total{result="ok",trigger="resume"} 1.0'
        metrics = wait_for(
            lambda: resumed in again.metrics() and again.metrics(), what=again.output
        )
        body = wait_for(lambda: reconciled(api, namespace, name))
        assert deployment(api, namespace, name).metadata.resource_version == version
        assert body["status"]["conditions"] == first["status"]["conditions"]
        assert event_reasons(api, namespace, name) == events_before
        assert "specpilot_resources_managed 1.0" in metrics


def test_webhook_rejects_invalid_resources_and_warns_on_tight_plans(
    api: k8s.ApiClient, control_plane: ControlPlane, namespace: str
) -> None:
    port = free_port()
    with OperatorProcess(
        control_plane.kubeconfig,
        "--standalone",
        "-n",
        namespace,
        "--webhook-port",
        str(port),
        "--webhook-address",
        "127.0.0.1",
    ):
        invalid = example(EXAMPLE, namespace)
        invalid["spec"]["gpus"]["count"] = 3

        def rejected() -> str:
            result = control_plane.kubectl(
                "apply", "-f", "-", input=json.dumps(invalid), check=False
            )
            return result.stderr if result.returncode != 0 else ""

        message = wait_for(rejected, what="the webhook to be registered and reject")
        assert "spec.gpus.count" in message
        assert "set spec.gpus.count to 2" in message
        tight = example(EXAMPLE, namespace)
        tight["spec"]["target"]["maxModelLen"] = 32768
        applied = control_plane.kubectl("apply", "-f", "-", input=json.dumps(tight))
        assert "Warning:" in applied.stderr
        assert "LongContext" in applied.stderr or "tight" in applied.stderr


def test_runs_as_its_least_privilege_service_account(
    api: k8s.ApiClient, control_plane: ControlPlane, namespace: str
) -> None:
    kubeconfig = service_account_kubeconfig(control_plane)
    with OperatorProcess(kubeconfig, "--standalone", "-n", namespace) as process:
        name = create(api, example(EXAMPLE, namespace))["metadata"]["name"]
        body = wait_for(lambda: reconciled(api, namespace, name), what=process.output)
        assert body["status"]["phase"] == "Progressing", process.output()
        assert deployment(api, namespace, name).metadata.name == name
        wait_for(lambda: "Applied" in event_reasons(api, namespace, name))


def test_a_missing_permission_fails_loudly_naming_it(
    api: k8s.ApiClient, control_plane: ControlPlane, namespace: str
) -> None:
    limited = account_without(api, control_plane, "limited", "services")
    with OperatorProcess(limited, "--standalone", "-n", namespace) as process:
        name = create(api, example(EXAMPLE, namespace))["metadata"]["name"]

        def degraded() -> dict[str, Any] | None:
            body = get(api, namespace, name)
            return body if condition(body, "Degraded").get("status") == "True" else None

        message = condition(
            wait_for(degraded, what=lambda: process.output() + str(get(api, namespace, name))),
            "Degraded",
        )["message"]
        assert "forbidden by RBAC" in message
        assert 'resource "services"' in message
        assert "ApplyFailed" in event_reasons(api, namespace, name)


def test_peering_keeps_one_replica_active_and_fails_over(
    api: k8s.ApiClient, control_plane: ControlPlane, namespace: str
) -> None:
    control_plane.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "kopf.dev/v1",
                "kind": "KopfPeering",
                "metadata": {"name": "specpilot", "namespace": namespace},
            }
        ),
    )
    leader = OperatorProcess(control_plane.kubeconfig, "-n", namespace, "--priority", "200")
    standby = OperatorProcess(control_plane.kubeconfig, "-n", namespace, "--priority", "100")
    with leader, standby:
        # With mandatory peering, kopf starts paused and resumes only when no higher peer lives.
        wait_for(lambda: "Resuming operations" in leader.output(), what=leader.output)
        name = create(api, example(EXAMPLE, namespace))["metadata"]["name"]
        wait_for(lambda: reconciled(api, namespace, name), what=leader.output)
        assert "Resuming operations" not in standby.output()
        assert "reconcile_resource" not in standby.output()
        leader.stop()
        wait_for(lambda: "Resuming operations" in standby.output(), timeout=90, what=standby.output)
        patch_spec(api, namespace, name, {"replicas": 2})
        wait_for(lambda: deployment(api, namespace, name).spec.replicas == 2, what=standby.output)
