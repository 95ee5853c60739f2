"""The Kubernetes writer, the status writer and the Event writer against a local HTTP server that
answers the few API paths they use and fails on command (409, 5xx, 403, no answer); and the
reconcile handler's use of the same writers. No API server, no kopf."""

from __future__ import annotations

import base64
import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import kopf
import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from prometheus_client import REGISTRY

from specpilot import reconcile
from specpilot.adapters import handlers
from specpilot.adapters.checkpoints import CheckpointReader
from specpilot.adapters.kube import ApplyError, KubeWriter, SecretError
from specpilot.adapters.runtime import KeyedLocks, Runtime
from specpilot.adapters.writers import StatusConflictError, StatusWriteError
from specpilot.api.admin import AdminPolicy
from specpilot.api.models import GROUP, PLURAL, VERSION, SecretKeyRef
from tests.adapters.fakes import FakeClock, FakeKube
from tests.conftest import CHECKPOINTS, manifest

RESOURCE_PATH = f"/apis/{GROUP}/{VERSION}/namespaces/ml/{PLURAL}/chat"

OFFLINE = CheckpointReader(use_hub=False)
"""No test reaches the hub: models are planned from the catalog."""


class LocalApiServer:
    """Status patches answered from `status_answers` (HTTP codes in order, then 200, or 0 for
    no answer until the test ends); Events and Secrets as a real server would."""

    def __init__(self) -> None:
        self.status_answers: list[int] = []
        self.patches: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.secrets: dict[str, dict[str, Any]] = {}
        self.secret_status = 200
        self.pods: list[dict[str, Any]] = []
        self.pods_status = 200
        self.pod_queries: list[str] = []
        self.released = threading.Event()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> dict[str, Any]:
                length = int(self.headers.get("Content-Length", 0))
                body: dict[str, Any] = json.loads(self.rfile.read(length) or b"{}")
                return body

            def do_PATCH(self) -> None:
                patch = self._body()
                answer = owner.status_answers.pop(0) if owner.status_answers else 200
                if answer == 0:
                    owner.released.wait()
                    return
                if answer != 200:
                    self._send(answer, status_body(answer))
                    return
                owner.patches.append(patch)
                version = int(patch["metadata"]["resourceVersion"]) + 1
                self._send(200, resource(str(version)) | {"status": patch["status"]})

            def do_POST(self) -> None:
                owner.events.append(self._body())
                self._send(201, owner.events[-1])

            def do_GET(self) -> None:
                name = self.path.split("?")[0].rsplit("/", 1)[-1]
                if self.path.split("?")[0].endswith("/pods"):
                    owner.pod_queries.append(self.path)
                    if owner.pods_status != 200:
                        self._send(owner.pods_status, status_body(owner.pods_status))
                    else:
                        self._send(200, {"kind": "PodList", "apiVersion": "v1",
                                         "metadata": {}, "items": owner.pods})  # fmt: skip
                    return
                if "/secrets/" in self.path:
                    if owner.secret_status != 200:
                        self._send(owner.secret_status, status_body(owner.secret_status))
                    elif name in owner.secrets:
                        self._send(200, owner.secrets[name])
                    else:
                        self._send(404, status_body(404))
                    return
                self._send(200, resource("7"))

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


def status_body(code: int) -> dict[str, Any]:
    reasons = {403: "Forbidden", 404: "NotFound", 409: "Conflict", 500: "InternalError"}
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
            "reason": reasons.get(code, ""), "message": f"injected {code}"}  # fmt: skip


def resource(version: str) -> dict[str, Any]:
    body = manifest()
    body["metadata"] |= {"name": "chat", "namespace": "ml", "uid": "u1",
                         "resourceVersion": version, "generation": 1}  # fmt: skip
    return body


@pytest.fixture
def server() -> Iterator[LocalApiServer]:
    made = LocalApiServer()
    yield made
    made.stop()


def runtime_for(server: LocalApiServer, request_timeout: float = 5.0) -> Runtime:
    configuration = k8s.Configuration(host=server.url)
    kube = KubeWriter(k8s.ApiClient(configuration), request_timeout=request_timeout)
    return Runtime(kube=kube, admin=AdminPolicy(), clock=FakeClock(), checkpoints=OFFLINE)


def failures(writer: str) -> float:
    labels = {"writer": writer}
    return REGISTRY.get_sample_value("specpilot_status_write_errors_total", labels) or 0.0


def test_a_status_write_keeps_the_answer_as_the_newest_copy(server: LocalApiServer) -> None:
    runtime = runtime_for(server)
    written = runtime.status.write(resource("7"), {"phase": "Ready"}, writer="control")
    assert written["metadata"]["resourceVersion"] == "8"
    assert server.patches[0]["metadata"]["resourceVersion"] == "7"  # the precondition
    held = runtime.bodies.get(("ml", "chat"))
    assert held is not None
    assert held["metadata"]["resourceVersion"] == "8"


