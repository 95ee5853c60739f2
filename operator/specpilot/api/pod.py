"""What spec.pod may put into the vLLM pods, checked at admission rather than when the Deployment
is applied: Kubernetes' own schemas for its free-form fields, volume names and mount paths that
collide with nothing, and the pod policy of the operator's admin.

PodOverrides cannot express privilege at all: it has no securityContext, hostNetwork, hostPID,
hostIPC, privileged or capabilities (the pod's and the container's security context are
specpilot's, restricted-profile), so such keys are refused as unknown fields.
"""

from __future__ import annotations

import posixpath

from specpilot.api.admin import PodPolicy
from specpilot.api.kubeschema import ROOTS, check
from specpilot.api.models import PodOverrides, SpeculativeInferenceSpec
from specpilot.findings import Finding, error, warning

SHM_MOUNT = "/dev/shm"
HOME = "/home/vllm"
"""A writable HOME for a non-root vLLM: its compile caches and Hugging Face's default cache."""
MODEL_CACHE_MOUNT = "/model-cache"
"""Where spec.modelCache is mounted; HF_HOME points there."""
MODEL_CACHE_ENV = ("HF_HOME", "HF_HUB_CACHE")
"""The variables that move the Hugging Face cache; with spec.modelCache, specpilot's own."""
MANAGED_MOUNTS = {"dshm": SHM_MOUNT, "home": HOME, "model-cache": MODEL_CACHE_MOUNT}
"""The volumes specpilot gives the vLLM pods (model-cache with spec.modelCache), and where the
container mounts them; reserved whether or not the pod has them, so adding a cache later never
collides with a user's volume."""
RESTRICTED_VOLUME_TYPES = frozenset(
    {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
     "projected", "secret"}
)  # fmt: skip
"""The volume types the restricted Pod Security profile allows."""


def pod_findings(spec: SpeculativeInferenceSpec, policy: PodPolicy) -> list[Finding]:
    pod = spec.pod
    return (
        schema_findings(pod)
        + volume_findings(pod, policy)
        + mount_findings(pod)
        + model_cache_findings(spec)
        + admin_rule_findings(spec, policy)
    )


def schema_findings(pod: PodOverrides) -> list[Finding]:
    """Unknown keys and wrong types, as the API server would refuse them in the Deployment."""
    found: list[Finding] = []
    written = pod.model_dump(by_alias=True)
    for field, definition in ROOTS.items():
        value = written[field]
        if isinstance(value, list):
            for i, item in enumerate(value):
                found += check(item, definition, f"spec.pod.{field}[{i}]")
        elif value is not None:
            found += check(value, definition, f"spec.pod.{field}")
    return found


def volume_findings(pod: PodOverrides, policy: PodPolicy) -> list[Finding]:
    found: list[Finding] = []
    seen: set[str] = set()
    for i, volume in enumerate(pod.volumes):
        path = f"spec.pod.volumes[{i}]"
        name = volume.get("name")
        if isinstance(name, str):  # otherwise the schema check names it
            found += _volume_name_findings(name, f"{path}.name", seen)
            seen.add(name)
        kinds = sorted(set(volume) - {"name"} - RESTRICTED_VOLUME_TYPES)
        if kinds == ["hostPath"] and not policy.allow_host_path:
            continue  # refused by the admin's policy (admin_rule_findings); a warning adds nothing
        if kinds:
            found.append(
                warning(
                    "VolumeNotRestricted",
                    path,
                    f"a {kinds[0]} volume is not allowed by the restricted Pod Security "
                    "profile: in a namespace that enforces it, the pods are never created.",
                    "use a persistentVolumeClaim, csi or emptyDir volume instead.",
                )
            )
    return found


def _volume_name_findings(name: str, path: str, seen: set[str]) -> list[Finding]:
    if name in MANAGED_MOUNTS:
        return [
            error(
                "ReservedVolumeName",
                path,
                f"the volume name {name!r} is specpilot's own "
                f"({', '.join(MANAGED_MOUNTS)}); two volumes cannot share a name.",
                "give the volume (and its volumeMounts entry) another name.",
            )
        ]
    if name in seen:
        return [
            error(
                "DuplicateVolumeName",
                path,
                f"another volume is already named {name!r}; the API server refuses the pod.",
                "give each volume its own name.",
            )
        ]
    return []


def mount_findings(pod: PodOverrides) -> list[Finding]:
    """Mounts the API server or the container runtime refuses: a path used twice, or a volume
    that does not exist. Paths are compared normalized (/dev/shm/ is /dev/shm to the runtime)."""
    found: list[Finding] = []
    volumes = {*MANAGED_MOUNTS, *(v["name"] for v in pod.volumes if isinstance(v.get("name"), str))}
    owners = {path: f"specpilot's {name} volume" for name, path in MANAGED_MOUNTS.items()}
    for i, mount in enumerate(pod.volume_mounts):
        path = f"spec.pod.volumeMounts[{i}]"
        target = mount.get("mountPath")
        if isinstance(target, str):
            normalized = posixpath.normpath(target)
            if normalized in owners:
                found.append(
                    error(
                        "DuplicateMountPath",
                        f"{path}.mountPath",
                        f"{target} is already the mount path of {owners[normalized]}; two "
                        "mounts at one path are refused (by the API server, or by the container "
                        "runtime where the path is spelled differently).",
                        _mount_fix(normalized),
                    )
                )
            owners.setdefault(normalized, f"spec.pod.volumeMounts[{i}]")
        if isinstance(mount.get("name"), str) and mount["name"] not in volumes:
            found.append(
                error(
                    "MountWithoutVolume",
                    f"{path}.name",
                    f"no volume is named {mount.get('name')!r}; the API server refuses the pod.",
                    "add the volume to spec.pod.volumes, or correct the name.",
                )
            )
    return found


