"""The pure reconcile core: objects, conditions with observedGeneration, and transition events."""

from __future__ import annotations

import copy
import datetime
from typing import Any

from specpilot import reconcile
from specpilot.api.models import PolicyState, SpeculativeInferenceStatus
from specpilot.reconcile import Observed
from tests.conftest import manifest

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
LATER = datetime.datetime(2026, 1, 1, 0, 5, 0, 250_000, tzinfo=datetime.UTC)
"""An operator's clock has fractions of a second; the times in status have whole seconds."""
NOW_TEXT, LATER_TEXT = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def body(**spec: Any) -> dict[str, Any]:
    doc = manifest(**spec)
    doc["metadata"].update(uid="u-1", generation=3, resourceVersion="10")
    return doc


def ready_deployment(obj: dict[str, Any], available: int = 1) -> dict[str, Any]:
    applied = copy.deepcopy(obj)
    applied["metadata"]["generation"] = 1
    applied["status"] = {
        "observedGeneration": 1,
        "availableReplicas": available,
        "updatedReplicas": available,
    }
    return applied


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_valid_resource_renders_objects_and_reports_progress() -> None:
    b = body()
    wanted = reconcile.desired(b)
    assert [o["kind"] for o in wanted.objects] == ["Deployment", "Service"]
    status, events = reconcile.status_after_apply(
        b, wanted, Observed(deployments=[wanted.objects[0]]), NOW
    )
    c = conditions(status)
    assert status["phase"] == "Progressing"
    assert status["observedGeneration"] == 3
    assert all(cond["observedGeneration"] == 3 for cond in status["conditions"])
    assert c["Planned"]["status"] == "True"
    assert c["Planned"]["reason"] == "PlanFits"
    assert c["SpeculationActive"]["status"] == "True"
    assert c["Ready"]["status"] == "False"
    assert c["Invalid"]["status"] == "False"
    assert c["MetricsAvailable"]["status"] == "Unknown"
    assert status["effective"]["speculation"] == "on"
    assert status["plan"]["verdict"] == "fits"
    assert {e.reason for e in events} == {"PlanFits", "SpeculationOn"}


def test_ready_when_every_deployment_is_available() -> None:
    b = body()
    wanted = reconcile.desired(b)
    observed = Observed(deployments=[ready_deployment(wanted.objects[0])])
    status, events = reconcile.status_after_apply(b, wanted, observed, NOW)
    assert status["phase"] == "Ready"
    assert conditions(status)["Ready"]["status"] == "True"
    assert "DeploymentsReady" in {e.reason for e in events}


def test_invalid_resource_applies_nothing_and_warns() -> None:
    b = body(gpus={"type": "H100-80GB", "count": 3})
    wanted = reconcile.desired(b)
    assert wanted.objects == []
    status, events = reconcile.status_after_apply(b, wanted, Observed(), NOW)
    c = conditions(status)
    assert status["phase"] == "Invalid"
    assert c["Invalid"]["status"] == "True"
    assert c["Invalid"]["reason"] == "GPUCountMismatch"
    assert "spec.gpus.count" in c["Invalid"]["message"]
    warning = next(e for e in events if e.reason == "GPUCountMismatch")
    assert warning.type == "Warning"


def test_apply_errors_degrade() -> None:
    b = body()
    wanted = reconcile.desired(b)
    status, events = reconcile.status_after_apply(
        b, wanted, Observed(apply_errors=["apply Service x/y: forbidden by RBAC"]), NOW
    )
    assert status["phase"] == "Degraded"
    assert conditions(status)["Degraded"]["status"] == "True"
    assert any(e.reason == "ApplyFailed" and e.type == "Warning" for e in events)


def test_second_pass_emits_nothing_and_keeps_transition_times() -> None:
    b = body()
    wanted = reconcile.desired(b)
    observed = Observed(deployments=[ready_deployment(wanted.objects[0])])
    first, _ = reconcile.status_after_apply(b, wanted, observed, NOW)
    b["status"] = first
    second, events = reconcile.status_after_apply(b, reconcile.desired(b), observed, LATER)
    assert events == []
    assert second == first  # nothing to write either
    assert all(c["lastTransitionTime"] == NOW_TEXT for c in second["conditions"])


def test_transition_moves_only_the_changed_condition() -> None:
    b = body()
    wanted = reconcile.desired(b)
    first, _ = reconcile.status_after_apply(
        b, wanted, Observed(deployments=[wanted.objects[0]]), NOW
    )
    b["status"] = first
    ready = Observed(deployments=[ready_deployment(wanted.objects[0])])
    second, events = reconcile.status_after_apply(b, wanted, ready, LATER)
    c = conditions(second)
    assert c["Ready"]["lastTransitionTime"] == LATER_TEXT
    assert c["Planned"]["lastTransitionTime"] == NOW_TEXT
    assert [e.reason for e in events] == ["DeploymentsReady"]


