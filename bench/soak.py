"""Soak: one compressed day of traffic on real parts, with a fault injected every few minutes.

The demo's stack (kube-apiserver + etcd, the pod runner's simulated vLLM pods, a real Prometheus,
`specpilot run`) and the demo's resource (the 70B INT8 example with its 8B draft, one control
replica, the sped-up policy: 5 s interval, 30 s cooldown). The load follows a day squeezed into
`--minutes`: a quiet night, a morning ramp to a peak where speculation stops paying, an afternoon
fall, a quiet evening. After the warm-up, faults take turns every `--fault-every` seconds:

- Prometheus stopped for 30 s, then started again on the same port and data;
- Prometheus frozen (SIGSTOP) for 25 s: every query times out, then it resumes;
- the API server restarted (5 s down): every watch and connection breaks;
- another client rewriting the resource's annotations 10 times a second for 30 s (409s);
- another field manager force-applying the server Deployment's arguments (SSA conflict).

Pass criteria, printed with the figures: the operator never exits; its RSS at the end is within
10% of its RSS after the warm-up (medians of the first 10% after a 25% warm-up and of the last
10%); speculation changes at most once per cooldown (no two changes closer than 30 s).

    .venv/bin/python bench/soak.py [--minutes 30] [--fault-every 90] \\
        [--plot docs/benchmarks/soak.png]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config

from specpilot.api.models import GROUP, PLURAL, VERSION
from specpilot.control.policy import seconds
from specpilot_lab.demo.run import NAMESPACE, POLICY, demo_resource, demo_trace
from specpilot_lab.local.controlplane import ControlPlane
from specpilot_lab.local.operator_process import OperatorProcess, wait_for
from specpilot_lab.local.stack import LocalStack, install_crds
from specpilot_lab.sim import loadgen

DAY = ((6, 4, 4), (4, 4, 30), (4, 30, 30), (4, 30, 8), (4, 8, 8), (2, 8, 4))
"""(hours, QPS at the start, QPS at the end): the whole resource's load, over 24 hours."""
MEMORY_LIMIT = 0.10
SAMPLE_SECONDS = 2.0


def day_trace(minutes: float) -> loadgen.Trace:
    hour = minutes * 60 / 24
    segments = [
        {"durationSeconds": hours * hour, "qpsStart": start, "qpsEnd": end}
        for hours, start, end in DAY
    ]
    return demo_trace(segments, seed=11)


class Faults:
    """Each fault is a function that injects it, waits it out and undoes it; returns a label."""

    def __init__(self, plane: ControlPlane, stack: LocalStack, api: k8s.ApiClient, name: str):
        self.plane, self.stack, self.api, self.name = plane, stack, api, name

    def prometheus_down(self) -> None:
        assert self.stack.prometheus is not None
        self.stack.prometheus.stop()
        time.sleep(30)
        self.stack.prometheus.start()

    def prometheus_frozen(self) -> None:
        assert self.stack.prometheus is not None
        assert self.stack.prometheus.process is not None
        pid = self.stack.prometheus.process.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(25)
        finally:
            os.kill(pid, signal.SIGCONT)

    def apiserver_restart(self) -> None:
        self.plane.restart_apiserver(downtime=5)

    def status_churn(self) -> None:
        custom = k8s.CustomObjectsApi(self.api)
        deadline = time.monotonic() + 30
        count = 0
        while time.monotonic() < deadline:
            count += 1
            patch = {"metadata": {"annotations": {"example.com/churn": str(count)}}}
            with contextlib.suppress(Exception):
                custom.patch_namespaced_custom_object(
                    GROUP, VERSION, NAMESPACE, PLURAL, self.name, patch
                )
            time.sleep(0.1)

    def ssa_intruder(self) -> None:
        apps = k8s.AppsV1Api(self.api)
        deployment = apps.read_namespaced_deployment(self.name, NAMESPACE)
        args = deployment.spec.template.spec.containers[0].args
        intruder = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": self.name, "namespace": NAMESPACE},
            "spec": {
                "selector": {"matchLabels": deployment.spec.selector.match_labels},
                "template": {
                    "spec": {"containers": [{"name": "vllm", "args": [*args, "--enforce-eager"]}]}
                },
            },
        }
        self.plane.kubectl(
            "apply", "--server-side", "--field-manager=intruder", "--force-conflicts",
            "-f", "-", input=json.dumps(intruder),
        )  # fmt: skip
        time.sleep(10)

    def all(self) -> list[tuple[str, Callable[[], None]]]:
        return [
            ("prometheus down 30 s", self.prometheus_down),
            ("prometheus frozen 25 s", self.prometheus_frozen),
            ("API server restart", self.apiserver_restart),
            ("409 churn 30 s", self.status_churn),
            ("SSA intruder", self.ssa_intruder),
        ]


