"""Rollouts fit for GPU clusters: the strategy, the progress deadline, the model cache, and what
the plan says a change costs."""

from __future__ import annotations

from typing import Any

import pytest

from specpilot.api.pod import MODEL_CACHE_MOUNT
from specpilot.assessment import assess, render
from specpilot.cli import format_rollout
from specpilot.findings import Finding, Severity
from specpilot.planning import rollout
from specpilot.planning.startup import WeightSource, plan_startup
from tests.conftest import manifest

CACHE = {"persistentVolumeClaim": {"claimName": "hf-cache"}}


def deployments(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for o in render(doc) if o["kind"] == "Deployment"]


def findings(doc: dict[str, Any], code: str) -> list[Finding]:
    return [f for f in assess(doc).findings if f.code == code]


@pytest.mark.parametrize(
    ("replicas", "rollout_spec", "surge", "unavailable"),
    [
        (1, None, 0, 1),
        (3, None, 0, 1),
        (None, None, 0, 1),  # an autoscaler's count
        (1, {"surge": "None"}, 0, 1),
        (1, {"surge": "OnePod"}, 1, 0),
        (3, {"surge": "OnePod"}, 1, 0),
    ],
)
def test_the_strategy_never_asks_for_gpus_unless_a_surge_is_allowed(
    replicas: int | None, rollout_spec: dict[str, str] | None, surge: int, unavailable: int
) -> None:
    doc = manifest(replicas=replicas, rollout=rollout_spec)
    (server,) = deployments(doc)
    assert server["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable},
    }


def test_the_control_replicas_deployment_rolls_out_the_same_way() -> None:
    doc = manifest(rollout={"surge": "OnePod"}, policy={"controlReplicas": 1})
    server, baseline = deployments(doc)
    assert baseline["metadata"]["name"].endswith("-baseline")
    assert baseline["spec"]["strategy"] == server["spec"]["strategy"]
    assert baseline["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_the_progress_deadline_is_twice_the_startup_plus_a_margin_and_at_least_600() -> None:
    assert rollout.progress_deadline_seconds(100) == rollout.KUBERNETES_PROGRESS_DEADLINE_S
    assert rollout.progress_deadline_seconds(386.2) == 893  # ceil(2 x 386.2 + 120)
    (server,) = deployments(manifest())
    memory = assess(manifest()).plan
    hub = plan_startup(memory, WeightSource.HUB)
    assert hub is not None
    assert server["spec"]["progressDeadlineSeconds"] == rollout.progress_deadline_seconds(
        hub.seconds
    )
    assert server["spec"]["progressDeadlineSeconds"] > 600  # 89 GB from the Hub: ~386 s


def test_the_baseline_deadline_follows_its_own_weights_without_the_draft() -> None:
    server, baseline = deployments(manifest(policy={"controlReplicas": 1}))
    assert baseline["spec"]["progressDeadlineSeconds"] < server["spec"]["progressDeadlineSeconds"]


def test_the_model_cache_is_mounted_as_hf_home_for_every_pod() -> None:
    for deployment in deployments(manifest(modelCache=CACHE, policy={"controlReplicas": 1})):
        pod = deployment["spec"]["template"]["spec"]
        (vllm,) = pod["containers"]
        assert {"name": "HF_HOME", "value": MODEL_CACHE_MOUNT} in vllm["env"]
        assert {"name": "model-cache", "mountPath": MODEL_CACHE_MOUNT} in vllm["volumeMounts"]
        assert {
            "name": "model-cache",
            "persistentVolumeClaim": {"claimName": "hf-cache"},
        } in pod["volumes"]


def test_without_a_model_cache_nothing_is_mounted_and_hf_home_is_unset() -> None:
    (server,) = deployments(manifest())
    pod = server["spec"]["template"]["spec"]
    assert "model-cache" not in [v["name"] for v in pod["volumes"]]
    assert "HF_HOME" not in [e["name"] for e in pod["containers"][0]["env"]]


def test_the_model_cache_shortens_the_startup_and_the_deadline() -> None:
    (hub,) = deployments(manifest())
    (cached,) = deployments(manifest(modelCache=CACHE))
    hub_deadline = hub["spec"]["progressDeadlineSeconds"]
    assert cached["spec"]["progressDeadlineSeconds"] < hub_deadline


@pytest.mark.parametrize(
    ("pod", "source"),
    [
        ({}, WeightSource.HUB),
        (
            {
                "volumes": [{"name": "hf", "persistentVolumeClaim": {"claimName": "hf"}}],
                "volumeMounts": [{"name": "hf", "mountPath": "/home/vllm/.cache/huggingface"}],
            },
            WeightSource.LOCAL,
        ),
        (
            {
                "volumes": [{"name": "hf", "emptyDir": {}}],
                "volumeMounts": [{"name": "hf", "mountPath": "/home/vllm/.cache/huggingface"}],
            },
            WeightSource.HUB,
        ),
        (
            {
                "env": [{"name": "HF_HOME", "value": "/models"}],
                "volumes": [{"name": "hf", "persistentVolumeClaim": {"claimName": "hf"}}],
                "volumeMounts": [{"name": "hf", "mountPath": "/models"}],
            },
            WeightSource.LOCAL,
        ),
        (
            {
                "volumes": [{"name": "hf", "persistentVolumeClaim": {"claimName": "hf"}}],
                "volumeMounts": [{"name": "hf", "mountPath": "/data"}],
            },
            WeightSource.HUB,
        ),
    ],
    ids=[
        "nothing",
        "own-pvc-at-the-cache",
        "emptydir-at-the-cache",
        "hf-home-on-a-pvc",
        "elsewhere",
    ],
)
def test_the_weights_come_from_disk_only_where_a_volume_outlives_the_pod(
    pod: dict[str, Any], source: WeightSource
) -> None:
    resource = assess(manifest(pod=pod)).resource
    assert resource is not None
    assert rollout.weight_source(resource.spec) is source


def test_a_user_variable_that_moves_the_cache_is_refused_naming_the_field() -> None:
    doc = manifest(modelCache=CACHE, pod={"env": [{"name": "HF_HUB_CACHE", "value": "/x"}]})
    (problem,) = findings(doc, "ModelCacheEnvConflict")
    assert problem.severity is Severity.ERROR
    assert problem.path == "spec.pod.env[0].name"
    assert "remove the variable" in problem.fix
    assert not assess(doc).valid


def test_a_user_mount_or_volume_cannot_take_the_caches_place() -> None:
    doc = manifest(
        modelCache=CACHE,
        pod={
            "volumes": [{"name": "model-cache", "emptyDir": {}}],
            "volumeMounts": [{"name": "model-cache", "mountPath": "/model-cache/"}],
        },
    )
    codes = {f.code: f for f in assess(doc).findings}
    assert codes["ReservedVolumeName"].path == "spec.pod.volumes[0].name"
    assert codes["DuplicateMountPath"].path == "spec.pod.volumeMounts[0].mountPath"
    assert "spec.modelCache" in codes["DuplicateMountPath"].fix


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"rollout": {"surge": "TwoPods"}}, "spec.rollout.surge"),
        ({"rollout": {"maxSurge": 1}}, "spec.rollout.maxSurge"),
        ({"modelCache": {"persistentVolumeClaim": {"claimName": "Bad_Name"}}}, "claimName"),
        ({"modelCache": {}}, "spec.modelCache.persistentVolumeClaim"),
    ],
)
def test_bad_rollout_and_cache_values_are_refused_naming_the_field(
    changes: dict[str, Any], field: str
) -> None:
    result = assess(manifest(**changes))
    assert not result.valid
    assert any(field in f.path for f in result.findings if f.severity is Severity.ERROR)


