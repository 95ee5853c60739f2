"""The control loop's isolation and credential routing, driven with in-process fakes: a Prometheus
client whose endpoints answer, fail or hang on command, a Secret reader, and an injected clock.
No API server and no wall-clock waits: each tick is run and the loop's tasks drained."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from prometheus_client import REGISTRY

from specpilot.adapters import control_loop
from specpilot.adapters.control_loop import ControlLoop, DefaultCredentials
from specpilot.adapters.kube import NonFiniteStatusError, SecretError, SecretKey
from specpilot.adapters.prometheus import Endpoint, MetricsError, PrometheusClient
from specpilot.api.admin import PROMETHEUS_URL_ANNOTATION, AdminPolicy
from specpilot.api.models import SecretKeyRef, SpeculativeInferenceSpec
from specpilot.signals import Readings
from tests.conftest import manifest

DEFAULT = "http://prometheus.monitoring:9090"
TENANT = "http://tenant-prometheus.team-a:9090"


class FakeClient(PrometheusClient):
    """Endpoints by URL: 'good' answers at once, 'fail' raises, 'hang' never answers."""

    def __init__(self, behaviour: dict[str, str]) -> None:
        super().__init__()
        self.behaviour = behaviour
        self.reads: list[Endpoint] = []

    async def read(self, endpoint: Endpoint, window: str) -> tuple[Readings, float]:
        self.reads.append(endpoint)
        what = self.behaviour.get(endpoint.url, "good")
        if what == "fail":
            raise MetricsError(f"Prometheus at {endpoint.url} unreachable (injected)")
        if what == "hang":
            await asyncio.Event().wait()
        return {}, time.time()


class FakeSecrets:
    """The part of KubeWriter the endpoint resolution uses."""

    def __init__(self, secrets: dict[str, SecretKey]) -> None:
        self.secrets = secrets

    def read_secret_key(self, namespace: str, ref: SecretKeyRef) -> SecretKey:
        if ref.name not in self.secrets:
            raise SecretError(f"Secret {namespace}/{ref.name} does not exist")
        return self.secrets[ref.name]


class RecordingLoop(ControlLoop):
    """Records each check (resource, error) instead of reading and writing the resource."""

    def __init__(self, client: FakeClient, admin: AdminPolicy, **kwargs: Any) -> None:
        self.now = 1000.0
        super().__init__(
            writer=kwargs.pop("writer", None),  # type: ignore[arg-type]
            admin=admin,
            credentials=kwargs.pop("credentials", DefaultCredentials()),
            reconcile=lambda *_: True,
            client=client,
            clock=lambda: self.now,
            read_deadline=3600,  # a hang stays a hang for the whole test
        )
        self.checks: list[tuple[str, str, str | None]] = []

    def check_one(
        self, namespace: str, name: str, readings: Readings | None, error: str | None, at: float
    ) -> None:
        self.checks.append((namespace, name, error))

    def checked(self, namespace: str, name: str) -> list[str | None]:
        return [error for ns, n, error in self.checks if (ns, n) == (namespace, name)]


@pytest.fixture(autouse=True)
def empty_registry() -> Iterator[None]:
    control_loop.REGISTRY.clear()
    yield
    control_loop.REGISTRY.clear()


def register(namespace: str, name: str, **monitoring: Any) -> None:
    spec = SpeculativeInferenceSpec.model_validate(
        {
            "target": {"model": "meta-llama/Llama-3.1-8B-Instruct"},
            "gpus": {"type": "H100-80GB", "count": 1},
            "policy": {"interval": "1s"},
            "monitoring": monitoring,
        }
    )
    control_loop.register(namespace, name, spec)


async def ticks(loop: RecordingLoop, count: int) -> None:
    """`count` ticks one second apart on the loop's clock, each followed by every read and check
    it started that does not hang."""
    assert isinstance(loop.client, FakeClient)
    hanging = {url for url, what in loop.client.behaviour.items() if what == "hang"}
    for _ in range(count):
        await loop.tick()
        finishing = [t for t in loop.tasks if t.get_name().split(" ", 1)[1] not in hanging]
        if finishing:
            await asyncio.wait(finishing)
        loop.now += 1.0


def test_a_hanging_endpoint_does_not_delay_another_namespaces_checks() -> None:
    client = FakeClient({TENANT: "hang"})
    loop = RecordingLoop(
        client, AdminPolicy(prometheus_url=DEFAULT, allowed_prometheus_urls=(TENANT,))
    )
    for i in range(3):
        register("team-a", f"silent-{i}", prometheusUrl=TENANT)
    register("team-b", "steady")

    async def run() -> set[tuple[str, str]]:
        await ticks(loop, 10)
        return set(loop.checking)

    checking = asyncio.run(run())

    assert len(loop.checked("team-b", "steady")) == 10  # every tick, never waiting on team-a
    assert loop.checked("team-a", "silent-0") == []  # its read still hangs
    assert [e.url for e in client.reads].count(TENANT) == 1  # one read in flight, not one a tick
    assert checking == {("team-a", f"silent-{i}") for i in range(3)}  # not due while waiting


def test_a_namespace_cannot_take_every_read_slot() -> None:
    urls = [f"http://dead-{i}.team-a:9090" for i in range(6)]
    client = FakeClient(dict.fromkeys(urls, "hang"))
    loop = RecordingLoop(
        client, AdminPolicy(prometheus_url=DEFAULT, allowed_prometheus_urls=tuple(urls))
    )
    for i, url in enumerate(urls):
        register("team-a", f"dead-{i}", prometheusUrl=url)
    register("team-b", "steady")

    async def run() -> int:
        await ticks(loop, 5)
        return len(loop.reading)

    assert asyncio.run(run()) == control_loop.READS_PER_NAMESPACE
    assert len([e for e in client.reads if e.url in urls]) == control_loop.READS_PER_NAMESPACE
    assert len(loop.checked("team-b", "steady")) == 5


def test_a_failing_endpoint_is_backed_off_and_its_resources_held_with_the_reason() -> None:
    client = FakeClient({TENANT: "fail"})
    loop = RecordingLoop(
        client, AdminPolicy(prometheus_url=DEFAULT, allowed_prometheus_urls=(TENANT,))
    )
    register("team-a", "flaky", prometheusUrl=TENANT)

    asyncio.run(ticks(loop, 8))

    errors = loop.checked("team-a", "flaky")
    assert len(errors) == 8  # checked every interval, held every time
    reads = [e for e in client.reads if e.url == TENANT]
    # backed off 1 s, 2 s, 4 s after the 1st, 2nd and 3rd failures: reads at t=0, 1, 3, 7
    assert len(reads) == 4
    assert "unreachable (injected)" in str(errors[0])
    held = [e for e in errors if e and "not asking it again" in e]
    assert held
    assert all("unreachable (injected)" in e for e in held)

    client.behaviour[TENANT] = "good"
    loop.now += 60
    asyncio.run(ticks(loop, 2))
    assert loop.checked("team-a", "flaky")[-2:] == [None, None]  # recovered, breaker closed
    assert loop.health == {}


def endpoint_of(loop: ControlLoop, namespace: str, name: str) -> Endpoint | str:
    return loop._endpoint(namespace, control_loop.REGISTRY[(namespace, name)])


def test_credentials_go_only_where_their_owner_allowed(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("operator-token")
    secrets = FakeSecrets(
        {
            "bound": SecretKey(
                value="tenant-token", annotations={PROMETHEUS_URL_ANNOTATION: f"{TENANT}/"}
            ),
            "unbound": SecretKey(value="tenant-token", annotations={}),
        }
    )
    admin = AdminPolicy(prometheus_url=DEFAULT, allowed_prometheus_urls=(TENANT,))
    loop = RecordingLoop(
        FakeClient({}),
        admin,
        writer=secrets,
        credentials=DefaultCredentials(bearer_token_file=token_file),
    )
    register("team-a", "default")
    register("team-a", "default-spelled", prometheusUrl="http://Prometheus.monitoring:9090/")
    register("team-a", "tenant-plain", prometheusUrl=TENANT)
    register("team-a", "tenant-bound", prometheusUrl=TENANT,
             bearerTokenSecret={"name": "bound", "key": "token"})  # fmt: skip
    register("team-a", "tenant-unbound", prometheusUrl=TENANT,
             bearerTokenSecret={"name": "unbound", "key": "token"})  # fmt: skip
    register("team-a", "elsewhere", prometheusUrl="http://attacker.example:80",
             bearerTokenSecret={"name": "bound", "key": "token"})  # fmt: skip
    register("team-a", "elsewhere-plain", prometheusUrl="http://attacker.example:80")

    default = endpoint_of(loop, "team-a", "default")
    assert isinstance(default, Endpoint)
    assert default.bearer_token == "operator-token"
    spelled = endpoint_of(loop, "team-a", "default-spelled")
    assert isinstance(spelled, Endpoint)
    assert spelled.bearer_token == "operator-token"
    plain = endpoint_of(loop, "team-a", "tenant-plain")
    assert isinstance(plain, Endpoint)
    assert plain.bearer_token is None
    bound = endpoint_of(loop, "team-a", "tenant-bound")
    assert isinstance(bound, Endpoint)
    assert bound.bearer_token == "tenant-token"
    unbound = endpoint_of(loop, "team-a", "tenant-unbound")
    assert unbound == (
        "cannot read Prometheus credentials: Secret team-a/unbound is not bound to "
        f"{TENANT}: whoever owns the Secret annotates it {PROMETHEUS_URL_ANNOTATION}={TENANT} "
        "to allow sending it there"
    )
    for name in ("elsewhere", "elsewhere-plain"):
        refused = endpoint_of(loop, "team-a", name)
        assert isinstance(refused, str)
        assert "admin allows" in refused
        assert "Secret" not in refused


def test_without_an_operator_wide_url_the_token_file_goes_nowhere(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("operator-token")
    loop = RecordingLoop(
        FakeClient({}),
        AdminPolicy(allowed_prometheus_urls=(TENANT,)),
        credentials=DefaultCredentials(bearer_token_file=token_file),
    )
    register("team-a", "tenant", prometheusUrl=TENANT)
    register("team-a", "nothing")
    tenant = endpoint_of(loop, "team-a", "tenant")
    assert isinstance(tenant, Endpoint)
    assert tenant.bearer_token is None
    assert "no Prometheus URL" in str(endpoint_of(loop, "team-a", "nothing"))


class RefusingWriter:
    """A KubeWriter whose status writes fail as `refusal` says; records the Events posted."""

    def __init__(self, body: dict[str, Any], refusal: Exception) -> None:
        self.body = body
        self.refusal = refusal
        self.events: list[tuple[str, str, str]] = []

    def get_resource(self, namespace: str, name: str) -> dict[str, Any]:
        return self.body

    def patch_status(self, body: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        raise self.refusal

    def post_event(self, owner: Any, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))


@pytest.mark.parametrize(
    ("refusal", "words"),
    [
        (ApiException(status=422, reason="Unprocessable Entity"), "HTTP 422"),
        (NonFiniteStatusError("status.lastMetrics.p99TpotMs is not a JSON number"), "p99TpotMs"),
    ],
)
def test_a_failing_status_write_is_posted_and_counted(refusal: Exception, words: str) -> None:
    body = manifest()
    body["metadata"] |= {"namespace": "team-a", "uid": "u1", "resourceVersion": "7",
                         "generation": 1}  # fmt: skip
    writer = RefusingWriter(body, refusal)
    loop = ControlLoop(writer, AdminPolicy(), DefaultCredentials(), reconcile=lambda *_: True)  # type: ignore[arg-type]
    register("team-a", body["metadata"]["name"])
    failures = (
        REGISTRY.get_sample_value("specpilot_status_write_errors_total", {"writer": "control"})
        or 0.0
    )

    loop.check_one("team-a", body["metadata"]["name"], None, "Prometheus is down", time.time())

    ((kind, reason, message),) = writer.events
    assert (kind, reason) == ("Warning", "StatusWriteFailed")
    assert words in message
    assert (
        REGISTRY.get_sample_value("specpilot_status_write_errors_total", {"writer": "control"})
        == failures + 1
    )
