"""Scale: many SpeculativeInference resources on the real API server with one operator replica.

A fresh local control plane (kube-apiserver + etcd), a real Prometheus and `specpilot run` as a
process, cluster-wide, exactly as the tests run it. N resources (the 70B INT8 example, spread over
10 namespaces, a 10 s control interval) are created; the operator reconciles each (plan, render,
server-side apply of a Deployment and a Service, status, Events). No pods run (there is no kubelet),
so by default every control check finds no series and holds, and changes nothing but its time,
which the loop does not write. With `--series`, a synthetic exporter serves vLLM's metrics for
every resource (as its pods would: acceptance about 0.7, steady load), Prometheus scrapes it every
5 s, and every check reads numbers and writes `status.lastMetrics`: the worst case for the API
server, one read and one status write per resource per interval.

Measured from the operator's /metrics and /proc, side by side in one run:
Prometheus queries per control cycle, cycle wall time, resources per cycle, operator RSS and CPU,
time to reconcile all N at creation, and time to resume all N after a restart.

    .venv/bin/python bench/scale.py [--resources 1000] [--series] [--plot docs/benchmarks/scale.png]
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from specpilot.api.models import GROUP, PLURAL, VERSION
from specpilot_lab.local.controlplane import ControlPlane
from specpilot_lab.local.operator_process import OperatorProcess
from specpilot_lab.local.prometheus import Prometheus
from specpilot_lab.local.stack import install_crds

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "manifests" / "examples" / "llama-70b-int8-draft.yaml"
NAMESPACES = [f"scale-{i}" for i in range(10)]
INTERVAL_S = 10
TARGETS = {
    "queries per cycle": 10,
    "cycle wall time (s)": 2.0,
    "RSS (MB)": 300,
    "resume after restart (s)": 60,
}


def metric(text: str, name: str) -> float:
    """The sum of every sample of `name` (all label sets) in a Prometheus exposition."""
    pattern = re.compile(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([-+0-9.eEinfNa]+)$", re.M)
    return sum(float(v) for v in pattern.findall(text))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Exporter:
    """vLLM's metrics for N resources in one exposition, counters growing with wall time."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.start = time.monotonic()
        exporter = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = exporter.exposition().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def exposition(self) -> str:
        t = time.monotonic() - self.start
        lines = []
        for i in range(self.n):
            labels = (
                f'namespace="{NAMESPACES[i % len(NAMESPACES)]}",'
                f'specpilot_io_resource="model-{i:04d}",specpilot_io_role="server"'
            )
            requests = 2.0 * t
            for name, value in (
                ("vllm:spec_decode_num_draft_tokens_total", 500 * t),
                ("vllm:spec_decode_num_accepted_tokens_total", 350 * t),
                ("vllm:spec_decode_num_drafts_total", 100 * t),
                ("vllm:generation_tokens_total", 400 * t),
                ("vllm:e2e_request_latency_seconds_count", requests),
                ("vllm:num_requests_running", 8),
                ("vllm:num_requests_waiting", 0),
                ("vllm:kv_cache_usage_perc", 0.4),
            ):
                lines.append(f"{name}{{{labels}}} {value}")
            for histogram, bounds in (
                ("vllm:request_time_per_output_token_seconds", (0.02, 0.04)),
                ("vllm:time_to_first_token_seconds", (0.1, 0.5)),
            ):
                for le, share in ((bounds[0], 0.5), (bounds[1], 0.99), ("+Inf", 1.0)):
                    lines.append(f'{histogram}_bucket{{{labels},le="{le}"}} {share * requests}')
        return "\n".join(lines) + "\n"

    def stop(self) -> None:
        self.server.shutdown()


def resource(i: int) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"] = {"name": f"model-{i:04d}", "namespace": NAMESPACES[i % len(NAMESPACES)]}
    body["spec"]["policy"]["interval"] = f"{INTERVAL_S}s"
    body["spec"]["monitoring"] = {}  # the operator's --prometheus-url
    return body


