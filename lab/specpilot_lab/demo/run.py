"""`specpilot-lab demo`: the control loop on a laptop, end to end, in a world where acting costs.

A local control plane, simulated vLLM pods (the pod runner, with a finite GPU pool and pods that
take their modelled startup, scaled down, to serve), a real Prometheus and the operator. Two acts:

1. Two surges: the example resource with one control replica plays low load, a surge, low load
   and a second surge. In the first surge speculation loses to the control replica; vLLM 0.33.0
   has the per-batch-size schedule, so the operator sets it (k=0 from the batch where it lost)
   instead of turning speculation off. That one change restarts the serving pod (no surge pod:
   the pool is full), and the timeline shows the gap. From then on the engine stops and resumes
   drafting by itself: the fall of the load and the second surge need no restart.
2. A full GPU pool: two serving replicas that may surge one extra pod, on a pool they fill. Hot
   sampling makes the operator turn speculation off; the surge pod waits for GPUs, the rollout
   times out, and the operator returns to the configuration that runs instead of stranding it.

The operator's Events are printed as they happen; each act ends with a summary table and a PNG
timeline. Everything started is stopped on the way out, also on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import datetime
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import click
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from specpilot.api.models import GROUP, PLURAL, VERSION
from specpilot.assessment import render
from specpilot.control.check import STARTUP_ANNOTATION
from specpilot.control.signals import Signal, signal_expressions
from specpilot.rendering.manifests import Role, deployment_name
from specpilot_lab.demo.timeline import DecisionMark, Series, Timeline, render_png, summary_table
from specpilot_lab.local.controlplane import ControlPlane
from specpilot_lab.local.operator_process import wait_for
from specpilot_lab.local.stack import FAST_POLICY, LocalStack, install_crds
from specpilot_lab.sim import loadgen
from specpilot_lab.sim.podrunner import startup_seconds

EXAMPLE = "llama-70b-int8-draft.yaml"
"""The resource the demo applies: manifests/examples/llama-70b-int8-draft.yaml, shipped with the lab
(package data; a test keeps the two equal)."""
NAMESPACE = "specpilot-demo"
POLICY = {**FAST_POLICY, "controlReplicas": 1, "cooldown": "5m"}
"""The example's policy, sped up, with one control replica as the live baseline; a 5-minute
cooldown (the production default is 10), so after the first surge's change the act shows what
the engine does alone."""
PHASES = (
    ("low", 45.0, 4.0),
    ("surge", 75.0, 30.0),
    ("low again", 90.0, 4.0),
    ("second surge", 75.0, 30.0),
    ("low at last", 30.0, 4.0),
)
"""(name, seconds, total QPS): the load is spread over the serving and the control replica."""
STEP = 5.0
STARTUP_SCALE = 0.05
"""Pods take 5% of their modelled startup (docs/podrunner.md): the example's ~208 s (89 GB of
weights from a local cache, CUDA graphs, engine start) take ~10 s, so a restart's gap shows
without minutes of waiting."""
DEADLINE_SCALE = 0.05
"""progressDeadlineSeconds (at least 600 s) passes in 30 s: a stuck rollout ends within the act."""
GPU_POOL = 4
"""The local cluster's GPUs: the surge act's serving pod and control replica (2 + 2) fill it, and
so do the full-pool act's two serving pods."""
FULL_POOL_NAME = "llama-70b-full-pool"
FULL_POOL_SECONDS = 120.0
FULL_POOL_QPS = 4.0
HOT_TEMPERATURE = 1.6
"""Sampling hot enough that the draft's acceptance falls well below the policy's floor."""
SPECULATIVE_CONFIG = "--speculative-config"
"""The flag of a speculating vLLM (0.9 and later, the example's release)."""
FULL_POOL_WAIT_S = 240.0
"""How long the full-pool act waits, after its load, for the revert to complete."""


