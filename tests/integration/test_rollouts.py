"""The cost of acting, end to end (issue 17): the operator on the test API server, with the pod
runner's truthful world (pods that take their modelled startup to serve, a finite GPU pool,
ProgressDeadlineExceeded) and a real Prometheus.

- A slow start: a spec change rolls the pods; the check holds while they roll (and for a rate
  window after), RolledOut says so, and RolloutComplete comes with the time it took.
- A rollout mid-check: no reading taken before the new pods' window is clean is stored.
- A stuck rollout: the operator's own change (speculation off) on a resource that allows a surge
  (spec.rollout.surge OnePod) needs GPUs the pool does not have; the surge pod stays Pending,
  the Deployment times out progressing, the operator says RolloutStuck (naming the cause from
  the Pending pod: Insufficient nvidia.com/gpu) and returns to the configuration that ran
  (RolloutReverted), which completes.

Every wait is for a positive signal (an Event, a condition, a Deployment's status).
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s

from specpilot.api.models import GROUP, PLURAL, VERSION
from specpilot_lab.local.controlplane import ControlPlane
from specpilot_lab.local.operator_process import wait_for
from specpilot_lab.local.stack import FAST_POLICY, LocalStack, simulated
from specpilot_lab.sim.podrunner import startup_seconds
from tests.integration.conftest import example
from tests.integration.test_control_loop import Load, create, events, get, reasons, trace

pytestmark = pytest.mark.integration

STARTUP_SCALE = 0.05
"""An 8B pod's modelled ~111 s start takes ~5.6 s; the 70B INT8 + 8B draft's ~208 s ~10 s."""
DEADLINE_SCALE = 0.05
"""The default progressDeadlineSeconds (600) takes 30 s: more than any start here."""
GPU_POOL = 3
"""One 70B pod (2 GPUs) fits, its surge pod does not; an 8B pod and its surge (1 + 1) fit."""
WINDOW_S = 20.0
"""FAST_POLICY's rate window."""


@pytest.fixture(scope="module")
def stack(control_plane: ControlPlane) -> Iterator[LocalStack]:
    namespace = f"rollouts-{int(time.time())}"
    control_plane.kubectl("create", "namespace", namespace)
    options = {
        "startup_scale": STARTUP_SCALE,
        "deadline_scale": DEADLINE_SCALE,
        "gpu_pool": GPU_POOL,
    }
    with LocalStack(control_plane, [namespace], runner_options=options) as running:
        yield running


def resource(file: str, namespace: str, name: str, **policy: Any) -> dict[str, Any]:
    doc = example(file, namespace)
    doc["metadata"]["name"] = name
    doc["spec"]["policy"] = {**FAST_POLICY, **policy}
    doc["spec"]["monitoring"] = {}
    return simulated(doc)


