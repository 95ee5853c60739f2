"""The Helm chart (charts/specpilot) and the kustomize install (manifests/), as files.

No API server: helm lint --strict; every rendered object validated against the Kubernetes 1.30
schemas; what each value turns into; the chart's copies of crds/ and of the observability pack;
and the chart's defaults and `kubectl kustomize manifests/` compared (the drift test). Needs the
pinned helm binary (scripts/helm-assets.sh, or $HELM_BIN) and kubectl (`kubectl kustomize`).
tests/integration/test_helm.py installs the chart on the test API server.
"""

from __future__ import annotations

import json
import subprocess

import click
import kubernetes_validate
import pytest
import yaml

from specpilot.cli import run_operator
from tests.conftest import REPO
from tests.helm_chart import (
    CHART,
    MANIFESTS,
    WEBHOOK_ARGS,
    Doc,
    Helm,
    by_kind,
    cluster_role_rules,
    container,
    named,
    one,
    pinned_helm,
)
from tests.pod_security import restricted_violations

pytestmark = pytest.mark.chart

KUBERNETES_VERSION = "1.30.0"
NOT_IN_CORE_SCHEMAS = {
    "PodMonitor": "monitoring.coreos.com/v1",
    "PrometheusRule": "monitoring.coreos.com/v1",
    "ClusterKopfPeering": "kopf.dev/v1",
    "KopfPeering": "kopf.dev/v1",
    "Certificate": "cert-manager.io/v1",
    "Issuer": "cert-manager.io/v1",
}
CLUSTER_SCOPED = {"clusterkopfpeerings"}
CONFIGURATIONS = ["validatingwebhookconfigurations", "mutatingwebhookconfigurations"]


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return pinned_helm(tmp_path_factory.mktemp("helm"))


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
