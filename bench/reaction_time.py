"""Reaction time: from the onset of a breach to the Deployment patched, and to the change in effect.

A fresh local control plane (kube-apiserver + etcd), the pod runner's simulated vLLM pods, a real
Prometheus scraping them every second, and `specpilot run` reading it: the demo's stack. For each
(interval, failureLimit) a resource (the 70B INT8 example with its 8B draft) serves greedy
requests until the operator has good readings. Then the load switches to T=1.0 (acceptance falls
from about 0.75 to about 0.35) and the clock starts. Two figures per run:

- **patched**: the server Deployment's pod template loses `--speculative-config`. The target is
  failureLimit x interval + one scrape interval + 2 s (the rate window, 3 s here, comes on top:
  the acceptance over the window must first fall below 0.50).
- **in effect**: the operator posts its next `RolloutComplete` Event for the resource (reconcile.py:
  the Deployment's controller saw the newest generation and all its pods are updated and Ready;
  the `RolledOut` condition turns True at the same write). Until then the old pods serve, still
  speculating.

Pods start after their modelled startup (weights, CUDA graphs, engine start: about 187 s for the
speculation-off pod) times `--startup-scale`, and the resource's `specpilot.io/startup-seconds`
annotation says the same scaled startup, so the operator's restart cost agrees with the world.
Each setting is repeated; p50 and p95 of both are printed side by side.

    .venv/bin/python bench/reaction_time.py [--repeats 5] [--startup-scale 0.05] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from specpilot.adapters.checkpoints import CheckpointReader
from specpilot.api.models import GROUP, PLURAL, VERSION
from specpilot.assessment import assess, checkpoint_models
from specpilot.control.check import STARTUP_ANNOTATION
from specpilot.planning.startup import LOCAL_LOAD_GB_PER_S
from specpilot.rendering.manifests import manifests
from specpilot_lab.local.controlplane import ControlPlane
from specpilot_lab.local.operator_process import wait_for
from specpilot_lab.local.stack import LocalStack, install_crds, simulated
from specpilot_lab.sim import loadgen
from specpilot_lab.sim.podrunner import pod_template

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "manifests" / "examples" / "llama-70b-int8-draft.yaml"
MODEL = "RedHatAI/Meta-Llama-3.1-70B-Instruct-quantized.w8a8"
NAMESPACE = "reaction"
SCRAPE_S = 1.0
WINDOW = "3s"
SETTINGS = ((2, 2), (2, 3), (5, 2), (5, 3))
"""(interval seconds, failureLimit)."""
IN_EFFECT = "RolloutComplete"
"""The operator's Event once a replacement's new pods are all Ready: the change is in effect."""


class Reaction(NamedTuple):
    """Seconds from the breach onset, in one run."""

    patched: float
    in_effect: float


def modelled_startup(speculation: bool) -> float:
    """The pod runner's modelled startup (unscaled) of the example's server pod, rendered as the
    operator renders it; the speculation-off pod is the one the breach makes the operator start."""
    doc = yaml.safe_load(EXAMPLE.read_text())
    reader = CheckpointReader(use_hub=False)
    try:
        result = assess(doc, checkpoints=reader.read(checkpoint_models(doc)))
    finally:
        reader.close()
    assert result.resource is not None, result.findings
    rendered = manifests(result.resource, result.version, speculation, result.checkpoints)
    server = next(m for m in rendered if m["kind"] == "Deployment")
    return pod_template(server, load_gb_per_s=LOCAL_LOAD_GB_PER_S).startup_seconds


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


def resource(name: str, interval: int, failure_limit: int, startup_s: float) -> dict[str, Any]:
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
    body = simulated(body)
    body["metadata"]["annotations"][STARTUP_ANNOTATION] = f"{startup_s:.1f}"  # the scaled world
    return body


def speculating(apps: k8s.AppsV1Api, name: str) -> bool:
    deployment = apps.read_namespaced_deployment(name, NAMESPACE)
    return any(
        "--speculative-config" in a for a in deployment.spec.template.spec.containers[0].args
    )


def completions(core: k8s.CoreV1Api, name: str) -> set[str]:
    """The names of the operator's RolloutComplete Events for this resource (the first pods of a
    new resource get one too, so a change is in effect once a new one appears)."""
    listed = core.list_namespaced_event(NAMESPACE, field_selector=f"involvedObject.name={name}")
    return {e.metadata.name for e in listed.items if e.reason == IN_EFFECT}


def measure(
    stack: LocalStack,
    api: k8s.ApiClient,
    name: str,
    interval: int,
    failure_limit: int,
    startup_s: float,
) -> Reaction:
    custom, apps, core = k8s.CustomObjectsApi(api), k8s.AppsV1Api(api), k8s.CoreV1Api(api)
    custom.create_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, resource(name, interval, failure_limit, startup_s)
    )
    wait_for(lambda: stack.targets(NAMESPACE, name), timeout=180, what=f"{name}'s pod")
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
        patched = time.monotonic() - onset[0]
        before = completions(core, name)
        wait_for(lambda: completions(core, name) - before, timeout=300, what=f"{name} in effect")
        return Reaction(patched, time.monotonic() - onset[0])
    finally:
        stop.set()
        player.join(timeout=30)
        custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
        # No garbage collector on the test control plane: stop the pods of finished runs.
        apps.delete_namespaced_deployment(name, NAMESPACE)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--startup-scale",
        type=float,
        default=0.05,
        help="wall seconds per modelled second of a pod's startup (0.05: 187 s take 9.3 s)",
    )
    parser.add_argument(
        "--plot", type=Path, default=REPO / "docs" / "benchmarks" / "reaction-time.png"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    startup_s = modelled_startup(speculation=False) * args.startup_scale
    results: dict[tuple[int, int], list[Reaction]] = {}
    with ControlPlane() as plane:
        install_crds(plane)
        plane.kubectl("create", "namespace", NAMESPACE)
        api = k8s_config.new_client_from_config(config_file=str(plane.kubeconfig))
        options = {"startup_scale": args.startup_scale}
        with LocalStack(plane, [NAMESPACE], runner_options=options) as stack:
            for interval, failure_limit in SETTINGS:
                for repeat in range(args.repeats):
                    name = f"r{interval}s-f{failure_limit}-{repeat}"
                    run = measure(stack, api, name, interval, failure_limit, startup_s)
                    results.setdefault((interval, failure_limit), []).append(run)
                    print(
                        f"{name}: patched {run.patched:.1f} s, in effect {run.in_effect:.1f} s",
                        flush=True,
                    )
    print(
        f"\nreaction time, {args.repeats} runs each (scrape {SCRAPE_S:g} s, window {WINDOW}, "
        f"startup {startup_s:.1f} s = scale {args.startup_scale:g})\n"
    )
    print(
        "| interval | failureLimit | patched p50 (s) | patched p95 (s) | target (s) "
        "| p95 / target | in effect p50 (s) | in effect p95 (s) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for (interval, failure_limit), runs in results.items():
        target = failure_limit * interval + SCRAPE_S + 2
        patched, effect = [r.patched for r in runs], [r.in_effect for r in runs]
        p95 = percentile(patched, 0.95)
        print(
            f"| {interval} s | {failure_limit} | {statistics.median(patched):.1f} | {p95:.1f} "
            f"| {target:.0f} | {p95 / target:.2f} | {statistics.median(effect):.1f} "
            f"| {percentile(effect, 0.95):.1f} |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        out = figures(results)
        out["_meta"] = {
            "startup_scale": args.startup_scale,
            "startup_s": round(startup_s, 2),
            "in_effect_signal": f"{IN_EFFECT} Event",
        }
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    if args.plot:
        plot(args.plot, results)


def figures(results: dict[tuple[int, int], list[Reaction]]) -> dict[str, Any]:
    """{"<interval>s-x<failureLimit>": {runs_s, p50_s, p95_s, target_s, in_effect_runs_s,
    in_effect_p50_s, in_effect_p95_s}} for --json: the first four to the patch, as before."""
    out: dict[str, Any] = {}
    for (interval, failure_limit), runs in results.items():
        patched, effect = [r.patched for r in runs], [r.in_effect for r in runs]
        out[f"{interval}s-x{failure_limit}"] = {
            "runs_s": [round(v, 2) for v in patched],
            "p50_s": round(statistics.median(patched), 2),
            "p95_s": round(percentile(patched, 0.95), 2),
            "target_s": failure_limit * interval + SCRAPE_S + 2,
            "in_effect_runs_s": [round(v, 2) for v in effect],
            "in_effect_p50_s": round(statistics.median(effect), 2),
            "in_effect_p95_s": round(percentile(effect, 0.95), 2),
        }
    return out


def plot(path: Path, results: dict[tuple[int, int], list[Reaction]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    xs = range(1, len(results) + 1)
    runs = list(results.values())
    patched = ax.boxplot(
        [[r.patched for r in rs] for rs in runs],
        positions=[x - 0.18 for x in xs],
        widths=0.3,
        patch_artist=True,
        boxprops={"facecolor": "tab:blue"},
        medianprops={"color": "black"},
    )
    effect = ax.boxplot(
        [[r.in_effect for r in rs] for rs in runs],
        positions=[x + 0.18 for x in xs],
        widths=0.3,
        patch_artist=True,
        boxprops={"facecolor": "tab:orange"},
        medianprops={"color": "black"},
    )
    for x, (interval, failure_limit) in zip(xs, results, strict=True):
        target = failure_limit * interval + SCRAPE_S + 2
        ax.hlines(target, x - 0.4, x + 0.05, colors="red", linestyles="--")
    ax.set_xticks(list(xs), [f"{i} s x {f}" for i, f in results])
    ax.legend(
        [patched["boxes"][0], effect["boxes"][0]],
        ["Deployment patched", f"in effect ({IN_EFFECT})"],
        loc="upper left",
    )
    ax.set_xlabel("interval x failureLimit")
    ax.set_ylabel("seconds from breach onset")
    ax.set_title("Reaction time (red: target for the patch)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
