"""Prometheus misbehaving in every way but being down (test_control_loop stops a real one): the
operator, on the real API server, holds through each fault, says which in MetricsAvailable, never
changes speculation because of it, and recovers when the answers are good again.

The misbehaving Prometheus is a real HTTP server speaking Prometheus' query API, switched between
faults while the operator runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import trustme
from kubernetes import client as k8s

from specpilot.api.admin import PROMETHEUS_URL_ANNOTATION
from specpilot_lab.local.controlplane import ControlPlane
from specpilot_lab.local.operator_process import OperatorProcess, wait_for
from specpilot_lab.local.stack import FAST_POLICY
from tests.integration.conftest import condition, create, example, get, patch_spec
from tests.prometheus_stub import FAULTS, PrometheusStub, series, signals_asked, vector

pytestmark = pytest.mark.integration

NAME = "faulty"
GOOD = {"acceptance": 0.8, "tpotP50": 0.02, "tpotP99": 0.03, "ttftP50": 0.1, "replicas": 1.0,
        "requestsPerSecond": 2.0}  # fmt: skip


ABSURD = {
    "acceptance-7": {"acceptance": "7"},
    "acceptance-negative": {"acceptance": "-1"},
    "latency-negative": {"tpotP99": "-0.5"},
    "latency-huge": {"tpotP99": "1e308"},
    "latency-infinite": {"tpotP50": "+Inf"},
}
"""Readings no vLLM can produce, as Prometheus writes them: each must hold the check, never feed
a decision or a baseline."""


class FaultyPrometheus(PrometheusStub):
    """/api/v1/query (HTTPS with `tls`) answering per `mode`: good, error (500), refused (400),
    slow (beyond the client's 10 s timeout), garbage (not JSON), nan (every value NaN), empty
    (no series), or an impossible value for one signal (`ABSURD`)."""

    def __init__(self, namespace: str, tls: trustme.LeafCert | None = None) -> None:
        self.mode = "good"
        self.namespace = namespace
        super().__init__(tls)

    @property
    def queries(self) -> int:
        return len(self.requests)

    def before_answering(self) -> None:
        if self.mode == "slow":
            time.sleep(12)  # the fault itself: slower than the client's timeout

    def respond(self, promql: str) -> tuple[int, bytes]:
        if self.mode in FAULTS:
            return FAULTS[self.mode]
        if self.mode == "empty":
            return 200, vector([])
        values = {s: "NaN" if self.mode == "nan" else ABSURD.get(self.mode, {}).get(s, GOOD[s])
                  for s in signals_asked(promql) if s in GOOD}  # fmt: skip
        return 200, vector([series(self.namespace, NAME, s, v) for s, v in values.items()])


@pytest.fixture
def prometheus(namespace: str) -> Iterator[FaultyPrometheus]:
    server = FaultyPrometheus(namespace)
    yield server
    server.stop()


def resource(namespace: str, prometheus: FaultyPrometheus, **monitoring: Any) -> dict[str, Any]:
    doc = example("llama-70b-int8-draft.yaml", namespace)
    doc["metadata"]["name"] = NAME
    doc["spec"]["policy"] = FAST_POLICY
    doc["spec"]["monitoring"] = {"prometheusUrl": prometheus.url, **monitoring}
    return doc


def allowed_operator(
    control_plane: ControlPlane, namespace: str, prometheus: FaultyPrometheus
) -> OperatorProcess:
    """An operator whose admin allows this Prometheus for spec.monitoring.prometheusUrl."""
    return OperatorProcess(
        control_plane.kubeconfig, "--standalone", "-n", namespace,
        "--allowed-prometheus-url", prometheus.url,
    )  # fmt: skip


def bound(name: str, prometheus: FaultyPrometheus) -> dict[str, Any]:
    """Secret metadata whose owner allows sending it to this Prometheus."""
    return {"name": name, "annotations": {PROMETHEUS_URL_ANNOTATION: prometheus.url}}


def until_condition(api: k8s.ApiClient, namespace: str, reason: str, words: str) -> Any:
    return wait_for(
        lambda: (
            (c := metrics_condition(api, namespace))["reason"] == reason
            and words in c["message"]
            and c
        ),
        timeout=240,  # a first check on a loaded machine (operator start, reconcile, first read)
        what=lambda: f"{reason} with {words!r}: {metrics_condition(api, namespace)}",
    )


def metrics_condition(api: k8s.ApiClient, namespace: str) -> dict[str, Any]:
    return condition(get(api, namespace, NAME), "MetricsAvailable")


def test_every_prometheus_fault_holds_and_recovers(
    api: k8s.ApiClient,
    control_plane: ControlPlane,
    namespace: str,
    prometheus: FaultyPrometheus,
) -> None:
    doc = resource(namespace, prometheus)
    apps = k8s.AppsV1Api(api)
    with allowed_operator(control_plane, namespace, prometheus) as operator:
        create(api, doc)
        wait_for(lambda: metrics_condition(api, namespace)["reason"] == "MetricsRead",
                 timeout=60, what=operator.output)  # fmt: skip
        generation = apps.read_namespaced_deployment(NAME, namespace).metadata.generation
        for mode, reason, words in [
            ("error", "MetricsUnavailable", "HTTP 500"),
            ("good", "MetricsRead", "reading metrics"),
            ("refused", "MetricsUnavailable", "injected parse error"),
            ("garbage", "MetricsUnavailable", "unreachable"),
            ("slow", "MetricsUnavailable", "TimeoutError"),
            ("nan", "MetricsUnavailable", "no series"),
            ("empty", "MetricsUnavailable", "no series"),
            ("good", "MetricsRead", "reading metrics"),
            ("acceptance-7", "ImplausibleMetrics", "acceptance 7.0"),
            ("acceptance-negative", "ImplausibleMetrics", "acceptance -1.0"),
            ("latency-negative", "ImplausibleMetrics", "tpotP99 -0.5"),
            ("latency-huge", "ImplausibleMetrics", "tpotP99 1e+308"),
            ("latency-infinite", "ImplausibleMetrics", "tpotP50 inf"),
            ("good", "MetricsRead", "reading metrics"),
        ]:
            prometheus.mode = mode
            condition = wait_for(
                lambda reason=reason, words=words: (
                    (c := metrics_condition(api, namespace))["reason"] == reason
                    and words in c["message"]
                    and c
                ),
                timeout=90,
                what=lambda mode=mode: f"{mode}: {metrics_condition(api, namespace)}",
            )
            assert condition["status"] == ("True" if mode == "good" else "False"), condition
        body = get(api, namespace, NAME)
        assert operator.process is not None
        assert operator.process.poll() is None
    assert body["status"].get("decisions", []) == []  # no fault ever became a decision
    assert body["status"]["control"]["speculationOn"] is True
    stored = body["status"]["control"]
    assert stored["lastAcceptance"] == GOOD["acceptance"]  # no absurd reading was kept
    assert stored.get("rolloutAcceptance") in (None, GOOD["acceptance"])
    assert "baselineP99Tpot" not in stored
    deployment = apps.read_namespaced_deployment(NAME, namespace)
    assert deployment.metadata.generation == generation
    assert any(
        "--speculative-config" in a for a in deployment.spec.template.spec.containers[0].args
    )
    assert prometheus.queries > 0
    events = (
        k8s.CoreV1Api(api)
        .list_namespaced_event(namespace, field_selector=f"involvedObject.name={NAME}")
        .items
    )
    reasons = [e.reason for e in sorted(events, key=lambda e: e.metadata.creation_timestamp)]
    assert "MetricsUnavailable" in reasons
    assert reasons.count("MetricsRead") >= 2  # read, lost, read again


def test_a_missing_then_rotated_token_secret_holds_and_recovers(
    api: k8s.ApiClient,
    control_plane: ControlPlane,
    namespace: str,
    prometheus: FaultyPrometheus,
) -> None:
    """spec.monitoring.bearerTokenSecret: missing, then created, then rotated (Prometheus first,
    the Secret after): the operator reads the Secret at every check."""
    core = k8s.CoreV1Api(api)
    doc = resource(namespace, prometheus, bearerTokenSecret={"name": "prom-token", "key": "token"})
    prometheus.token = "first"
    with allowed_operator(control_plane, namespace, prometheus) as operator:
        create(api, doc)
        until_condition(api, namespace, "MetricsUnavailable", "cannot read Prometheus credentials")
        secret = {"metadata": bound("prom-token", prometheus), "stringData": {"token": "first"}}
        core.create_namespaced_secret(namespace, secret)
        until_condition(api, namespace, "MetricsRead", "reading metrics")
        prometheus.token = "second"  # Prometheus rotated first: the old token is refused
        until_condition(api, namespace, "MetricsUnavailable", "HTTP 401")
        core.patch_namespaced_secret("prom-token", namespace, {"stringData": {"token": "second"}})
        until_condition(api, namespace, "MetricsRead", "reading metrics")
        assert operator.process is not None
        assert operator.process.poll() is None
    body = get(api, namespace, NAME)
    assert body["status"].get("decisions", []) == []
    assert body["status"]["control"]["speculationOn"] is True


def test_prometheus_tls_is_verified_unless_its_ca_is_given(
    api: k8s.ApiClient, control_plane: ControlPlane, namespace: str
) -> None:
    """An HTTPS Prometheus whose certificate no trusted CA signed is not read (there is no switch
    to skip verification); naming its CA in spec.monitoring.caBundleSecret makes it readable."""
    ca = trustme.CA()
    prometheus = FaultyPrometheus(namespace, tls=ca.issue_cert("127.0.0.1"))
    core = k8s.CoreV1Api(api)
    try:
        with allowed_operator(control_plane, namespace, prometheus):
            create(api, resource(namespace, prometheus))
            until_condition(api, namespace, "MetricsUnavailable", "CERTIFICATE_VERIFY_FAILED")
            assert prometheus.queries == 0
            secret = {
                "metadata": bound("prom-ca", prometheus),
                "stringData": {"ca.crt": ca.cert_pem.bytes().decode()},
            }
            core.create_namespaced_secret(namespace, secret)
            monitoring = {"caBundleSecret": {"name": "prom-ca", "key": "ca.crt"}}
            patch_spec(api, namespace, NAME, {"monitoring": monitoring})
            until_condition(api, namespace, "MetricsRead", "reading metrics")
            assert prometheus.queries > 0
    finally:
        prometheus.stop()
