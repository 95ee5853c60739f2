"""Tenant safety on the real API server, set up as a careful admin would: the operator with its
least-privilege ClusterRole, a get-only grant on one named token Secret, an operator-wide
Prometheus token, and a namespace user who may edit SpeculativeInference but not read Secrets.

Every Prometheus here is a loopback HTTP server that logs the Authorization header of every
request, so the tests see exactly which credential reached which endpoint.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from specpilot.api.admin import PROMETHEUS_URL_ANNOTATION
from specpilot.api.models import GROUP, PLURAL, VERSION
from specpilot_lab.local.controlplane import ControlPlane
from specpilot_lab.local.operator_process import OperatorProcess, wait_for
from specpilot_lab.local.stack import FAST_POLICY
from tests.integration.conftest import condition, example, get, service_account_kubeconfig
from tests.prometheus_stub import PrometheusStub, series, signals_asked, vector

pytestmark = pytest.mark.integration

OPERATOR_TOKEN = "operator-wide-token"
SECRET_TOKEN = "namespace-secret-token"
GOOD = {"acceptance": 0.8, "tpotP50": 0.02, "tpotP99": 0.03, "ttftP50": 0.1, "replicas": 1.0,
        "requestsPerSecond": 2.0}  # fmt: skip


class LoggingPrometheus(PrometheusStub):
    """Good readings for every resource in `resources`, and the Authorization header of every
    request (None when there was none) in `authorizations`."""

    def __init__(self) -> None:
        self.resources: list[tuple[str, str]] = []
        """(namespace, name) whose readings this Prometheus returns."""
        super().__init__()

    @property
    def authorizations(self) -> list[str | None]:
        return [r["authorization"] for r in self.requests]

    def respond(self, promql: str) -> tuple[int, bytes]:
        asked = [s for s in signals_asked(promql) if s in GOOD]
        return 200, vector(
            [series(ns, name, s, GOOD[s]) for ns, name in self.resources for s in asked]
        )

    @property
    def reads(self) -> int:
        """Complete reads: a check sends five queries."""
        return len(self.requests) // 5


class SilentPrometheus:
    """Accepts connections and never answers. Logs, per connection, how many reads `witness`
    had served when it opened and when the operator gave up on it (closed it)."""

    def __init__(self, witness: LoggingPrometheus) -> None:
        self.witness = witness
        self.spans: list[tuple[int, int | None]] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._hold, args=(connection,), daemon=True).start()

    def _hold(self, connection: socket.socket) -> None:
        index = len(self.spans)
        self.spans.append((self.witness.reads, None))
        with connection:
            while connection.recv(65536):
                pass  # read the request, answer nothing, until the client hangs up
        self.spans[index] = (self.spans[index][0], self.witness.reads)

    def closed_spans(self) -> list[tuple[int, int]]:
        return [(opened, closed) for opened, closed in self.spans if closed is not None]

    def stop(self) -> None:
        self.listener.close()


@pytest.fixture
def default_prometheus() -> Iterator[LoggingPrometheus]:
    server = LoggingPrometheus()
    yield server
    server.stop()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(OPERATOR_TOKEN)
    return path


def grant_secret(api: k8s.ApiClient, namespace: str, secret: str) -> None:
    """What the chart's secretAccess makes: get on one named Secret, for the operator."""
    rbac = k8s.RbacAuthorizationV1Api(api)
    rbac.create_namespaced_role(namespace, {
        "metadata": {"name": "specpilot-secret-access"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
                   "resourceNames": [secret]}],
    })  # fmt: skip
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "specpilot-secret-access"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": "specpilot-secret-access"},
        "subjects": [{"kind": "ServiceAccount", "name": "specpilot",
                      "namespace": "specpilot-system"}],
    })  # fmt: skip


