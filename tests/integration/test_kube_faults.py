"""The API server misbehaving under the operator, on real parts: restarted mid-watch, the operator
killed between two writes, another writer taking an owned field, status writes refused with 409.

In each the operator recovers on its own, never changes speculation because of the fault, and keeps
the decision history in status.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s

from specpilot.api.models import GROUP, PLURAL, VERSION
from specpilot_lab.local.controlplane import ControlPlane
from specpilot_lab.local.operator_process import OperatorProcess, wait_for
from tests.integration.conftest import (
    account_without,
    condition,
    container_args,
    counter,
    create,
    deployment,
    event_reasons,
    example,
    get,
    patch_spec,
    reconciled,
)

pytestmark = pytest.mark.integration

EXAMPLE = "llama-70b-int8-draft.yaml"
RECONCILES = "specpilot_reconciles_total"
"""The operator's own counter of reconciles, by trigger (create, update, resume, drift, control)."""
HISTORY = [{"time": "2026-11-20T10:00:00Z", "action": "disable-speculation", "reason": "earlier"}]


def write_status(api: k8s.ApiClient, namespace: str, name: str, status: dict[str, Any]) -> None:
    k8s.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, name, {"status": status}
    )


def speculative_tokens(api: k8s.ApiClient, namespace: str, name: str) -> int | None:
    for arg in container_args(api, namespace, name):
        if arg.startswith("{") and "num_speculative_tokens" in arg:
            found: int = json.loads(arg)["num_speculative_tokens"]
            return found
    return None


def alive(process: OperatorProcess) -> bool:
    return process.process is not None and process.process.poll() is None


def test_api_server_restarted_mid_watch_the_operator_resumes_its_watches(
    api: k8s.ApiClient, control_plane: ControlPlane, namespace: str, operator: OperatorProcess
) -> None:
    name = create(api, example(EXAMPLE, namespace))["metadata"]["name"]
    wait_for(lambda: reconciled(api, namespace, name), what=operator.output)
    write_status(api, namespace, name, {"decisions": HISTORY})
    uid = deployment(api, namespace, name).metadata.uid

    control_plane.restart_apiserver(downtime=5)
    wait_for(lambda: get(api, namespace, name), what="the API server back")  # first call retries
    assert alive(operator), operator.output()

    # The resource's watch: a spec change after the restart is applied.
    patch_spec(api, namespace, name, {"speculation": {"numSpeculativeTokens": 3}})
    wait_for(
        lambda: speculative_tokens(api, namespace, name) == 3 and reconciled(api, namespace, name),
        timeout=90,
        what=operator.output,
    )
    # The Deployments' watch: drift after the restart is restored.
    original = container_args(api, namespace, name)
    k8s.AppsV1Api(api).patch_namespaced_deployment(
        name,
        namespace,
        {"spec": {"template": {"spec": {"containers": [{"name": "vllm", "args": ["--x"]}]}}}},
    )
    wait_for(lambda: container_args(api, namespace, name) == original, what=operator.output)
    body = get(api, namespace, name)
    assert body["status"]["decisions"] == HISTORY
    assert deployment(api, namespace, name).metadata.uid == uid
    assert alive(operator), operator.output()


def test_killed_between_applying_the_deployment_and_writing_status(
    api: k8s.ApiClient, control_plane: ControlPlane, namespace: str
) -> None:
    """A status write the API server refuses holds the first operator exactly there; SIGKILL
    leaves the cluster with the Deployment applied and no status. The next operator finishes
    the job without touching the Deployment."""
    unable = account_without(api, control_plane, "nostatus", "speculativeinferences/status")
    first = OperatorProcess(unable, "--standalone", "-n", namespace).start()
    try:
        name = create(api, example(EXAMPLE, namespace))["metadata"]["name"]
        wait_for(lambda: deployment(api, namespace, name), what=first.output)
        wait_for(lambda: "speculativeinferences/status" in first.output(), what=first.output)
        assert first.process is not None
        first.process.kill()
        first.process.wait()
    finally:
        first.stop()
    left = get(api, namespace, name)
    assert "observedGeneration" not in left.get("status", {}), left["status"]
    version = deployment(api, namespace, name).metadata.resource_version

    with OperatorProcess(control_plane.kubeconfig, "--standalone", "-n", namespace) as second:
        body = wait_for(lambda: reconciled(api, namespace, name), what=second.output)
    assert body["status"]["phase"] == "Progressing"
    assert deployment(api, namespace, name).metadata.resource_version == version
    assert "Planned" in {c["type"] for c in body["status"]["conditions"]}


def test_killed_between_a_decision_and_its_rollout_the_decision_is_carried_out(
    api: k8s.ApiClient, control_plane: ControlPlane, namespace: str
) -> None:
    """The control loop writes a decision to status before it re-renders: a kill in between
    leaves the decision stored, and the next operator applies it at resume."""
    with OperatorProcess(control_plane.kubeconfig, "--standalone", "-n", namespace) as first:
        name = create(api, example(EXAMPLE, namespace))["metadata"]["name"]
        wait_for(lambda: reconciled(api, namespace, name), what=first.output)
        assert first.process is not None
        first.process.kill()
        first.process.wait()
    assert speculative_tokens(api, namespace, name) == 5
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    decision = {"time": now, "action": "disable-speculation", "reason": "decided, then killed"}
    write_status(
        api,
        namespace,
        name,
        {
            "control": {"speculationOn": False, "lastCheck": now, "lastChange": now},
            "decisions": [*HISTORY, decision],
        },
    )
    with OperatorProcess(control_plane.kubeconfig, "--standalone", "-n", namespace) as second:
        wait_for(
            lambda: speculative_tokens(api, namespace, name) is None,
            what=second.output,
        )
        # The first operator's status already matches the generation, so "reconciled" alone
        # can be its status (the Deployment re-rendered, the second's status not yet written:
        # what made this test flaky). Wait for the condition only the second one writes.
        body = wait_for(
            lambda: (
                (done := reconciled(api, namespace, name))
                and condition(done, "SpeculationActive").get("reason") == "SpeculationOffByPolicy"
                and done
            ),
            what=second.output,
        )
    assert body["status"]["decisions"] == [*HISTORY, decision]
    assert condition(body, "SpeculationActive")["status"] == "False"