def demo_resource() -> dict[str, Any]:
    """The surge act's resource: the example, sped up, with the scaled startup it will take."""
    text = (resources.files(__package__ or "specpilot_lab.demo") / EXAMPLE).read_text()
    doc: dict[str, Any] = yaml.safe_load(text)
    doc["metadata"]["namespace"] = NAMESPACE
    doc["spec"]["policy"] = {**doc["spec"].get("policy", {}), **POLICY}
    doc["spec"]["monitoring"] = {}  # the operator's --prometheus-url: the local one
    return with_startup(doc)


def full_pool_resource() -> dict[str, Any]:
    """The full-pool act's resource: two serving replicas, no control replica, and a surge
    allowed (spec.rollout.surge OnePod) on a pool with no GPU to spare."""
    doc = demo_resource()
    doc["metadata"]["name"] = FULL_POOL_NAME
    doc["spec"]["replicas"] = 2
    doc["spec"]["rollout"] = {"surge": "OnePod"}
    doc["spec"]["policy"] = {**doc["spec"]["policy"], "controlReplicas": 0}
    return with_startup(doc)


def with_startup(doc: dict[str, Any]) -> dict[str, Any]:
    """The resource annotated with the startup its serving pod takes in this world (the
    modelled startup, scaled), so the operator prices a restart as the world will charge it."""
    server = render(doc)[0]
    args = server["spec"]["template"]["spec"]["containers"][0]["args"]
    seconds = startup_seconds(args, {}) * STARTUP_SCALE
    annotations = doc["metadata"].get("annotations") or {}
    doc["metadata"]["annotations"] = {**annotations, STARTUP_ANNOTATION: f"{seconds:.0f}"}
    return doc


def demo_trace(
    segments: list[dict[str, float]] | None = None, seed: int = 7, temperature: float | None = None
) -> loadgen.Trace:
    """The demo's requests (mostly greedy, chat-sized) over `segments`, by default its phases;
    all at `temperature` when given."""
    mix = (
        [{"temperature": temperature, "weight": 1}]
        if temperature is not None
        else [{"temperature": 0.0, "weight": 3}, {"temperature": 0.5, "weight": 1}]
    )
    return loadgen.Trace.model_validate(
        {
            "seed": seed,
            "segments": segments or [{"durationSeconds": d, "qps": q} for _, d, q in PHASES],
            "temperatureMix": mix,
            "promptTokens": {"kind": "lognormal", "median": 180, "sigma": 1.0, "max": 2048},
            "outputTokens": {"kind": "lognormal", "median": 120, "sigma": 0.6, "max": 512},
        }
    )


class EventPrinter:
    """Prints the resource's Events once each, as they arrive, and keeps their reasons."""

    def __init__(self, api: k8s.ApiClient, name: str, started: float) -> None:
        self.core = k8s.CoreV1Api(api)
        self.name = name
        self.started = started
        self.seen: set[str] = set()
        self.reasons: list[str] = []
        """In the order they were posted."""

    def poll(self) -> None:
        listed = self.core.list_namespaced_event(
            NAMESPACE, field_selector=f"involvedObject.name={self.name}"
        )
        # In the order they were posted: etcd's revisions (timestamps tie within a second).
        for event in sorted(listed.items, key=lambda e: int(e.metadata.resource_version or 0)):
            uid = str(event.metadata.uid)
            if uid in self.seen:
                continue
            self.seen.add(uid)
            self.reasons.append(str(event.reason))
            offset = max(0.0, time.time() - self.started)
            colour = "yellow" if event.type == "Warning" else "green"
            click.echo(
                f"  {offset:6.0f}s  "
                + click.style(f"{event.type:7} {event.reason:28}", fg=colour)
                + f" {event.message}"
            )


