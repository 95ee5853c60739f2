"""The control loop's isolation, credential routing and status writes, driven with in-process
fakes (tests/adapters/fakes.py): a Prometheus client whose endpoints answer, fail or hang on
command, a Kubernetes client, and an injected clock. No API server and no wall-clock waits: each
tick is run and the loop's tasks drained."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException
from prometheus_client import REGISTRY

from specpilot.adapters import control_loop
from specpilot.adapters.checkpoints import CheckpointReader
from specpilot.adapters.control_loop import ControlLoop
from specpilot.adapters.kube import NonFiniteStatusError, SecretKey
from specpilot.adapters.prometheus import DefaultCredentials, Endpoint
from specpilot.adapters.runtime import SECRET_TTL_SECONDS, Runtime
from specpilot.api.admin import PROMETHEUS_URL_ANNOTATION, AdminPolicy
from specpilot.api.models import SpeculativeInferenceSpec
from specpilot.control.signals import Readings
from tests.adapters.fakes import FakeClock, FakeKube, FakePrometheus
from tests.conftest import manifest

DEFAULT = "http://prometheus.monitoring:9090"
TENANT = "http://tenant-prometheus.team-a:9090"

OFFLINE = CheckpointReader(use_hub=False)
"""No test reaches the hub: models are planned from the catalog."""


class RecordingLoop(ControlLoop):
    """Records each check (resource, error) instead of reading and writing the resource."""

    def __init__(self, runtime: Runtime, read_deadline: float = 3600) -> None:
        # By default a hang stays a hang for the whole test.
        super().__init__(runtime, reconcile=lambda *_: True, read_deadline=read_deadline)
        self.checks: list[tuple[str, str, str | None]] = []

    def check_one(
        self, namespace: str, name: str, readings: Readings | None, error: str | None, at: float
    ) -> None:
        self.checks.append((namespace, name, error))

    def checked(self, namespace: str, name: str) -> list[str | None]:
        return [error for ns, n, error in self.checks if (ns, n) == (namespace, name)]


class Setup:
    """A runtime of fakes and a recording loop over it."""

    def __init__(
        self,
        admin: AdminPolicy,
        behaviour: dict[str, str] | None = None,
        kube: FakeKube | None = None,
        credentials: DefaultCredentials | None = None,
        read_deadline: float = 3600,
    ) -> None:
        self.clock = FakeClock()
        self.prometheus = FakePrometheus(behaviour or {}, self.clock)
        self.kube = kube or FakeKube()
        self.runtime = Runtime(
            kube=self.kube,  # type: ignore[arg-type]
            admin=admin,
            credentials=credentials,
            clock=self.clock,
            prometheus=self.prometheus,
            checkpoints=OFFLINE,
        )
        self.loop = RecordingLoop(self.runtime, read_deadline=read_deadline)

    def register(self, namespace: str, name: str, **monitoring: Any) -> None:
        spec = SpeculativeInferenceSpec.model_validate(
            {
                "target": {"model": "meta-llama/Llama-3.1-8B-Instruct"},
                "gpus": {"type": "H100-80GB", "count": 1},
                "policy": {"interval": "1s"},
                "monitoring": monitoring,
            }
        )
        self.runtime.registry.register(namespace, name, spec)

    async def ticks(self, count: int) -> None:
        """`count` ticks one second apart on the clock, each followed by every read and check
        it started that does not hang."""
        hanging = {url for url, what in self.prometheus.behaviour.items() if what == "hang"}
        for _ in range(count):
            await self.loop.tick()
            finishing = [t for t in self.loop.tasks if t.get_name().split(" ", 1)[1] not in hanging]
            if finishing:
                await asyncio.wait(finishing)
            self.clock.advance(1.0)

    async def release(self) -> None:
        """End the hanging reads and wait for what they started."""
        self.prometheus.release()
        if self.loop.tasks:
            await asyncio.wait(list(self.loop.tasks))

    def endpoint_of(self, namespace: str, name: str) -> Endpoint | str:
        registration = self.runtime.registry.get((namespace, name))
        assert registration is not None
        return self.loop._endpoint(namespace, registration)


@pytest.fixture
def setups() -> Iterator[list[Setup]]:
    """Every Setup made in a test; their threads are released and stopped at its end."""
    made: list[Setup] = []
    yield made
    for setup in made:
        setup.prometheus.release()
        setup.loop.close()


def test_a_hanging_endpoint_does_not_delay_another_namespaces_checks(
    setups: list[Setup],
) -> None:
    setup = Setup(
        AdminPolicy(prometheus_url=DEFAULT, allowed_prometheus_urls=(TENANT,)), {TENANT: "hang"}
    )
    setups.append(setup)
    for i in range(3):
        setup.register("team-a", f"silent-{i}", prometheusUrl=TENANT)
    setup.register("team-b", "steady")

    async def run() -> tuple[set[tuple[str, str]], list[str | None]]:
        await setup.ticks(10)
        seen = set(setup.loop.checking), setup.loop.checked("team-a", "silent-0")
        await setup.release()
        return seen

    checking, silent = asyncio.run(run())

    assert len(setup.loop.checked("team-b", "steady")) == 10  # every tick, never waiting
    assert silent == []  # its read still hung
    assert [e.url for e in setup.prometheus.reads].count(TENANT) == 1  # one read in flight
    assert checking == {("team-a", f"silent-{i}") for i in range(3)}  # not due while waiting


def test_a_namespace_cannot_take_every_read_slot(setups: list[Setup]) -> None:
    urls = [f"http://dead-{i}.team-a:9090" for i in range(6)]
    setup = Setup(
        AdminPolicy(prometheus_url=DEFAULT, allowed_prometheus_urls=tuple(urls)),
        dict.fromkeys(urls, "hang"),
    )
    setups.append(setup)
    for i, url in enumerate(urls):
        setup.register("team-a", f"dead-{i}", prometheusUrl=url)
    setup.register("team-b", "steady")

    async def run() -> int:
        await setup.ticks(5)
        reading = len(setup.loop.reading)
        await setup.release()
        return reading

    assert asyncio.run(run()) == control_loop.READS_PER_NAMESPACE
    reads = [e for e in setup.prometheus.reads if e.url in urls]
    assert len(reads) == control_loop.READS_PER_NAMESPACE
    assert len(setup.loop.checked("team-b", "steady")) == 5


def test_a_failing_endpoint_is_backed_off_and_its_resources_held_with_the_reason(
    setups: list[Setup],
) -> None:
    setup = Setup(
        AdminPolicy(prometheus_url=DEFAULT, allowed_prometheus_urls=(TENANT,)), {TENANT: "fail"}
    )
    setups.append(setup)
    setup.register("team-a", "flaky", prometheusUrl=TENANT)

    asyncio.run(setup.ticks(8))

    errors = setup.loop.checked("team-a", "flaky")
    assert len(errors) == 8  # checked every interval, held every time
    reads = [e for e in setup.prometheus.reads if e.url == TENANT]
    # backed off 1 s, 2 s, 4 s after the 1st, 2nd and 3rd failures: reads at t=0, 1, 3, 7
    assert len(reads) == 4
    assert "unreachable (injected)" in str(errors[0])
    held = [e for e in errors if e and "not asking it again" in e]
    assert held
    assert all("unreachable (injected)" in e for e in held)
    assert "2026-11-20T10:00:" in held[0]  # the retry time, from the injected wall clock

    setup.prometheus.behaviour[TENANT] = "good"
    setup.clock.advance(60)
    asyncio.run(setup.ticks(2))
    assert setup.loop.checked("team-a", "flaky")[-2:] == [None, None]  # breaker closed
    assert setup.loop.health == {}


def test_a_read_past_its_deadline_holds_and_keeps_its_slot_until_its_thread_ends(
    setups: list[Setup],
) -> None:
    """asyncio stops waiting at the deadline; the thread cannot be cancelled, so its read slot
    stays taken until the read returns (its own timeouts end it): hung reads never queue."""
    setup = Setup(
        AdminPolicy(prometheus_url=DEFAULT, allowed_prometheus_urls=(TENANT,)),
        {TENANT: "hang"},
        read_deadline=0.01,
    )
    setups.append(setup)
    setup.register("team-a", "slow", prometheusUrl=TENANT)

    async def run() -> tuple[list[str | None], int, int]:
        await setup.loop.tick()
        await asyncio.wait(list(setup.loop.tasks))  # ends at the deadline, the thread hangs on
        errors = setup.loop.checked("team-a", "slow")
        threads_while_hung = setup.loop.read_threads
        setup.prometheus.release()
        while setup.loop.read_threads:
            await asyncio.sleep(0.001)  # the slot comes back when the thread ends
        return errors, threads_while_hung, setup.loop.read_threads

    errors, threads_while_hung, threads_after = asyncio.run(run())
    assert len(errors) == 1
    assert "did not answer within" in str(errors[0])
    assert "TimeoutError" in str(errors[0])
    assert threads_while_hung == 1  # the loop gave up waiting; the slot is still taken
    assert threads_after == 0


def bound_secret(value: str, url: str = TENANT) -> SecretKey:
    return SecretKey(value=value, annotations={PROMETHEUS_URL_ANNOTATION: url})


def test_credentials_go_only_where_their_owner_allowed(tmp_path: Path, setups: list[Setup]) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("operator-token")
    kube = FakeKube(
        secrets={
            "bound": bound_secret("tenant-token", f"{TENANT}/"),
            "unbound": SecretKey(value="tenant-token", annotations={}),
        }
    )
    admin = AdminPolicy(prometheus_url=DEFAULT, allowed_prometheus_urls=(TENANT,))
    setup = Setup(admin, kube=kube, credentials=DefaultCredentials(bearer_token_file=token_file))
    setups.append(setup)
    register = setup.register
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

    default = setup.endpoint_of("team-a", "default")
    assert isinstance(default, Endpoint)
    assert default.bearer_token == "operator-token"
    spelled = setup.endpoint_of("team-a", "default-spelled")
    assert isinstance(spelled, Endpoint)
    assert spelled.bearer_token == "operator-token"
    plain = setup.endpoint_of("team-a", "tenant-plain")
    assert isinstance(plain, Endpoint)
    assert plain.bearer_token is None
    bound = setup.endpoint_of("team-a", "tenant-bound")
    assert isinstance(bound, Endpoint)
    assert bound.bearer_token == "tenant-token"
    unbound = setup.endpoint_of("team-a", "tenant-unbound")
    assert unbound == (
        "cannot read Prometheus credentials: Secret team-a/unbound is not bound to "
        f"{TENANT}: whoever owns the Secret annotates it {PROMETHEUS_URL_ANNOTATION}={TENANT} "
        "to allow sending it there"
    )
    for name in ("elsewhere", "elsewhere-plain"):
        refused = setup.endpoint_of("team-a", name)
        assert isinstance(refused, str)
        assert "admin allows" in refused
        assert "Secret" not in refused


def test_without_an_operator_wide_url_the_token_file_goes_nowhere(
    tmp_path: Path, setups: list[Setup]
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("operator-token")
    setup = Setup(
        AdminPolicy(allowed_prometheus_urls=(TENANT,)),
        credentials=DefaultCredentials(bearer_token_file=token_file),
    )
    setups.append(setup)
    setup.register("team-a", "tenant", prometheusUrl=TENANT)
    setup.register("team-a", "nothing")
    tenant = setup.endpoint_of("team-a", "tenant")
    assert isinstance(tenant, Endpoint)
    assert tenant.bearer_token is None
    assert "no Prometheus URL" in str(setup.endpoint_of("team-a", "nothing"))


def test_a_secret_is_reused_for_its_ttl_and_read_again_when_prometheus_refuses_it(
    setups: list[Setup],
) -> None:
    kube = FakeKube(secrets={"token": bound_secret("first")})
    setup = Setup(AdminPolicy(allowed_prometheus_urls=(TENANT,)), kube=kube)
    setups.append(setup)
    setup.register("team-a", "chat", prometheusUrl=TENANT,
                   bearerTokenSecret={"name": "token", "key": "token"})  # fmt: skip

    asyncio.run(setup.ticks(5))
    assert kube.secret_reads == ["token"]  # five checks, one read
    setup.clock.advance(SECRET_TTL_SECONDS)
    asyncio.run(setup.ticks(1))
    assert kube.secret_reads == ["token"] * 2  # expired: read again

    kube.secrets["token"] = bound_secret("second")  # rotated; Prometheus refuses the old one
    setup.prometheus.behaviour[TENANT] = "refuse"
    asyncio.run(setup.ticks(1))
    assert setup.prometheus.reads[-1].bearer_token == "first"
    setup.prometheus.behaviour[TENANT] = "good"
    setup.clock.advance(60)  # past the breaker's back-off
    asyncio.run(setup.ticks(1))
    assert kube.secret_reads == ["token"] * 3  # dropped on the refusal, within the TTL
    assert setup.prometheus.reads[-1].bearer_token == "second"
    assert setup.loop.checked("team-a", "chat")[-1] is None


def test_a_missing_secret_is_not_cached(setups: list[Setup]) -> None:
    kube = FakeKube()
    setup = Setup(AdminPolicy(allowed_prometheus_urls=(TENANT,)), kube=kube)
    setups.append(setup)
    setup.register("team-a", "chat", prometheusUrl=TENANT,
                   bearerTokenSecret={"name": "token", "key": "token"})  # fmt: skip
    asyncio.run(setup.ticks(2))
    assert "does not exist" in str(setup.loop.checked("team-a", "chat")[0])
    kube.secrets["token"] = bound_secret("created")
    asyncio.run(setup.ticks(1))
    assert setup.loop.checked("team-a", "chat")[-1] is None
    assert kube.secret_reads == ["token"] * 3


# The status path: the real ControlLoop.check_one over the runtime's one status writer.


def resource_body() -> dict[str, Any]:
    body = manifest()
    body["metadata"] |= {"namespace": "team-a", "uid": "u1", "resourceVersion": "7",
                         "generation": 1}  # fmt: skip
    return body


def checking_loop(kube: FakeKube) -> tuple[ControlLoop, Runtime]:
    runtime = Runtime(kube=kube, admin=AdminPolicy(), clock=FakeClock(), checkpoints=OFFLINE)  # type: ignore[arg-type]
    loop = ControlLoop(runtime, reconcile=lambda *_: True)
    spec = SpeculativeInferenceSpec.model_validate(resource_body()["spec"])
    runtime.registry.register("team-a", resource_body()["metadata"]["name"], spec)
    return loop, runtime


def sample(name: str, writer: str) -> float:
    return REGISTRY.get_sample_value(name, {"writer": writer}) or 0.0


@pytest.mark.parametrize(
    ("refusal", "words"),
    [
        (ApiException(status=422, reason="Unprocessable Entity"), "HTTP 422"),
        (ApiException(status=500, reason="Internal Server Error"), "HTTP 500"),
        (ApiException(status=403, reason="Forbidden"), "forbidden by RBAC"),
        (urllib3.exceptions.ReadTimeoutError(None, "/status", "timed out"), "ReadTimeoutError"),
        (NonFiniteStatusError("status.lastMetrics.p99TpotMs is not a JSON number"), "p99TpotMs"),
    ],
)
def test_a_failing_status_write_is_posted_and_counted(refusal: Exception, words: str) -> None:
    body = resource_body()
    kube = FakeKube(body, status_answers=[refusal])
    loop, _ = checking_loop(kube)
    failures = sample("specpilot_status_write_errors_total", "control")

    loop.check_one("team-a", body["metadata"]["name"], None, "Prometheus is down", 0.0)

    ((kind, reason, message),) = kube.events
    assert (kind, reason) == ("Warning", "StatusWriteFailed")
    assert words in message
    assert sample("specpilot_status_write_errors_total", "control") == failures + 1
    loop.close()


def test_a_conflicting_status_write_is_redone_on_a_fresh_read() -> None:
    body = resource_body()
    kube = FakeKube(body, status_answers=[ApiException(status=409, reason="Conflict")])
    loop, runtime = checking_loop(kube)
    conflicts = sample("specpilot_status_conflicts_total", "control")

    loop.check_one("team-a", body["metadata"]["name"], None, "Prometheus is down", 0.0)

    assert kube.resource_reads == 2  # no copy held, then the read after the 409
    assert len(kube.status_writes) == 1
    assert "StatusWriteFailed" not in [reason for _, reason, _ in kube.events]
    assert sample("specpilot_status_conflicts_total", "control") == conflicts + 1
    held = runtime.bodies.get(("team-a", body["metadata"]["name"]))
    assert held is not None
    assert held["metadata"]["resourceVersion"] == "8"  # the write's answer is the newest copy
    loop.close()


def test_a_resource_that_keeps_conflicting_is_left_for_the_next_interval() -> None:
    body = resource_body()
    conflict = ApiException(status=409, reason="Conflict")
    kube = FakeKube(body, status_answers=[conflict, conflict, conflict])
    loop, _ = checking_loop(kube)
    loop.check_one("team-a", body["metadata"]["name"], None, "Prometheus is down", 0.0)
    assert kube.status_writes == []
    assert kube.events == []
    loop.close()


def test_a_deleted_resource_leaves_the_registry() -> None:
    kube = FakeKube(None)
    loop, runtime = checking_loop(kube)
    name = resource_body()["metadata"]["name"]
    loop.check_one("team-a", name, None, "Prometheus is down", 0.0)
    assert runtime.registry.get(("team-a", name)) is None
    loop.close()
