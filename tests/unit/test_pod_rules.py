"""spec.pod: Kubernetes' own schemas for its free-form fields, collisions with specpilot's volumes
and mounts, and the admin's pod policy."""

from __future__ import annotations

from typing import Any

import pytest

from specpilot.api.admin import AdminPolicy, PodPolicy
from specpilot.api.pod import HOME, SHM_MOUNT
from specpilot.assessment import assess, render
from specpilot.findings import Finding, Severity
from tests.conftest import manifest

CACHE = {"name": "cache", "persistentVolumeClaim": {"claimName": "hf-cache"}}


def errors(pod: dict[str, Any], admin: AdminPolicy | None = None, **spec: Any) -> list[Finding]:
    result = assess(manifest(pod=pod, **spec), admin)
    return [f for f in result.findings if f.severity is Severity.ERROR]


def only(pod: dict[str, Any], admin: AdminPolicy | None = None, **spec: Any) -> Finding:
    (finding,) = errors(pod, admin, **spec)
    return finding


def test_a_realistic_pod_override_passes_and_renders() -> None:
    pod = {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h100"]}]}
                    ]
                }
            },
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 50,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": {"app": "vllm"}},
                        },
                    }
                ]
            },
        },
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "env": [
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        ],
        "volumes": [CACHE],
        "volumeMounts": [{"name": "cache", "mountPath": f"{HOME}/.cache/huggingface"}],
        "resources": {"requests": {"cpu": "8", "memory": "64Gi"}, "limits": {"memory": 96e9}},
        "imagePullSecrets": [{"name": "registry"}],
        "serviceAccountName": "vllm",
    }
    assert errors(pod) == []
    assert render(manifest(pod=pod))


@pytest.mark.parametrize(
    ("pod", "path", "code", "fix"),
    [
        (
            {
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [{"matchExpresions": []}]
                        }
                    }
                }
            },
            "spec.pod.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
            ".nodeSelectorTerms[0].matchExpresions",
            "UnknownField",
            "did you mean matchExpressions? Otherwise remove it.",
        ),
        (
            {"affinity": {"nodeAffinity": []}},
            "spec.pod.affinity.nodeAffinity",
            "InvalidField",
            "give a mapping.",
        ),
        (
            {"tolerations": [{"key": "gpu", "tolerationSeconds": "60"}]},
            "spec.pod.tolerations[0].tolerationSeconds",
            "InvalidField",
            "give a whole number.",
        ),
        (
            {"env": [{"value": "1"}]},
            "spec.pod.env[0].name",
            "InvalidField",
            "add this required field.",
        ),
        (
            {
                "volumes": [
                    {"name": "cache", "persistentVolumeClaim": {"claimName": "x", "readonly": True}}
                ]
            },
            "spec.pod.volumes[0].persistentVolumeClaim.readonly",
            "UnknownField",
            "did you mean readOnly? Otherwise remove it.",
        ),
        (
            {
                "volumes": [CACHE],
                "volumeMounts": [{"name": "cache", "mountPath": "/c", "readOnly": "yes"}],
            },
            "spec.pod.volumeMounts[0].readOnly",
            "InvalidField",
            "give true or false.",
        ),
        (
            {"resources": {"limits": {"cpu": True}}},
            "spec.pod.resources.limits.cpu",
            "InvalidField",
            "give a quantity such as 500m, 2Gi or 4.",
        ),
        (
            {"resources": {"limit": {"cpu": "1"}}},
            "spec.pod.resources.limit",
            "UnknownField",
            "did you mean limits? Otherwise remove it.",
        ),
        (
            {"imagePullSecrets": [{"nam": "registry"}]},
            "spec.pod.imagePullSecrets[0].nam",
            "UnknownField",
            "did you mean name? Otherwise remove it.",
        ),
    ],
    ids=[
        "affinity-typo",
        "affinity-wrong-type",
        "toleration-seconds-a-string",
        "env-without-name",
        "volume-source-typo",
        "mount-read-only-a-string",
        "quantity-a-boolean",
        "resources-typo",
        "pull-secret-typo",
    ],
)
def test_free_form_fields_meet_kubernetes_schemas(
    pod: dict[str, Any], path: str, code: str, fix: str
) -> None:
    finding = only(pod)
    assert (finding.path, finding.code, finding.fix) == (path, code, fix)


@pytest.mark.parametrize("mount_path", [SHM_MOUNT, SHM_MOUNT + "/", HOME, "/home//vllm"])
def test_a_mount_at_specpilots_own_paths_is_refused(mount_path: str) -> None:
    finding = only(
        {"volumes": [CACHE], "volumeMounts": [{"name": "cache", "mountPath": mount_path}]}
    )
    assert (finding.code, finding.path) == (
        "DuplicateMountPath",
        "spec.pod.volumeMounts[0].mountPath",
    )
    assert "specpilot's" in finding.message
    assert finding.fix.startswith("mount it elsewhere")


def test_a_mount_below_home_or_of_specpilots_home_volume_elsewhere_is_fine() -> None:
    mounts = [
        {"name": "cache", "mountPath": f"{HOME}/.cache"},
        {"name": "home", "mountPath": "/scratch"},
    ]
    assert errors({"volumes": [CACHE], "volumeMounts": mounts}) == []


def test_two_mounts_at_one_path_are_refused() -> None:
    mounts = [{"name": "cache", "mountPath": "/models"}, {"name": "cache", "mountPath": "/models"}]
    finding = only({"volumes": [CACHE], "volumeMounts": mounts})
    assert (finding.code, finding.path) == (
        "DuplicateMountPath",
        "spec.pod.volumeMounts[1].mountPath",
    )
    assert "spec.pod.volumeMounts[0]" in finding.message


