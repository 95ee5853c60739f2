"""The test control plane behaves like a real API server where the operator depends on it.

Needs the etcd/kube-apiserver assets (scripts/kube-assets.sh; first run builds them, ~10 min),
kubectl on PATH and the `kubernetes` Python client. Run only these: `pytest -m integration`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from kubernetes.client.rest import ApiException

from specpilot_lab.local.controlplane import ControlPlane
from tests.conftest import REPO

pytestmark = pytest.mark.integration

CRD_FILE = REPO / "crds" / "specpilot.io_speculativeinferences.yaml"
CRD_NAME = "speculativeinferences.specpilot.io"
GROUP, VERSION, PLURAL = "specpilot.io", "v1alpha1", "speculativeinferences"


def speculative_inference(name: str, namespace: str) -> dict[str, Any]:
    """A minimal valid SpeculativeInference (as manifests/examples/eagle3-single-h100.yaml)."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SpeculativeInference",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "vllm": {"image": "vllm/vllm-openai:v0.33.0"},
            "target": {"model": "meta-llama/Llama-3.1-8B-Instruct", "maxModelLen": 16384},
            "speculation": {
                "method": "eagle3",
                "draft": {"model": "yuhuili/EAGLE3-LLaMA3.1-Instruct-8B"},
                "numSpeculativeTokens": 3,
            },
            "gpus": {"type": "H100-80GB", "count": 1},
            "replicas": 1,
            "monitoring": {"prometheusUrl": "http://prometheus-operated.monitoring.svc:9090"},
        },
    }