class Observer:
    """Samples the operator's RSS and whether the server Deployment speculates."""

    def __init__(
        self, api: k8s.ApiClient, name: str, operator: OperatorProcess, started: float
    ) -> None:
        self.apps = k8s.AppsV1Api(api)
        self.name, self.operator, self.started = name, operator, started
        self.rss: list[tuple[float, float]] = []
        self.speculating: list[tuple[float, bool]] = []

    def sample(self) -> None:
        at = time.monotonic() - self.started
        with contextlib.suppress(OSError):
            self.rss.append((at, self.operator.rss_mb()))
        with contextlib.suppress(Exception):  # the API server may be down: a gap, not a flip
            deployment = self.apps.read_namespaced_deployment(self.name, NAMESPACE)
            args = deployment.spec.template.spec.containers[0].args
            self.speculating.append((at, "--speculative-config" in args))

    def flips(self) -> list[tuple[float, bool]]:
        changes = []
        for (_, before), (at, now) in itertools.pairwise(self.speculating):
            if now != before:
                changes.append((at, now))
        return changes


def operator_counters(metrics: str) -> dict[str, float]:
    """409s redone per writer and held checks, from the operator's own /metrics."""
    counters: dict[str, float] = {}
    for line in metrics.splitlines():
        conflict = re.match(r'specpilot_status_conflicts_total\{writer="(\w+)"\} (\S+)', line)
        if conflict:
            counters[conflict.group(1)] = float(conflict.group(2))
        held = re.match(r'specpilot_control_decisions_total\{action="hold"\} (\S+)', line)
        if held:
            counters["hold"] = float(held.group(1))
    return counters


def median_between(points: list[tuple[float, float]], start: float, end: float) -> float:
    return statistics.median(v for t, v in points if start <= t <= end)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the whole day")
    parser.add_argument("--fault-every", type=float, default=90.0, help="seconds between faults")
    parser.add_argument("--plot", type=Path, default=None, help="write a timeline PNG here")
    args = parser.parse_args()
    length = args.minutes * 60
    cooldown = seconds(str(POLICY["cooldown"]))
    with ControlPlane() as plane:
        install_crds(plane)
        plane.kubectl("create", "namespace", NAMESPACE)
        api = k8s_config.new_client_from_config(config_file=str(plane.kubeconfig))
        with LocalStack(plane, [NAMESPACE]) as stack:
            doc = demo_resource()
            name, model = doc["metadata"]["name"], doc["spec"]["target"]["model"]
            k8s.CustomObjectsApi(api).create_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, PLURAL, doc
            )
            wait_for(lambda: len(stack.targets(NAMESPACE, name)) >= 2, timeout=120, what="pods")
            assert stack.operator is not None
            assert stack.operator.process is not None
            operator = stack.operator.process
            started = time.monotonic()
            observer = Observer(api, name, stack.operator, started)
            results: list[loadgen.Result] = []

            def targets() -> list[str]:
                return [f"http://{t}" for t in stack.targets(NAMESPACE, name)]

            player = threading.Thread(
                target=lambda: results.extend(
                    asyncio.run(loadgen.run(day_trace(args.minutes), targets, model, stream=False))
                ),
                daemon=True,
            )
            player.start()
            faults = Faults(plane, stack, api, name).all()
            injected: list[tuple[float, float, str]] = []
            done = threading.Event()

            def sample_until_done() -> None:
                while not done.wait(SAMPLE_SECONDS):
                    observer.sample()

            sampler = threading.Thread(target=sample_until_done, daemon=True)
            sampler.start()
            next_fault = length * 0.25
            while player.is_alive() and operator.poll() is None:
                now = time.monotonic() - started
                if next_fault <= now < length * 0.95:
                    label, inject = faults[len(injected) % len(faults)]
                    print(f"{now:7.0f}s  fault: {label}", flush=True)
                    inject()
                    injected.append((now, time.monotonic() - started, label))
                    next_fault = time.monotonic() - started + args.fault_every
                player.join(timeout=1.0)
            done.set()
            sampler.join()
            observer.sample()
            alive = operator.poll() is None
            log = stack.operator.output()
            counters = operator_counters(stack.operator.metrics() if alive else "")
            stored = k8s.CustomObjectsApi(api).get_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, PLURAL, name
            )
    return report(args, length, cooldown, observer, results, injected, alive, log, stored, counters)