def test_a_conflict_is_raised_for_a_redo_and_counted(server: LocalApiServer) -> None:
    server.status_answers = [409]
    runtime = runtime_for(server)
    labels = {"writer": "control"}
    before = REGISTRY.get_sample_value("specpilot_status_conflicts_total", labels) or 0.0
    with pytest.raises(StatusConflictError):
        runtime.status.write(resource("7"), {"phase": "Ready"}, writer="control")
    assert REGISTRY.get_sample_value("specpilot_status_conflicts_total", labels) == before + 1
    assert server.events == []  # a conflict is routine, not news


@pytest.mark.parametrize(
    ("answer", "words"),
    [(500, "HTTP 500"), (403, "forbidden by RBAC (injected 403)"), (0, "ReadTimeoutError")],
)
def test_a_failed_status_write_is_an_event_and_a_count(
    server: LocalApiServer, answer: int, words: str
) -> None:
    server.status_answers = [answer]
    runtime = runtime_for(server, request_timeout=0.2)
    before = failures("control")
    with pytest.raises(StatusWriteError, match=words.split(" (")[0]):
        runtime.status.write(resource("7"), {"phase": "Ready"}, writer="control")
    (event,) = server.events
    assert (event["type"], event["reason"]) == ("Warning", "StatusWriteFailed")
    assert words in event["message"]
    assert event["involvedObject"]["uid"] == "u1"
    assert event["source"]["component"] == "specpilot"
    assert event["lastTimestamp"].startswith("2026-11-20T10:00:00")  # the injected clock
    assert failures("control") == before + 1


def test_an_event_that_cannot_be_posted_does_not_fail_the_caller(server: LocalApiServer) -> None:
    server.stop()  # nothing listens any more
    runtime = runtime_for(server, request_timeout=0.2)
    runtime.events.post(resource("7"), "Normal", "Applied", "x" * 5000)  # logged, not raised


def test_secret_reads_name_what_to_fix(server: LocalApiServer) -> None:
    kube = runtime_for(server, request_timeout=0.2).kube
    ref = SecretKeyRef(name="prom-token", key="token")
    with pytest.raises(SecretError, match="Secret ml/prom-token does not exist"):
        kube.read_secret_key("ml", ref)
    server.secrets["prom-token"] = {
        "metadata": {"name": "prom-token", "annotations": {"a": "b"}},
        "data": {"token": base64.b64encode(b"secret\n").decode()},
    }
    value = kube.read_secret_key("ml", ref)
    assert (value.value, value.annotations) == ("secret", {"a": "b"})
    server.secret_status = 403
    with pytest.raises(SecretError, match=r"forbidden by RBAC.*secretAccess"):
        kube.read_secret_key("ml", ref)


def test_pods_are_listed_by_selector_and_a_refusal_names_the_rule(server: LocalApiServer) -> None:
    kube = runtime_for(server).kube
    server.pods = [PENDING_POD]
    assert kube.list_pods("ml", {"b": "2", "a": "1"}) == [PENDING_POD]
    (query,) = server.pod_queries
    assert query.startswith("/api/v1/namespaces/ml/pods?")
    assert "labelSelector=a%3D1%2Cb%3D2" in query
    assert "limit=100" in query
    server.pods_status = 403
    with pytest.raises(ApplyError, match=r"list Pods in ml .*forbidden by RBAC"):
        kube.list_pods("ml", {"a": "1"})


# The reconcile handler over the same writers (FakeKube: apply succeeds, status as told).


def test_a_reconcile_redoes_on_conflict_and_uses_the_one_event_writer() -> None:
    body = resource("7")
    kube = FakeKube(body, status_answers=[ApiException(status=409, reason="Conflict")])
    runtime = Runtime(kube=kube, admin=AdminPolicy(), clock=FakeClock(), checkpoints=OFFLINE)  # type: ignore[arg-type]
    runtime.bodies.observe(body)
    assert handlers.reconcile_latest("ml", "chat", runtime, "create")
    assert len(kube.status_writes) == 1
    assert kube.resource_reads == 1  # the held copy first, a read after the 409
    assert "Applied" in [reason for _, reason, _ in kube.events]
    assert runtime.registry.get(("ml", "chat")) is not None
    assert len(runtime.locks) == 0  # the resource's lock is gone once nobody holds it


