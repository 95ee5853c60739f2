"""The pod runner on a real API server: a process per replica, status, service discovery, rollout.

Children are a stand-in (a tiny HTTP server written to the test's folder) that records its argv
and environment, so the tests check exactly what the runner would hand to `specpilot_lab.sim serve`.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from specpilot.assessment import render
from specpilot.planning.startup import DEFAULT_STARTUP_S
from specpilot_lab.local.controlplane import ControlPlane
from specpilot_lab.local.operator_process import wait_for
from specpilot_lab.sim.podrunner import (
    ANNOTATION_GPU_TYPE,
    LABEL_POD_RUNNER,
    ContainerExit,
    PodObjectState,
    PodRunner,
    PodState,
    RolloutStep,
    Strategy,
    deployment_status,
    exit_code,
    gpu_resource,
    log_tail,
    pod_gpus,
    pod_manifest,
    pod_status,
    progress_mark,
    prometheus_label,
    rewrite_args,
    rollout_step,
    rollout_strategy,
    startup_seconds,
    status_differs,
    status_patch,
    template_hash,
)
from tests.integration.conftest import example

pytestmark = pytest.mark.integration

EXAMPLE = "eagle3-single-h100.yaml"

STANDIN = """\
import http.server, json, os, sys
from pathlib import Path

out, argv = Path(sys.argv[1]), sys.argv[2:]
env = {k: v for k, v in os.environ.items() if k.startswith(("SPECPILOT_", "STANDIN_"))}
name = f"{env['SPECPILOT_POD_NAME']}.{os.getpid()}"
(out / f"{name}.tmp").write_text(json.dumps({"argv": argv, "pid": os.getpid(), "env": env}))
(out / f"{name}.tmp").replace(out / f"{name}.json")
if (out / "crash").exists():
    sys.exit("standin: cannot load the weights")  # to stderr, exit 1


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = {"/health": b"", "/metrics": b"standin_up 1\\n"}.get(self.path)
        self.send_response(404 if body is None else 200)
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args):
        pass


host, port = argv[argv.index("--host") + 1], int(argv[argv.index("--port") + 1])
http.server.ThreadingHTTPServer((host, port), Handler).serve_forever()
"""


@dataclass
class Harness:
    api: k8s.ApiClient
    namespace: str
    records: Path
    sd_file: Path
    command: list[str]

    def record(self, pid: int) -> dict[str, Any]:
        found = list(self.records.glob(f"*.{pid}.json"))
        assert found, f"no record for pid {pid}"
        loaded: dict[str, Any] = json.loads(found[0].read_text())
        return loaded

    def targets(self) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = json.loads(self.sd_file.read_text())
        return groups


@pytest.fixture
def harness(
    tmp_path: Path, api: k8s.ApiClient, namespace: str, control_plane: ControlPlane
) -> Harness:
    standin = tmp_path / "standin.py"
    standin.write_text(STANDIN)
    records = tmp_path / "records"
    records.mkdir()
    command = [sys.executable, str(standin), str(records)]
    return Harness(api, namespace, records, tmp_path / "sd" / "targets.json", command)


@pytest.fixture
def runner(harness: Harness, control_plane: ControlPlane, tmp_path: Path) -> Iterator[PodRunner]:
    with PodRunner(
        [harness.namespace],
        time_scale=5,
        sd_file=harness.sd_file,
        log_dir=tmp_path / "logs",
        command=harness.command,
        kubeconfig=control_plane.kubeconfig,
        grace_seconds=5,
        tick_seconds=0.2,
    ) as pod_runner:
        yield pod_runner


def apps(harness: Harness) -> Any:
    """The apps/v1 API, untyped: the tests read the objects loosely."""
    return k8s.AppsV1Api(harness.api)


def create(harness: Harness, replicas: int) -> dict[str, Any]:
    """The example's rendered Deployment, with a GPU annotation and env entries to pass on."""
    body: dict[str, Any] = render(example(EXAMPLE, harness.namespace, replicas=replicas))[0]
    template = body["spec"]["template"]
    template["metadata"]["annotations"][ANNOTATION_GPU_TYPE] = "A100-80GB"
    template["spec"]["containers"][0]["env"] = [
        {"name": "STANDIN_LITERAL", "value": "x"},
        {"name": "STANDIN_SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
    ]
    apps(harness).create_namespaced_deployment(harness.namespace, body)
    return body


def rolled_out(harness: Harness, name: str, replicas: int) -> Any:
    """The Deployment once its status says `replicas` updated, ready pods of this generation."""
    d = apps(harness).read_namespaced_deployment(name, harness.namespace)
    s = d.status
    counts = (s.replicas or 0, s.updated_replicas or 0, s.ready_replicas or 0)
    current = s.observed_generation == d.metadata.generation
    return d if current and counts == (replicas, replicas, replicas) else None


def conditions(deployment: Any) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in deployment.status.conditions or []}