def rolled_out(api: k8s.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    status = get(api, namespace, name).get("status") or {}
    found: dict[str, Any] = next(
        (c for c in status.get("conditions") or [] if c["type"] == "RolledOut"), {}
    )
    return found


def event(
    api: k8s.ApiClient,
    namespace: str,
    name: str,
    reason: str,
    since: datetime.datetime | None = None,
) -> Any:
    """The first Event of this reason (posted at or after `since`, to the second)."""
    return next(
        (
            e
            for e in events(api, namespace, name)
            if e.reason == reason and (since is None or e.metadata.creation_timestamp >= since)
        ),
        None,
    )


def when(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def delete(api: k8s.ApiClient, namespace: str, name: str) -> None:
    """The resource and its Deployment (the test control plane has no garbage collector)."""
    k8s.CustomObjectsApi(api).delete_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    k8s.AppsV1Api(api).delete_namespaced_deployment(name, namespace)


def test_a_slow_rollout_holds_the_check_and_counts_no_reading_of_old_pods(
    api: k8s.ApiClient, stack: LocalStack
) -> None:
    namespace, name = stack.namespaces[0], "slow"
    doc = resource("eagle3-single-h100.yaml", namespace, name)
    create(api, doc)
    args = k8s.AppsV1Api(api)
    with Load(stack, namespace, name, trace((400, 2)), model=doc["spec"]["target"]["model"]):
        wait_for(
            lambda: "MetricsRead" in reasons(api, namespace, name),
            timeout=120,
            what=lambda: str(get(api, namespace, name).get("status")),
        )
        before = get(api, namespace, name)["status"]
        decisions = before.get("decisions", [])
        changed_at = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        # The user asks for 4 speculative tokens: a new pod template, a new slow pod.
        k8s.CustomObjectsApi(api).patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name,
            {"spec": {"speculation": {"numSpeculativeTokens": 4}}},
        )  # fmt: skip
        held = wait_for(
            lambda: event(api, namespace, name, "AwaitingRollout", changed_at),
            timeout=60,
            what=lambda: str(get(api, namespace, name).get("status")),
        )
        assert "rollout: " in held.message
        complete = wait_for(
            lambda: event(api, namespace, name, "RolloutComplete", changed_at),
            timeout=120,
            what=lambda: str(get(api, namespace, name).get("status")),
        )
        done = rolled_out(api, namespace, name)
        assert (done["status"], done["reason"]) == ("True", "RolloutComplete")
        container = args.read_namespaced_deployment(name, namespace).spec.template.spec
        assert any('"num_speculative_tokens": 4' in a or '"num_speculative_tokens":4' in a
                   for a in container.containers[0].args)  # fmt: skip
        # The new pod served only after its modelled startup (weights, graphs, engine start).
        took = (when(done["lastTransitionTime"]) - changed_at).total_seconds()
        startup = startup_seconds(container.containers[0].args, {}) * STARTUP_SCALE
        assert took >= startup - 1, (took, startup)
        assert "the rollout took" in complete.message
        # Readings count again only once the rate window holds the new pods alone.
        wait_for(
            lambda: (
                [e for e in events(api, namespace, name) if e.reason == "MetricsRead"][
                    -1
                ].metadata.creation_timestamp
                > complete.metadata.creation_timestamp
            ),
            timeout=90,
            what=lambda: str(get(api, namespace, name).get("status")),
        )
    after = get(api, namespace, name)["status"]
    sampled = when(after["lastMetrics"]["sampledAt"])
    assert sampled >= when(done["lastTransitionTime"]) + datetime.timedelta(seconds=WINDOW_S)
    assert after.get("decisions", []) == decisions  # the hold decided nothing
    delete(api, namespace, name)
    wait_for(lambda: not [p for p in stack.runner.pods() if p.deployment == name]
             if stack.runner else True, timeout=60, what="the 8B pods to stop")  # fmt: skip


def test_the_operators_stuck_rollout_is_detected_and_reverted(
    api: k8s.ApiClient, stack: LocalStack
) -> None:
    namespace, name = stack.namespaces[0], "stuck"
    doc = resource("llama-70b-int8-draft.yaml", namespace, name)
    # The user says spare GPUs may be used for a surge; the pool has none to spare.
    doc["spec"]["rollout"] = {"surge": "OnePod"}
    create(api, doc)
    # Hot sampling: acceptance well under the policy's floor, so the operator turns speculation
    # off; the speculation-off pod surges and needs 2 more GPUs, and the pool has 1 left.
    with Load(stack, namespace, name, trace((300, 2), temperature=1.6)):
        disabled = wait_for(
            lambda: event(api, namespace, name, "SpeculationDisabled"),
            timeout=180,
            what=lambda: str(get(api, namespace, name).get("status")),
        )
        stuck = wait_for(
            lambda: event(api, namespace, name, "RolloutStuck"),
            timeout=120,
            what=lambda: str(get(api, namespace, name).get("status")),
        )
        assert stuck.type == "Warning"
        assert "ProgressDeadlineExceeded" in stuck.message
        # The cause, read from the surge pod's Pod object (the pod runner's, as kube-scheduler
        # words it): the pool has no GPU left for it.
        assert "1 pod Pending: 0/1 nodes are available: 1 Insufficient nvidia.com/gpu." in (
            stuck.message
        )
        assert stack.runner is not None
        assert [p.phase for p in stack.runner.pods() if p.deployment == name].count("Pending") <= 1
        reverted = wait_for(
            lambda: event(api, namespace, name, "RolloutReverted"),
            timeout=60,
            what=lambda: str(get(api, namespace, name).get("status")),
        )
        assert reverted.type == "Warning"
        assert "the rollout of disable-speculation" in reverted.message
        assert "Insufficient nvidia.com/gpu" in reverted.message  # it quotes RolledOut
        complete = wait_for(
            lambda: [
                e for e in events(api, namespace, name)
                if e.reason == "RolloutComplete"
                and e.metadata.creation_timestamp >= reverted.metadata.creation_timestamp
            ],
            timeout=60,
            what=lambda: str(get(api, namespace, name).get("status")),
        )  # fmt: skip
        assert complete
        # Read at once: the low acceptance goes on, so after the cooldown the policy may try
        # again (and get stuck again).
        status = get(api, namespace, name)["status"]
        assert status["control"]["speculationOn"] is True
        assert [d["action"] for d in status["decisions"]][-2:] == [
            "disable-speculation",
            "revert-rollout",
        ]
        assert status["effective"]["speculation"] == "on"  # what runs: the pods never changed
        assert disabled.metadata.creation_timestamp <= reverted.metadata.creation_timestamp
        # The surge pod that waited for GPUs is gone; the old pod serves on.
        pods = [p for p in stack.runner.pods() if p.deployment == name]
        assert [p.phase for p in pods] == ["Ready"]