def test_becoming_invalid_keeps_decisions_and_warns() -> None:
    b = body()
    b["status"] = {
        "decisions": [{"time": NOW_TEXT, "action": "disable", "reason": "acceptance 0.4"}]
    }
    b["spec"]["speculation"] = {"method": "draft_model"}  # draft missing
    status, events = reconcile.status_after_apply(b, reconcile.desired(b), Observed(), LATER)
    assert status["decisions"][0]["action"] == "disable"
    assert any(e.type == "Warning" and e.reason == "DraftRequired" for e in events)


def test_tight_plan_is_a_warning_event() -> None:
    b = body(
        target={
            "model": "RedHatAI/Meta-Llama-3.1-70B-Instruct-quantized.w8a8",
            "quantization": "int8",
            "tensorParallelSize": 2,
            "maxModelLen": 32768,
        }
    )
    wanted = reconcile.desired(b)
    status, events = reconcile.status_after_apply(b, wanted, Observed(), NOW)
    assert status["plan"]["verdict"] == "tight"
    tight = next(e for e in events if e.reason == "PlanTight")
    assert tight.type == "Warning"


def test_the_drift_event_names_the_last_writer_of_the_spec_other_than_specpilot() -> None:
    def entry(manager: str, time: str, *fields: str) -> dict[str, Any]:
        return {"manager": manager, "time": time, "fieldsV1": {f: {} for f in fields}}

    deployment = {
        "metadata": {
            "managedFields": [
                entry("specpilot", "2026-11-25T10:00:09Z", "f:metadata", "f:spec"),
                entry("kubectl-edit", "2026-11-25T10:00:01Z", "f:spec"),
                entry("intruder", "2026-11-25T10:00:05Z", "f:spec"),
                # the Deployment controller: revision annotation and status, never the spec
                entry("kube-controller-manager", "2026-11-25T10:00:07Z", "f:metadata", "f:status"),
            ]
        }
    }
    assert reconcile.spec_writer(deployment) == "intruder"
    assert reconcile.spec_writer({"metadata": {}}) is None


def test_status_times_keep_the_wire_format_older_versions_wrote() -> None:
    """Times are datetimes in the models and the same strings on the wire, fractions of a second
    only where the operator wrote some (status.control's times)."""
    older = {
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "DeploymentsReady",
                "message": "all replicas available",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ],
        "lastMetrics": {"sampledAt": "2026-01-01T00:00:30Z", "acceptanceRate": 0.41},
        "control": {
            **PolicyState().model_dump(by_alias=True, exclude_none=True, mode="json"),
            "lastCheck": "2026-01-01T00:00:30.123456Z",
            "lastChange": "2026-01-01T00:00:00Z",
            "recentChanges": ["2026-01-01T00:00:30.500000Z"],
        },
        "decisions": [
            {"time": "2026-01-01T00:00:30Z", "action": "disable-speculation", "reason": "x"}
        ],
    }
    status = SpeculativeInferenceStatus.model_validate(older)
    assert status.decisions[0].time == NOW + datetime.timedelta(seconds=30)
    written = status.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert written == older
    # reconciles wrote status.control's times with an offset (the client's isoformat)
    offset = SpeculativeInferenceStatus.model_validate(
        {"control": {"lastCheck": "2026-01-01T00:00:30.123456+00:00"}}
    )
    assert offset.model_dump(by_alias=True, mode="json")["control"]["lastCheck"] == (
        "2026-01-01T00:00:30.123456Z"
    )


def deployment(
    generation: int = 2,
    observed: int = 2,
    replicas: int = 2,
    updated: int = 2,
    available: int = 2,
    wanted: int = 2,
    progressing: tuple[str, str, str] | None = None,
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "observedGeneration": observed,
        "replicas": replicas,
        "updatedReplicas": updated,
        "availableReplicas": available,
        "unavailableReplicas": max(max(wanted, replicas) - available, 0),
    }
    if progressing is not None:
        kind, reason, message = progressing
        status["conditions"] = [
            {"type": "Progressing", "status": kind, "reason": reason, "message": message}
        ]
    return {
        "metadata": {"name": "llama", "generation": generation},
        "spec": {"replicas": wanted},
        "status": status,
    }