@dataclass
class PodSamples:
    """The serving pods over time, as the pod runner (the local kubelet) reports them."""

    ready: list[tuple[float, float]] = field(default_factory=list)
    starting: list[tuple[float, float]] = field(default_factory=list)
    pending: list[tuple[float, float]] = field(default_factory=list)
    speculation: list[tuple[float, bool]] = field(default_factory=list)
    """From each time on, whether a Ready serving pod runs with --speculative-config: what runs,
    not what the operator decided (a change is in effect only once its pods are Ready)."""

    def sample(self, stack: LocalStack, name: str, t: float) -> None:
        assert stack.runner is not None
        pods = [p for p in stack.runner.pods() if (p.namespace, p.deployment) == (NAMESPACE, name)]
        ready = sum(1 for p in pods if p.ready)
        pending = sum(1 for p in pods if p.phase == "Pending")
        self.ready.append((t, ready))
        self.pending.append((t, pending))
        self.starting.append((t, len(pods) - ready - pending))
        speculating = any(p.ready and SPECULATIVE_CONFIG in p.command for p in pods)
        if not self.speculation or self.speculation[-1][1] != speculating:
            self.speculation.append((t, speculating))


def run_demo(output: Path, keep: bool) -> None:
    output.mkdir(parents=True, exist_ok=True)
    click.echo("== starting a local control plane (etcd + kube-apiserver)")
    with ControlPlane(keep_files=keep) as plane:
        install_crds(plane)
        plane.kubectl("create", "namespace", NAMESPACE)
        click.echo(
            f"== starting the pod runner (simulated vLLM pods on a pool of {GPU_POOL} GPUs, "
            f"starting in {STARTUP_SCALE:.0%} of their modelled time), Prometheus and the operator"
        )
        options = {
            "startup_scale": STARTUP_SCALE,
            "deadline_scale": DEADLINE_SCALE,
            "gpu_pool": GPU_POOL,
        }
        with LocalStack(
            plane, [NAMESPACE], workdir=output / "stack", runner_options=options
        ) as stack:
            api = k8s_config.new_client_from_config(config_file=str(plane.kubeconfig))  # type: ignore[no-untyped-call]
            _surge_act(api, stack, output)
            _full_pool_act(api, stack, output)


def _surge_act(api: k8s.ApiClient, stack: LocalStack, output: Path) -> None:
    doc = demo_resource()
    name = doc["metadata"]["name"]
    click.echo(f"\n== act 1, two surges: manifests/examples/{EXAMPLE} as {NAMESPACE}/{name}")
    click.echo("   policy: " + ", ".join(f"{k}={v}" for k, v in POLICY.items()))
    click.echo(
        f"   a restart takes {doc['metadata']['annotations'][STARTUP_ANNOTATION]}s here "
        f"({STARTUP_SCALE:.0%} of the modelled startup); the pool has no GPU for a surge pod, so "
        "the serving pod stops before its replacement starts and the control replica serves alone"
    )
    plan = ", ".join(f"{n} {d:.0f}s at {q:g} QPS" for n, d, q in PHASES)
    phases, offset = [], 0.0
    for phase, seconds, _ in PHASES:
        phases.append((phase, offset, offset + seconds))
        offset += seconds
    played = _play(api, stack, doc, demo_trace(), f"the trace ({plan})")
    _report(played, phases, output / "timeline.png", f"specpilot demo: {name}, two surges")
    _delete(api, stack, doc)