def model_cache_findings(spec: SpeculativeInferenceSpec) -> list[Finding]:
    """With spec.modelCache, HF_HOME is specpilot's: a user's HF_HOME or HF_HUB_CACHE would
    send the downloads past the cache, silently."""
    if spec.model_cache is None:
        return []
    return [
        error(
            "ModelCacheEnvConflict",
            f"spec.pod.env[{i}].name",
            f"{variable['name']} moves the Hugging Face cache away from spec.modelCache, "
            f"which specpilot mounts at {MODEL_CACHE_MOUNT} as HF_HOME.",
            "remove the variable (the cache's files are in its hub/ folder), or remove "
            "spec.modelCache and mount your own volume there.",
            also=["spec.modelCache"],
        )
        for i, variable in enumerate(spec.pod.env)
        if variable.get("name") in MODEL_CACHE_ENV
    ]


def _mount_fix(mount_path: str) -> str:
    if mount_path == SHM_MOUNT:
        return "mount it elsewhere; set spec.gpus.shmSize to size /dev/shm."
    if mount_path == MODEL_CACHE_MOUNT:
        return "mount it elsewhere; spec.modelCache mounts a model cache there."
    if mount_path == HOME:
        return f"mount it elsewhere, e.g. below {HOME} ({HOME}/.cache/huggingface for a cache)."
    return "give each mount its own path."


def admin_rule_findings(spec: SpeculativeInferenceSpec, policy: PodPolicy) -> list[Finding]:
    """The admin's pod policy (PodPolicy): what a namespace user may not put into GPU pods that
    the operator creates with its own rights."""
    found: list[Finding] = []
    pod = spec.pod
    if not policy.allow_host_path:
        found += [
            error(
                "HostPathRefused",
                f"spec.pod.volumes[{i}].hostPath",
                "the operator's admin refuses hostPath volumes in GPU pods (specpilot run "
                "--pod-allow-host-path / chart podPolicy.allowHostPath).",
                "use a persistentVolumeClaim, csi or emptyDir volume instead.",
            )
            for i, volume in enumerate(pod.volumes)
            if "hostPath" in volume
        ]
    if pod.service_account_name is not None and not policy.allow_service_account:
        found.append(
            error(
                "ServiceAccountRefused",
                "spec.pod.serviceAccountName",
                "the operator's admin refuses other ServiceAccounts for GPU pods (specpilot run "
                "--pod-refuse-service-account / chart podPolicy.allowServiceAccount: false).",
                "remove it: the pods run as the namespace's default ServiceAccount.",
            )
        )
    if not policy.allow_secret_env:
        found += [
            error(
                "SecretRefused",
                path,
                "the operator's admin refuses Secrets in GPU pods (specpilot run "
                "--pod-refuse-secret-env / chart podPolicy.allowSecretEnv: false).",
                "remove it; a model that needs a token can be read from a volume already "
                "holding it (e.g. a persistentVolumeClaim model cache).",
            )
            for path in secret_references(pod)
        ]
    found += _gpu_cap_findings(spec, policy)
    return found


def secret_references(pod: PodOverrides) -> list[str]:
    """Every field that puts a Secret of the namespace into the pods: env valueFrom.secretKeyRef,
    and secret volumes, plain or projected (refusing only the env would leave the volumes as a way
    around the rule). PodOverrides has no envFrom."""
    paths = [
        f"spec.pod.env[{i}].valueFrom.secretKeyRef"
        for i, variable in enumerate(pod.env)
        if isinstance(variable.get("valueFrom"), dict) and "secretKeyRef" in variable["valueFrom"]
    ]
    for i, volume in enumerate(pod.volumes):
        if "secret" in volume:
            paths.append(f"spec.pod.volumes[{i}].secret")
        projected = volume.get("projected")
        sources = projected.get("sources") if isinstance(projected, dict) else None
        for j, source in enumerate(sources if isinstance(sources, list) else []):
            if isinstance(source, dict) and "secret" in source:
                paths.append(f"spec.pod.volumes[{i}].projected.sources[{j}].secret")
    return paths


def _gpu_cap_findings(spec: SpeculativeInferenceSpec, policy: PodPolicy) -> list[Finding]:
    """Replicas (unset: the Deployment's default, 1) plus control replicas, times GPUs per
    replica. An autoscaler that scales an unset count further is bounded by ResourceQuota."""
    cap = policy.max_gpus_per_resource
    replicas = 1 if spec.replicas is None else spec.replicas
    control = spec.policy.control_replicas
    total = (replicas + control) * spec.gpus.count
    if cap is None or total <= cap:
        return []
    counted = f"{replicas} replicas" + (f" + {control} control replicas" if control else "")
    return [
        error(
            "GPUCapExceeded",
            "spec.replicas",
            f"{counted} x {spec.gpus.count} GPUs is {total} GPUs; the operator's admin allows at "
            f"most {cap} per resource (specpilot run --max-gpus-per-resource / chart "
            "podPolicy.maxGPUsPerResource).",
            "lower spec.replicas, spec.policy.controlReplicas or the GPUs per replica, or ask "
            "the admin to raise the cap.",
            also=["spec.gpus.count", "spec.policy.controlReplicas"],
        )
    ]