def test_a_reconcile_whose_status_write_fails_retries_later_with_an_event() -> None:
    body = resource("7")
    kube = FakeKube(body, status_answers=[ApiException(status=500, reason="Internal")])
    runtime = Runtime(kube=kube, admin=AdminPolicy(), clock=FakeClock(), checkpoints=OFFLINE)  # type: ignore[arg-type]
    before = failures("reconcile")
    with pytest.raises(kopf.TemporaryError, match="HTTP 500"):
        handlers.reconcile_latest("ml", "chat", runtime, "create")
    assert [reason for _, reason, _ in kube.events] == ["StatusWriteFailed"]
    assert failures("reconcile") == before + 1


class RecordingKube(FakeKube):
    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body)
        self.applied: list[dict[str, Any]] = []

    def apply(self, obj: dict[str, Any], owner: Any) -> tuple[dict[str, Any], str]:
        self.applied.append(obj)
        return super().apply(obj, owner)


def test_a_reconcile_plans_and_renders_from_the_checkpoints_it_reads() -> None:
    """An FP8 checkpoint with quantization: fp8 (the issue's case): its method is read from its
    config.json, so the pods get no --quantization vLLM would refuse."""
    body = resource("7")
    body["spec"]["target"] |= {
        "model": "RedHatAI/Meta-Llama-3-8B-Instruct-FP8",
        "quantization": "fp8",
    }
    body["spec"]["speculation"] = {"method": "ngram"}
    kube = RecordingKube(body)
    reader = CheckpointReader(local_dir=CHECKPOINTS, use_hub=False)
    runtime = Runtime(kube=kube, admin=AdminPolicy(), clock=FakeClock(), checkpoints=reader)  # type: ignore[arg-type]
    runtime.bodies.observe(body)
    assert handlers.reconcile_latest("ml", "chat", runtime, "create")
    args = kube.applied[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "RedHatAI/Meta-Llama-3-8B-Instruct-FP8"
    assert "--quantization" not in args
    plan = kube.status_writes[-1]["plan"]
    assert plan["weightsGBPerGPU"] == pytest.approx(9.081 / 2, abs=0.01)


class RollingKube(RecordingKube):
    """Stored Deployments that answer an apply: a changed pod template starts a rollout the
    deployment controller has not seen yet; `complete` names those whose rollout is done."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body)
        self.complete: set[str] = set()

    def apply(self, obj: dict[str, Any], owner: Any) -> tuple[dict[str, Any], str]:
        applied, change = super().apply(obj, owner)
        if obj["kind"] != "Deployment":
            return applied, change
        name = obj["metadata"]["name"]
        stored = self.deployments.get(name)
        digest = reconcile.ANNOTATION_TEMPLATE_DIGEST
        same = stored is not None and (
            stored["metadata"]["annotations"][digest] == obj["metadata"]["annotations"][digest]
        )
        generation = stored["metadata"]["generation"] + (0 if same else 1) if stored else 1
        done = name in self.complete
        replicas = obj["spec"]["replicas"]
        applied["metadata"]["generation"] = generation
        applied["status"] = {
            "observedGeneration": generation if done else generation - 1,
            "replicas": replicas,
            "updatedReplicas": replicas if done else 0,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
        }
        self.deployments[name] = applied
        return applied, change


def test_the_control_replicas_change_only_after_the_servers_rollout() -> None:
    """A change of both (here maxModelLen) must not restart the server and its control replica
    at once: with one of each, nothing would serve for a startup."""
    body = resource("7")
    body["spec"]["policy"] = {"mode": "auto", "controlReplicas": 1}
    kube = RollingKube(body)
    runtime = Runtime(kube=kube, admin=AdminPolicy(), clock=FakeClock(), checkpoints=OFFLINE)  # type: ignore[arg-type]
    runtime.bodies.observe(body)
    kube.complete = {"chat", "chat-baseline"}
    assert handlers.reconcile_latest("ml", "chat", runtime, "create")
    assert [o["metadata"]["name"] for o in kube.applied if o["kind"] == "Deployment"] == [
        "chat",
        "chat-baseline",
    ]  # a new resource: both at once (nothing runs yet that could serve)
    before = kube.deployments["chat-baseline"]["metadata"]["annotations"]

    changed = resource("8") | {"spec": {**body["spec"]}}
    changed["spec"]["target"] = {**body["spec"]["target"], "maxModelLen": 4096}
    runtime.bodies.observe(changed)
    kube.applied.clear()
    kube.complete = set()  # the server's new pods are loading
    assert handlers.reconcile_latest("ml", "chat", runtime, "update")
    assert [o["metadata"]["name"] for o in kube.applied if o["kind"] == "Deployment"] == ["chat"]
    assert kube.deployments["chat-baseline"]["metadata"]["annotations"] == before
    rolled = next(c for c in kube.status_writes[-1]["conditions"] if c["type"] == "RolledOut")
    assert rolled["reason"] == "RolloutInProgress"
    assert (
        "chat-baseline keeps its running pods until the rollout of chat is complete"
        in (rolled["message"])
    )

    kube.applied.clear()
    kube.complete = {"chat"}  # the server's rollout completed: its status change reconciles
    assert handlers.reconcile_latest("ml", "chat", runtime, "drift")
    assert [o["metadata"]["name"] for o in kube.applied if o["kind"] == "Deployment"] == [
        "chat",
        "chat-baseline",
    ]
    assert kube.deployments["chat-baseline"]["metadata"]["annotations"] != before
    rolled = next(c for c in kube.status_writes[-1]["conditions"] if c["type"] == "RolledOut")
    assert rolled["reason"] == "RolloutInProgress"  # now the control replica rolls
    assert "keeps its running pods" not in rolled["message"]


def test_locks_keep_one_reconcile_per_resource_and_are_pruned() -> None:
    locks = KeyedLocks()
    inside = threading.Event()
    leave = threading.Event()
    order: list[str] = []

    def first() -> None:
        with locks.hold(("ml", "chat")):
            inside.set()
            leave.wait()
            order.append("first")

    thread = threading.Thread(target=first)
    thread.start()
    inside.wait()
    with locks.hold(("ml", "other")):
        order.append("other")  # another resource is not blocked
    leave.set()
    thread.join()
    with locks.hold(("ml", "chat")):
        order.append("second")
    assert order == ["other", "first", "second"]
    assert len(locks) == 0


PENDING_POD: dict[str, Any] = {
    "metadata": {"name": "chat-abc-1", "namespace": "ml", "labels": {}},
    "status": {
        "phase": "Pending",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.",
            }
        ],
    },
}


class StuckKube(RecordingKube):
    """Every applied Deployment has timed out progressing, with one pod of the old template
    ready and a surge pod Pending (`pods`, by the Deployment's selector)."""

    def apply(self, obj: dict[str, Any], owner: Any) -> tuple[dict[str, Any], str]:
        applied, change = super().apply(obj, owner)
        if obj["kind"] == "Deployment":
            applied["metadata"]["generation"] = 2
            applied["status"] = {
                "observedGeneration": 2,
                "replicas": 2,
                "updatedReplicas": 1,
                "readyReplicas": 1,
                "availableReplicas": 1,
                "unavailableReplicas": 1,
                "conditions": [
                    {
                        "type": "Progressing",
                        "status": "False",
                        "reason": "ProgressDeadlineExceeded",
                        "message": 'ReplicaSet "chat-abc" has timed out progressing.',
                    }
                ],
            }
        return applied, change


def test_a_stuck_rollout_names_its_pods_cause_and_a_failed_pod_read_leaves_it_out() -> None:
    body = resource("7")
    kube = StuckKube(body)
    runtime = Runtime(kube=kube, admin=AdminPolicy(), clock=FakeClock(), checkpoints=OFFLINE)  # type: ignore[arg-type]
    runtime.bodies.observe(body)
    assert handlers.reconcile_latest("ml", "chat", runtime, "create")
    server = next(o for o in kube.applied if o["kind"] == "Deployment")
    selector = server["spec"]["selector"]["matchLabels"]
    assert kube.pod_lists == [("ml", selector)]  # the stuck Deployment's, by its selector
    rolled = next(c for c in kube.status_writes[-1]["conditions"] if c["type"] == "RolledOut")
    assert rolled["reason"] == "RolloutStuck"
    assert "cause" not in rolled["message"]  # no pods of its own yet: as before

    pending = {**PENDING_POD, "metadata": {**PENDING_POD["metadata"], "labels": selector}}
    kube.pods = [pending, {**pending, "metadata": {**pending["metadata"], "namespace": "other"}}]
    kube.status_writes.clear()
    fresh = resource("8")  # a fresh resource: RolloutStuck is news again
    runtime.bodies.observe(fresh)
    assert handlers.reconcile_latest("ml", "chat", runtime, "drift")
    rolled = next(c for c in kube.status_writes[-1]["conditions"] if c["type"] == "RolledOut")
    assert rolled["message"].endswith(
        "; cause: 1 pod Pending: 0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    )
    stuck = [m for _, reason, m in kube.events if reason == "RolloutStuck"]
    assert stuck[-1] == rolled["message"]

    kube.pods_error = ApplyError("list Pods in ml (...): forbidden by RBAC")
    kube.status_writes.clear()
    runtime.bodies.observe(resource("9"))
    assert handlers.reconcile_latest("ml", "chat", runtime, "drift")  # the reconcile goes on
    rolled = next(c for c in kube.status_writes[-1]["conditions"] if c["type"] == "RolledOut")
    assert rolled["reason"] == "RolloutStuck"
    assert "Insufficient" not in rolled["message"]  # the Deployment's words alone
