"""Kubernetes objects for a resource: vLLM Deployments, the Service and an optional PodMonitor.

Pure: the same resource and version always give the same objects. Owner references are added by
the operator when it applies them, since only the live object has a uid.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import cache
from typing import Any, Literal

import yaml
from jinja2 import Environment, PackageLoader, StrictUndefined
from packaging.version import Version

from specpilot.api.models import SpeculativeInference, SpeculativeInferenceSpec
from specpilot.api.pod import HOME, MODEL_CACHE_MOUNT, SHM_MOUNT
from specpilot.api.validation import BASELINE_SUFFIX
from specpilot.planning.checkpoint import Checkpoints
from specpilot.planning.memory import plan
from specpilot.planning.rollout import progress_deadline_seconds, startup_seconds, strategy
from specpilot.rendering.args import COMMAND, is_speculating, server_args

Manifest = dict[str, Any]
Role = Literal["server", "baseline"]

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_RESOURCE = "specpilot.io/resource"
"""Ties pods to their SpeculativeInference; Prometheus queries group by it."""
LABEL_ROLE = "specpilot.io/role"
LABEL_SPECULATION = "specpilot.io/speculation"
ANNOTATION_VLLM_VERSION = "specpilot.io/vllm-version"
ANNOTATION_GPU_TYPE = "specpilot.io/gpu-type"
ANNOTATION_TARGET_QUANTIZATION = "specpilot.io/target-quantization"
ANNOTATION_TEMPLATE_DIGEST = "specpilot.io/pod-template-digest"
"""On a Deployment: a digest of the pod template specpilot applied. The API server fills in
defaults, so the live template cannot be compared with a rendered one; this can."""
FIELD_MANAGER = "specpilot"


_SURROGATE_PAIR = re.compile(r"(?<!\\)((?:\\\\)*)\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})")


YAML_SIMPLE_KEY_LIMIT = 1024
"""YAML reads a mapping key without the explicit `? ` indicator only up to this length."""


def yaml_scalar(value: Any) -> str:
    """JSON text that YAML reads back exactly: ASCII only, with astral characters as \\U escapes
    (JSON writes them as surrogate pairs, which YAML decodes into two broken characters), and
    explicit `? ` keys where a key is too long for YAML's implicit ones."""
    if isinstance(value, dict):
        entries = []
        for key, item in value.items():
            text = yaml_scalar(key if isinstance(key, str) else json.dumps(key))
            explicit = "? " if len(text) >= YAML_SIMPLE_KEY_LIMIT - 2 else ""
            entries.append(f"{explicit}{text}: {yaml_scalar(item)}")
        return "{" + ", ".join(entries) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(yaml_scalar(item) for item in value) + "]"

    def astral(match: re.Match[str]) -> str:
        high, low = int(match.group(2), 16), int(match.group(3), 16)
        code_point = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
        return f"{match.group(1)}\\U{code_point:08x}"

    return _SURROGATE_PAIR.sub(astral, json.dumps(value, ensure_ascii=True))


@cache
def _templates() -> Environment:
    env = Environment(
        loader=PackageLoader("specpilot", "rendering/templates"),
        undefined=StrictUndefined,
        autoescape=False,  # YAML, not HTML; every value is encoded by the tojson filter
        keep_trailing_newline=True,
    )
    env.filters["tojson"] = yaml_scalar
    return env


def _render(template: str, **values: Any) -> Manifest:
    text = _templates().get_template(template).render(**values)
    manifest: Manifest = yaml.safe_load(text)
    return manifest


def without_speculation(spec: SpeculativeInferenceSpec) -> SpeculativeInferenceSpec:
    """The same resource serving without speculation: the control loop's 'off' and baselines."""
    return spec.model_copy(update={"speculation": None})


def deployment_name(resource_name: str, role: Role) -> str:
    return resource_name if role == "server" else resource_name + BASELINE_SUFFIX


def common_labels(resource_name: str) -> dict[str, str]:
    return {
        LABEL_NAME: "vllm",
        LABEL_INSTANCE: resource_name,
        LABEL_MANAGED_BY: "specpilot",
        LABEL_RESOURCE: resource_name,
    }