def pod_objects(harness: Harness) -> dict[str, Any]:
    """The Pod objects of the namespace by name, as the API server stores them."""
    listed = k8s.CoreV1Api(harness.api).list_namespaced_pod(harness.namespace)
    return {p.metadata.name: p for p in listed.items}


def pod_conditions(pod: Any) -> dict[str, tuple[str, str | None, str | None]]:
    return {c.type: (c.status, c.reason, c.message) for c in pod.status.conditions or []}


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def get(host: str, port: int, path: str) -> bytes:
    """A GET that ignores proxy settings, as Prometheus on loopback would."""
    connection = http.client.HTTPConnection(host, port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        assert response.status == 200
        return response.read()
    finally:
        connection.close()


def expected_args(args: list[str], port: int) -> list[str]:
    out = list(args)
    out[args.index("--host") + 1] = "127.0.0.1"
    out[args.index("--port") + 1] = str(port)
    return out


def test_replicas_run_report_status_roll_out_and_scale_to_zero(
    harness: Harness, runner: PodRunner
) -> None:
    body = create(harness, replicas=2)
    name = body["metadata"]["name"]
    args = body["spec"]["template"]["spec"]["containers"][0]["args"]
    d = wait_for(lambda: rolled_out(harness, name, 2), what="2 ready replicas")
    assert d.status.available_replicas == 2
    assert not d.status.unavailable_replicas
    assert conditions(d) == {
        "Available": ("True", "MinimumReplicasAvailable"),
        "Progressing": ("True", "NewReplicaSetAvailable"),
    }

    pods = runner.pods()
    assert len(pods) == 2
    assert all(p.ready for p in pods)
    assert len({p.port for p in pods}) == 2
    first_hash = pods[0].template_hash
    assert sorted(p.name for p in pods) == [f"{name}-{first_hash}-0", f"{name}-{first_hash}-1"]
    assert re.fullmatch("[0-9a-f]{8}", first_hash)
    for pod in pods:
        assert pod.pid is not None
        record = harness.record(pod.pid)
        assert record["argv"] == expected_args(args, pod.port)
        assert pod.command == (*harness.command, *record["argv"])
        expected_env = {
            "SPECPILOT_POD_NAME": pod.name,
            "SPECPILOT_SIM_TIME_SCALE": "5",
            "SPECPILOT_SIM_GPU": "A100-80GB",
            "STANDIN_LITERAL": "x",
        }
        assert {k: record["env"].get(k) for k in expected_env} == expected_env
        assert "STANDIN_SECRET" not in record["env"]  # valueFrom is ignored

    wait_for(lambda: len(harness.targets()) == 2, what="both replicas in the SD file")
    groups = harness.targets()
    by_pod = {p.name: p for p in pods}
    for group in groups:
        labels = group["labels"]
        pod = by_pod[labels["pod"]]
        assert group["targets"] == [f"127.0.0.1:{pod.port}"]
        assert labels["namespace"] == harness.namespace
        assert labels["deployment"] == name
        assert labels["specpilot_io_resource"] == name
        assert labels["app_kubernetes_io_name"] == "vllm"
        assert labels["specpilot_io_speculation"] == "on"
        assert b"standin_up 1" in get("127.0.0.1", pod.port, "/metrics")

    # A template change replaces every pod (one new ready pod, then one old one stopped).
    new_args = [
        "0.9" if a == "0.92" and args[i - 1] == "--gpu-memory-utilization" else a
        for i, a in enumerate(args)
    ]
    assert new_args != args
    apps(harness).patch_namespaced_deployment(
        name,
        harness.namespace,
        {"spec": {"template": {"spec": {"containers": [{"name": "vllm", "args": new_args}]}}}},
        _content_type="application/strategic-merge-patch+json",
    )
    d = wait_for(
        lambda: (d2 := rolled_out(harness, name, 2)) and d2.metadata.generation == 2 and d2,
        what="the rollout",
    )
    assert conditions(d)["Progressing"] == ("True", "NewReplicaSetAvailable")
    rolled = runner.pods()
    assert len(rolled) == 2
    assert {p.template_hash for p in rolled} == {template_hash(_template(harness, name))}
    assert first_hash not in {p.template_hash for p in rolled}
    for pod in rolled:
        assert pod.pid is not None
        assert harness.record(pod.pid)["argv"] == expected_args(new_args, pod.port)
    wait_for(lambda: not any(alive(p.pid) for p in pods if p.pid), what="old pods to stop")

    apps(harness).patch_namespaced_deployment_scale(
        name, harness.namespace, {"spec": {"replicas": 0}},
        _content_type="application/merge-patch+json",
    )  # fmt: skip
    d = wait_for(
        lambda: (d2 := rolled_out(harness, name, 0)) and d2.metadata.generation == 3 and d2,
        what="scale to 0",
    )
    assert runner.pods() == ()
    wait_for(lambda: not any(alive(p.pid) for p in rolled if p.pid), what="pods to stop")
    assert harness.targets() == []


def _template(harness: Harness, name: str) -> dict[str, Any]:
    response = apps(harness).read_namespaced_deployment(
        name, harness.namespace, _preload_content=False
    )
    template: dict[str, Any] = json.loads(response.data)["spec"]["template"]
    return template


def test_crashing_replica_backs_off_and_deleted_deployment_stops(
    harness: Harness, runner: PodRunner
) -> None:
    name = create(harness, replicas=1)["metadata"]["name"]
    wait_for(lambda: rolled_out(harness, name, 1), what="a ready replica")
    (first,) = runner.pods()
    assert first.pid is not None

    (harness.records / "crash").touch()  # every restart now exits at once
    os.kill(first.pid, signal.SIGKILL)

    def crash_looping() -> Any:
        (pod,) = runner.pods()
        d = apps(harness).read_namespaced_deployment(name, harness.namespace)
        unready = not pod.ready and not d.status.ready_replicas
        return pod.restarts >= 2 and unready and d

    d = wait_for(crash_looping, what="a crash loop")

    def backing_off() -> Any:
        pod = pod_objects(harness).get(first.name)
        statuses = pod.status.container_statuses if pod is not None else None
        waiting = statuses and statuses[0].state.waiting
        return waiting and waiting.reason == "CrashLoopBackOff" and pod

    crashing = wait_for(backing_off, what="CrashLoopBackOff on the Pod object")
    (container,) = crashing.status.container_statuses
    assert crashing.status.phase == "Running"  # restartPolicy Always: Running through the loop
    assert pod_conditions(crashing)["Ready"][:2] == ("False", "ContainersNotReady")
    assert container.restart_count >= 1
    terminated = container.last_state.terminated
    assert (terminated.reason, terminated.exit_code) == ("Error", 1)  # the stand-in's exit
    # the rendered FallbackToLogsOnError: the end of the failed run's log is the message, which
    # the operator quotes as the rollout's cause
    assert terminated.message == "standin: cannot load the weights\n"
    # Kubernetes' rule: available >= replicas - maxUnavailable. The rendered strategy's
    # maxUnavailable 1 (no surge on GPUs) lets one replica count no available pod as enough, so
    # Available stays True; the operator judges readiness by availableReplicas instead.
    assert conditions(d)["Available"] == ("True", "MinimumReplicasAvailable")
    assert not d.status.available_replicas
    assert d.status.unavailable_replicas == 1
    assert d.status.replicas == 1  # a crash-looping pod still exists
    assert harness.targets() == []

    (harness.records / "crash").unlink()
    wait_for(lambda: rolled_out(harness, name, 1), timeout=30, what="recovery")
    (pod,) = runner.pods()
    assert pod.name == first.name  # restarted in place, like a container
    assert pod.port == first.port
    assert pod.restarts >= 2
    assert pod.log_path.read_text().count(" start #") == pod.restarts + 1

    def ready_again() -> Any:
        found = pod_objects(harness).get(first.name)
        return found if found and pod_conditions(found)["Ready"][0] == "True" else None

    recovered = wait_for(ready_again, what="the Pod object Ready again")
    (container,) = recovered.status.container_statuses
    assert container.state.running is not None
    assert container.restart_count >= 2
    assert container.last_state.terminated.reason == "Error"  # how the last one ended

    apps(harness).delete_namespaced_deployment(name, harness.namespace)
    wait_for(lambda: runner.pods() == (), what="pods of the deleted Deployment to stop")
    wait_for(lambda: not pod_objects(harness), what="the Pod object to be deleted")
    pid = pod.pid
    assert pid is not None
    wait_for(lambda: not alive(pid), what="the process to end")
    assert harness.targets() == []


STARTUP_SCALE = 0.02
"""Wall seconds per modelled startup second: the example's ~111 s start in ~2.2 s."""
DEADLINE_SCALE = 0.01
"""The example's progressDeadlineSeconds, set to 300 below, becomes 3 s of wall time."""


def test_pods_start_slowly_and_wait_pending_for_gpus_until_the_deadline(
    harness: Harness, control_plane: ControlPlane, tmp_path: Path
) -> None:
    """A one-GPU cluster: a pod serves only after its modelled startup; a template change's
    surge pod (spec.rollout.surge OnePod) stays Pending (the old pod holds the only GPU), the
    Deployment turns Progressing False/ProgressDeadlineExceeded, and restoring the template
    ends it."""
    doc = example(EXAMPLE, harness.namespace, replicas=1)
    doc["spec"]["rollout"] = {"surge": "OnePod"}  # spare GPUs may be used; there are none
    body: dict[str, Any] = render(doc)[0]
    assert body["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    body["spec"]["progressDeadlineSeconds"] = 300
    name = body["metadata"]["name"]
    container = body["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert pod_gpus(container) == 1
    startup = startup_seconds(args, {})
    assert 100 < startup < 130  # 8B BF16 + the EAGLE-3 head at 0.75 GB/s, graphs, engine start
    with PodRunner(
        [harness.namespace],
        sd_file=harness.sd_file,
        log_dir=tmp_path / "logs",
        command=harness.command,
        kubeconfig=control_plane.kubeconfig,
        grace_seconds=5,
        tick_seconds=0.2,
        startup_scale=STARTUP_SCALE,
        gpu_pool=1,
        deadline_scale=DEADLINE_SCALE,
    ) as runner:
        apps(harness).create_namespaced_deployment(harness.namespace, body)
        starting = wait_for(
            lambda: [p for p in runner.pods() if p.phase == "Starting"], what="a starting pod"
        )
        started_at = time.monotonic()
        assert starting[0].pid is None
        assert not starting[0].ready
        d = wait_for(lambda: rolled_out(harness, name, 1), what="the pod ready", timeout=60)
        assert time.monotonic() - started_at >= startup * STARTUP_SCALE - 0.5
        assert conditions(d)["Progressing"] == ("True", "NewReplicaSetAvailable")
        (old,) = runner.pods()

        new_args = [
            "0.9" if a == "0.92" and args[i - 1] == "--gpu-memory-utilization" else a
            for i, a in enumerate(args)
        ]
        patch = {
            "spec": {"template": {"spec": {"containers": [{"name": "vllm", "args": new_args}]}}}
        }
        apps(harness).patch_namespaced_deployment(
            name, harness.namespace, patch, _content_type="application/strategic-merge-patch+json"
        )
        pending = wait_for(
            lambda: [p for p in runner.pods() if p.phase == "Pending"], what="a Pending pod"
        )
        assert pending[0].template_hash != old.template_hash
        assert pending[0].pid is None

        def unschedulable() -> Any:
            found = pod_objects(harness).get(pending[0].name)
            scheduled = pod_conditions(found).get("PodScheduled") if found else None
            return found if scheduled and scheduled[0] == "False" else None

        pod = wait_for(unschedulable, what="the Pending pod's Pod object unschedulable")
        assert pod.status.phase == "Pending"
        assert pod_conditions(pod)["PodScheduled"] == (
            "False",
            "Unschedulable",
            "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.",
        )
        assert pod.metadata.labels[LABEL_POD_RUNNER] == "true"
        assert pod.metadata.labels["pod-template-hash"] == pending[0].template_hash
        for key, value in body["spec"]["selector"]["matchLabels"].items():
            assert pod.metadata.labels[key] == value  # the operator finds it by the selector
        serving = pod_objects(harness)[old.name]
        assert pod_conditions(serving)["Ready"][0] == "True"
        assert serving.status.container_statuses[0].state.running is not None

        def timed_out() -> Any:
            d = apps(harness).read_namespaced_deployment(name, harness.namespace)
            reason = conditions(d).get("Progressing")
            return d if reason == ("False", "ProgressDeadlineExceeded") else None

        d = wait_for(timed_out, what="ProgressDeadlineExceeded", timeout=60)
        s = d.status
        assert (s.replicas, s.updated_replicas, s.ready_replicas) == (2, 1, 1)
        assert s.unavailable_replicas == 1
        assert conditions(d)["Available"] == ("True", "MinimumReplicasAvailable")
        assert [(p.name, p.ready) for p in runner.pods() if p.phase == "Ready"] == [
            (old.name, True)
        ]  # the old pod still serves

        # Back to the configuration that ran: the old pod is current again, the surge pod goes.
        patch["spec"]["template"]["spec"]["containers"][0]["args"] = args
        apps(harness).patch_namespaced_deployment(
            name, harness.namespace, patch, _content_type="application/strategic-merge-patch+json"
        )
        d = wait_for(
            lambda: (d2 := rolled_out(harness, name, 1)) and d2.metadata.generation == 3 and d2,
            what="the restored template",
        )
        assert conditions(d)["Progressing"] == ("True", "NewReplicaSetAvailable")
        assert [p.name for p in runner.pods()] == [old.name]
        wait_for(
            lambda: list(pod_objects(harness)) == [old.name], what="the surge Pod object deleted"
        )
    assert not pod_objects(harness)  # a stopped runner leaves no Pod object behind


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_command_stops_children_when_it_ends(
    harness: Harness, control_plane: ControlPlane, tmp_path: Path, sig: signal.Signals
) -> None:
    """SIGTERM: a clean stop. SIGKILL: PR_SET_PDEATHSIG still takes the children down."""
    command = [
        sys.executable,
        "-c",
        "from specpilot_lab.sim.podrunner import podrunner; podrunner()",
        "--namespace", harness.namespace,
        "--command", shlex.join(harness.command),
        "--sd-file", str(harness.sd_file),
        "--log-dir", str(tmp_path / "logs"),
        "--time-scale", "2",
    ]  # fmt: skip
    log = tmp_path / "podrunner.log"
    env = {**os.environ, "KUBECONFIG": str(control_plane.kubeconfig)}
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        name = create(harness, replicas=1)["metadata"]["name"]
        wait_for(lambda: rolled_out(harness, name, 1), what=log.read_text)
        (group,) = harness.targets()
        child = int(next(harness.records.glob("*.json")).name.split(".")[-2])
        assert harness.record(child)["env"]["SPECPILOT_SIM_TIME_SCALE"] == "2"
        assert group["labels"]["pod"] == harness.record(child)["env"]["SPECPILOT_POD_NAME"]
        process.send_signal(sig)
        code = process.wait(timeout=15)
        assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL), log.read_text()
        wait_for(lambda: not alive(child), timeout=10, what="the child to end")
        if sig == signal.SIGTERM:
            assert harness.targets() == []
            assert "stopped 1 process(es)" in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# Pure parts (no server) --------------------------------------------------------------------------


def test_rewrite_args_keeps_everything_but_host_and_port() -> None:
    args = ["m", "--host", "0.0.0.0", "--max-model-len", "8", "--port=8000", "--port", "9"]
    assert rewrite_args(args, 1234) == [
        "m", "--host", "127.0.0.1", "--max-model-len", "8", "--port=1234", "--port", "9",
    ]  # fmt: skip
    assert rewrite_args(["m"], 5) == ["m", "--host", "127.0.0.1", "--port", "5"]


SURGE = Strategy(recreate=False, max_surge=1, max_unavailable=0)
ONE_AT_A_TIME = Strategy(recreate=False, max_surge=0, max_unavailable=1)
RECREATE = Strategy(recreate=True, max_surge=0, max_unavailable=0)


def pod(name: str, h: str, index: int, ready: bool) -> PodState:
    return PodState(name, h, index, ready)


def test_rollout_surges_one_pod_and_keeps_ready_old_pods_until_replaced() -> None:
    old = [pod("a-0", "a", 0, True), pod("a-1", "a", 1, True)]
    assert rollout_step("b", 2, old, SURGE) == RolloutStep(start=1, stop=())
    step = rollout_step("b", 2, [*old, pod("b-0", "b", 0, True)], SURGE)
    assert (step.start, step.stop) == (1, ("a-1",))
    step = rollout_step(
        "b", 2, [old[0], pod("b-0", "b", 0, True), pod("b-1", "b", 1, False)], SURGE
    )
    assert (step.start, step.stop) == (0, ())
    step = rollout_step("b", 2, [pod("a-0", "a", 0, False), pod("b-0", "b", 0, False)], SURGE)
    assert (step.start, step.stop) == (1, ("a-0",))
    step = rollout_step("b", 1, [pod("b-0", "b", 0, True), pod("b-1", "b", 1, False)], SURGE)
    assert (step.start, step.stop) == (0, ("b-1",))
    assert rollout_step("b", 3, [], SURGE).start == 3
    assert set(rollout_step("b", 0, old, SURGE).stop) == {"a-0", "a-1"}


def test_rollout_without_surge_replaces_one_pod_at_a_time() -> None:
    old = [pod("a-0", "a", 0, True), pod("a-1", "a", 1, True)]
    # An old pod stops and its replacement starts (on the GPUs the old one frees).
    assert rollout_step("b", 2, old, ONE_AT_A_TIME) == RolloutStep(start=1, stop=("a-1",))
    # Nothing more while the new pod is not ready: one replica down at most.
    step = rollout_step("b", 2, [old[0], pod("b-0", "b", 0, False)], ONE_AT_A_TIME)
    assert step == RolloutStep(start=0, stop=())
    step = rollout_step("b", 2, [old[0], pod("b-0", "b", 0, True)], ONE_AT_A_TIME)
    assert step == RolloutStep(start=1, stop=("a-0",))
    # One replica: the only pod stops first; an outage until the new one is ready.
    step = rollout_step("b", 1, [old[0]], ONE_AT_A_TIME)
    assert step == RolloutStep(start=1, stop=("a-0",))


def test_recreate_stops_every_old_pod_before_starting_new_ones() -> None:
    old = [pod("a-0", "a", 0, True), pod("a-1", "a", 1, False)]
    assert rollout_step("b", 2, old, RECREATE) == RolloutStep(start=0, stop=("a-0", "a-1"))
    assert rollout_step("b", 2, [], RECREATE) == RolloutStep(start=2, stop=())


def test_the_strategy_is_resolved_as_the_deployment_controller_does() -> None:
    def deployment(strategy: dict[str, Any] | None) -> dict[str, Any]:
        return {"spec": {"strategy": strategy} if strategy is not None else {}}

    assert rollout_strategy(deployment(None), 1) == Strategy(False, 1, 0)  # 25% of 1
    assert rollout_strategy(deployment(None), 8) == Strategy(False, 2, 2)
    rolling = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    assert rollout_strategy(deployment(rolling), 3) == ONE_AT_A_TIME
    both_zero = {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}}
    assert rollout_strategy(deployment(both_zero), 3) == ONE_AT_A_TIME
    assert rollout_strategy(deployment({"type": "Recreate"}), 3) == RECREATE


def test_status_is_written_only_when_it_changes() -> None:
    deployment: dict[str, Any] = {
        "metadata": {"name": "d", "generation": 4},
        "spec": {"replicas": 2, "template": {"metadata": {"labels": {"a": "b"}}}},
    }
    h = template_hash(deployment["spec"]["template"])
    pods = [PodState("p0", h, 0, True), PodState("p1", "old", 0, True)]
    status = deployment_status(deployment, pods, "2024-01-01T00:00:00Z")
    assert status["observedGeneration"] == 4
    assert (status["replicas"], status["updatedReplicas"], status["readyReplicas"]) == (2, 1, 2)
    assert [c["reason"] for c in status["conditions"]] == [
        "MinimumReplicasAvailable",
        "ReplicaSetUpdated",
    ]
    # The API server drops zero counts; timestamps are kept while a condition stays the same.
    stored = {k: v for k, v in status.items() if v != 0}
    assert not status_differs(stored, status)
    later = deployment_status({**deployment, "status": stored}, pods, "2030-01-01T00:00:00Z")
    assert later == status
    assert status_differs(stored, deployment_status({**deployment, "status": stored}, [], "x"))


def test_gpus_and_startup_from_the_rendered_pod() -> None:
    assert pod_gpus({"resources": {"limits": {"nvidia.com/gpu": "4"}}}) == 4
    assert pod_gpus({"resources": {"requests": {"amd.com/gpu": 2}}}) == 2
    assert pod_gpus({"resources": {"limits": {"cpu": "8"}}}) == 0
    seventy_b = [
        "RedHatAI/Meta-Llama-3.1-70B-Instruct-quantized.w8a8", "--tensor-parallel-size", "2",
        "--speculative-config",
        '{"model": "meta-llama/Llama-3.1-8B-Instruct", "num_speculative_tokens": 3}',
    ]  # fmt: skip
    assert startup_seconds(seventy_b, {}) == pytest.approx(208.3, abs=0.5)  # planning/startup.py
    assert startup_seconds(seventy_b, {}, load_gb_per_s=1.5) == pytest.approx(149.1, abs=0.5)
    assert startup_seconds(["no/such-model"], {}) == DEFAULT_STARTUP_S  # the planner's default


def test_progressing_times_out_until_the_rollout_completes() -> None:
    deployment: dict[str, Any] = {
        "metadata": {"name": "d", "generation": 2},
        "spec": {"replicas": 1, "template": {"metadata": {"labels": {"a": "b"}}}},
    }
    h = template_hash(deployment["spec"]["template"])
    stuck = [PodState("old", "old", 0, True), PodState("new", h, 0, False)]
    status = deployment_status(deployment, stuck, "t", timed_out=True)
    progressing = status["conditions"][1]
    assert (progressing["status"], progressing["reason"]) == ("False", "ProgressDeadlineExceeded")
    assert progressing["message"] == f'ReplicaSet "d-{h}" has timed out progressing.'
    done = deployment_status(deployment, [PodState("new", h, 0, True)], "t", timed_out=True)
    assert done["conditions"][1]["reason"] == "NewReplicaSetAvailable"
    # Progress: a new pod ready moves the mark; a probe of the same pods does not.
    assert progress_mark(deployment, stuck) == progress_mark(deployment, list(stuck))
    assert progress_mark(deployment, stuck) != progress_mark(
        deployment, [stuck[0], PodState("new", h, 0, True)]
    )


def test_prometheus_label_names() -> None:
    assert prometheus_label("specpilot.io/resource") == "specpilot_io_resource"
    assert prometheus_label("app.kubernetes.io/name") == "app_kubernetes_io_name"
    assert prometheus_label("9lives") == "_9lives"


def test_pod_objects_say_what_the_scheduler_and_the_kubelet_would() -> None:
    deployment: dict[str, Any] = {
        "metadata": {"name": "d", "namespace": "ns", "uid": "u-1"},
        "spec": {
            "template": {
                "metadata": {"labels": {"app": "x"}, "annotations": {"a": "b"}},
                "spec": {
                    "containers": [
                        {
                            "name": "vllm",
                            "image": "vllm/vllm-openai:v0.33.0",
                            "resources": {"limits": {"amd.com/gpu": "2", "cpu": "4"}},
                        }
                    ]
                },
            }
        },
    }
    pod = pod_manifest(deployment, "d-abc-0", "abc")
    assert pod["metadata"]["labels"] == {
        "app": "x",
        "pod-template-hash": "abc",
        LABEL_POD_RUNNER: "true",
    }
    assert pod["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert pod["spec"] == deployment["spec"]["template"]["spec"]
    assert gpu_resource({"resources": {}}) == "nvidia.com/gpu"
    pending = pod_status(PodObjectState(scheduled=False), pod)
    assert pending == {
        "phase": "Pending",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 Insufficient amd.com/gpu.",
            }
        ],
    }
    loading = pod_status(PodObjectState(scheduled=True, started_at="t0", scheduled_at="t0"), pod)
    assert loading["phase"] == "Running"
    assert {c["type"]: c["status"] for c in loading["conditions"]}["Ready"] == "False"
    assert loading["containerStatuses"][0]["state"] == {"running": {"startedAt": "t0"}}
    ready = pod_status(
        PodObjectState(scheduled=True, ready=True, started_at="t0", scheduled_at="t0"), pod
    )
    assert {c["type"]: c["status"] for c in ready["conditions"]}["Ready"] == "True"
    crashed = ContainerExit(exit_code(-9), "t1", "t2")  # SIGKILL: 137, an Error (not an OOM)
    waiting = pod_status(
        PodObjectState(scheduled=True, exits=3, backoff_seconds=4.0, last_exit=crashed), pod
    )
    (container,) = waiting["containerStatuses"]
    assert container["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert container["restartCount"] == 2  # the third container waits to start
    assert container["lastState"] == {
        "terminated": {"exitCode": 137, "reason": "Error", "startedAt": "t1", "finishedAt": "t2"}
    }
    # Only what changed is sent; nothing when nothing did.
    assert status_patch(None, pending) == pending
    assert status_patch(pending, pending) == {}
    patch = status_patch(pending, loading)
    assert set(patch) == {"phase", "conditions", "containerStatuses", "startTime"}
    assert status_patch(loading, ready) == {
        "conditions": ready["conditions"],
        "containerStatuses": ready["containerStatuses"],
    }
    assert status_patch(loading, pending)["containerStatuses"] is None


def test_a_failed_runs_termination_message_is_its_log_tail_cut_as_the_kubelet_cuts_it(
    tmp_path: Path,
) -> None:
    log = tmp_path / "pod.log"
    earlier = b"--- start #0\nan earlier run's last words\n"
    run = "".join(f"line {i}\n" for i in range(100)).encode()
    log.write_bytes(earlier + b"--- start #1\n" + run)
    since = len(earlier) + len(b"--- start #1\n")
    tail = log_tail(log, since)
    assert tail.splitlines() == [f"line {i}" for i in range(20, 100)]  # the last 80 lines
    log.write_bytes(earlier + b"x" * 5000 + b"\nTraceback: out of memory\n")
    tail = log_tail(log, len(earlier))
    assert len(tail.encode()) == 2048  # or the last 2048 bytes, the smaller
    assert tail.endswith("Traceback: out of memory\n")
    assert log_tail(tmp_path / "missing.log", 0) == ""
    exited = ContainerExit(1, "t1", "t2", message="Traceback: out of memory\n")
    assert exited.as_terminated()["message"] == "Traceback: out of memory\n"
    assert "message" not in ContainerExit(0, "t1", "t2").as_terminated()
