"""The Helm chart (charts/specpilot) and `kubectl apply -k manifests/` on the test API server.

helm install, upgrade and uninstall, with the operator run exactly as the installed Deployment
says (its command and args, with a token of the chart's ServiceAccount); the templated CRDs
upgraded on a fresh control plane. The test server has no kubelet, so the chart's Deployment
never runs a pod: its arguments run as a local process, and the webhook Service's Endpoints point
at this machine, so the API server calls the webhook through the chart's Service as it would in a
cluster. What the chart renders (no API server needed) is tests/chart/test_templates.py's.
"""

from __future__ import annotations

import base64
import datetime
import json
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from specpilot.api.admin import PROMETHEUS_URL_ANNOTATION
from specpilot.api.models import GROUP, PLURAL, VERSION
from specpilot_lab.local.controlplane import ControlPlane
from specpilot_lab.local.operator_process import OperatorProcess, wait_for
from specpilot_lab.local.stack import FAST_POLICY
from tests.helm_chart import (
    CHART,
    EXAMPLE,
    MANIFESTS,
    WEBHOOK_ARGS,
    Doc,
    Helm,
    cluster_role_rules,
    container,
    one,
    pinned_helm,
)
from tests.integration.conftest import condition, example, get

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return pinned_helm(tmp_path_factory.mktemp("helm"))


# --- kubectl apply -k ---------------------------------------------------------------------------


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
