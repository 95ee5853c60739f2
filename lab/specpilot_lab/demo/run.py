"""`specpilot-lab demo`: the control loop on a laptop, end to end.

A local control plane, simulated vLLM pods (the pod runner), a real Prometheus and the operator;
an example resource with one control replica; a trace of low load, a surge and low load again.
The operator's Events are printed as they happen; at the end come a summary table and a PNG
timeline. Everything started is stopped on the way out, also on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import datetime
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Any

import click
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from specpilot.api.models import GROUP, PLURAL, VERSION
from specpilot.control.signals import Signal, signal_expressions
from specpilot_lab.demo.timeline import DecisionMark, Series, Timeline, render_png, summary_table
from specpilot_lab.local.controlplane import ControlPlane
from specpilot_lab.local.operator_process import wait_for
from specpilot_lab.local.stack import FAST_POLICY, LocalStack, install_crds, simulated
from specpilot_lab.sim import loadgen

EXAMPLE = "llama-70b-int8-draft.yaml"
"""The resource the demo applies: manifests/examples/llama-70b-int8-draft.yaml, shipped with the lab
(package data; a test keeps the two equal)."""
NAMESPACE = "specpilot-demo"
POLICY = {**FAST_POLICY, "controlReplicas": 1}
"""The example's policy, sped up, with one control replica as the live baseline."""
PHASES = (("low", 45.0, 4.0), ("surge", 75.0, 30.0), ("low again", 90.0, 4.0))
"""(name, seconds, total QPS): the load is spread over the serving and the control replica."""
STEP = 5.0


def demo_resource() -> dict[str, Any]:
    text = (resources.files(__package__ or "specpilot_lab.demo") / EXAMPLE).read_text()
    doc: dict[str, Any] = yaml.safe_load(text)
    doc["metadata"]["namespace"] = NAMESPACE
    doc["spec"]["policy"] = {**doc["spec"].get("policy", {}), **POLICY}
    doc["spec"]["monitoring"] = {}  # the operator's --prometheus-url: the local one
    return simulated(doc)  # simulated pods start in seconds: restarts are cheap


def demo_trace(segments: list[dict[str, float]] | None = None, seed: int = 7) -> loadgen.Trace:
    """The demo's requests (mostly greedy, chat-sized) over `segments`, by default its phases."""
    return loadgen.Trace.model_validate(
        {
            "seed": seed,
            "segments": segments or [{"durationSeconds": d, "qps": q} for _, d, q in PHASES],
            "temperatureMix": [
                {"temperature": 0.0, "weight": 3},
                {"temperature": 0.5, "weight": 1},
            ],
            "promptTokens": {"kind": "lognormal", "median": 180, "sigma": 1.0, "max": 2048},
            "outputTokens": {"kind": "lognormal", "median": 120, "sigma": 0.6, "max": 512},
        }
    )


class EventPrinter:
    """Prints the resource's Events once each, as they arrive."""

    def __init__(self, api: k8s.ApiClient, name: str, started: float) -> None:
        self.core = k8s.CoreV1Api(api)
        self.name = name
        self.started = started
        self.seen: set[str] = set()

    def poll(self) -> None:
        listed = self.core.list_namespaced_event(
            NAMESPACE, field_selector=f"involvedObject.name={self.name}"
        )
        for event in sorted(listed.items, key=lambda e: str(e.metadata.creation_timestamp)):
            uid = str(event.metadata.uid)
            if uid in self.seen:
                continue
            self.seen.add(uid)
            offset = max(0.0, time.time() - self.started)
            colour = "yellow" if event.type == "Warning" else "green"
            click.echo(
                f"  {offset:6.0f}s  "
                + click.style(f"{event.type:7} {event.reason:28}", fg=colour)
                + f" {event.message}"
            )


