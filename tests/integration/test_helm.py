"""The Helm chart (charts/specpilot) and `kubectl apply -k manifests/`, for real.

helm lint --strict; every rendered object validated against the Kubernetes 1.30 schemas; the
chart's defaults and the kustomize install compared (the drift test); and helm install, upgrade
and uninstall on the test API server, with the operator run exactly as the installed Deployment
says (its command and args, with a token of the chart's ServiceAccount). The test server has no
kubelet, so the chart's Deployment never runs a pod: its arguments run as a local process, and
the webhook Service's Endpoints point at this machine, so the API server calls the webhook
through the chart's Service as it would in a cluster.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import shutil
import socket
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
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from specpilot.api.admin import PROMETHEUS_URL_ANNOTATION
from specpilot.api.models import GROUP, PLURAL, VERSION
from specpilot.cli import run_operator
from specpilot_lab.local.controlplane import ControlPlane
from specpilot_lab.local.operator_process import OperatorProcess, wait_for
from specpilot_lab.local.stack import FAST_POLICY
from tests.conftest import REPO
from tests.integration.conftest import condition, example, get
from tests.pod_security import restricted_violations

pytestmark = pytest.mark.integration

CHART = REPO / "charts" / "specpilot"
MANIFESTS = REPO / "manifests"
KUBERNETES_VERSION = "1.30.0"
NOT_IN_CORE_SCHEMAS = {
    "PodMonitor": "monitoring.coreos.com/v1",
    "PrometheusRule": "monitoring.coreos.com/v1",
    "ClusterKopfPeering": "kopf.dev/v1",
    "KopfPeering": "kopf.dev/v1",
    "Certificate": "cert-manager.io/v1",
    "Issuer": "cert-manager.io/v1",
}
EXAMPLE = "llama-70b-int8-draft.yaml"
CLUSTER_SCOPED = {"clusterkopfpeerings"}
WEBHOOK_ARGS = ["--webhook-port", "9443", "--webhook-service"]
CONFIGURATIONS = ["validatingwebhookconfigurations", "mutatingwebhookconfigurations"]

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


def test_chart_observability_files_are_copies_of_the_pack() -> None:
    pack = MANIFESTS / "observability"
    for name in ("specpilot-rules.yaml", "grafana-dashboard.json"):
        copy = CHART / "files" / name
        assert copy.read_bytes() == (pack / name).read_bytes(), (
            f"{copy.relative_to(REPO)} is stale: cp manifests/observability/{name} {copy.parent}/"
        )


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
    "namespaced-secret-access": [
        "--set",
        "watchNamespaces={team-a,team-b}",
        "--set-json",
        'secretAccess=[{"namespace": "team-a", "names": ["prom-token"]}, {"namespace": "team-b"}]',
    ],
    "peering": ["--set", "replicas=2", "--set", "prometheusUrl=http://prom.monitoring:9090"],
    "tenant-rules": [
        "--set-json",
        'allowedPrometheusUrls=["http://prom.team-a:9090", "https://prom.team-b/prom"]',
        "--set-json",
        'control={"maxChangesPerHour": 4}',
        "--set-json",
        'podPolicy={"allowHostPath": true, "allowServiceAccount": false, '
        '"allowSecretEnv": false, "maxGPUsPerResource": 16}',
    ],
    "namespaced-peering-podmonitor": [
        "--set",
        "watchNamespaces={team-a}",
        "--set",
        "replicas=3",
        "--set",
        "metrics.podMonitor.enabled=true",
    ],
    "cert-manager-templated-crds-observability": [
        "--set",
        "webhook.certManager.enabled=true",
        "--set",
        "crds.templated=true",
        "--set",
        "prometheusRule.enabled=true",
        "--set",
        "grafanaDashboard.enabled=true",
    ],
    "no-webhook": ["--set", "webhook.enabled=false"],
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
            assert doc["apiVersion"] == NOT_IN_CORE_SCHEMAS[doc["kind"]]
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


def named(docs: list[Doc], kind: str, name: str) -> Doc:
    (found,) = [d for d in by_kind(docs, kind) if d["metadata"]["name"] == name]
    return found


def test_defaults_cluster_wide_standalone_and_hardened(helm: Helm) -> None:
    docs = helm.template()
    assert named(docs, "ClusterRole", "specpilot-operator")["rules"] == cluster_role_rules()
    for binding in by_kind(docs, "ClusterRoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "specpilot", "namespace": "specpilot-system"}
        ]
    assert not by_kind(docs, "Role")
    assert not [
        rule
        for role in by_kind(docs, "ClusterRole")
        for rule in role["rules"]
        if "secrets" in rule["resources"]
    ]  # no Secret unless secretAccess lists it
    assert not by_kind(docs, "PodMonitor")
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    operator = container(docs)
    assert operator["image"] == "specpilot:0.1.0"
    assert operator["command"] == ["specpilot", "run"]
    assert operator["args"] == [
        "--standalone",
        *WEBHOOK_ARGS,
        "specpilot-system/specpilot-webhook",
        "--webhook-configuration",
        "specpilot.specpilot.io",
    ]
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


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_the_operator_pod_meets_the_restricted_profile(helm: Helm, values: list[str]) -> None:
    template = one(helm.template(*values), "Deployment")["spec"]["template"]
    assert restricted_violations(template["spec"], template["metadata"].get("annotations")) == []
    kustomized = yaml.safe_load((MANIFESTS / "operator" / "deployment.yaml").read_text())
    assert restricted_violations(kustomized["spec"]["template"]["spec"]) == []


def test_ports_match_the_operators_defaults(helm: Helm) -> None:
    """The probe and the metrics Service use the ports `specpilot run` listens on by default."""
    defaults = {p.name: p.default for p in run_operator.params if isinstance(p, click.Option)}
    assert defaults["liveness"] == "http://0.0.0.0:8080/healthz"
    docs = helm.template()
    operator = container(docs)
    ports = {p["name"]: p["containerPort"] for p in operator["ports"]}
    assert ports == {"health": 8080, "metrics": defaults["metrics_port"], "webhook": 9443}
    assert operator["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert defaults["webhook_service_port"] == 443
    selector = one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    for name, port, target in [("specpilot-metrics", 9100, "metrics"),
                               ("specpilot-webhook", 443, "webhook")]:  # fmt: skip
        service = named(docs, "Service", name)
        assert (service["spec"]["ports"][0]["port"], service["spec"]["ports"][0]["targetPort"]) == (
            port,
            target,
        )
        assert service["spec"]["selector"] == selector
    # the Dockerfile's user is the one the pod runs as
    assert "USER 65532:65532" in (REPO / "Dockerfile").read_text()


def test_namespaced_mode_has_a_role_per_namespace_and_n_flags(helm: Helm) -> None:
    docs = helm.template("--set", "watchNamespaces={team-a,team-b}")
    # the only cluster-wide permission left is the webhook's own configuration
    assert [r["metadata"]["name"] for r in by_kind(docs, "ClusterRole")] == ["specpilot-webhook"]
    assert not by_kind(
        helm.template("--set", "watchNamespaces={a}", "--set", "webhook.enabled=false"),
        "ClusterRole",
    )
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
    assert container(docs)["args"][:5] == ["--standalone", "-n", "team-a", "-n", "team-b"]


def test_tenant_rules_become_the_operators_flags(helm: Helm) -> None:
    """Each admin rule reaches `specpilot run` as the flag of the same meaning, and the defaults
    add none (the operator's own defaults apply)."""
    args = container(helm.template(*VALUE_SETS["tenant-rules"]))["args"]
    assert args[1:] == [
        "--allowed-prometheus-url", "http://prom.team-a:9090",
        "--allowed-prometheus-url", "https://prom.team-b/prom",
        "--max-changes-per-hour", "4",
        "--pod-allow-host-path",
        "--pod-refuse-service-account",
        "--pod-refuse-secret-env",
        "--max-gpus-per-resource", "16",
        *args[12:],
    ]  # fmt: skip
    assert args[12] == "--webhook-port"
    defaults = container(helm.template())["args"]
    assert not [a for a in defaults if a.startswith(("--allowed", "--max-", "--pod-"))]
    parsed = run_operator.make_context("run", list(args))  # the operator parses every flag
    assert parsed.params["allowed_prometheus_urls"] == ("http://prom.team-a:9090",
                                                        "https://prom.team-b/prom")  # fmt: skip
    assert (parsed.params["pod_refuse_secret_env"], parsed.params["max_gpus_per_resource"]) == (
        True,
        16,
    )
    refused = helm("template", "specpilot", str(CHART), "--set-json",
                   'allowedPrometheusUrls=["http://user:pw@prom:9090"]', check=False)  # fmt: skip
    assert refused.returncode != 0
    assert "allowedPrometheusUrls" in refused.stderr


def test_replicas_use_peering_and_the_chart_creates_the_peering_objects(helm: Helm) -> None:
    docs = helm.template("--set", "replicas=2", "--set", "prometheusUrl=http://prom:9090")
    assert one(docs, "Deployment")["spec"]["replicas"] == 2
    args = container(docs)["args"]
    assert args[:4] == ["--peering", "specpilot", "--prometheus-url", "http://prom:9090"]
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


def test_webhook_defaults_self_signed_through_the_service(helm: Helm) -> None:
    docs = helm.template()
    assert "webhooks" not in one(docs, "MutatingWebhookConfiguration")
    configuration = one(docs, "ValidatingWebhookConfiguration")
    assert configuration["metadata"]["name"] == "specpilot.specpilot.io"
    assert "webhooks" not in configuration  # filled in by the operator
    webhook_role = named(docs, "ClusterRole", "specpilot-webhook")
    assert webhook_role["rules"] == [
        {"apiGroups": ["admissionregistration.k8s.io"],
         "resources": CONFIGURATIONS, "verbs": ["create"]},
        {"apiGroups": ["admissionregistration.k8s.io"],
         "resources": CONFIGURATIONS,
         "resourceNames": ["specpilot.specpilot.io"],
         "verbs": ["get", "patch"]},
    ]  # fmt: skip
    assert not by_kind(docs, "Certificate")
    assert "--webhook-cert" not in container(docs)["args"]
    off = helm.template("--set", "webhook.enabled=false")
    assert not by_kind(off, "ValidatingWebhookConfiguration")
    assert [s["metadata"]["name"] for s in by_kind(off, "Service")] == ["specpilot-metrics"]
    assert container(off)["args"] == ["--standalone"]
    assert "webhook" not in {p["name"] for p in container(off)["ports"]}


def test_cert_manager_option_issues_and_mounts_the_certificate(helm: Helm) -> None:
    docs = helm.template("--set", "webhook.certManager.enabled=true")
    certificate = one(docs, "Certificate")
    assert certificate["spec"]["dnsNames"] == [
        "specpilot-webhook.specpilot-system.svc",
        "specpilot-webhook.specpilot-system.svc.cluster.local",
    ]
    issuer = one(docs, "Issuer")
    assert issuer["spec"] == {"selfSigned": {}}
    assert certificate["spec"]["issuerRef"] == {
        "name": issuer["metadata"]["name"],
        "kind": "Issuer",
        "group": "cert-manager.io",
    }
    operator = container(docs)
    mount = next(m for m in operator["volumeMounts"] if m["name"] == "webhook-tls")
    volume = next(
        v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
        if v["name"] == "webhook-tls"
    )  # fmt: skip
    assert volume["secret"]["secretName"] == certificate["spec"]["secretName"]
    args = operator["args"]
    for flag, file in [("--webhook-cert", "tls.crt"), ("--webhook-key", "tls.key"),
                       ("--webhook-ca", "ca.crt")]:  # fmt: skip
        assert args[args.index(flag) + 1] == f"{mount['mountPath']}/{file}"
    own_issuer = helm.template(
        "--set", "webhook.certManager.enabled=true",
        "--set", "webhook.certManager.issuerRef.name=corp-ca",
        "--set", "webhook.certManager.issuerRef.kind=ClusterIssuer",
    )  # fmt: skip
    assert not by_kind(own_issuer, "Issuer")
    assert one(own_issuer, "Certificate")["spec"]["issuerRef"] == {
        "name": "corp-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }


def test_templated_crds_carry_the_keep_policy(helm: Helm) -> None:
    assert not by_kind(helm.template(), "CustomResourceDefinition")  # crds/ only, by default
    docs = helm.template("--set", "crds.templated=true")
    crds = {d["metadata"]["name"]: d for d in by_kind(docs, "CustomResourceDefinition")}
    source = {
        doc["metadata"]["name"]: doc
        for path in (REPO / "crds").glob("*.yaml")
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    }
    assert set(crds) == set(source)
    for name, crd in crds.items():
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert crd["spec"] == source[name]["spec"]


def test_observability_pack_as_cluster_objects(helm: Helm) -> None:
    assert not by_kind(helm.template(), "PrometheusRule")
    docs = helm.template("--set", "prometheusRule.enabled=true", "--set",
                         "prometheusRule.labels.release=kube-prometheus-stack",
                         "--set", "grafanaDashboard.enabled=true")  # fmt: skip
    rule = one(docs, "PrometheusRule")
    pack = MANIFESTS / "observability"
    assert rule["spec"] == yaml.safe_load((pack / "specpilot-rules.yaml").read_text())
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    dashboard = one(docs, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["specpilot.json"]) == json.loads(
        (pack / "grafana-dashboard.json").read_text()
    )


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
            assert doc["rules"] == other["rules"], key
        elif key[0] == "ClusterRoleBinding":
            assert (doc["roleRef"], doc["subjects"]) == (other["roleRef"], other["subjects"])
        elif key[0] in {"Deployment", "Service"}:
            assert doc["spec"] == other["spec"], key  # incl. the container's command and args
        elif key[0] in {"ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"}:
            assert "webhooks" not in doc  # the operator fills it in
            assert "webhooks" not in other
        else:
            assert key[0] == "ServiceAccount"
    assert chart[("ClusterRole", "specpilot-operator", "")]["rules"] == cluster_role_rules()


def test_kubectl_apply_k_installs_on_the_api_server(
    control_plane: ControlPlane, api: k8s.ApiClient
) -> None:
    control_plane.kubectl("apply", "-k", str(MANIFESTS))
    deployment = k8s.AppsV1Api(api).read_namespaced_deployment("specpilot", "specpilot-system")
    assert deployment.spec.template.spec.containers[0].args[0] == "--standalone"
    admission = k8s.AdmissionregistrationV1Api(api)
    configuration = "specpilot.specpilot.io"
    assert not admission.read_validating_webhook_configuration(configuration).webhooks
    # what the operator adds at start survives a repeated apply (docs/gitops.md)
    webhook = {
        "name": f"validate.{configuration}",
        "clientConfig": {"service": {"namespace": "specpilot-system", "name": "specpilot-webhook"}},
        "rules": [{"apiGroups": ["specpilot.io"], "apiVersions": ["v1alpha1"],
                   "resources": ["speculativeinferences"], "operations": ["CREATE"]}],
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "failurePolicy": "Ignore",
    }  # fmt: skip
    admission.patch_validating_webhook_configuration(configuration, {"webhooks": [webhook]})
    control_plane.kubectl("apply", "-k", str(MANIFESTS))
    (kept,) = admission.read_validating_webhook_configuration(configuration).webhooks
    assert kept.name == webhook["name"]
    admission.patch_validating_webhook_configuration(
        configuration, [{"op": "remove", "path": "/webhooks"}]
    )
    assert not admission.read_validating_webhook_configuration(configuration).webhooks
    k8s.CoreV1Api(api).read_namespaced_service_account("specpilot", "specpilot-system")
    k8s.CoreV1Api(api).read_namespaced_service("specpilot-metrics", "specpilot-system")
    role = k8s.RbacAuthorizationV1Api(api).read_cluster_role("specpilot-operator")
    assert len(role.rules) == len(cluster_role_rules())


# --- helm install / upgrade / uninstall on the test API server ----------------------------------


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
        self.webhook_configuration = f"{self.fullname}.specpilot.io"
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

    def run_operator(self, api: k8s.ApiClient, args: list[str] | None = None) -> OperatorProcess:
        """`specpilot run` exactly as the installed Deployment says, as its ServiceAccount.

        With the webhook on, its Service's Endpoints point at this machine (no kubelet fills
        them in here), so the API server reaches the local process through the chart's Service.
        """
        pod = self.deployment(api).spec.template.spec
        (operator,) = pod.containers
        assert operator.command == ["specpilot", "run"]
        args = operator.args if args is None else args
        if "--webhook-service" in args:
            port = next(p.container_port for p in operator.ports if p.name == "webhook")
            self.route_webhook_here(api, port)
        kubeconfig = self.plane.service_account_kubeconfig(pod.service_account_name, self.namespace)
        return OperatorProcess(kubeconfig, *args)

    def route_webhook_here(self, api: k8s.ApiClient, port: int) -> None:
        endpoints = {
            "metadata": {"name": f"{self.fullname}-webhook", "namespace": self.namespace},
            "subsets": [
                {
                    "addresses": [{"ip": host_address()}],
                    "ports": [{"name": "webhook", "port": port, "protocol": "TCP"}],
                }
            ],
        }
        core = k8s.CoreV1Api(api)
        try:
            core.create_namespaced_endpoints(self.namespace, endpoints)
        except ApiException as exc:
            if exc.status != 409:
                raise
            core.replace_namespaced_endpoints(
                endpoints["metadata"]["name"], self.namespace, endpoints
            )


def host_address() -> str:
    """This machine's address on its default route (Endpoints may not be loopback addresses)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("198.51.100.1", 9))  # no packet is sent: this only picks the route
        address: str = probe.getsockname()[0]
    return address


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
    assert kinds == {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Service",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
    }
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
    webhook_args = [*WEBHOOK_ARGS, f"{release.namespace}/{release.fullname}-webhook",
                    "--webhook-configuration", release.webhook_configuration]  # fmt: skip
    assert before.spec.template.spec.containers[0].args == ["--standalone", *webhook_args]
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
        *webhook_args,
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
        lambda: rbac.read_cluster_role(f"{release.fullname}-webhook"),
        lambda: k8s.AdmissionregistrationV1Api(api).read_validating_webhook_configuration(
            release.webhook_configuration
        ),
        lambda: k8s.AdmissionregistrationV1Api(api).read_mutating_webhook_configuration(
            release.webhook_configuration
        ),
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
    assert release.deployment(api).spec.template.spec.containers[0].args[:3] == [
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


def test_secrets_are_readable_only_where_secret_access_lists_them(
    release: Release,
    api: k8s.ApiClient,
    control_plane: ControlPlane,
    namespace: str,
) -> None:
    """The operator's token reads the listed Secret and nothing else: not a neighbour in the same
    namespace, not the same name elsewhere, no list. End to end, a resource naming the listed
    Secret gets as far as Prometheus, and one naming another is held with the fix named."""
    core = k8s.CoreV1Api(api)
    elsewhere = f"s-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", elsewhere)
    prometheus = "http://127.0.0.1:9"  # nothing listens: reading it fails after the Secret
    for where, secret in [(namespace, "prom-token"), (namespace, "unlisted"),
                          (elsewhere, "prom-token")]:  # fmt: skip
        meta = {"name": secret, "annotations": {PROMETHEUS_URL_ANNOTATION: prometheus}}
        core.create_namespaced_secret(where, {"metadata": meta, "stringData": {"token": "t"}})
    access = json.dumps([{"namespace": namespace, "names": ["prom-token"]}])
    release("install", "--set", "webhook.enabled=false",
            "--set", f"watchNamespaces={{{namespace}}}",
            "--set-json", f"secretAccess={access}",
            "--set-json", f"allowedPrometheusUrls={json.dumps([prometheus])}")  # fmt: skip
    account = release.deployment(api).spec.template.spec.service_account_name
    token = control_plane.service_account_kubeconfig(account, release.namespace)
    as_operator = k8s.CoreV1Api(k8s_config.new_client_from_config(config_file=str(token)))
    assert as_operator.read_namespaced_secret("prom-token", namespace).data["token"]
    for refused in [
        lambda: as_operator.read_namespaced_secret("unlisted", namespace),
        lambda: as_operator.read_namespaced_secret("prom-token", elsewhere),
        lambda: as_operator.list_namespaced_secret(namespace),
        lambda: as_operator.list_secret_for_all_namespaces(),
    ]:
        with pytest.raises(ApiException) as denied:
            refused()
        assert denied.value.status == 403

    with release.run_operator(api) as process:
        for name, secret in [("listed", "prom-token"), ("unlisted", "unlisted")]:
            doc = example(EXAMPLE, namespace)
            doc["metadata"]["name"] = name
            doc["spec"]["policy"] = FAST_POLICY
            doc["spec"]["monitoring"] = {
                "prometheusUrl": prometheus,
                "bearerTokenSecret": {"name": secret, "key": "token"},
            }
            k8s.CustomObjectsApi(api).create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, doc
            )

        def metrics_message(name: str, words: str) -> str:
            metrics = condition(get(api, namespace, name), "MetricsAvailable")
            message: str = metrics.get("message", "")
            return message if words in message else ""

        wait_for(lambda: metrics_message("listed", "unreachable"), what=process.output)
        held = wait_for(
            lambda: metrics_message("unlisted", "forbidden by RBAC"), what=process.output
        )
        assert f"Secret {namespace}/unlisted" in held
        assert "secretAccess" in held


# --- the admission webhook through the chart's Service ------------------------------------------


def rejection(control_plane: ControlPlane, body: Doc) -> str:
    result = control_plane.kubectl("apply", "-f", "-", input=json.dumps(body), check=False)
    return result.stderr if result.returncode != 0 else ""


def webhooks(api: k8s.ApiClient, name: str) -> list[Any]:
    found: list[Any] = (
        k8s.AdmissionregistrationV1Api(api).read_validating_webhook_configuration(name).webhooks
        or []
    )
    return found


def check_webhook_through_the_service(
    release: Release,
    api: k8s.ApiClient,
    control_plane: ControlPlane,
    namespace: str,
    process: OperatorProcess,
) -> Any:
    """An invalid resource is refused with its field named; a valid one is admitted."""
    invalid = example(EXAMPLE, namespace)
    invalid["spec"]["gpus"]["count"] = 3
    message = wait_for(lambda: rejection(control_plane, invalid), what=process.output)
    assert 'admission webhook "validate' in message, message
    assert "spec.gpus.count" in message
    assert "set spec.gpus.count to 2" in message
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(example(EXAMPLE, namespace)))
    (webhook,) = webhooks(api, release.webhook_configuration)
    assert webhook.client_config.url is None
    service = webhook.client_config.service
    assert (service.namespace, service.name, service.port, service.path) == (
        release.namespace,
        f"{release.fullname}-webhook",
        443,
        "/validate",
    )
    assert webhook.rules[0].resources == ["speculativeinferences"]
    assert "forbidden" not in process.output().lower()
    return webhook


def test_webhook_self_signed_by_the_operator_through_the_service(
    release: Release,
    api: k8s.ApiClient,
    control_plane: ControlPlane,
    namespace: str,
) -> None:
    release("install")
    assert not webhooks(api, release.webhook_configuration)  # empty until the operator starts
    with release.run_operator(api) as process:
        webhook = check_webhook_through_the_service(release, api, control_plane, namespace, process)
        from cryptography import x509

        ca = x509.load_pem_x509_certificate(base64.b64decode(webhook.client_config.ca_bundle))
        names = ca.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert f"{release.fullname}-webhook.{release.namespace}.svc" in names.get_values_for_type(
            x509.DNSName
        )
    # a clean stop takes the webhook out: nothing is refused while no operator runs
    assert not webhooks(api, release.webhook_configuration)
    release("uninstall")
    with pytest.raises(ApiException) as missing:
        webhooks(api, release.webhook_configuration)
    assert missing.value.status == 404


def write_ca_signed_certificate(directory: Path, dns_names: list[str]) -> None:
    """tls.crt, tls.key and ca.crt as cert-manager writes them into the webhook's Secret."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def build(subject: str, issuer: x509.Name, key: Any, signer: Any, ca: bool) -> Any:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            names = [x509.DNSName(n) for n in dns_names]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, leaf_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test issuer")])
    ca = build("test issuer", ca_name, ca_key, ca_key, ca=True)
    leaf = build(dns_names[0], ca_name, leaf_key, ca_key, ca=False)
    pem = serialization.Encoding.PEM
    (directory / "ca.crt").write_bytes(ca.public_bytes(pem))
    (directory / "tls.crt").write_bytes(leaf.public_bytes(pem))
    (directory / "tls.key").write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def test_webhook_with_a_mounted_certificate_as_cert_manager_issues_it(
    release: Release,
    helm: Helm,
    api: k8s.ApiClient,
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
) -> None:
    """The operator side of webhook.certManager: the chart's flags, a CA-signed certificate.

    cert-manager itself cannot be obtained here (not on PyPI, Debian or npm), so the release is
    installed without it and the test writes the Secret's three files as cert-manager would.
    """
    release("install")
    values = ["--set", "webhook.certManager.enabled=true"]
    rendered = helm("template", release.name, str(CHART), "-n", release.namespace, *values).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    certificate = one(docs, "Certificate")
    write_ca_signed_certificate(tmp_path, certificate["spec"]["dnsNames"])
    (mount,) = [m for m in container(docs)["volumeMounts"] if m["name"] == "webhook-tls"]
    args = [a.replace(mount["mountPath"], str(tmp_path)) for a in container(docs)["args"]]
    assert f"{tmp_path}/ca.crt" in args
    with release.run_operator(api, args) as process:
        webhook = check_webhook_through_the_service(release, api, control_plane, namespace, process)
        assert (
            base64.b64decode(webhook.client_config.ca_bundle) == (tmp_path / "ca.crt").read_bytes()
        )


# --- templated CRDs on a fresh cluster ------------------------------------------------------------


def test_templated_crds_are_upgraded_and_kept(helm: Helm, tmp_path: Path) -> None:
    """crds.templated: helm upgrade updates a CRD (crds/ never does); uninstall keeps it."""
    old_chart = tmp_path / "specpilot"
    shutil.copytree(CHART, old_chart)
    crd_file = old_chart / "crds" / "specpilot.io_speculativeinferences.yaml"
    crd = yaml.safe_load(crd_file.read_text())
    columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    dropped = columns.pop()["name"]  # the "old release" of the CRD lacks one printer column
    crd_file.write_text(yaml.safe_dump(crd))
    values = ["--skip-crds", "--set", "crds.templated=true", "--set", "webhook.enabled=false"]
    with ControlPlane() as fresh:
        extensions = k8s.ApiextensionsV1Api(
            k8s_config.new_client_from_config(config_file=str(fresh.kubeconfig))
        )

        def column_names() -> list[str]:
            live = extensions.read_custom_resource_definition(crd["metadata"]["name"])
            return [c.name for c in live.spec.versions[0].additional_printer_columns]

        def helm_on_fresh(*args: str) -> None:
            helm(*args, "-n", "specpilot-system", kubeconfig=fresh.kubeconfig)

        helm_on_fresh("install", "specpilot", str(old_chart), "--create-namespace", *values)
        assert dropped not in column_names()
        live = extensions.read_custom_resource_definition(crd["metadata"]["name"])
        assert live.metadata.annotations["helm.sh/resource-policy"] == "keep"
        helm_on_fresh("upgrade", "specpilot", str(CHART), *values)
        assert dropped in column_names()
        helm_on_fresh("uninstall", "specpilot")
        assert dropped in column_names()  # still there: kept