def _full_pool_act(api: k8s.ApiClient, stack: LocalStack, output: Path) -> None:
    doc = full_pool_resource()
    name = doc["metadata"]["name"]
    click.echo(
        f"\n== act 2, a full GPU pool: {NAMESPACE}/{name}, 2 replicas of 2 GPUs on the pool of "
        f"{GPU_POOL}, spec.rollout.surge OnePod (a new pod starts before an old one stops)"
    )
    click.echo(
        f"   hot sampling (T={HOT_TEMPERATURE:g}) sinks the draft's acceptance: the operator turns "
        "speculation off, the surge pod finds no GPUs, and the rollout must not be stranded"
    )
    segments = [{"durationSeconds": FULL_POOL_SECONDS, "qps": FULL_POOL_QPS}]
    played = _play(
        api,
        stack,
        doc,
        demo_trace(segments, temperature=HOT_TEMPERATURE),
        f"{FULL_POOL_SECONDS:.0f}s at {FULL_POOL_QPS:g} QPS, all at T={HOT_TEMPERATURE:g}",
        until=_reverted_and_complete,
    )
    _report(
        played,
        [("hot sampling", 0.0, played.timeline.end())],
        output / "full-pool.png",
        f"specpilot demo: {name}, a full GPU pool",
    )
    reverted = "RolloutReverted" in played.reasons
    click.echo(
        "   the rollout that could not get GPUs was reverted; speculation stays on, as the "
        "pods that run say"
        if reverted
        else "   no revert was seen within the act (see the Events above)"
    )
    _delete(api, stack, doc)


@dataclass
class Played:
    timeline: Timeline
    results: list[loadgen.Result]
    reasons: list[str]


def _play(
    api: k8s.ApiClient,
    stack: LocalStack,
    doc: dict[str, Any],
    trace: loadgen.Trace,
    what: str,
    until: Callable[[list[str]], bool] | None = None,
) -> Played:
    """Apply the resource, wait for its pods, play the trace while printing the Events and
    sampling the serving pods; then wait (up to FULL_POOL_WAIT_S) until the Events' reasons
    satisfy `until`."""
    name = doc["metadata"]["name"]
    k8s.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, doc
    )
    desired = doc["spec"]["replicas"] + doc["spec"]["policy"].get("controlReplicas", 0)
    wait_for(lambda: len(stack.targets(NAMESPACE, name)) >= desired, timeout=180, what="ready pods")
    started = time.time()
    click.echo(f"== playing {what}; the operator's Events as they happen:")
    results: list[loadgen.Result] = []
    model = doc["spec"]["target"]["model"]

    def targets() -> list[str]:
        return [f"http://{t}" for t in stack.targets(NAMESPACE, name)]

    player = threading.Thread(
        target=lambda: results.extend(
            asyncio.run(loadgen.run(trace, targets, model, stream=False))
        ),
        daemon=True,
    )
    player.start()
    printer = EventPrinter(api, name, started)
    pods = PodSamples()

    def tick() -> None:
        printer.poll()
        pods.sample(stack, name, time.time() - started)

    while player.is_alive():
        tick()
        player.join(timeout=1.0)
    deadline = time.time() + FULL_POOL_WAIT_S
    while until is not None and not until(printer.reasons) and time.time() < deadline:
        tick()
        time.sleep(1.0)
    tick()
    stored: dict[str, Any] = k8s.CustomObjectsApi(api).get_namespaced_custom_object(  # type: ignore[assignment]
        GROUP, VERSION, NAMESPACE, PLURAL, name
    )
    timeline = _timeline(stack, name, results, stored.get("status") or {}, started, time.time())
    timeline = timeline.model_copy(
        update={
            "ready_pods": Series(points=pods.ready),
            "starting_pods": Series(points=pods.starting),
            "pending_pods": Series(points=pods.pending),
            "desired_pods": int(doc["spec"]["replicas"]),
            "speculation": pods.speculation,
        }
    )
    return Played(timeline=timeline, results=results, reasons=printer.reasons)


def _reverted_and_complete(reasons: list[str]) -> bool:
    """After a RolloutStuck: the operator's RolloutReverted and the RolloutComplete of the pods
    back on the configuration that ran (posted in the same check, in either order)."""
    if "RolloutStuck" not in reasons:
        return False
    after = reasons[reasons.index("RolloutStuck") :]
    return "RolloutReverted" in after and "RolloutComplete" in after


def _report(played: Played, phases: list[tuple[str, float, float]], png: Path, title: str) -> None:
    render_png(played.timeline, png, title)
    errors = sum(1 for r in played.results if r.error)
    click.echo(f"\n== summary ({len(played.results)} requests, {errors} errors)")
    click.echo(summary_table(played.timeline, phases))
    click.echo(f"== timeline: {png}")