def test_another_writer_taking_an_owned_field_by_server_side_apply_is_undone_once(
    api: k8s.ApiClient, control_plane: ControlPlane, namespace: str, operator: OperatorProcess
) -> None:
    name = create(api, example(EXAMPLE, namespace))["metadata"]["name"]
    wait_for(lambda: reconciled(api, namespace, name), what=operator.output)
    original = container_args(api, namespace, name)
    selector = deployment(api, namespace, name).spec.selector.match_labels
    intruder = json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "selector": {"matchLabels": selector},
                "template": {
                    "spec": {
                        "containers": [{"name": "vllm", "args": [*original, "--enforce-eager"]}]
                    }
                },
            },
        }
    )
    # Positive signals instead of pauses: the operator counts its reconciles by trigger, and a
    # "drift" reconcile follows every write to the Deployment (no controller-manager here writes
    # it). The first is for the operator's own create; once it is handled, the intruder's write
    # is the next one and the operator's correction, a write of its own, the one after that.
    wait_for(lambda: counter(operator, RECONCILES, trigger="drift") >= 1, what=operator.output)
    apply = ("apply", "--server-side", "--field-manager=intruder", "-f", "-")
    refused = control_plane.kubectl(*apply, input=intruder, check=False)
    assert refused.returncode != 0
    assert "conflict" in refused.stderr.lower(), refused.stderr
    assert '"specpilot"' in refused.stderr, refused.stderr
    assert container_args(api, namespace, name) == original

    before = counter(operator, RECONCILES, trigger="drift")
    control_plane.kubectl(*apply, "--force-conflicts", input=intruder)
    wait_for(lambda: container_args(api, namespace, name) == original, what=operator.output)
    corrected = deployment(api, namespace, name).metadata.generation
    # Handled: the intruder's write and the correction. A second correction would have been
    # made by then, in the reconcile of the first one's write, and would have moved the spec.
    wait_for(
        lambda: counter(operator, RECONCILES, trigger="drift") >= before + 2,
        what=operator.output,
    )
    assert deployment(api, namespace, name).metadata.generation == corrected
    wait_for(lambda: "DriftCorrected" in event_reasons(api, namespace, name), what="the Event")
    assert event_reasons(api, namespace, name).count("DriftCorrected") == 1
    events = k8s.CoreV1Api(api).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name},reason=DriftCorrected"
    )
    assert "(changed by intruder)" in events.items[0].message
    owners = {
        entry.manager: json.dumps(entry.fields_v1)
        for entry in deployment(api, namespace, name).metadata.managed_fields
    }
    assert '"f:args"' in owners["specpilot"]
    assert '"f:args"' not in owners.get("intruder", "")


@pytest.fixture
def churn(api: k8s.ApiClient, namespace: str) -> Iterator[threading.Event]:
    """Another client rewriting an annotation of the resource ten times a second, once set: every
    write of the operator's that carries an older resourceVersion gets a 409."""
    start, stop = threading.Event(), threading.Event()
    custom = k8s.CustomObjectsApi(api)

    def run() -> None:
        start.wait()
        count = 0
        while not stop.is_set():
            count += 1
            patch = {"metadata": {"annotations": {"example.com/churn": str(count)}}}
            with contextlib.suppress(k8s.ApiException):
                custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "c", patch)
            time.sleep(0.1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield start
    stop.set()
    start.set()
    thread.join()


def test_status_writes_refused_with_409_are_redone_on_a_fresh_read(
    api: k8s.ApiClient, namespace: str, operator: OperatorProcess, churn: threading.Event
) -> None:
    doc = example(EXAMPLE, namespace)
    doc["metadata"]["name"] = "c"
    create(api, doc)
    wait_for(lambda: reconciled(api, namespace, "c"), what=operator.output)
    write_status(api, namespace, "c", {"decisions": HISTORY})
    churn.set()
    for tokens in (2, 3, 4):  # one at a time: each change its own reconcile under the churn
        patch_spec(api, namespace, "c", {"speculation": {"numSpeculativeTokens": tokens}})
        wait_for(
            lambda: speculative_tokens(api, namespace, "c") == tokens,  # noqa: B023
            timeout=60,
            what=operator.output,
        )
    body = wait_for(
        lambda: speculative_tokens(api, namespace, "c") == 4 and reconciled(api, namespace, "c"),
        timeout=60,
        what=operator.output,
    )
    conflicts = re.search(
        r'specpilot_status_conflicts_total\{writer="reconcile"\} (\S+)', operator.metrics()
    )
    assert conflicts, operator.metrics()
    assert float(conflicts.group(1)) >= 1, operator.output()
    assert body["status"]["decisions"] == HISTORY
    assert body["status"]["effective"]["numSpeculativeTokens"] == 4
    assert alive(operator), operator.output()
    assert "Traceback" not in operator.output()