def test_one_replica_without_a_surge_warns_that_a_change_is_an_outage() -> None:
    (warning,) = findings(manifest(), "RestartIsAnOutage")
    assert warning.severity is Severity.WARNING
    assert warning.path == "spec.rollout.surge"
    assert "outage of about 386s" in warning.message  # 89 GB downloaded, then loaded
    assert "spec.replicas to 2" in warning.fix
    assert "OnePod" in warning.fix
    assert "spec.modelCache shortens it to about 208s" in warning.fix
    (cached,) = findings(manifest(modelCache=CACHE), "RestartIsAnOutage")
    assert "about 208s" in cached.message
    assert "modelCache" not in cached.fix


@pytest.mark.parametrize(
    "changes",
    [
        {"replicas": 2},
        {"rollout": {"surge": "OnePod"}},
        {"policy": {"controlReplicas": 1}},
        {"replicas": 0},
    ],
)
def test_no_outage_warning_where_something_keeps_serving(changes: dict[str, Any]) -> None:
    assert findings(manifest(**changes), "RestartIsAnOutage") == []


def plan_text(doc: dict[str, Any]) -> str:
    result = assess(doc)
    assert result.resource is not None
    assert result.plan is not None
    return format_rollout(result.resource.spec, result.plan)


def test_the_plan_says_the_startup_from_where_and_the_outage() -> None:
    text = plan_text(manifest())
    assert "expected startup:      386s (177s download" in text
    assert "downloaded from the Hugging Face Hub at every start" in text
    assert "with spec.modelCache:  208s" in text
    assert "maxSurge 0, maxUnavailable 1, progressDeadlineSeconds 892" in text
    assert "an OUTAGE of about 386s" in text


def test_the_plan_with_a_cache_names_the_claim_and_the_time_without_it() -> None:
    text = plan_text(manifest(modelCache=CACHE, replicas=3))
    assert "208s" in text
    assert "from the model cache (PVC hf-cache)" in text
    assert "without the cache:     386s" in text
    assert "each of 3 replicas in turn serves nothing for about 208s" in text


def test_the_plan_with_a_surge_says_it_needs_spare_gpus() -> None:
    text = plan_text(manifest(rollout={"surge": "OnePod"}))
    assert "maxSurge 1, maxUnavailable 0" in text
    assert "2 spare H100-80GB GPU(s)" in text
    assert "stays Pending" in text