def _delete(api: k8s.ApiClient, stack: LocalStack, doc: dict[str, Any]) -> None:
    """The resource and its Deployments (the local control plane has no garbage collector), and
    wait until their pods have stopped and freed the GPUs."""
    name = doc["metadata"]["name"]
    k8s.CustomObjectsApi(api).delete_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, name
    )
    apps = k8s.AppsV1Api(api)
    roles: list[Role] = (
        ["server", "baseline"] if doc["spec"]["policy"].get("controlReplicas") else ["server"]
    )
    for role in roles:
        apps.delete_namespaced_deployment(deployment_name(name, role), NAMESPACE)
    runner = stack.runner
    assert runner is not None
    wait_for(
        lambda: not [p for p in runner.pods() if p.namespace == NAMESPACE],
        timeout=120,
        what=f"the pods of {name} to stop",
    )


def _timeline(
    stack: LocalStack,
    name: str,
    results: list[loadgen.Result],
    status: dict[str, Any],
    started: float,
    ended: float,
) -> Timeline:
    assert stack.prometheus is not None
    promql = signal_expressions(str(POLICY["window"]))

    def series(signal: Signal, role: str, scale: float = 1.0) -> Series:
        assert stack.prometheus is not None
        answer = stack.prometheus.query_range(promql[signal], started, ended, STEP)
        for item in answer:
            labels = item["metric"]
            if (labels.get("namespace"), labels.get("specpilot_io_resource")) != (
                NAMESPACE,
                name,
            ) or labels.get("specpilot_io_role") != role:
                continue
            points = [(float(t) - started, float(v) * scale) for t, v in item["values"]]
            # NaN where nothing completed in the window (no load): a gap, not a value
            return Series(points=[(t, v) for t, v in points if math.isfinite(v)])
        return Series()

    def drafts_per_token() -> Series:
        """Draft tokens over output tokens of the serving pods in the rate window."""
        assert stack.prometheus is not None
        selector = (
            f'{{namespace="{NAMESPACE}",specpilot_io_resource="{name}",specpilot_io_role="server"}}'
        )
        window = str(POLICY["window"])
        promql_ratio = (
            f"sum(rate(vllm:spec_decode_num_draft_tokens_total{selector}[{window}])) / "
            f"sum(rate(vllm:generation_tokens_total{selector}[{window}]))"
        )
        answer = stack.prometheus.query_range(promql_ratio, started, ended, STEP)
        points = [(float(t) - started, float(v)) for item in answer for t, v in item["values"]]
        return Series(points=[(t, v) for t, v in points if math.isfinite(v)])

    offered: dict[int, int] = {}
    for result in results:
        bucket = int(result.at // STEP)
        offered[bucket] = offered.get(bucket, 0) + 1
    qps = Series(points=[(b * STEP, n / STEP) for b, n in sorted(offered.items())])
    decisions = [
        DecisionMark(t=_seconds(d["time"]) - started, action=d["action"], reason=d["reason"])
        for d in status.get("decisions", [])
    ]
    return Timeline(
        qps=qps,
        acceptance=series(Signal.ACCEPTANCE, "server"),
        drafts_per_token=drafts_per_token(),
        p99_tpot_ms=series(Signal.TPOT_P99, "server", 1000),
        baseline_p99_tpot_ms=series(Signal.TPOT_P99, "baseline", 1000),
        decisions=decisions,
    )


def _seconds(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


@click.command("demo")
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo-output"),
    show_default=True,
    help="Folder for timeline.png and the logs of every component.",
)
@click.option("--keep-files", is_flag=True, help="Keep the control plane's files for a look.")
def demo(output: Path, keep_files: bool) -> None:
    """Run the control loop locally against simulated GPUs: a load surge, then a full GPU pool."""
    run_demo(output / datetime.datetime.now().strftime("%Y%m%d-%H%M%S"), keep_files)
