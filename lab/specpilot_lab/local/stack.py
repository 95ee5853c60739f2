"""Everything the control loop meets in production, on loopback: a control plane, the pod runner
running simulated vLLM pods, a Prometheus scraping them, and the operator reading it.

The demo and the end-to-end tests both use it; they differ only in what they apply and play.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from specpilot.api.crd import crd_yaml
from specpilot_lab.engine.vllm_cpu import CpuEngine
from specpilot_lab.local.controlplane import ControlPlane
from specpilot_lab.local.operator_process import OperatorProcess
from specpilot_lab.local.prometheus import Prometheus
from specpilot_lab.sim.podrunner import PodRunner

FAST_POLICY = {
    "mode": "auto",
    "interval": "5s",
    "window": "20s",
    "failureLimit": 3,
    "consecutiveSuccessLimit": 3,
    "cooldown": "30s",
}
"""spec.policy sped up for local runs (the demo, the end-to-end tests), so a surge plays out in
minutes; the production defaults are a 30s interval, a 5m window and a 10m cooldown."""

SIMULATED_STARTUP = {"specpilot.io/startup-seconds": "5"}
"""Annotations for a resource served by the pod runner's simulated pods: they start in seconds,
not the minutes the operator estimates from a 70B checkpoint's weights, so the cost of a restart
(docs/policy.md) must not hold the local runs' decisions for minutes."""


def simulated(doc: dict[str, Any]) -> dict[str, Any]:
    """The resource with SIMULATED_STARTUP among its annotations."""
    annotations = doc["metadata"].setdefault("annotations", {}) or {}
    doc["metadata"]["annotations"] = {**annotations, **SIMULATED_STARTUP}
    return doc


PEERING_CRDS = "kopf-peering.yaml"
"""kopf's peering CRDs, shipped with the lab (a copy of crds/kopf-peering.yaml; a test keeps them
equal)."""


def crd_documents() -> list[str]:
    """What `install_crds` applies: the SpeculativeInference CRD as the operator generates it
    (`specpilot crd`) and kopf's peering CRDs; no file of a source checkout is needed."""
    peering = resources.files(__package__ or "specpilot_lab.local") / "assets" / PEERING_CRDS
    return [crd_yaml(), peering.read_text()]


def install_crds(plane: ControlPlane) -> None:
    for document in crd_documents():
        plane.kubectl("apply", "-f", "-", input=document)
    plane.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/speculativeinferences.specpilot.io",
    )


class LocalStack:
    """Pod runner + Prometheus + operator over a running control plane; stops them on exit."""

    def __init__(
        self,
        plane: ControlPlane,
        namespaces: list[str],
        *,
        time_scale: float = 1.0,
        workdir: Path | None = None,
        operator_args: tuple[str, ...] = (),
        engine: CpuEngine | None = None,
        runner_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.plane = plane
        self.runner_options = dict(runner_options or {})
        """More PodRunner options: startup_scale, gpu_pool, deadline_scale (docs/podrunner.md)."""
        self.namespaces = namespaces
        self.time_scale = time_scale
        self.workdir = (workdir or Path(tempfile.mkdtemp(prefix="specpilot-stack-"))).resolve()
        self.sd_file = self.workdir / "targets.json"
        self.operator_args = operator_args
        self.engine = engine
        """With an engine, pods run on the real vLLM CPU engine instead of the simulator."""
        self.runner: PodRunner | None = None
        self._stack = contextlib.ExitStack()
        self.prometheus: Prometheus | None = None
        self.operator: OperatorProcess | None = None

    def __enter__(self) -> LocalStack:
        try:
            self.runner = self._stack.enter_context(
                PodRunner(
                    self.namespaces,
                    time_scale=self.time_scale,
                    sd_file=self.sd_file,
                    log_dir=self.workdir / "pods",
                    kubeconfig=self.plane.kubeconfig,
                    tick_seconds=0.2,
                    engine=self.engine,
                    **self.runner_options,
                )
            )
            self.prometheus = self._stack.enter_context(Prometheus(self.sd_file))
            self.start_operator()
        except BaseException:
            self._stack.close()
            raise
        return self

    def start_operator(self) -> OperatorProcess:
        assert self.prometheus is not None
        namespaces = [arg for ns in self.namespaces for arg in ("-n", ns)]
        self.operator = OperatorProcess(
            self.plane.kubeconfig,
            "--standalone",
            "--prometheus-url",
            self.prometheus.url,
            *namespaces,
            *self.operator_args,
        ).start()
        self._stack.callback(self.operator.stop)
        return self.operator

    def targets(self, namespace: str, name: str) -> list[str]:
        """host:port of every ready replica of a resource (serving and baseline), as its Service
        would route to them."""
        try:
            groups: list[dict[str, Any]] = json.loads(self.sd_file.read_text())
        except (OSError, ValueError):
            return []
        return [
            target
            for group in groups
            if group["labels"].get("namespace") == namespace
            and group["labels"].get("specpilot_io_resource") == name
            for target in group["targets"]
        ]

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
