"""Reaction time: from the onset of a breach to the Deployment patched, on real parts.

A fresh local control plane (kube-apiserver + etcd), the pod runner's simulated vLLM pods, a real
Prometheus scraping them every second, and `specpilot run` reading it: the demo's stack. For each
(interval, failureLimit) a resource (the 70B INT8 example with its 8B draft) serves greedy
requests until the operator has good readings. Then the load switches to T=1.0 (acceptance falls
from about 0.75 to about 0.35) and the clock starts. It stops when the server Deployment's pod
template loses `--speculative-config`. Each setting is repeated; p50 and p95 are printed against
the target failureLimit x interval + one scrape interval + 2 s (the rate window, 3 s here, comes
on top: the acceptance over the window must first fall below 0.50).

    .venv/bin/python bench/reaction_time.py [--repeats 5] [--plot docs/benchmarks/reaction-time.png]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from specpilot.api.models import GROUP, PLURAL, VERSION
from specpilot_lab.local.controlplane import ControlPlane
from specpilot_lab.local.operator_process import wait_for
from specpilot_lab.local.stack import LocalStack, install_crds, simulated
from specpilot_lab.sim import loadgen

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "manifests" / "examples" / "llama-70b-int8-draft.yaml"
MODEL = "RedHatAI/Meta-Llama-3.1-70B-Instruct-quantized.w8a8"
NAMESPACE = "reaction"
SCRAPE_S = 1.0
WINDOW = "3s"
SETTINGS = ((2, 2), (2, 3), (5, 2), (5, 3))
"""(interval seconds, failureLimit)."""


def trace(seconds: float, temperature: float) -> loadgen.Trace:
    return loadgen.Trace.model_validate(
        {
            "seed": int(time.time()),
            "segments": [{"durationSeconds": seconds, "qps": 2}],
            "temperatureMix": [{"temperature": temperature, "weight": 1}],
            "promptTokens": {"kind": "lognormal", "median": 180, "sigma": 1.0, "max": 2048},
            "outputTokens": {"kind": "lognormal", "median": 120, "sigma": 0.6, "max": 512},
        }
    )


def resource(name: str, interval: int, failure_limit: int) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"] = {"name": name, "namespace": NAMESPACE}
    body["spec"]["policy"] = {
        "mode": "auto",
        "interval": f"{interval}s",
        "window": WINDOW,
        "failureLimit": failure_limit,
        "consecutiveSuccessLimit": 3,
        "cooldown": "10m",
    }
    body["spec"]["monitoring"] = {}
    return simulated(body)  # the pod runner's pods start in seconds


def speculating(apps: k8s.AppsV1Api, name: str) -> bool:
    deployment = apps.read_namespaced_deployment(name, NAMESPACE)
    return any(
        "--speculative-config" in a for a in deployment.spec.template.spec.containers[0].args
    )


def measure(
    stack: LocalStack, api: k8s.ApiClient, name: str, interval: int, failure_limit: int
) -> float:
    custom, apps = k8s.CustomObjectsApi(api), k8s.AppsV1Api(api)
    custom.create_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, resource(name, interval, failure_limit)
    )
    wait_for(lambda: stack.targets(NAMESPACE, name), timeout=120, what=f"{name}'s pod")
    onset: list[float] = []
    stop = threading.Event()

    def targets() -> list[str]:
        return [f"http://{t}" for t in stack.targets(NAMESPACE, name)]

    async def play() -> None:
        warm = max(3 * interval, 8)
        await loadgen.run(trace(warm, 0.0), targets, MODEL, stream=False)
        onset.append(time.monotonic())
        hot = asyncio.create_task(loadgen.run(trace(120, 1.0), targets, MODEL, stream=False))
        while not stop.is_set() and not hot.done():
            await asyncio.sleep(0.2)
        hot.cancel()

    player = threading.Thread(target=lambda: asyncio.run(play()), daemon=True)
    player.start()
    try:
        wait_for(lambda: onset, timeout=120, what="the greedy warm-up")
        body = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
        assert body["status"].get("control", {}).get("lastAcceptance", 0) > 0.5, body["status"]
        wait_for(lambda: not speculating(apps, name), timeout=120, what=f"{name} disabled")
        return time.monotonic() - onset[0]
    finally:
        stop.set()
        player.join(timeout=30)
        custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--plot", type=Path, default=REPO / "docs" / "benchmarks" / "reaction-time.png"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    results: dict[tuple[int, int], list[float]] = {}
    with ControlPlane() as plane:
        install_crds(plane)
        plane.kubectl("create", "namespace", NAMESPACE)
        api = k8s_config.new_client_from_config(config_file=str(plane.kubeconfig))
        with LocalStack(plane, [NAMESPACE]) as stack:
            for interval, failure_limit in SETTINGS:
                for repeat in range(args.repeats):
                    name = f"r{interval}s-f{failure_limit}-{repeat}"
                    seconds = measure(stack, api, name, interval, failure_limit)
                    results.setdefault((interval, failure_limit), []).append(seconds)
                    print(f"{name}: {seconds:.1f} s", flush=True)
    print(f"\nreaction time, {args.repeats} runs each (scrape {SCRAPE_S:g} s, window {WINDOW})\n")
    print("| interval | failureLimit | p50 (s) | p95 (s) | target (s) | p95 / target |")
    print("|---|---|---|---|---|---|")
    for (interval, failure_limit), values in results.items():
        target = failure_limit * interval + SCRAPE_S + 2
        p50, p95 = statistics.median(values), percentile(values, 0.95)
        print(
            f"| {interval} s | {failure_limit} | {p50:.1f} | {p95:.1f} | {target:.0f} "
            f"| {p95 / target:.2f} |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures(results), indent=1) + "\n")
    if args.plot:
        plot(args.plot, results)


def figures(results: dict[tuple[int, int], list[float]]) -> dict[str, Any]:
    """{"<interval>s-x<failureLimit>": {runs_s, p50_s, p95_s, target_s}} for --json."""
    out: dict[str, Any] = {}
    for (interval, failure_limit), values in results.items():
        out[f"{interval}s-x{failure_limit}"] = {
            "runs_s": [round(v, 2) for v in values],
            "p50_s": round(statistics.median(values), 2),
            "p95_s": round(percentile(values, 0.95), 2),
            "target_s": failure_limit * interval + SCRAPE_S + 2,
        }
    return out


def plot(path: Path, results: dict[tuple[int, int], list[float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    labels = [f"{i} s x {f}" for i, f in results]
    ax.boxplot(list(results.values()), tick_labels=labels)
    for x, (interval, failure_limit) in enumerate(results, start=1):
        target = failure_limit * interval + SCRAPE_S + 2
        ax.hlines(target, x - 0.4, x + 0.4, colors="red", linestyles="--")
    ax.set_xlabel("interval x failureLimit")
    ax.set_ylabel("seconds from breach onset to Deployment patched")
    ax.set_title("Reaction time (red: target)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