def test_the_rollout_is_read_from_the_deployment_status() -> None:
    assert reconcile.deployment_rollout(deployment()).complete
    unseen = reconcile.deployment_rollout(deployment(generation=3))
    assert unseen.reason == "RolloutInProgress"
    assert "generation 3 not yet seen" in unseen.message
    half = reconcile.deployment_rollout(deployment(replicas=3, updated=1, available=2))
    assert half.reason == "RolloutInProgress"
    assert half.message == "rollout in progress: llama 1 of 2 pods updated, 2 available"
    stuck = reconcile.deployment_rollout(
        deployment(
            replicas=3,
            updated=1,
            available=2,
            progressing=("False", "ProgressDeadlineExceeded", 'ReplicaSet "x" has timed out'),
        )
    )
    assert stuck.reason == "RolloutStuck"
    assert "ProgressDeadlineExceeded (1 of 2 pods updated, 2 available)" in stuck.message
    none = reconcile.deployment_rollout(deployment(replicas=0, updated=0, available=0))
    assert none.reason == "AwaitingPods"
    # all Deployments: the worst one
    both = reconcile.rollout([deployment(), deployment(generation=3)])
    assert both.reason == "RolloutInProgress"
    assert reconcile.rollout([]).reason == "AwaitingPods"


def test_a_replacement_posts_rollout_complete_with_its_duration_and_stuck_as_a_warning() -> None:
    doc = body()
    wanted = reconcile.desired(doc)
    rolling = {**ready_deployment(wanted.objects[0]), "status": {"observedGeneration": 0,
               "replicas": 1, "availableReplicas": 1}}  # fmt: skip
    status, events = reconcile.status_after_apply(doc, wanted, Observed(deployments=[rolling]), NOW)
    rolled = conditions(status)["RolledOut"]
    assert (rolled["status"], rolled["reason"]) == ("False", "RolloutInProgress")
    assert "RolloutComplete" not in [e.reason for e in events]
    doc["status"] = status
    done = ready_deployment(wanted.objects[0])
    status, events = reconcile.status_after_apply(doc, wanted, Observed(deployments=[done]), LATER)
    rolled = conditions(status)["RolledOut"]
    assert (rolled["status"], rolled["reason"]) == ("True", "RolloutComplete")
    assert rolled["lastTransitionTime"] == LATER_TEXT  # when the new configuration took effect
    (complete,) = [e for e in events if e.reason == "RolloutComplete"]
    assert complete.type == "Normal"
    assert "the rollout took 300s (since 2026-01-01T00:00:00Z)" in complete.message
    doc["status"] = status
    deadline = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
    stuck = {**done, "status": {**done["status"], "conditions": [deadline]}}
    status, events = reconcile.status_after_apply(doc, wanted, Observed(deployments=[stuck]), LATER)
    assert conditions(status)["RolledOut"]["reason"] == "RolloutStuck"
    assert [(e.type, e.reason) for e in events if e.reason.startswith("Rollout")] == [
        ("Warning", "RolloutStuck")
    ]


def test_a_rollout_completing_after_a_revert_says_what_ran_before_is_back() -> None:
    doc = body()
    wanted = reconcile.desired(doc)
    deadline = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
    done = ready_deployment(wanted.objects[0])
    stuck = {**done, "status": {**done["status"], "conditions": [deadline]}}
    status, _ = reconcile.status_after_apply(doc, wanted, Observed(deployments=[stuck]), NOW)
    assert conditions(status)["RolledOut"]["reason"] == "RolloutStuck"
    # the control loop reverts after the rollout became stuck; then the old pods are all Ready
    revert = {"time": "2026-01-01T00:01:00Z", "action": reconcile.REVERT_ACTION, "reason": "x"}
    doc["status"] = {**status, "decisions": [revert]}
    _, events = reconcile.status_after_apply(doc, wanted, Observed(deployments=[done]), LATER)
    (complete,) = [e for e in events if e.reason == "RolloutComplete"]
    assert complete.message.startswith(
        "the configuration that ran before the stuck rollout is back in effect (reverted "
        "2026-01-01T00:01:00Z): "
    )
    # a stuck rollout that completes by itself (GPUs freed), after an older revert, is new
    doc["status"] = {**status, "decisions": [{**revert, "time": "2025-12-31T23:00:00Z"}]}
    _, events = reconcile.status_after_apply(doc, wanted, Observed(deployments=[done]), LATER)
    (complete,) = [e for e in events if e.reason == "RolloutComplete"]
    assert complete.message.startswith("the new configuration is in effect: ")