def eventually(check: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached within {timeout:.0f}s")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def crd(control_plane: ControlPlane) -> str:
    control_plane.kubectl("apply", "-f", str(CRD_FILE))
    control_plane.kubectl(
        "wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s", timeout=90
    )
    return CRD_NAME


def api_client(kubeconfig: Path) -> Any:
    return kubernetes.config.new_client_from_config(config_file=str(kubeconfig))


def namespace(cp: ControlPlane, prefix: str) -> str:
    """A new namespace (unique: the server cannot delete namespaces, and may be shared)."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cp.kubectl("create", "namespace", name)
    return name


def test_server_answers(control_plane: ControlPlane) -> None:
    assert control_plane.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    version = json.loads(control_plane.kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert version["major"] == "1"
    assert control_plane.server.startswith("https://127.0.0.1:")
    names = control_plane.kubectl("get", "namespaces", "-o", "name").stdout.split()
    assert "namespace/default" in names
    # The Python client reads the same kubeconfig.
    with api_client(control_plane.kubeconfig) as client:
        code = kubernetes.client.VersionApi(client).get_code()
        assert code.git_version == version["gitVersion"]


def test_crd_becomes_established(control_plane: ControlPlane, crd: str) -> None:
    conditions = json.loads(control_plane.kubectl("get", "crd", crd, "-o", "json").stdout)[
        "status"
    ]["conditions"]
    assert {"type": "Established", "status": "True"}.items() <= next(
        c for c in conditions if c["type"] == "Established"
    ).items()
    # Discovery serves the new kind, with its short name.
    resources = control_plane.kubectl("api-resources", "--api-group", GROUP, "-o", "name").stdout
    assert f"{PLURAL}.{GROUP}" in resources.split()


def test_custom_object_and_status_subresource(control_plane: ControlPlane, crd: str) -> None:
    """The first custom-object writes crash a server built with the broken vendored reflect2."""
    ns = namespace(control_plane, "inference")
    obj = speculative_inference("llama-8b-eagle3", ns)
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(obj))

    # kubectl, merge patch on the status subresource.
    control_plane.kubectl(
        "patch", "specinf", "llama-8b-eagle3", "-n", ns, "--subresource=status",
        "--type=merge", "-p", json.dumps({"status": {"phase": "Pending", "observedGeneration": 1}}),
    )  # fmt: skip
    got = json.loads(
        control_plane.kubectl("get", "specinf", "llama-8b-eagle3", "-n", ns, "-o", "json").stdout
    )
    assert got["status"] == {"phase": "Pending", "observedGeneration": 1}

    # The Python client (as the operator uses it), with a list-map condition.
    with api_client(control_plane.kubeconfig) as client:
        api = kubernetes.client.CustomObjectsApi(client)
        condition = {"type": "Ready", "status": "True", "reason": "Rolled", "message": "ok"}
        patched = api.patch_namespaced_custom_object_status(
            GROUP, VERSION, ns, PLURAL, "llama-8b-eagle3",
            {"status": {"phase": "Ready", "conditions": [condition]}},
        )  # fmt: skip
        assert patched["status"]["phase"] == "Ready"
        assert patched["status"]["conditions"] == [condition]
        # Empty strings are strings (see test_empty_strings_and_defaults).
        planned = {"type": "Planned", "status": "True", "reason": "", "message": ""}
        patched = api.patch_namespaced_custom_object_status(
            GROUP, VERSION, ns, PLURAL, "llama-8b-eagle3",
            {"status": {"conditions": [condition, planned]}},
        )  # fmt: skip
        assert planned in patched["status"]["conditions"]
        # The status schema is enforced on the subresource.
        with pytest.raises(ApiException) as bad:
            api.patch_namespaced_custom_object_status(
                GROUP, VERSION, ns, PLURAL, "llama-8b-eagle3", {"status": {"phase": "Bogus"}}
            )
        assert bad.value.status == 422
        # With the status subresource, writes to the main resource ignore status.
        api.patch_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, "llama-8b-eagle3",
            {"spec": {"replicas": 2}, "status": {"phase": "Degraded"}},
        )  # fmt: skip
        again = api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "llama-8b-eagle3")
        assert again["spec"]["replicas"] == 2
        assert again["status"]["phase"] == "Ready"
        assert again["metadata"]["generation"] == 2

    # A broken server dies here with "fatal error: fault" in mapiterinit/aeshashbody.
    assert control_plane.running()


def test_empty_strings_and_defaults(control_plane: ControlPlane) -> None:
    """`default: ""` in a CRD and "" in objects are valid.

    kube-apiserver 1.20 built with Go >= 1.16 rejects both ('must be of type string: "null"')
    unless its OpenAPI validator carries kubernetes/kube-openapi#230; scripts/kube-assets.sh
    patches it in.
    """
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.test.specpilot.io"},
        "spec": {
            "group": "test.specpilot.io",
            "scope": "Namespaced",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {
                                        "reason": {"type": "string", "default": ""},
                                        "count": {"type": "integer", "default": 0},
                                        "note": {"type": "string"},
                                    },
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(crd))
    control_plane.kubectl(
        "wait", "--for=condition=Established", "crd/widgets.test.specpilot.io", "--timeout=60s"
    )
    ns = namespace(control_plane, "widgets")
    widget = {
        "apiVersion": "test.specpilot.io/v1",
        "kind": "Widget",
        "metadata": {"name": "w", "namespace": ns},
        "spec": {"note": ""},
    }
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(widget))
    got = json.loads(control_plane.kubectl("get", "widget", "w", "-n", ns, "-o", "json").stdout)
    assert got["spec"] == {"note": "", "reason": "", "count": 0}


def deployment(name: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai:v0.33.0"}]},
            },
        },
    }


def test_server_side_apply_with_field_manager(control_plane: ControlPlane) -> None:
    ns = namespace(control_plane, "ssa")
    with api_client(control_plane.kubeconfig) as client:
        apps = kubernetes.client.AppsV1Api(client)

        def apply(body: dict[str, Any], manager: str, force: bool = False) -> Any:
            return apps.patch_namespaced_deployment(
                "llama", ns, body, field_manager=manager, force=force,
                _content_type="application/apply-patch+yaml",
            )  # fmt: skip

        created = apply(deployment("llama", 1), "specpilot", force=True)
        assert created.spec.replicas == 1
        managers = {(m.manager, m.operation) for m in created.metadata.managed_fields}
        assert ("specpilot", "Apply") in managers

        # Another manager changing a field specpilot owns conflicts...
        with pytest.raises(ApiException) as conflict:
            apply(deployment("llama", 3), "someone-else")
        assert conflict.value.status == 409
        assert "specpilot" in conflict.value.body
        # ...and re-applying the same intent is a no-op for the owner.
        again = apply(deployment("llama", 1), "specpilot", force=True)
        assert again.metadata.resource_version == created.metadata.resource_version

    # kubectl's server-side apply, with its own field manager, on the same object.
    out = control_plane.kubectl(
        "apply", "--server-side", "--field-manager=kubectl-test", "--force-conflicts",
        "-n", ns, "-f", "-", input=json.dumps(deployment("llama", 2)),
    )  # fmt: skip
    assert "serverside-applied" in out.stdout
    got = json.loads(
        control_plane.kubectl(
            "get", "deploy", "llama", "-n", ns, "-o", "json", "--show-managed-fields"
        ).stdout
    )
    assert got["spec"]["replicas"] == 2
    assert {"specpilot", "kubectl-test"} <= {m["manager"] for m in got["metadata"]["managedFields"]}
    # --dry-run=server goes through admission and validation without persisting.
    control_plane.kubectl(
        "apply", "--dry-run=server", "-n", ns, "-f", "-", input=json.dumps(deployment("other", 1))
    )
    assert control_plane.kubectl("get", "deploy", "other", "-n", ns, check=False).returncode != 0


def test_restricted_user_is_bound_by_rbac(control_plane: ControlPlane) -> None:
    ns = namespace(control_plane, "rbac")
    user = "specpilot-operator"
    kubeconfig = control_plane.user_kubeconfig(user, groups=["specpilot:operators"])

    denied = control_plane.kubectl("get", "secrets", "-n", ns, kubeconfig=kubeconfig, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()
    assert f'User "{user}"' in denied.stderr
    can_i = control_plane.kubectl(
        "auth", "can-i", "list", "secrets", "-n", ns, kubeconfig=kubeconfig, check=False
    )
    assert can_i.stdout.strip() == "no"
    with api_client(kubeconfig) as client, pytest.raises(ApiException) as forbidden:
        kubernetes.client.CoreV1Api(client).list_namespaced_secret(ns)
    assert forbidden.value.status == 403

    rbac = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "secret-reader", "namespace": ns},
                "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "secret-reader", "namespace": ns},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "secret-reader",
                },
                # Bound through the group from the certificate's O=.
                "subjects": [
                    {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "Group",
                        "name": "specpilot:operators",
                    }
                ],
            },
        ],
    }
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(rbac))

    def allowed() -> bool:
        return (
            control_plane.kubectl(
                "get", "secrets", "-n", ns, kubeconfig=kubeconfig, check=False
            ).returncode
            == 0
        )

    eventually(allowed, what="RoleBinding taking effect")
    with api_client(kubeconfig) as client:
        core = kubernetes.client.CoreV1Api(client)
        assert core.list_namespaced_secret(ns).items is not None
        # The Role is namespaced: other namespaces and other verbs stay forbidden.
        with pytest.raises(ApiException) as elsewhere:
            core.list_namespaced_secret("default")
        assert elsewhere.value.status == 403
        with pytest.raises(ApiException) as create:
            core.create_namespaced_secret(ns, {"metadata": {"name": "x"}, "stringData": {"a": "b"}})
        assert create.value.status == 403
