"""Fixtures for tests on a real kube-apiserver + etcd (one control plane per test session)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from prometheus_client.parser import text_string_to_metric_families

from specpilot.api.models import GROUP, PLURAL, VERSION
from specpilot_lab.local.controlplane import ControlPlane
from specpilot_lab.local.operator_process import OperatorProcess
from specpilot_lab.local.stack import install_crds
from tests.conftest import REPO


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    with ControlPlane() as plane:
        install_crds(plane)
        yield plane


@pytest.fixture(scope="session")
def api(control_plane: ControlPlane) -> k8s.ApiClient:
    client: k8s.ApiClient = k8s_config.new_client_from_config(
        config_file=str(control_plane.kubeconfig)
    )
    return client


@pytest.fixture
def namespace(control_plane: ControlPlane) -> str:
    """A fresh namespace per test (the test server cannot delete them: no controller-manager)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    return name


@pytest.fixture
def operator(control_plane: ControlPlane, namespace: str) -> Iterator[OperatorProcess]:
    """An operator (standalone: no peering) for the test's namespace only: tests that run an
    operator of their own (restricted RBAC, peering) must not meet a second one."""
    with OperatorProcess(control_plane.kubeconfig, "--standalone", "-n", namespace) as process:
        yield process


def example(name: str, namespace: str, **spec_changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO / "manifests" / "examples" / name).read_text())
    doc["metadata"]["namespace"] = namespace
    doc["spec"].update(spec_changes)
    return doc


def create(api: k8s.ApiClient, doc: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = k8s.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, doc["metadata"]["namespace"], PLURAL, doc
    )
    return body


def get(api: k8s.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    body: dict[str, Any] = k8s.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    return body


def patch_spec(api: k8s.ApiClient, namespace: str, name: str, spec: dict[str, Any]) -> None:
    k8s.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, {"spec": spec}
    )


def deployment(api: k8s.ApiClient, namespace: str, name: str) -> Any:
    return k8s.AppsV1Api(api).read_namespaced_deployment(name, namespace)


def condition(body: dict[str, Any], ctype: str) -> dict[str, Any]:
    found = [c for c in body.get("status", {}).get("conditions", []) if c["type"] == ctype]
    return found[0] if found else {}


def reconciled(api: k8s.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    body = get(api, namespace, name)
    status = body.get("status", {})
    current = status.get("observedGeneration") == body["metadata"]["generation"]
    return body if current and status.get("phase") else None


def event_reasons(api: k8s.ApiClient, namespace: str, name: str) -> list[str]:
    events = k8s.CoreV1Api(api).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}"
    )
    return [e.reason for e in sorted(events.items, key=lambda e: e.metadata.creation_timestamp)]


def counter(operator: OperatorProcess, sample: str, **labels: str) -> float:
    """The operator's own metric `sample` (e.g. specpilot_reconciles_total), summed over the
    series whose labels include `labels`; 0 before the first one is counted."""
    return sum(
        found.value
        for family in text_string_to_metric_families(operator.metrics())
        for found in family.samples
        if found.name == sample and labels.items() <= found.labels.items()
    )


def container_args(api: k8s.ApiClient, namespace: str, name: str) -> list[str]:
    args: list[str] = deployment(api, namespace, name).spec.template.spec.containers[0].args
    return args


def service_account_kubeconfig(control_plane: ControlPlane, account: str = "specpilot") -> Any:
    """The ServiceAccount from manifests/rbac with a bound token, as a kubeconfig."""
    control_plane.kubectl("create", "namespace", "specpilot-system", check=False)
    control_plane.kubectl("apply", "-f", str(REPO / "manifests" / "rbac"))
    control_plane.kubectl(
        "create", "serviceaccount", account, "-n", "specpilot-system", check=False
    )
    return control_plane.service_account_kubeconfig(account, "specpilot-system")


def account_without(
    api: k8s.ApiClient, control_plane: ControlPlane, account: str, resource: str
) -> Any:
    """A kubeconfig for a ServiceAccount with the operator's ClusterRole minus the rules on
    `resource`: the way to make exactly one kind of write fail on a real API server."""
    service_account_kubeconfig(control_plane)  # installs manifests/rbac
    rbac = k8s.RbacAuthorizationV1Api(api)
    role = rbac.read_cluster_role("specpilot-operator")
    role.rules = [r for r in role.rules if resource not in r.resources]
    role.metadata = k8s.V1ObjectMeta(name=f"specpilot-operator-{account}")
    rbac.create_cluster_role(role)
    rbac.create_cluster_role_binding(
        k8s.V1ClusterRoleBinding(
            metadata=k8s.V1ObjectMeta(name=f"specpilot-operator-{account}"),
            role_ref=k8s.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=role.metadata.name
            ),
            subjects=[
                k8s.RbacV1Subject(kind="ServiceAccount", name=account, namespace="specpilot-system")
            ],
        )
    )
    return service_account_kubeconfig(control_plane, account=account)