def test_the_first_pods_of_a_resource_are_no_replacement() -> None:
    doc = body()
    wanted = reconcile.desired(doc)
    status, _ = reconcile.status_after_apply(doc, wanted, Observed(), NOW)
    assert conditions(status)["RolledOut"]["status"] == "Unknown"
    doc["status"] = status
    done = ready_deployment(wanted.objects[0])
    status, events = reconcile.status_after_apply(doc, wanted, Observed(deployments=[done]), LATER)
    assert conditions(status)["RolledOut"]["reason"] == "RolloutComplete"
    assert "RolloutComplete" not in [e.reason for e in events]


def test_effective_says_what_runs_until_the_new_pods_are_ready() -> None:
    doc = body()
    wanted = reconcile.desired(doc)
    done = ready_deployment(wanted.objects[0])
    status, _ = reconcile.status_after_apply(doc, wanted, Observed(deployments=[done]), NOW)
    assert status["effective"]["speculation"] == "on"
    doc["status"] = {**status, "control": PolicyState(speculation_on=False).model_dump(
        by_alias=True, exclude_none=True, mode="json")}  # fmt: skip
    off = reconcile.desired(doc)
    assert off.speculation is False
    rolling = {**done, "metadata": {**done["metadata"], "generation": 2}}
    status, _ = reconcile.status_after_apply(doc, off, Observed(deployments=[rolling]), LATER)
    assert conditions(status)["RolledOut"]["reason"] == "RolloutInProgress"
    assert status["effective"]["speculation"] == "on"  # the old pods still serve
    doc["status"] = {**doc["status"], **status}
    status, _ = reconcile.status_after_apply(doc, off, Observed(deployments=[done]), LATER)
    assert status["effective"]["speculation"] == "off"


def test_a_control_replica_change_waits_only_for_an_incomplete_server_rollout() -> None:
    digest = reconcile.ANNOTATION_TEMPLATE_DIGEST

    def deployment(name: str, template: str, complete: bool = True) -> dict[str, Any]:
        return {
            "metadata": {"name": name, "generation": 2, "annotations": {digest: template}},
            "spec": {"replicas": 1},
            "status": {
                "observedGeneration": 2 if complete else 1,
                "replicas": 1,
                "updatedReplicas": 1,
                "availableReplicas": 1,
            },
        }

    wanted = deployment("chat-baseline", "new")
    rolling = deployment("chat", "new", complete=False)
    done = deployment("chat", "new")
    reason = reconcile.deferred_change(rolling, wanted, deployment("chat-baseline", "old"))
    assert reason is not None
    assert "until the rollout of chat is complete" in reason
    assert reconcile.deferred_change(done, wanted, deployment("chat-baseline", "old")) is None
    # nothing to change, or nothing running yet: apply at once
    assert reconcile.deferred_change(rolling, wanted, deployment("chat-baseline", "new")) is None
    assert reconcile.deferred_change(rolling, wanted, None) is None


