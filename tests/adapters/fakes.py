"""In-process stand-ins for the operator's clients and clock, for the adapter tier."""

from __future__ import annotations

import datetime
import threading
from collections.abc import Mapping
from typing import Any

from specpilot.adapters.kube import SecretError, SecretKey
from specpilot.adapters.prometheus import Endpoint, MetricsError, PrometheusClient
from specpilot.api.models import SecretKeyRef
from specpilot.control.signals import Readings


class FakeClock:
    """Moves only when told: `advance` moves wall and monotonic time together."""

    def __init__(self) -> None:
        self.wall = datetime.datetime(2026, 11, 20, 10, 0, tzinfo=datetime.UTC)
        self.mono = 1000.0

    def now(self) -> datetime.datetime:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += datetime.timedelta(seconds=seconds)
        self.mono += seconds


class FakePrometheus(PrometheusClient):
    """Endpoints by URL: 'good' answers at once, 'fail' raises, 'refuse' raises as a 401 does,
    'hang' blocks its thread until `release()`."""

    def __init__(self, behaviour: dict[str, str], clock: FakeClock) -> None:
        super().__init__(clock)
        self.behaviour = behaviour
        self.reads: list[Endpoint] = []
        self.released = threading.Event()

    def read(
        self, endpoint: Endpoint, window: str, deadline: float | None = None
    ) -> tuple[Readings, float]:
        self.reads.append(endpoint)
        what = self.behaviour.get(endpoint.url, "good")
        if what == "fail":
            raise MetricsError(f"Prometheus at {endpoint.url} unreachable (injected)")
        if what == "refuse":
            raise MetricsError(
                f"Prometheus at {endpoint.url} refused a query: HTTP 401 unauthorized",
                credentials_refused=True,
            )
        if what == "hang":
            self.released.wait()
            raise MetricsError("released")
        return {}, self.clock.now().timestamp()

    def release(self) -> None:
        self.released.set()


class FakeKube:
    """The KubeWriter calls the control loop and the writers make: one resource body, Secrets by
    name, status writes answered from `status_answers` (an exception or None for success, in
    order, then success), Events recorded."""

    def __init__(
        self,
        body: dict[str, Any] | None = None,
        secrets: dict[str, SecretKey] | None = None,
        status_answers: list[Exception | None] | None = None,
    ) -> None:
        self.body = body
        self.secrets = secrets or {}
        self.status_answers = list(status_answers or [])
        self.secret_reads: list[str] = []
        self.resource_reads = 0
        self.status_writes: list[dict[str, Any]] = []
        self.events: list[tuple[str, str, str]] = []
        self.deployments: dict[str, dict[str, Any]] = {}
        """Stored Deployments by name, as get_deployment answers them."""
        self.pods: list[dict[str, Any]] = []
        """Stored Pods, as list_pods answers them (by namespace and labels)."""
        self.pods_error: Exception | None = None
        """Raised by list_pods instead, when set."""
        self.pod_lists: list[tuple[str, dict[str, str]]] = []

    def apply(self, obj: dict[str, Any], owner: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        applied = {**obj, "metadata": {**obj["metadata"], "resourceVersion": "1"}}
        return applied, "created"

    def get_resource(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.resource_reads += 1
        return self.body

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.deployments.get(name)

    def list_pods(self, namespace: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        self.pod_lists.append((namespace, dict(selector)))
        if self.pods_error is not None:
            raise self.pods_error
        return [
            pod
            for pod in self.pods
            if pod["metadata"].get("namespace") == namespace
            and all(pod["metadata"].get("labels", {}).get(k) == v for k, v in selector.items())
        ]

    def read_secret_key(self, namespace: str, ref: SecretKeyRef) -> SecretKey:
        self.secret_reads.append(ref.name)
        if ref.name not in self.secrets:
            raise SecretError(f"Secret {namespace}/{ref.name} does not exist")
        return self.secrets[ref.name]

    def patch_status(self, body: Mapping[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        answer = self.status_answers.pop(0) if self.status_answers else None
        if answer is not None:
            raise answer
        self.status_writes.append(status)
        meta = dict(body["metadata"])
        meta["resourceVersion"] = str(int(meta.get("resourceVersion", "0")) + 1)
        return {**body, "metadata": meta, "status": status}

    def create_event(
        self,
        owner: Mapping[str, Any],
        type_: str,
        reason: str,
        message: str,
        at: datetime.datetime,
    ) -> None:
        self.events.append((type_, reason, message))

    def close(self) -> None:
        pass