def until(
    done: Callable[[], bool], timeout: float, samples: list[tuple[float, float]], read: Any
) -> float:
    """Seconds until `done`, sampling `read()` every half second into `samples`."""
    start = time.monotonic()
    while not done():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"not done after {timeout:.0f}s")
        samples.append((time.monotonic() - start, read()))
        time.sleep(0.5)
    samples.append((time.monotonic() - start, read()))
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resources", type=int, default=1000)
    parser.add_argument("--steady-seconds", type=float, default=60.0)
    parser.add_argument("--series", action="store_true", help="serve metrics for every resource")
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "benchmarks" / "scale.png")
    args = parser.parse_args()
    n = args.resources
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")  # as the image sets it (Dockerfile)
    with ControlPlane() as plane:
        install_crds(plane)
        for namespace in NAMESPACES:
            plane.kubectl("create", "namespace", namespace)
        api = k8s_config.new_client_from_config(config_file=str(plane.kubeconfig))
        sd_file = Path(tempfile.mkdtemp(prefix="specpilot-scale-")) / "targets.json"
        exporter = Exporter(n) if args.series else None
        targets = [{"targets": [f"127.0.0.1:{exporter.port}"]}] if exporter else []
        sd_file.write_text(json.dumps(targets))
        with Prometheus(sd_file, scrape_interval="5s" if exporter else "1s") as prometheus:
            operator = OperatorProcess(
                plane.kubeconfig, "--standalone", "--prometheus-url", prometheus.url
            ).start()
            assert operator.process is not None
            pid = operator.process.pid

            def managed() -> float:
                return metric(operator.metrics(), "specpilot_resources_managed")

            custom = k8s.CustomObjectsApi(api)
            started = time.monotonic()
            with ThreadPoolExecutor(8) as pool:
                list(
                    pool.map(
                        lambda i: custom.create_namespaced_custom_object(
                            GROUP, VERSION, NAMESPACES[i % len(NAMESPACES)], PLURAL, resource(i)
                        ),
                        range(n),
                    )
                )
            created = time.monotonic() - started
            creation: list[tuple[float, float]] = []
            reconciled = until(lambda: managed() >= n, 1800, creation, managed) + created
            deployments = sum(
                len(k8s.AppsV1Api(api).list_namespaced_deployment(ns).items) for ns in NAMESPACES
            )

            # steady state: the control loop checks every resource every interval
            time.sleep(2 * INTERVAL_S)
            before, cpu_before, t_before = operator.metrics(), cpu_seconds(pid), time.monotonic()
            rss_samples = []
            while time.monotonic() - t_before < args.steady_seconds:
                rss_samples.append(operator.rss_mb())
                time.sleep(1)
            after, cpu_after, t_after = operator.metrics(), cpu_seconds(pid), time.monotonic()

            def delta(name: str) -> float:
                return metric(after, name) - metric(before, name)

            cycles = delta("specpilot_control_cycle_duration_seconds_count")
            queries = delta("specpilot_prometheus_queries_total")
            cycle_seconds = delta("specpilot_control_cycle_duration_seconds_sum") / max(cycles, 1)
            per_cycle = delta("specpilot_control_cycle_resources_sum") / max(cycles, 1)
            slow = cycles - (
                metric(after, 'specpilot_control_cycle_duration_seconds_bucket{le="2.0"}')
                - metric(before, 'specpilot_control_cycle_duration_seconds_bucket{le="2.0"}')
            )
            checks = delta("specpilot_control_decisions_total")
            cpu_share = (cpu_after - cpu_before) / (t_after - t_before)

            # restart: a new process resumes every resource
            operator.stop()
            operator = OperatorProcess(
                plane.kubeconfig, "--standalone", "--prometheus-url", prometheus.url
            )
            restart_started = time.monotonic()
            operator.start()
            resume: list[tuple[float, float]] = []
            resumed = until(lambda: managed() >= n, 600, resume, managed)
            resumed_total = time.monotonic() - restart_started
            assert operator.process is not None
            rss_after_resume = operator.rss_mb()
            operator.stop()
        if exporter is not None:
            exporter.stop()

    figures = {
        "queries per cycle": queries / max(cycles, 1),
        "cycle wall time (s)": cycle_seconds,
        "RSS (MB)": max([*rss_samples, rss_after_resume]),
        "resume after restart (s)": resumed_total,
    }
    what = "metrics for every resource" if args.series else "no metrics (every check holds)"
    print(f"\n{n} SpeculativeInference resources, {len(NAMESPACES)} namespaces, one operator "
          f"replica, control interval {INTERVAL_S}s, {what}\n")  # fmt: skip
    print("| figure | measured | target | ratio to target |")
    print("|---|---|---|---|")
    for name, value in figures.items():
        target = TARGETS[name]
        print(f"| {name} | {value:.2f} | <= {target:g} | {value / target:.2f} |")
    print(f"| cycles over 2 s | {slow:.0f} of {cycles:.0f} | 0 | |")
    print(f"| resources checked per cycle (mean) | {per_cycle:.0f} | | |")
    print(f"| control checks per second | {checks / (t_after - t_before):.1f} | | |")
    print(f"| operator CPU (cores, steady state) | {cpu_share:.2f} | | |")
    print(f"| create {n} resources (API calls, 8 clients) | {created:.1f} s | | |")
    print(f"| reconcile all {n} after creation | {reconciled:.1f} s | | |")
    print(f"| Deployments applied | {deployments} | {n} | |")
    print(f"| resume: operator start to all {n} resumed | {resumed:.1f} s after liveness | | |")
    if args.plot:
        plot(args.plot, creation, resume, n)
        shown = args.plot.relative_to(REPO) if args.plot.is_relative_to(REPO) else args.plot
        print(f"\nplot: {shown}")


def plot(
    path: Path, creation: list[tuple[float, float]], resume: list[tuple[float, float]], n: int
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(*zip(*creation, strict=True), label="after creating them (from the last create)")
    ax.plot(*zip(*resume, strict=True), label="after an operator restart (from liveness)")
    ax.axhline(n, color="grey", linestyle=":")
    ax.set_xlabel("seconds")
    ax.set_ylabel("resources managed")
    ax.set_title(f"{n} resources, one operator replica")
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