def pod(name: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": status}


def container(ready: bool = False, restarts: int = 0, **states: Any) -> dict[str, Any]:
    found: dict[str, Any] = {"name": "vllm", "ready": ready, "restartCount": restarts}
    if "state" in states:
        found["state"] = states["state"]
    if "last" in states:
        found["lastState"] = {"terminated": states["last"]}
    return found


UNSCHEDULABLE = {
    "type": "PodScheduled",
    "status": "False",
    "reason": "Unschedulable",
    "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.",
}
RUNNING = {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
BACK_OFF = {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting"}}


def test_pod_causes_name_unschedulable_pods_in_the_schedulers_words() -> None:
    pending = pod("llama-2", phase="Pending", conditions=[UNSCHEDULABLE])
    assert reconcile.pod_causes([pending]) == [
        "1 pod Pending: 0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    ]
    assert reconcile.pod_causes([pending, pod("llama-3", **pending["status"])]) == [
        "2 pods Pending: 0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    ]


def test_pod_causes_name_crash_loops_with_restarts_and_the_last_exit() -> None:
    error = {"reason": "Error", "exitCode": 1, "message": "ValueError:  no memory\n for the KV"}
    looping = pod(
        "llama-1",
        phase="Running",
        containerStatuses=[container(restarts=4, state=BACK_OFF, last=error)],
    )
    assert reconcile.pod_causes([looping]) == [
        "pod llama-1 crash-looping (restarts 4, last exit: Error 1: ValueError: no memory for "
        "the KV)"
    ]
    # Between two crashes it loads again: still named, by its restarts.
    loading = pod(
        "llama-1",
        phase="Running",
        containerStatuses=[
            container(restarts=2, state=RUNNING, last={"reason": "Error", "exitCode": 2})
        ],
    )
    assert reconcile.pod_causes([loading]) == [
        "pod llama-1 not ready after 2 restarts (last exit: Error 2)"
    ]


def test_pod_causes_name_oom_kills() -> None:
    oom = {"reason": "OOMKilled", "exitCode": 137}
    killed = pod(
        "llama-1",
        phase="Running",
        containerStatuses=[container(restarts=3, state=BACK_OFF, last=oom)],
    )
    assert reconcile.pod_causes([killed]) == ["pod llama-1 OOMKilled (restarts 3, crash-looping)"]
    just_killed = pod(
        "llama-1", phase="Running", containerStatuses=[container(state={"terminated": oom})]
    )
    assert reconcile.pod_causes([just_killed]) == ["pod llama-1 OOMKilled (restarts 0)"]


def test_healthy_and_starting_pods_have_no_cause() -> None:
    ready = pod("a", phase="Running", containerStatuses=[container(ready=True, state=RUNNING)])
    loading = pod("b", phase="Running", containerStatuses=[container(state=RUNNING)])
    creating = pod(
        "c",
        phase="Pending",
        conditions=[{"type": "PodScheduled", "status": "True"}],
        containerStatuses=[container(state={"waiting": {"reason": "ContainerCreating"}})],
    )
    going = pod("d", phase="Pending", conditions=[UNSCHEDULABLE])
    going["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    # Ready after earlier restarts: healthy now.
    recovered = pod(
        "e",
        phase="Running",
        containerStatuses=[
            container(
                ready=True, restarts=5, state=RUNNING, last={"reason": "Error", "exitCode": 1}
            )
        ],
    )
    assert reconcile.pod_causes([ready, loading, creating, going, recovered, pod("f")]) == []


def test_pod_causes_name_other_waits_and_failures_and_stay_short() -> None:
    pull = {"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling "vllm:x"'}}
    pulling = pod("a", phase="Pending", containerStatuses=[container(state=pull)])
    evicted = pod("b", phase="Failed", reason="Evicted", message="low on ephemeral-storage")
    assert reconcile.pod_causes([evicted, pulling]) == [
        'pod a waiting: ImagePullBackOff: Back-off pulling "vllm:x"',
        "pod b Failed: Evicted: low on ephemeral-storage",
    ]
    many = [pod(f"p{i}", phase="Failed") for i in range(reconcile.MAX_POD_CAUSES + 2)]
    causes = reconcile.pod_causes(many)
    assert len(causes) == reconcile.MAX_POD_CAUSES + 1
    assert causes[-1] == "2 more"


def test_an_incomplete_rollouts_message_ends_with_its_pods_causes() -> None:
    pending = pod("llama-2", phase="Pending", conditions=[UNSCHEDULABLE])
    deadline = ("False", "ProgressDeadlineExceeded", 'ReplicaSet "llama-x" has timed out.')
    stuck = deployment(replicas=3, updated=1, available=2, progressing=deadline)
    state = reconcile.rollout([stuck], {"llama": [pending]})
    assert state.reason == "RolloutStuck"
    assert state.message == (
        'llama: ProgressDeadlineExceeded (1 of 2 pods updated, 2 available): ReplicaSet "llama-x"'
        " has timed out.; cause: 1 pod Pending: 0/1 nodes are available: 1 Insufficient "
        "nvidia.com/gpu."
    )
    rolling = reconcile.deployment_rollout(deployment(replicas=3, updated=1), [pending])
    assert rolling.reason == "RolloutInProgress"
    assert rolling.message.endswith(
        "; cause: 1 pod Pending: 0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    )
    # A complete rollout names no cause, whatever the pods say; without pods, as before.
    assert reconcile.deployment_rollout(deployment(), [pending]).message == (
        "llama: 2 of 2 pods updated and Ready"
    )
    assert reconcile.rollout([stuck]).message == reconcile.deployment_rollout(stuck).message
    # Through the status: the RolledOut condition and the RolloutStuck Event say it.
    doc = body()
    wanted = reconcile.desired(doc)
    done = ready_deployment(wanted.objects[0])
    name = done["metadata"]["name"]
    late = {
        **done,
        "status": {
            **done["status"],
            "conditions": [
                {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
            ],
        },
    }
    observed = Observed(deployments=[late], pods={name: [pending]})
    status, events = reconcile.status_after_apply(doc, wanted, observed, NOW)
    message = conditions(status)["RolledOut"]["message"]
    assert "Insufficient nvidia.com/gpu" in message
    assert [e.message for e in events if e.reason == "RolloutStuck"] == [message]