def tenant(api: k8s.ApiClient, control_plane: ControlPlane, namespace: str) -> k8s.ApiClient:
    """A namespace user who may edit SpeculativeInference and read nothing else."""
    core, rbac = k8s.CoreV1Api(api), k8s.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "tenant"}})
    rbac.create_namespaced_role(namespace, {
        "metadata": {"name": "tenant"},
        "rules": [{"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["*"]}],
    })  # fmt: skip
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "tenant"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tenant"},
        "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": namespace}],
    })  # fmt: skip
    kubeconfig = control_plane.service_account_kubeconfig("tenant", namespace)
    client: k8s.ApiClient = k8s_config.new_client_from_config(config_file=str(kubeconfig))
    return client


def resource(namespace: str, name: str, **monitoring: Any) -> dict[str, Any]:
    doc = example("llama-70b-int8-draft.yaml", namespace)
    doc["metadata"]["name"] = name
    doc["spec"]["policy"] = FAST_POLICY
    doc["spec"]["monitoring"] = monitoring
    return doc


def metrics_message(api: k8s.ApiClient, namespace: str, name: str, words: str) -> str:
    message: str = condition(get(api, namespace, name), "MetricsAvailable").get("message", "")
    return message if words in message else ""


def test_no_credential_reaches_an_endpoint_its_owner_did_not_allow(
    api: k8s.ApiClient,
    control_plane: ControlPlane,
    namespace: str,
    default_prometheus: LoggingPrometheus,
    token_file: Path,
) -> None:
    attacker = LoggingPrometheus()  # the tenant's own server: never allowed
    allowed = LoggingPrometheus()  # allowed by the admin, but not for the Secret
    core = k8s.CoreV1Api(api)
    core.create_namespaced_secret(namespace, {
        "metadata": {"name": "prom-token",
                     "annotations": {PROMETHEUS_URL_ANNOTATION: default_prometheus.url}},
        "stringData": {"token": SECRET_TOKEN},
    })  # fmt: skip
    operator_kubeconfig = service_account_kubeconfig(control_plane)
    grant_secret(api, namespace, "prom-token")
    user = tenant(api, control_plane, namespace)
    with pytest.raises(ApiException) as denied:
        k8s.CoreV1Api(user).read_namespaced_secret("prom-token", namespace)
    assert denied.value.status == 403  # the tenant cannot read the Secret ...

    secret = {"bearerTokenSecret": {"name": "prom-token", "key": "token"}}
    docs = {
        # ... but names it, pointing at their own server
        "steal-secret": resource(namespace, "steal-secret", prometheusUrl=attacker.url, **secret),
        # the operator-wide token, pointing at their own server
        "steal-default": resource(namespace, "steal-default", prometheusUrl=attacker.url),
        # internal addresses: the operator's own metrics port, the API server
        "probe-apiserver": resource(
            namespace, "probe-apiserver", prometheusUrl=control_plane.server
        ),
        # an allowed endpoint the Secret is not bound to
        "secret-elsewhere": resource(
            namespace, "secret-elsewhere", prometheusUrl=allowed.url, **secret
        ),
        # an allowed endpoint without a Secret: read with no credential at all
        "allowed-plain": resource(namespace, "allowed-plain", prometheusUrl=allowed.url),
        # the Secret where its owner bound it, and the operator's own Prometheus
        "bound-secret": resource(
            namespace, "bound-secret", prometheusUrl=default_prometheus.url, **secret
        ),
        "default": resource(namespace, "default"),
    }
    allowed.resources = [(namespace, "allowed-plain")]
    default_prometheus.resources = [(namespace, "bound-secret"), (namespace, "default")]
    with OperatorProcess(
        operator_kubeconfig, "--standalone", "-n", namespace,
        "--prometheus-url", default_prometheus.url, "--prometheus-token-file", str(token_file),
        "--allowed-prometheus-url", allowed.url,
    ) as process:  # fmt: skip
        docs["probe-metrics"] = resource(
            namespace, "probe-metrics", prometheusUrl=f"http://127.0.0.1:{process.metrics_port}"
        )
        for doc in docs.values():
            k8s.CustomObjectsApi(user).create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, doc
            )
        not_allowed = {}
        for name in ("steal-secret", "steal-default", "probe-apiserver", "probe-metrics"):
            not_allowed[name] = wait_for(
                lambda name=name: metrics_message(api, namespace, name, "admin allows"),
                timeout=90,
                what=process.output,
            )
        held = wait_for(
            lambda: metrics_message(api, namespace, "secret-elsewhere", "is not bound to"),
            timeout=90,
            what=process.output,
        )
        for name in ("allowed-plain", "bound-secret", "default"):
            wait_for(
                lambda name=name: metrics_message(api, namespace, name, "reading metrics"),
                timeout=90,
                what=process.output,
            )
        # several reads later, nothing has changed for the held ones
        reads = default_prometheus.reads
        wait_for(lambda: default_prometheus.reads >= reads + 3, timeout=90, what=process.output)

    assert attacker.authorizations == []  # never contacted, with or without a credential
    assert set(allowed.authorizations) == {None}  # contacted, with no credential at all
    assert set(default_prometheus.authorizations) == {
        f"Bearer {OPERATOR_TOKEN}",
        f"Bearer {SECRET_TOKEN}",
    }
    assert f"Secret {namespace}/prom-token is not bound to {allowed.url}" in held
    # the refusal says the same whatever listens at the address: no map of what is where
    shapes = {message.replace(doc_url, "URL") for message, doc_url in [
        (not_allowed[name], docs[name]["spec"]["monitoring"]["prometheusUrl"])
        for name in not_allowed
    ]}  # fmt: skip
    assert len(shapes) == 1, shapes
    attacker.stop()
    allowed.stop()


