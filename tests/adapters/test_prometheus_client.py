"""The Prometheus client (prometheus-api-client over requests) against a local HTTP server that
speaks Prometheus' query API and fails on command: every fault the control loop must survive,
without an operator or an API server. Backoffs are recorded, not slept."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator

import pytest
import trustme

from specpilot.adapters.prometheus import Endpoint, MetricsError, PrometheusClient
from specpilot.control.signals import Signal
from tests.adapters.fakes import FakeClock
from tests.prometheus_stub import FAULTS, PrometheusStub, series, signals_asked, vector

WINDOW = "5m"


class LocalPrometheus(PrometheusStub):
    """/api/v1/query answering per `mode`: good, error (500), refused (400), garbage (not JSON),
    nan, empty, scalar (not a vector), hang (until the test ends). With `token` set, a request
    without that bearer token gets 401. Keep-alive, as Prometheus serves."""

    def __init__(self, tls: trustme.LeafCert | None = None) -> None:
        self.mode = "good"
        self.released = threading.Event()
        super().__init__(tls, keep_alive=True)

    @property
    def clients(self) -> set[int]:
        """Client ports seen: one per connection, so reuse shows as few ports."""
        return {r["client"][1] for r in self.requests}

    def before_answering(self) -> None:
        if self.mode == "hang":
            self.released.wait()

    def respond(self, promql: str) -> tuple[int, bytes]:
        if self.mode in FAULTS:
            return FAULTS[self.mode]
        if self.mode == "scalar":
            return 200, b'{"status":"success","data":{"resultType":"scalar","result":[1,"2"]}}'
        value = "NaN" if self.mode == "nan" else "0.5"
        result = [series("ml", "chat", s, value) for s in signals_asked(promql)]
        return 200, vector([] if self.mode == "empty" else result)

    def stop(self) -> None:
        self.released.set()
        super().stop()


@pytest.fixture
def prometheus() -> Iterator[LocalPrometheus]:
    server = LocalPrometheus()
    yield server
    server.stop()


class Client(PrometheusClient):
    """The real client with recorded backoffs and a short timeout."""

    def __init__(self, timeout_seconds: float = 5.0) -> None:
        self.backoffs: list[float] = []
        super().__init__(FakeClock(), timeout_seconds=timeout_seconds, sleep=self.backoffs.append)


@pytest.fixture
def client() -> Iterator[Client]:
    made = Client()
    yield made
    made.close()


def test_a_good_answer_is_read_with_one_query_per_group_at_one_time(
    prometheus: LocalPrometheus, client: Client
) -> None:
    readings, at = client.read(Endpoint(url=prometheus.url), WINDOW)
    assert readings[("ml", "chat", "server")][Signal.ACCEPTANCE] == 0.5
    assert len(prometheus.requests) == 5
    times = {r["form"]["time"][0] for r in prometheus.requests}
    assert times == {f"{at:.3f}"}  # every query evaluated at the same instant
    assert all(r["authorization"] is None for r in prometheus.requests)


def test_the_session_is_reused_across_reads(prometheus: LocalPrometheus, client: Client) -> None:
    for _ in range(3):
        client.read(Endpoint(url=prometheus.url), WINDOW)
    assert len(prometheus.requests) == 15
    assert len(prometheus.clients) == 1  # one kept-alive connection for fifteen queries


def test_5xx_is_retried_a_bounded_number_of_times(
    prometheus: LocalPrometheus, client: Client
) -> None:
    prometheus.mode = "error"
    with pytest.raises(MetricsError, match=r"unreachable after 3 attempts \(HTTP 500\)") as err:
        client.read(Endpoint(url=prometheus.url), WINDOW)
    assert len(prometheus.requests) == 3  # the first query, tried three times
    assert client.backoffs == [0.5, 1.0]
    assert prometheus.url in str(err.value)
    assert not err.value.credentials_refused


def test_4xx_is_not_retried_and_says_prometheus_error(
    prometheus: LocalPrometheus, client: Client
) -> None:
    prometheus.mode = "refused"
    with pytest.raises(MetricsError, match="refused a query: HTTP 400 injected parse error"):
        client.read(Endpoint(url=prometheus.url), WINDOW)
    assert len(prometheus.requests) == 1


def test_an_answer_that_is_not_json_is_retried_then_named(
    prometheus: LocalPrometheus, client: Client
) -> None:
    prometheus.mode = "garbage"
    with pytest.raises(MetricsError, match=r"unreachable after 3 attempts .*JSONDecodeError"):
        client.read(Endpoint(url=prometheus.url), WINDOW)


def test_not_a_vector_is_refused(prometheus: LocalPrometheus, client: Client) -> None:
    prometheus.mode = "scalar"
    with pytest.raises(MetricsError, match="expected an instant vector"):
        client.read(Endpoint(url=prometheus.url), WINDOW)


@pytest.mark.parametrize("mode", ["nan", "empty"])
def test_nan_and_empty_answers_are_no_readings(
    prometheus: LocalPrometheus, client: Client, mode: str
) -> None:
    prometheus.mode = mode
    readings, _ = client.read(Endpoint(url=prometheus.url), WINDOW)
    assert all(not math.isnan(v) for values in readings.values() for v in values.values())
    assert readings == {}


def test_a_hung_endpoint_is_bounded_by_the_request_timeout(prometheus: LocalPrometheus) -> None:
    prometheus.mode = "hang"
    client = Client(timeout_seconds=0.05)
    with pytest.raises(MetricsError, match=r"unreachable after 3 attempts \(ReadTimeout") as err:
        client.read(Endpoint(url=prometheus.url), WINDOW)
    assert "/api/v1/query" not in str(err.value)
    assert len(prometheus.requests) == 3
    client.close()


def test_a_read_past_its_deadline_stops_retrying(prometheus: LocalPrometheus) -> None:
    """The deadline is on the injected clock: moved past it during the first backoff, the read
    ends there instead of trying again."""
    prometheus.mode = "error"
    clock = FakeClock()
    client = PrometheusClient(clock, sleep=lambda seconds: clock.advance(seconds + 20))
    with pytest.raises(MetricsError, match=r"deadline \(TimeoutError\)"):
        client.read(Endpoint(url=prometheus.url), WINDOW, deadline=15)
    assert len(prometheus.requests) == 1
    client.close()


def test_the_bearer_token_is_sent_and_a_refusal_marks_the_credentials(
    prometheus: LocalPrometheus, client: Client
) -> None:
    prometheus.token = "second"
    with pytest.raises(MetricsError, match="HTTP 401 unauthorized") as err:
        client.read(Endpoint(url=prometheus.url, bearer_token="first"), WINDOW)
    assert err.value.credentials_refused
    client.read(Endpoint(url=prometheus.url, bearer_token="second"), WINDOW)
    assert prometheus.requests[-1]["authorization"] == "Bearer second"


def test_tls_is_verified_against_the_given_ca_only() -> None:
    ca = trustme.CA()
    server = LocalPrometheus(tls=ca.issue_cert("127.0.0.1"))
    client = Client()
    try:
        with pytest.raises(MetricsError, match="CERTIFICATE_VERIFY_FAILED") as err:
            client.read(Endpoint(url=server.url), WINDOW)
        assert err.value.credentials_refused
        assert "/api/v1/query" not in str(err.value)  # the cause, not the URL with its query
        assert server.requests == []
        pem = ca.cert_pem.bytes().decode()
        readings, _ = client.read(Endpoint(url=server.url, ca_bundle=pem), WINDOW)
        assert readings
        other = trustme.CA().cert_pem.bytes().decode()
        with pytest.raises(MetricsError, match="CERTIFICATE_VERIFY_FAILED"):
            client.read(Endpoint(url=server.url, ca_bundle=other), WINDOW)
    finally:
        client.close()
        server.stop()