def deployment(
    resource: SpeculativeInference,
    spec: SpeculativeInferenceSpec,
    version: Version,
    role: Role = "server",
    replicas: int | None = None,
    checkpoints: Checkpoints | None = None,
) -> Manifest:
    """One Deployment running `spec` (pass `without_speculation(...)` for the off variant).

    Its rollout never asks for GPUs the spec did not grant (planning/rollout.py), and its
    progress deadline follows the startup of this configuration's weights."""
    name = resource.metadata.name
    pod = spec.pod
    speculation = "on" if is_speculating(spec) else "off"
    selector = {LABEL_RESOURCE: name, LABEL_ROLE: role}
    labels = {**common_labels(name), LABEL_COMPONENT: role, **selector}
    gpu_resource = spec.gpus.resource_name
    users_home = any(variable.get("name") == "HOME" for variable in pod.env)
    resources = dict(pod.resources or {})
    for section in ("limits", "requests"):
        # Quantities are strings: server-side apply rejects a bare number for them.
        resources[section] = {**resources.get(section, {}), gpu_resource: str(spec.gpus.count)}
    env = pod.env if users_home else [{"name": "HOME", "value": HOME}, *pod.env]
    volume_mounts = [
        {"name": "dshm", "mountPath": SHM_MOUNT},
        {"name": "home", "mountPath": HOME},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.gpus.shm_size}},
        {"name": "home", "emptyDir": {}},
    ]
    if spec.model_cache is not None:
        env = [{"name": "HF_HOME", "value": MODEL_CACHE_MOUNT}, *env]
        volume_mounts.append({"name": "model-cache", "mountPath": MODEL_CACHE_MOUNT})
        claim = spec.model_cache.persistent_volume_claim.claim_name
        volumes.append({"name": "model-cache", "persistentVolumeClaim": {"claimName": claim}})
    rollout = strategy(spec)
    startup_s = startup_seconds(spec, plan(spec, version, checkpoints))
    rendered = _render(
        "deployment.yaml.j2",
        name=deployment_name(name, role),
        namespace=resource.metadata.namespace or "default",
        labels=labels,
        replicas=replicas,
        max_surge=rollout.max_surge,
        max_unavailable=rollout.max_unavailable,
        progress_deadline_seconds=progress_deadline_seconds(startup_s),
        selector=selector,
        pod_labels={**pod.labels, **labels, LABEL_SPECULATION: speculation},
        pod_annotations={
            **pod.annotations,
            ANNOTATION_VLLM_VERSION: str(version),
            ANNOTATION_GPU_TYPE: spec.gpus.type,
            ANNOTATION_TARGET_QUANTIZATION: spec.target.quantization.value,
        },
        pod=pod,
        image=spec.vllm.image,
        command=COMMAND,
        args=server_args(spec, version, checkpoints),
        port=spec.vllm.port,
        resources=resources,
        env=env,
        volume_mounts=[*volume_mounts, *pod.volume_mounts],
        volumes=[*volumes, *pod.volumes],
    )
    rendered["metadata"]["annotations"] = {
        ANNOTATION_TEMPLATE_DIGEST: template_digest(rendered["spec"]["template"])
    }
    return rendered


def template_digest(template: Manifest) -> str:
    canonical = json.dumps(template, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _for_resource(template: str, resource: SpeculativeInference, **values: Any) -> Manifest:
    """An object named after the resource that selects all of its pods."""
    name = resource.metadata.name
    return _render(
        template,
        name=name,
        namespace=resource.metadata.namespace or "default",
        labels=common_labels(name),
        selector={LABEL_RESOURCE: name},
        **values,
    )


def service(resource: SpeculativeInference) -> Manifest:
    return _for_resource("service.yaml.j2", resource, port=resource.spec.vllm.port)


def pod_monitor(resource: SpeculativeInference) -> Manifest:
    return _for_resource(
        "podmonitor.yaml.j2",
        resource,
        interval=resource.spec.monitoring.scrape_interval,
        target_labels=[LABEL_RESOURCE, LABEL_ROLE, LABEL_SPECULATION],
    )


def manifests(
    resource: SpeculativeInference,
    version: Version,
    speculation: bool = True,
    checkpoints: Checkpoints | None = None,
    baseline: SpeculativeInferenceSpec | None = None,
) -> list[Manifest]:
    """Everything the operator applies for a valid resource, in apply order.

    `checkpoints`: the checkpoint facts the resource was assessed with (Assessment.checkpoints).
    `baseline`: the spec whose target the control replicas run without speculation, when it is
    not `resource.spec`: the user's, while the server runs a quantization ladder step (the step
    is judged against the user's own choice, docs/policy.md). It was assessed already, so its
    plan fits its GPUs.
    """
    spec = resource.spec if speculation else without_speculation(resource.spec)
    objects = [deployment(resource, spec, version, "server", spec.replicas, checkpoints)]
    control = spec.policy.control_replicas
    if control > 0:
        baseline_spec = without_speculation(baseline or spec)
        objects.append(
            deployment(resource, baseline_spec, version, "baseline", control, checkpoints)
        )
    objects.append(service(resource))
    if spec.monitoring.pod_monitor:
        objects.append(pod_monitor(resource))
    return objects