def test_a_silent_endpoint_does_not_delay_another_namespaces_checks(
    api: k8s.ApiClient,
    control_plane: ControlPlane,
    default_prometheus: LoggingPrometheus,
) -> None:
    """Three resources in one namespace point at addresses that accept connections and never
    answer; the other namespace's resource, checked every second, goes on being checked while
    those reads hang (counted in reads, not seconds), and a silent endpoint is then backed off."""
    quiet, busy = (f"t-{uuid.uuid4().hex[:8]}" for _ in range(2))
    for name in (quiet, busy):
        control_plane.kubectl("create", "namespace", name)
    silent = [SilentPrometheus(default_prometheus) for _ in range(3)]
    default_prometheus.resources = [(busy, "steady")]
    fast = {**FAST_POLICY, "interval": "1s", "window": "5s"}
    allowed = [arg for s in silent for arg in ("--allowed-prometheus-url", s.url)]
    with OperatorProcess(
        control_plane.kubeconfig, "--standalone", "-n", quiet, "-n", busy,
        "--prometheus-url", default_prometheus.url, *allowed,
    ) as process:  # fmt: skip
        steady = resource(busy, "steady")
        steady["spec"]["policy"] = fast
        k8s.CustomObjectsApi(api).create_namespaced_custom_object(
            GROUP, VERSION, busy, PLURAL, steady
        )
        wait_for(lambda: default_prometheus.reads >= 1, timeout=90, what=process.output)
        for i, server in enumerate(silent):
            doc = resource(quiet, f"silent-{i}", prometheusUrl=server.url)
            doc["spec"]["policy"] = fast
            k8s.CustomObjectsApi(api).create_namespaced_custom_object(
                GROUP, VERSION, quiet, PLURAL, doc
            )
        spans = wait_for(
            lambda: [span for server in silent for span in server.closed_spans()],
            timeout=120,
            what=process.output,
        )
        backed_off = wait_for(
            lambda: (
                any(
                    metrics_message(api, quiet, f"silent-{i}", "not asking it again")
                    for i in range(3)
                )
                and next(
                    m
                    for i in range(3)
                    if (m := metrics_message(api, quiet, f"silent-{i}", "not asking it again"))
                )
            ),
            timeout=120,
            what=process.output,
        )
    opened, closed = spans[0]
    # the other namespace was read again and again while a silent read hung (it hangs up to
    # the read deadline, 15 s, against a 1 s interval)
    assert closed - opened >= 3, spans
    assert "did not answer within" in backed_off
    for server in silent:
        server.stop()
