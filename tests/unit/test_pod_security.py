"""The vLLM pods meet the restricted Pod Security profile, and what a user adds is checked."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from specpilot.api.admin import AdminPolicy, PodPolicy
from specpilot.api.pod import MANAGED_MOUNTS
from specpilot.assessment import assess, render
from tests.conftest import manifest
from tests.pod_security import restricted_violations

EXAMPLES = [
    path
    for path in sorted((Path(__file__).parents[2] / "manifests" / "examples").glob("*.yaml"))
    if path.stem != "does-not-fit"  # refused by the planner: nothing renders
]


def pods(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        o["spec"]["template"] for o in render(doc, speculation=True) if o["kind"] == "Deployment"
    ]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_renders_restricted_pods(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    doc.setdefault("spec", {}).setdefault("policy", {})["controlReplicas"] = 1  # and a baseline
    for template in pods(doc):
        assert restricted_violations(template["spec"], template["metadata"]["annotations"]) == []


def test_the_vllm_container_runs_as_a_non_root_user_with_a_writable_home() -> None:
    (template,) = pods(manifest(pod={"runAsUser": 2000}))
    spec = template["spec"]
    context = spec["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"]) == (2000,) * 3
    assert context["fsGroupChangePolicy"] == "OnRootMismatch"  # no chown of a model cache
    (container,) = spec["containers"]
    assert {"name": "HOME", "value": "/home/vllm"} in container["env"]
    assert {"name": "home", "mountPath": "/home/vllm"} in container["volumeMounts"]
    assert isinstance(container["command"], list)
    assert isinstance(container["args"], list)


def test_a_users_home_replaces_the_default_one() -> None:
    (template,) = pods(manifest(pod={"env": [{"name": "HOME", "value": "/cache"}]}))
    env = template["spec"]["containers"][0]["env"]
    assert [e for e in env if e["name"] == "HOME"] == [{"name": "HOME", "value": "/cache"}]


def test_root_is_refused() -> None:
    result = assess(manifest(pod={"runAsUser": 0}))
    assert not result.valid
    assert any(f.path == "spec.pod.runAsUser" for f in result.findings)


@pytest.mark.parametrize(
    ("source", "admin"),
    [
        ({"nfs": {"server": "nfs.example", "path": "/m"}}, AdminPolicy()),
        ({"hostPath": {"path": "/m"}}, AdminPolicy(pod=PodPolicy(allow_host_path=True))),
    ],
    ids=["nfs", "hostPath-allowed-by-the-admin"],
)
def test_a_volume_the_profile_forbids_is_a_warning_naming_it(
    source: dict[str, Any], admin: AdminPolicy
) -> None:
    doc = manifest(pod={"volumes": [{"name": "models", **source}]})
    result = assess(doc, admin)
    assert result.valid, result.findings
    (finding,) = [f for f in result.findings if f.code == "VolumeNotRestricted"]
    assert finding.path == "spec.pod.volumes[0]"
    assert next(iter(source)) in finding.message
    assert "persistentVolumeClaim" in finding.fix


def test_a_volume_named_like_specpilots_own_is_refused() -> None:
    cache = {"persistentVolumeClaim": {"claimName": "hf-cache"}}
    (template,) = pods(manifest(modelCache=cache))
    assert {v["name"] for v in template["spec"]["volumes"]} == set(MANAGED_MOUNTS)
    mounts = template["spec"]["containers"][0]["volumeMounts"]
    assert {m["name"]: m["mountPath"] for m in mounts} == MANAGED_MOUNTS
    for name in MANAGED_MOUNTS:
        result = assess(manifest(pod={"volumes": [{"name": name, "emptyDir": {}}]}))
        assert not result.valid
        assert any(f.code == "ReservedVolumeName" for f in result.findings)


def _break(path: str, value: Any) -> dict[str, Any]:
    (template,) = pods(manifest())
    spec = copy.deepcopy(template["spec"])
    target: Any = spec
    *parents, last = path.split(".")
    for part in parents:
        target = target[int(part)] if part.isdigit() else target.setdefault(part, {})
    target[last] = value
    return spec


@pytest.mark.parametrize(
    ("path", "value", "control"),
    [
        ("hostNetwork", True, "host namespaces"),
        ("containers.0.securityContext.privileged", True, "privileged"),
        ("containers.0.securityContext.allowPrivilegeEscalation", True, "privilege escalation"),
        ("securityContext.runAsNonRoot", False, "runAsNonRoot"),
        ("securityContext.runAsUser", 0, "runAsUser 0"),
        ("securityContext.seccompProfile", {"type": "Unconfined"}, "seccomp"),
        ("containers.0.securityContext.capabilities", {"drop": ["NET_RAW"]}, "drop ALL"),
        ("containers.0.securityContext.capabilities.add", ["SYS_ADMIN"], "capabilities added"),
        ("volumes", [{"name": "m", "hostPath": {"path": "/m"}}], "hostPath"),
        ("containers.0.ports", [{"containerPort": 8000, "hostPort": 8000}], "host ports"),
    ],
)
def test_the_check_catches_each_control(path: str, value: Any, control: str) -> None:
    violations = restricted_violations(_break(path, value))
    assert any(control in v for v in violations), violations
