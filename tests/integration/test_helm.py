"""The Helm chart (charts/specpilot) and `kubectl apply -k manifests/`, for real.

helm lint --strict; every rendered object validated against the Kubernetes 1.30 schemas; the
chart's defaults and the kustomize install compared (the drift test); and helm install, upgrade
and uninstall on the test API server, with the operator run exactly as the installed Deployment
says (its command and args, with a token of the chart's ServiceAccount). The test server has no
kubelet, so the chart's Deployment never runs a pod: its arguments run as a local process.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import kubernetes_validate
import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from specpilot.cli import run_operator
from specpilot.local.controlplane import REPO, ControlPlane
from specpilot.local.operator_process import OperatorProcess, wait_for
from tests.integration.conftest import example

pytestmark = pytest.mark.integration

CHART = REPO / "charts" / "specpilot"
MANIFESTS = REPO / "manifests"
KUBERNETES_VERSION = "1.30.0"
NOT_IN_CORE_SCHEMAS = {"PodMonitor", "ClusterKopfPeering", "KopfPeering"}
GROUP, VERSION, PLURAL = "specpilot.io", "v1alpha1", "speculativeinferences"
EXAMPLE = "llama-70b-int8-draft.yaml"
CLUSTER_SCOPED = {"clusterkopfpeerings", "validatingwebhookconfigurations"}

Doc = dict[str, Any]


class Helm:
    """The pinned helm binary (scripts/helm-assets.sh) with its state in a private folder."""

    def __init__(self, binary: Path, home: Path) -> None:
        self.binary = binary
        self.env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def __call__(
        self, *args: str, kubeconfig: Path | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env = dict(self.env)
        if kubeconfig is not None:
            env["KUBECONFIG"] = str(kubeconfig)
        result = subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, env=env, timeout=120
        )
        if check:
            assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}{result.stderr}"
        return result

    def template(self, *args: str, release: str = "specpilot") -> list[Doc]:
        out = self("template", release, str(CHART), "-n", "specpilot-system", *args).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    env_bin = os.environ.get("HELM_BIN")
    if env_bin and os.access(env_bin, os.X_OK):
        binary = Path(env_bin)
    else:
        result = subprocess.run(
            ["bash", str(REPO / "scripts" / "helm-assets.sh")],
            stdout=subprocess.PIPE,
            text=True,
            check=True,
            timeout=600,
        )
        binary = Path(result.stdout.strip().splitlines()[-1])
    return Helm(binary, tmp_path_factory.mktemp("helm"))


def by_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[Doc], kind: str) -> Doc:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def container(docs: list[Doc]) -> Doc:
    containers: list[Doc] = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def cluster_role_rules() -> list[Doc]:
    role = next(
        d
        for d in yaml.safe_load_all((MANIFESTS / "rbac" / "cluster-role.yaml").read_text())
        if d["kind"] == "ClusterRole"
    )
    rules: list[Doc] = role["rules"]
    return rules


# --- the chart's files ------------------------------------------------------------------------


def test_chart_and_kustomize_crds_are_copies_of_crds() -> None:
    source = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    assert set(source) == {"specpilot.io_speculativeinferences.yaml", "kopf-peering.yaml"}
    for copy in (CHART / "crds", MANIFESTS / "crds"):
        copies = {p.name: p.read_bytes() for p in copy.glob("*.yaml")}
        assert copies == source, f"{copy} is stale: cp crds/*.yaml {copy.relative_to(REPO)}/"


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == "0.1.0"
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) == set(schema["properties"]), "values.yaml and its schema disagree"


# --- helm lint and template -------------------------------------------------------------------

VALUE_SETS = {
    "defaults": [],
    "namespaced": ["--set", "watchNamespaces={team-a,team-b}"],
    "peering": ["--set", "replicas=2", "--set", "prometheusUrl=http://prom.monitoring:9090"],
    "namespaced-peering-podmonitor": [
        "--set",
        "watchNamespaces={team-a}",
        "--set",
        "replicas=3",
        "--set",
        "metrics.podMonitor.enabled=true",
    ],
}


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_lint_strict(helm: Helm, values: list[str]) -> None:
    result = helm("lint", "--strict", str(CHART), *values)
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def test_schema_rejects_unknown_and_mistyped_values(helm: Helm) -> None:
    unknown = helm("lint", "--strict", str(CHART), "--set", "replica=2", check=False)
    assert unknown.returncode != 0
    assert "Additional property replica is not allowed" in unknown.stdout + unknown.stderr
    mistyped = helm("template", "x", str(CHART), "--set", "replicas=0", check=False)
    assert mistyped.returncode != 0
    assert "replicas" in mistyped.stderr


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_rendered_objects_are_valid_kubernetes(helm: Helm, values: list[str]) -> None:
    docs = helm.template("--include-crds", *values)
    assert {"ServiceAccount", "Deployment", "Service", "CustomResourceDefinition"} <= {
        d["kind"] for d in docs
    }
    for doc in docs:
        if doc["kind"] in NOT_IN_CORE_SCHEMAS:
            assert doc["apiVersion"] in {"monitoring.coreos.com/v1", "kopf.dev/v1"}
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    for doc in docs:
        if doc["kind"] != "CustomResourceDefinition":
            labels = doc["metadata"]["labels"]
            assert labels["app.kubernetes.io/name"] == "specpilot"
            assert labels["app.kubernetes.io/instance"] == "specpilot"
            assert labels["app.kubernetes.io/managed-by"] == "Helm"


def test_validation_catches_a_broken_object(helm: Helm) -> None:
    """The schema check can fail: the Deployment with its args as one string does."""
    deployment = one(helm.template(), "Deployment")
    operator = deployment["spec"]["template"]["spec"]["containers"][0]
    operator["args"] = " ".join(operator["args"])
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_defaults_cluster_wide_standalone_and_hardened(helm: Helm) -> None:
    docs = helm.template()
    assert one(docs, "ClusterRole")["rules"] == cluster_role_rules()
    binding = one(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "specpilot", "namespace": "specpilot-system"}
    ]
    assert not by_kind(docs, "Role")
    assert not by_kind(docs, "PodMonitor")
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    operator = container(docs)
    assert operator["image"] == "specpilot:0.1.0"
    assert operator["command"] == ["specpilot", "run"]
    assert operator["args"] == ["--standalone"]
    assert operator["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["securityContext"]["runAsUser"] == 65532
    assert operator["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {}}]
    assert operator["resources"]["limits"]["memory"]


def test_ports_match_the_operators_defaults(helm: Helm) -> None:
    """The probe and the metrics Service use the ports `specpilot run` listens on by default."""
    defaults = {p.name: p.default for p in run_operator.params if isinstance(p, click.Option)}
    assert defaults["liveness"] == "http://0.0.0.0:8080/healthz"
    docs = helm.template()
    operator = container(docs)
    ports = {p["name"]: p["containerPort"] for p in operator["ports"]}
    assert ports == {"health": 8080, "metrics": defaults["metrics_port"]}
    assert operator["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    service = one(docs, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert service["spec"]["ports"][0]["port"] == 9100
    assert service["spec"]["selector"] == one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    # the Dockerfile's user is the one the pod runs as
    assert "USER 65532:65532" in (REPO / "Dockerfile").read_text()


def test_namespaced_mode_has_a_role_per_namespace_and_n_flags(helm: Helm) -> None:
    docs = helm.template("--set", "watchNamespaces={team-a,team-b}")
    assert not by_kind(docs, "ClusterRole")
    assert not by_kind(docs, "ClusterRoleBinding")
    roles = by_kind(docs, "Role")
    assert [r["metadata"]["namespace"] for r in roles] == ["team-a", "team-b"]
    namespaced = [
        {**rule, "resources": [r for r in rule["resources"] if r not in CLUSTER_SCOPED]}
        for rule in cluster_role_rules()
    ]
    for role in roles:
        assert role["rules"] == [rule for rule in namespaced if rule["resources"]]
    bindings = by_kind(docs, "RoleBinding")
    assert [b["metadata"]["namespace"] for b in bindings] == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["roleRef"]["name"] == roles[0]["metadata"]["name"]
        assert binding["subjects"][0]["namespace"] == "specpilot-system"
    assert container(docs)["args"] == ["--standalone", "-n", "team-a", "-n", "team-b"]


def test_replicas_use_peering_and_the_chart_creates_the_peering_objects(helm: Helm) -> None:
    docs = helm.template("--set", "replicas=2", "--set", "prometheusUrl=http://prom:9090")
    assert one(docs, "Deployment")["spec"]["replicas"] == 2
    args = container(docs)["args"]
    assert args == ["--peering", "specpilot", "--prometheus-url", "http://prom:9090"]
    assert one(docs, "ClusterKopfPeering")["metadata"]["name"] == "specpilot"
    namespaced = helm.template("--set", "replicas=2", "--set", "watchNamespaces={team-a}")
    peering = one(namespaced, "KopfPeering")
    assert (peering["metadata"]["name"], peering["metadata"]["namespace"]) == (
        "specpilot",
        "team-a",
    )
    assert not by_kind(namespaced, "ClusterKopfPeering")


def test_pod_monitor_is_optional_and_scrapes_the_operator(helm: Helm) -> None:
    assert not by_kind(helm.template(), "PodMonitor")
    docs = helm.template("--set", "metrics.podMonitor.enabled=true")
    monitor = one(docs, "PodMonitor")
    assert (
        monitor["spec"]["selector"]["matchLabels"]
        == (one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"])
    )
    assert monitor["spec"]["podMetricsEndpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s"}
    ]


# --- the chart and the kustomize install agree (drift test) ------------------------------------


def kustomize() -> list[Doc]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(MANIFESTS)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def identity(doc: Doc) -> tuple[str, str, str]:
    return (doc["kind"], doc["metadata"]["name"], doc["metadata"].get("namespace", ""))


def test_chart_defaults_and_kustomize_install_the_same(helm: Helm) -> None:
    chart = {identity(d): d for d in helm.template("--include-crds")}
    kust = {identity(d): d for d in kustomize()}
    # helm creates the release namespace (--create-namespace); kustomize lists it
    assert set(kust) - set(chart) == {("Namespace", "specpilot-system", "")}
    assert set(chart) == set(kust) - {("Namespace", "specpilot-system", "")}
    for key, doc in chart.items():
        other = kust[key]
        if key[0] == "CustomResourceDefinition":
            assert doc == other
        elif key[0] == "ClusterRole":
            assert doc["rules"] == other["rules"] == cluster_role_rules()
        elif key[0] == "ClusterRoleBinding":
            assert (doc["roleRef"], doc["subjects"]) == (other["roleRef"], other["subjects"])
        elif key[0] in {"Deployment", "Service"}:
            assert doc["spec"] == other["spec"], key  # incl. the container's command and args
        else:
            assert key[0] == "ServiceAccount"


def test_kubectl_apply_k_installs_on_the_api_server(
    control_plane: ControlPlane, api: k8s.ApiClient
) -> None:
    control_plane.kubectl("apply", "-k", str(MANIFESTS))
    deployment = k8s.AppsV1Api(api).read_namespaced_deployment("specpilot", "specpilot-system")
    assert deployment.spec.template.spec.containers[0].args == ["--standalone"]
    k8s.CoreV1Api(api).read_namespaced_service_account("specpilot", "specpilot-system")
    k8s.CoreV1Api(api).read_namespaced_service("specpilot-metrics", "specpilot-system")
    role = k8s.RbacAuthorizationV1Api(api).read_cluster_role("specpilot-operator")
    assert len(role.rules) == len(cluster_role_rules())


# --- helm install / upgrade / uninstall on the test API server ----------------------------------


def get(api: k8s.ApiClient, namespace: str, name: str) -> Doc:
    body: Doc = k8s.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    return body


def planned(api: k8s.ApiClient, namespace: str, name: str) -> Doc | None:
    body = get(api, namespace, name)
    conditions = body.get("status", {}).get("conditions", [])
    done = any(c["type"] == "Planned" and c["status"] == "True" for c in conditions)
    return body if done else None


class Release:
    """A helm release in a fresh namespace, uninstalled at the end if the test did not."""

    def __init__(self, helm: Helm, control_plane: ControlPlane) -> None:
        self.helm = helm
        self.plane = control_plane
        self.name = f"sp-{uuid.uuid4().hex[:6]}"
        self.namespace = f"h-{uuid.uuid4().hex[:8]}"
        self.fullname = f"{self.name}-specpilot"
        self.installed = False

    def __call__(self, command: str, *values: str) -> subprocess.CompletedProcess[str]:
        args = [command, self.name]
        if command in {"install", "upgrade"}:
            args += [str(CHART), *values]
        if command == "install":
            args.append("--create-namespace")
        result = self.helm(*args, "-n", self.namespace, kubeconfig=self.plane.kubeconfig)
        self.installed = command != "uninstall"
        return result

    def deployment(self, api: k8s.ApiClient) -> Any:
        return k8s.AppsV1Api(api).read_namespaced_deployment(self.fullname, self.namespace)

    def run_operator(self, api: k8s.ApiClient) -> OperatorProcess:
        """`specpilot run` exactly as the installed Deployment says, as its ServiceAccount."""
        pod = self.deployment(api).spec.template.spec
        (operator,) = pod.containers
        assert operator.command == ["specpilot", "run"]
        kubeconfig = self.plane.service_account_kubeconfig(pod.service_account_name, self.namespace)
        return OperatorProcess(kubeconfig, *operator.args)


@pytest.fixture
def release(helm: Helm, control_plane: ControlPlane) -> Iterator[Release]:
    rel = Release(helm, control_plane)
    yield rel
    if rel.installed:
        rel("uninstall")


def test_install_runs_the_operator_upgrade_and_uninstall(
    release: Release,
    api: k8s.ApiClient,
    control_plane: ControlPlane,
    namespace: str,
) -> None:
    # The session fixture installed the CRDs already; helm skips CRDs that exist (never updates
    # them), so the same command works on a fresh cluster and on this one.
    installed = release("install")
    assert "STATUS: deployed" in installed.stdout
    manifest = release.helm("get", "manifest", release.name, "-n", release.namespace,
                            kubeconfig=control_plane.kubeconfig).stdout  # fmt: skip
    kinds = {d["kind"] for d in yaml.safe_load_all(manifest) if d}
    assert kinds == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment", "Service"}
    rbac = k8s.RbacAuthorizationV1Api(api)
    role = rbac.read_cluster_role(f"{release.fullname}-operator")
    assert [r.resources for r in role.rules] == [r["resources"] for r in cluster_role_rules()]

    with release.run_operator(api) as process:
        name = k8s.CustomObjectsApi(api).create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, example(EXAMPLE, namespace)
        )["metadata"]["name"]
        body = wait_for(lambda: planned(api, namespace, name), timeout=60, what=process.output)
        assert body["status"]["phase"] == "Progressing", process.output()
        child = k8s.AppsV1Api(api).read_namespaced_deployment(name, namespace)
        assert child.metadata.owner_references[0].name == name
        k8s.CoreV1Api(api).read_namespaced_service(name, namespace)

    before = release.deployment(api)
    assert before.spec.template.spec.containers[0].args == ["--standalone"]
    upgraded = release("upgrade", "--reuse-values", "--set", "replicas=2",
                       "--set", "prometheusUrl=http://prometheus.monitoring:9090")  # fmt: skip
    assert "has been upgraded" in upgraded.stdout
    after = release.deployment(api)
    assert after.metadata.generation == before.metadata.generation + 1
    assert after.spec.replicas == 2
    assert after.spec.template.spec.containers[0].args == [
        "--peering",
        release.fullname,
        "--prometheus-url",
        "http://prometheus.monitoring:9090",
    ]
    peering = k8s.CustomObjectsApi(api).get_cluster_custom_object(
        "kopf.dev", "v1", "clusterkopfpeerings", release.fullname
    )
    assert peering["metadata"]["labels"]["app.kubernetes.io/instance"] == release.name

    release("uninstall")
    core, apps = k8s.CoreV1Api(api), k8s.AppsV1Api(api)
    gone = [
        lambda: apps.read_namespaced_deployment(release.fullname, release.namespace),
        lambda: core.read_namespaced_service(f"{release.fullname}-metrics", release.namespace),
        lambda: core.read_namespaced_service_account(release.fullname, release.namespace),
        lambda: rbac.read_cluster_role(f"{release.fullname}-operator"),
        lambda: rbac.read_cluster_role_binding(f"{release.fullname}-operator"),
        lambda: k8s.CustomObjectsApi(api).get_cluster_custom_object(
            "kopf.dev", "v1", "clusterkopfpeerings", release.fullname
        ),
    ]
    for read in gone:
        with pytest.raises(ApiException) as missing:
            read()
        assert missing.value.status == 404
    extensions = k8s.ApiextensionsV1Api(api)
    for crd in (
        "speculativeinferences.specpilot.io",
        "kopfpeerings.kopf.dev",
        "clusterkopfpeerings.kopf.dev",
    ):
        extensions.read_custom_resource_definition(crd)  # kept: helm never deletes CRDs
    assert get(api, namespace, name)["metadata"]["name"] == name  # users' resources stay


def test_namespaced_install_runs_with_only_its_roles(
    release: Release,
    api: k8s.ApiClient,
    control_plane: ControlPlane,
    namespace: str,
) -> None:
    release("install", "--set", f"watchNamespaces={{{namespace}}}")
    rbac = k8s.RbacAuthorizationV1Api(api)
    rbac.read_namespaced_role(f"{release.fullname}-operator", namespace)
    with pytest.raises(ApiException):
        rbac.read_cluster_role(f"{release.fullname}-operator")
    assert release.deployment(api).spec.template.spec.containers[0].args == [
        "--standalone",
        "-n",
        namespace,
    ]
    with release.run_operator(api) as process:
        name = k8s.CustomObjectsApi(api).create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, example(EXAMPLE, namespace)
        )["metadata"]["name"]
        body = wait_for(lambda: planned(api, namespace, name), timeout=60, what=process.output)
        assert body["status"]["phase"] == "Progressing", process.output()  # not Degraded
        k8s.AppsV1Api(api).read_namespaced_deployment(name, namespace)
        k8s.CoreV1Api(api).read_namespaced_service(name, namespace)
        assert "forbidden" not in process.output().lower()