def run_demo(output: Path, keep: bool) -> None:
    output.mkdir(parents=True, exist_ok=True)
    click.echo("== starting a local control plane (etcd + kube-apiserver)")
    with ControlPlane(keep_files=keep) as plane:
        install_crds(plane)
        plane.kubectl("create", "namespace", NAMESPACE)
        click.echo("== starting the pod runner (simulated vLLM pods), Prometheus and the operator")
        with LocalStack(plane, [NAMESPACE], workdir=output / "stack") as stack:
            api = k8s_config.new_client_from_config(config_file=str(plane.kubeconfig))  # type: ignore[no-untyped-call]
            _play(api, stack, output)


def _play(api: k8s.ApiClient, stack: LocalStack, output: Path) -> None:
    doc = demo_resource()
    name = doc["metadata"]["name"]
    k8s.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, doc
    )
    click.echo(f"== applied manifests/examples/{EXAMPLE} as {NAMESPACE}/{name} with this policy:")
    click.echo("   " + ", ".join(f"{k}={v}" for k, v in POLICY.items()))
    wait_for(lambda: len(stack.targets(NAMESPACE, name)) >= 2, timeout=120, what="ready pods")
    started = time.time()
    total = sum(d for _, d, _ in PHASES)
    plan = ", ".join(f"{n} {d:.0f}s at {q:g} QPS" for n, d, q in PHASES)
    click.echo(f"== playing the trace ({plan}); the operator's Events as they happen:")
    results: list[loadgen.Result] = []
    model = doc["spec"]["target"]["model"]

    def targets() -> list[str]:
        return [f"http://{t}" for t in stack.targets(NAMESPACE, name)]

    player = threading.Thread(
        target=lambda: results.extend(
            asyncio.run(loadgen.run(demo_trace(), targets, model, stream=False))
        ),
        daemon=True,
    )
    player.start()
    printer = EventPrinter(api, name, started)
    while player.is_alive():
        printer.poll()
        player.join(timeout=1.0)
    printer.poll()
    ended = time.time()
    stored: dict[str, Any] = k8s.CustomObjectsApi(api).get_namespaced_custom_object(  # type: ignore[assignment]
        GROUP, VERSION, NAMESPACE, PLURAL, name
    )
    status = stored["status"]
    assert stack.prometheus is not None
    timeline = _timeline(stack, name, results, status, started, ended)
    phases, offset = [], 0.0
    for phase, seconds, _ in PHASES:
        phases.append((phase, offset, offset + seconds))
        offset += seconds
    png = output / "timeline.png"
    render_png(timeline, png, f"specpilot demo: {name}, {total:.0f}s of load")
    errors = sum(1 for r in results if r.error)
    click.echo(f"\n== summary ({len(results)} requests, {errors} errors)")
    click.echo(summary_table(timeline, phases))
    click.echo(f"\n== timeline: {png}")


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
            return Series(
                points=[(float(t) - started, float(v) * scale) for t, v in item["values"]]
            )
        return Series()

    offered: dict[int, int] = {}
    for result in results:
        bucket = int(result.at // STEP)
        offered[bucket] = offered.get(bucket, 0) + 1
    qps = Series(points=[(b * STEP, n / STEP) for b, n in sorted(offered.items())])
    decisions = [
        DecisionMark(t=_seconds(d["time"]) - started, action=d["action"], reason=d["reason"])
        for d in status.get("decisions", [])
    ]
    speculation = [(0.0, True)] + [
        (d.t, d.action == "enable-speculation")
        for d in decisions
        if d.action in ("disable-speculation", "enable-speculation")
    ]
    return Timeline(
        qps=qps,
        acceptance=series(Signal.ACCEPTANCE, "server"),
        p99_tpot_ms=series(Signal.TPOT_P99, "server", 1000),
        baseline_p99_tpot_ms=series(Signal.TPOT_P99, "baseline", 1000),
        speculation=speculation,
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
    """Run the control loop locally against simulated GPUs: low load, a surge, low load."""
    run_demo(output / datetime.datetime.now().strftime("%Y%m%d-%H%M%S"), keep_files)
