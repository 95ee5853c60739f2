"""What `specpilot render` produces runs for real: the pod runner starts simulator processes from
the Deployment's own args, and the metrics the control loop will query are served."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest
from kubernetes import client as k8s

from specpilot.assessment import render
from specpilot_lab.local.controlplane import ControlPlane
from specpilot_lab.local.operator_process import wait_for
from specpilot_lab.sim.podrunner import PodRunner
from tests.integration.conftest import example

pytestmark = pytest.mark.integration


def test_rendered_deployment_runs_as_simulated_vllm(
    api: k8s.ApiClient, control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    doc = example("llama-70b-int8-draft.yaml", namespace)
    doc["spec"]["replicas"] = 2
    deployment = render(doc)[0]
    sd_file = tmp_path / "targets.json"
    with PodRunner(
        [namespace],
        time_scale=20,
        sd_file=sd_file,
        log_dir=tmp_path / "logs",
        kubeconfig=control_plane.kubeconfig,
        tick_seconds=0.2,
    ):
        k8s.AppsV1Api(api).create_namespaced_deployment(namespace, deployment)

        def ready() -> bool:
            status = (
                k8s.AppsV1Api(api)
                .read_namespaced_deployment_status(deployment["metadata"]["name"], namespace)
                .status
            )
            return status.ready_replicas == 2

        wait_for(
            ready,
            timeout=60,
            what=lambda: "\n".join(p.read_text() for p in (tmp_path / "logs").glob("*")),
        )
        groups = json.loads(sd_file.read_text())
        assert len(groups) == 2
        labels = groups[0]["labels"]
        assert labels["specpilot_io_resource"] == "llama-70b-chat"
        assert labels["specpilot_io_speculation"] == "on"
        target = groups[0]["targets"][0]
        request = urllib.request.Request(
            f"http://{target}/v1/completions",
            data=json.dumps(
                {
                    "model": deployment["spec"]["template"]["spec"]["containers"][0]["args"][0],
                    "prompt": "hello",
                    "max_tokens": 40,
                    "temperature": 0,
                }
            ).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.load(response)["usage"]["completion_tokens"] == 40
        with urllib.request.urlopen(f"http://{target}/metrics", timeout=10) as response:
            metrics = response.read().decode()
    assert 'vllm:spec_decode_num_draft_tokens_total{engine="0"' in metrics
    assert "vllm:kv_cache_usage_perc" in metrics  # vLLM 0.33.0, from the pod's annotation


RESOURCE = "namespace, specpilot_io_resource"
ACCEPTANCE = (
    f"sum by ({RESOURCE}) (rate(vllm:spec_decode_num_accepted_tokens_total[30s])) / "
    f"(sum by ({RESOURCE}) (rate(vllm:spec_decode_num_draft_tokens_total[30s])) > 0)"
)
P99_TPOT = (
    "histogram_quantile(0.99, sum by (le, namespace, specpilot_io_resource) "
    "(rate(vllm:request_time_per_output_token_seconds_bucket[30s])))"
)


def test_prometheus_scrapes_simulated_pods_and_answers_the_control_loops_queries(
    api: k8s.ApiClient, control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    from specpilot_lab.local.prometheus import Prometheus

    doc = example("eagle3-single-h100.yaml", namespace)
    deployment = render(doc)[0]
    model = deployment["spec"]["template"]["spec"]["containers"][0]["args"][0]
    sd_file = tmp_path / "targets.json"
    with (
        PodRunner(
            [namespace],
            time_scale=20,
            sd_file=sd_file,
            log_dir=tmp_path / "logs",
            kubeconfig=control_plane.kubeconfig,
            tick_seconds=0.2,
        ),
        Prometheus(sd_file) as prometheus,
    ):
        k8s.AppsV1Api(api).create_namespaced_deployment(namespace, deployment)
        wait_for(lambda: sd_file.exists() and json.loads(sd_file.read_text()), timeout=60)
        target = json.loads(sd_file.read_text())[0]["targets"][0]
        wait_for(lambda: prometheus.query("up == 1"), timeout=30, what="the first scrape")
        for _ in range(20):
            request = urllib.request.Request(
                f"http://{target}/v1/completions",
                data=json.dumps(
                    {"model": model, "prompt": "summarise this", "max_tokens": 64, "temperature": 0}
                ).encode(),
                headers={"Content-Type": "application/json"},
            )
            urllib.request.urlopen(request, timeout=30).close()
            time.sleep(0.2)  # spread over several scrapes, so rate() sees the counters rise
        acceptance = wait_for(
            lambda: prometheus.query(ACCEPTANCE), timeout=30, what="the acceptance query"
        )
        tpot = wait_for(lambda: prometheus.query(P99_TPOT), timeout=30, what="P99 TPOT")
    assert acceptance[0]["metric"] == {
        "namespace": namespace,
        "specpilot_io_resource": "llama-8b-eagle3",
    }
    assert 0.5 < float(acceptance[0]["value"][1]) < 0.97  # EAGLE-3 at temperature 0
    assert 0.001 < float(tpot[0]["value"][1]) < 0.1  # seconds per token, simulated time