def report(
    args: argparse.Namespace,
    length: float,
    cooldown: float,
    observer: Observer,
    results: list[loadgen.Result],
    injected: list[tuple[float, float, str]],
    alive: bool,
    log: str,
    stored: Any,
    counters: dict[str, float],
) -> int:
    warm = median_between(observer.rss, length * 0.25, length * 0.35)
    end = median_between(observer.rss, length * 0.9, length)
    peak = max(v for _, v in observer.rss)
    growth = end / warm - 1
    flips = observer.flips()
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(flips)]
    shortest = min(gaps) if gaps else float("inf")
    errors = sum(1 for r in results if r.error)
    print(f"\nsoak: a {args.minutes:g}-minute day, a fault every {args.fault_every:g} s\n")
    print("| fault | from (s) | to (s) | speculation changes during it or 10 s after |")
    print("|---|---|---|---|")
    for start, stop, label in injected:
        during = sum(1 for at, _ in flips if start <= at <= stop + 10)
        print(f"| {label} | {start:.0f} | {stop:.0f} | {during} |")
    print("\n| speculation change at (s) | to |")
    print("|---|---|")
    for at, on in flips:
        print(f"| {at:.0f} | {'on' if on else 'off'} |")
    print("\n| decision in status (UTC) | action | reason |")
    print("|---|---|---|")
    for decision in stored["status"].get("decisions", []):
        print(f"| {decision['time']} | {decision['action']} | {decision['reason']} |")
    checks = [
        ("operator still running", "yes" if alive else "no", "yes", alive),
        ("RSS after warm-up (MB)", f"{warm:.0f}", "", True),
        ("RSS at the end (MB)", f"{end:.0f}", "", True),
        ("RSS peak (MB)", f"{peak:.0f}", "", True),
        ("RSS growth", f"{growth:+.1%}", f"<= {MEMORY_LIMIT:.0%}", growth <= MEMORY_LIMIT),
        ("speculation changes", str(len(flips)), "", True),
        ("shortest gap between changes (s)", f"{shortest:.0f}", f">= {cooldown:.0f}",
         shortest >= cooldown),
        ("requests (errors)", f"{len(results)} ({errors})", "", True),
        ("decisions kept in status", str(len(stored["status"].get("decisions", []))), "", True),
        ("tracebacks in the operator log", str(log.count("Traceback")), "", True),
        ("status writes redone after a 409 (reconcile / control)",
         f"{counters.get('reconcile', 0):.0f} / {counters.get('control', 0):.0f}", "", True),
        ("control checks held", f"{counters.get('hold', 0):.0f}", "", True),
    ]  # fmt: skip
    print("\n| figure | value | target | met |")
    print("|---|---|---|---|")
    for figure, value, target, met in checks:
        print(f"| {figure} | {value} | {target} | {'yes' if met else 'NO'} |")
    if args.plot:
        plot(args.plot, observer, injected, length)
    return 0 if all(met for *_, met in checks) else 1


def plot(
    path: Path, observer: Observer, injected: list[tuple[float, float, str]], length: float
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (load_ax, rss_ax) = plt.subplots(2, 1, figsize=(10, 5), sharex=True)
    hour = length / 24
    times, qps, at = [], [], 0.0
    for hours, start, end in DAY:
        times += [at, at + hours * hour]
        qps += [start, end]
        at += hours * hour
    load_ax.plot(times, qps, color="tab:blue", label="offered QPS")
    on = [(t, 1 if s else 0) for t, s in observer.speculating]
    spec_ax = load_ax.twinx()
    spec_ax.step([t for t, _ in on], [v for _, v in on], where="post", color="tab:green")
    spec_ax.set_yticks([0, 1], ["off", "on"])
    spec_ax.set_ylabel("speculation")
    load_ax.set_ylabel("QPS")
    rss_ax.plot([t for t, _ in observer.rss], [v for _, v in observer.rss], color="tab:red")
    rss_ax.set_ylabel("operator RSS (MB)")
    rss_ax.set_xlabel("seconds")
    for ax in (load_ax, rss_ax):
        for start, stop, _ in injected:
            ax.axvspan(start, stop, color="grey", alpha=0.25)
    load_ax.set_title("soak: a compressed day; grey spans are injected faults")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"\nplot: {path}")


if __name__ == "__main__":
    sys.exit(main())
