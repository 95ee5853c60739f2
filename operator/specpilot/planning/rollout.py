"""How a change of the vLLM pods rolls out on GPUs, and what it costs. Pure.

Kubernetes' default strategy (25% maxSurge, rounded up: one extra pod) asks for a second set of
GPUs that a full GPU cluster does not have: the new pod stays Pending and the old one keeps
serving the old configuration. specpilot therefore sets the strategy itself, from
`spec.rollout.surge`:

- `None` (the default): maxSurge 0, maxUnavailable 1. An old pod stops, its GPUs go to the new
  one. Several replicas restart one at a time; a single replica is an outage for the startup.
- `OnePod`: maxSurge 1, maxUnavailable 0. The new pod starts on spare GPUs and the old one serves
  until it is ready; only for clusters that keep a replica's GPUs free.

`progressDeadlineSeconds` follows the expected startup (planning/startup.py), so a pod loading
70B of weights is not reported as a failed rollout while a stuck one still is.
"""

from __future__ import annotations

import math
import posixpath

from pydantic import BaseModel

from specpilot.api.models import RolloutSurge, SpeculativeInferenceSpec
from specpilot.api.pod import HOME
from specpilot.findings import Finding, warning
from specpilot.planning.memory import MemoryPlan
from specpilot.planning.startup import (
    DEFAULT_STARTUP_S,
    StartupEstimate,
    WeightSource,
    plan_startup,
)

KUBERNETES_PROGRESS_DEADLINE_S = 600
"""Kubernetes' default progressDeadlineSeconds; specpilot never sets less."""
PROGRESS_DEADLINE_MARGIN_S = 120
"""Image pull and scheduling on top of twice the expected startup."""
EPHEMERAL_VOLUME_TYPES = frozenset(
    {"emptyDir", "ephemeral", "configMap", "secret", "projected", "downwardAPI"}
)
"""Volume types whose content does not outlive the pod: no cache across restarts."""


class Strategy(BaseModel):
    """The Deployment's RollingUpdate parameters, as integers (never percentages: 25% of one
    replica rounds up to a whole extra pod)."""

    max_surge: int
    max_unavailable: int


def strategy(spec: SpeculativeInferenceSpec) -> Strategy:
    if spec.rollout.surge is RolloutSurge.ONE_POD:
        return Strategy(max_surge=1, max_unavailable=0)
    return Strategy(max_surge=0, max_unavailable=1)


def progress_deadline_seconds(startup_s: float) -> int:
    """Twice the expected startup plus a margin, never below Kubernetes' default."""
    return max(
        KUBERNETES_PROGRESS_DEADLINE_S, math.ceil(2 * startup_s + PROGRESS_DEADLINE_MARGIN_S)
    )


def weight_source(spec: SpeculativeInferenceSpec) -> WeightSource:
    """Where a new pod finds its weights: on a volume that outlives the pod (spec.modelCache, a
    model path inside the container, or the user's own persistent volume at the Hugging Face
    cache), else downloaded from the Hub into the pod's emptyDir at every start."""
    if spec.model_cache is not None or spec.target.model.startswith("/"):
        return WeightSource.LOCAL
    cache = _hub_cache_dir(spec)
    persistent = [
        volume.get("name")
        for volume in spec.pod.volumes
        if not EPHEMERAL_VOLUME_TYPES & set(volume)
    ]
    for mount in spec.pod.volume_mounts:
        path = mount.get("mountPath")
        if (
            isinstance(path, str)
            and isinstance(mount.get("name"), str)
            and mount["name"] in persistent
        ):
            mounted = posixpath.normpath(path)
            if cache == mounted or cache.startswith(mounted.rstrip("/") + "/"):
                return WeightSource.LOCAL
    return WeightSource.HUB


def _hub_cache_dir(spec: SpeculativeInferenceSpec) -> str:
    """huggingface_hub's download folder for this pod: HF_HUB_CACHE, else HF_HOME/hub, else
    $HOME/.cache/huggingface/hub (HOME is specpilot's emptyDir unless spec.pod.env sets it)."""
    env = {
        variable.get("name"): variable.get("value")
        for variable in spec.pod.env
        if isinstance(variable.get("value"), str)
    }
    if env.get("HF_HUB_CACHE"):
        return posixpath.normpath(str(env["HF_HUB_CACHE"]))
    if env.get("HF_HOME"):
        return posixpath.join(posixpath.normpath(str(env["HF_HOME"])), "hub")
    home = str(env.get("HOME") or HOME)
    return posixpath.join(posixpath.normpath(home), ".cache", "huggingface", "hub")


def expected_startup(
    spec: SpeculativeInferenceSpec, memory: MemoryPlan | None
) -> StartupEstimate | None:
    """The startup of one pod of this spec, from where its weights come; None when the weights
    are unknown."""
    return plan_startup(memory, weight_source(spec))


def startup_seconds(spec: SpeculativeInferenceSpec, memory: MemoryPlan | None) -> float:
    estimate = expected_startup(spec, memory)
    return DEFAULT_STARTUP_S if estimate is None else estimate.seconds


def restart_is_an_outage(spec: SpeculativeInferenceSpec) -> bool:
    """A single serving replica replaced without a surge, and no control replica to serve
    meanwhile: nothing answers until the new pod is up."""
    return (
        spec.replicas == 1
        and spec.rollout.surge is RolloutSurge.NONE
        and spec.policy.control_replicas == 0
    )


def rollout_findings(spec: SpeculativeInferenceSpec, memory: MemoryPlan | None) -> list[Finding]:
    if not restart_is_an_outage(spec):
        return []
    estimate = expected_startup(spec, memory)
    seconds = (
        f"about {estimate.describe()}"
        if estimate is not None
        else f"about {DEFAULT_STARTUP_S:.0f}s (the weights are unknown; a default)"
    )
    cached = (
        plan_startup(memory)
        if estimate is not None and estimate.source is WeightSource.HUB
        else None
    )
    cache_fix = f"; spec.modelCache shortens it to about {cached.seconds:.0f}s" if cached else ""
    return [
        warning(
            "RestartIsAnOutage",
            "spec.rollout.surge",
            f"with 1 replica and no surge, every change of the pods (yours, or the control "
            f"loop's speculation off or on, or a quantization step) stops the only pod before "
            f"its replacement starts: an outage of {seconds}.",
            f"set spec.replicas to 2 or more (they restart one at a time), or spec.rollout.surge "
            f"to OnePod where the cluster keeps {spec.gpus.count} spare {spec.gpus.type} GPU(s) "
            f"for the new pod{cache_fix}.",
        )
    ]