def test_two_volumes_with_one_name_are_refused() -> None:
    volumes = [CACHE, {"name": "cache", "emptyDir": {}}]
    finding = only({"volumes": volumes})
    assert (finding.code, finding.path) == ("DuplicateVolumeName", "spec.pod.volumes[1].name")


def test_a_mount_of_a_volume_that_does_not_exist_is_refused() -> None:
    finding = only({"volumeMounts": [{"name": "cahce", "mountPath": "/models"}]})
    assert (finding.code, finding.path) == ("MountWithoutVolume", "spec.pod.volumeMounts[0].name")


def test_host_path_is_refused_by_default_naming_the_admins_switch() -> None:
    volumes = [{"name": "models", "hostPath": {"path": "/models"}}]
    finding = only({"volumes": volumes})
    assert (finding.code, finding.path) == ("HostPathRefused", "spec.pod.volumes[0].hostPath")
    assert "--pod-allow-host-path" in finding.message
    assert "podPolicy.allowHostPath" in finding.message
    allowed = AdminPolicy(pod=PodPolicy(allow_host_path=True))
    assert errors({"volumes": volumes}, allowed) == []


def test_a_service_account_is_refused_only_when_the_admin_says_so() -> None:
    pod = {"serviceAccountName": "cluster-admin-ish"}
    assert errors(pod) == []
    finding = only(pod, AdminPolicy(pod=PodPolicy(allow_service_account=False)))
    assert (finding.code, finding.path) == ("ServiceAccountRefused", "spec.pod.serviceAccountName")
    assert "--pod-refuse-service-account" in finding.message
    assert "podPolicy.allowServiceAccount" in finding.message


def test_secrets_are_refused_only_when_the_admin_says_so_env_and_volumes_alike() -> None:
    pod = {
        "env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "t"}}}],
        "volumes": [
            {"name": "token", "secret": {"secretName": "hf"}},
            {
                "name": "mixed",
                "projected": {
                    "sources": [{"configMap": {"name": "c"}}, {"secret": {"name": "hf"}}]
                },
            },
        ],
    }
    assert errors(pod) == []
    refused = errors(pod, AdminPolicy(pod=PodPolicy(allow_secret_env=False)))
    assert {(f.code, f.path) for f in refused} == {
        ("SecretRefused", "spec.pod.env[0].valueFrom.secretKeyRef"),
        ("SecretRefused", "spec.pod.volumes[0].secret"),
        ("SecretRefused", "spec.pod.volumes[1].projected.sources[1].secret"),
    }
    for finding in refused:
        assert "--pod-refuse-secret-env" in finding.message
        assert "podPolicy.allowSecretEnv" in finding.message


@pytest.mark.parametrize(
    "key",
    [
        "envFrom",
        "securityContext",
        "hostNetwork",
        "hostPID",
        "hostIPC",
        "privileged",
        "capabilities",
    ],
)
def test_pod_overrides_cannot_express_privilege_or_env_from(key: str) -> None:
    finding = only({key: True})
    assert (finding.code, finding.path) == ("UnknownField", f"spec.pod.{key}")


@pytest.mark.parametrize(
    ("spec", "total"),
    [
        ({"replicas": 4}, 8),
        ({"replicas": 3, "policy": {"controlReplicas": 1}}, 8),
        ({"replicas": 0, "policy": {"controlReplicas": 4}}, 8),
    ],
)
def test_gpus_up_to_the_cap_pass(spec: dict[str, Any], total: int) -> None:
    """The base manifest runs 2 GPUs per replica."""
    assert total == 8
    assert errors({}, AdminPolicy(pod=PodPolicy(max_gpus_per_resource=8)), **spec) == []


@pytest.mark.parametrize(
    ("spec", "counted"),
    [
        ({"replicas": 5}, "5 replicas x 2 GPUs is 10 GPUs"),
        (
            {"replicas": 4, "policy": {"controlReplicas": 1}},
            "4 replicas + 1 control replicas x 2 GPUs is 10 GPUs",
        ),
    ],
)
def test_gpus_above_the_cap_are_refused(spec: dict[str, Any], counted: str) -> None:
    finding = only({}, AdminPolicy(pod=PodPolicy(max_gpus_per_resource=8)), **spec)
    assert (finding.code, finding.path) == ("GPUCapExceeded", "spec.replicas")
    assert counted in finding.message
    assert "--max-gpus-per-resource" in finding.message
    assert "podPolicy.maxGPUsPerResource" in finding.message


def test_unset_replicas_count_as_the_deployments_default_of_one() -> None:
    capped = AdminPolicy(pod=PodPolicy(max_gpus_per_resource=2))
    assert errors({}, capped, replicas=None) == []
    finding = only({}, AdminPolicy(pod=PodPolicy(max_gpus_per_resource=1)), replicas=None)
    assert "1 replicas x 2 GPUs is 2 GPUs" in finding.message


def test_names_that_are_not_strings_are_named_by_the_schema_check_without_a_crash() -> None:
    pod = {
        "volumes": [{"name": ["a"], "emptyDir": {}}],
        "volumeMounts": [{"name": {}, "mountPath": "/m"}],
    }
    assert {(f.code, f.path) for f in errors(pod)} == {
        ("InvalidField", "spec.pod.volumes[0].name"),
        ("InvalidField", "spec.pod.volumeMounts[0].name"),
    }
