"""Prometheus HTTP API client for the control loop: sends the batched queries, nothing else.

Built on prometheus-api-client (`PrometheusConnect` over requests). It blocks, so the control loop
runs each read in a thread of a pool as wide as the reads it allows at once. Each query has a
timeout and a bounded number of retries with backoff on connection errors, 5xx answers and answers
that are not JSON; a 4xx (a bad query, bad credentials) is not retried. A read given a deadline
never lets a request or a backoff run past it, so a thread reading a hung endpoint ends when the
loop stops waiting for it. Whatever fails comes back as a MetricsError whose message names the URL,
and the policy then holds.

Connections are kept between reads: one requests Session per CA bundle (the default trust store is
one of them), shared by every endpoint verified with it; the bearer token goes per request.
"""

from __future__ import annotations

import ast
import json
import re
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from prometheus_api_client.exceptions import PrometheusApiClientException
from prometheus_api_client.prometheus_connect import PrometheusConnect
from pydantic import BaseModel, ConfigDict
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from specpilot.adapters import telemetry
from specpilot.adapters.clock import Clock, SystemClock
from specpilot.control.signals import BadAnswerError, Readings, parse_answers, queries

RETRIES = 2
BACKOFF_SECONDS = 0.5
TIMEOUT_SECONDS = 10.0
IDLE_SECONDS = 600.0
"""An endpoint not read for this long loses its cached connection (tokens rotate, URLs go)."""


class MetricsError(Exception):
    """Prometheus could not be read; the message says where and why. `credentials_refused`:
    Prometheus refused the credentials sent (401/403) or its certificate failed verification,
    so the Secrets they came from are read again before the next try."""

    def __init__(self, message: str, credentials_refused: bool = False) -> None:
        super().__init__(message)
        self.credentials_refused = credentials_refused


class Endpoint(BaseModel):
    """Where and how to reach one Prometheus; hashable, so resources can be grouped by it."""

    model_config = ConfigDict(frozen=True)

    url: str
    bearer_token: str | None = None
    ca_bundle: str | None = None

    def describe(self) -> str:
        return self.url.rstrip("/")


class DefaultCredentials(BaseModel):
    """The operator-wide Prometheus' token and CA (flags): sent to that Prometheus alone."""

    bearer_token_file: Path | None = None
    ca_file: Path | None = None


class _TrustAdapter(HTTPAdapter):
    """Verifies https against one trust store: a CA bundle's PEM text (from a Secret or a file),
    or the system's. Never requests' bundled CAs on top, as the aiohttp client before it."""

    def __init__(self, ca_bundle: str | None) -> None:
        self._context = ssl.create_default_context(cadata=ca_bundle or None)
        # No retries here: PrometheusClient retries, within the read's deadline.
        super().__init__(max_retries=Retry(0, read=False))

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        super().cert_verify(conn, url, verify, cert)
        conn.ca_certs = None  # requests would add its own bundle; the context holds the trust


class PrometheusClient:
    def __init__(
        self,
        clock: Clock | None = None,
        timeout_seconds: float = TIMEOUT_SECONDS,
        retries: int = RETRIES,
        backoff_seconds: float = BACKOFF_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        self.timeout = timeout_seconds
        self.retries = retries
        self.backoff = backoff_seconds
        self._sleep = sleep
        self._lock = threading.Lock()
        self._sessions: dict[str | None, tuple[requests.Session, _TrustAdapter]] = {}
        self._connections: dict[Endpoint, tuple[PrometheusConnect, float]] = {}

    def read(
        self, endpoint: Endpoint, window: str, deadline: float | None = None
    ) -> tuple[Readings, float]:
        """Every signal for every managed resource behind `endpoint`, and the evaluation time.
        Blocks (run it in a thread); gives up after `deadline` seconds if given."""
        at = self.clock.now().timestamp()
        until = None if deadline is None else self.clock.monotonic() + deadline
        connection = self._connection(endpoint)
        expressions = queries(window)
        telemetry.PROMETHEUS_QUERIES.inc(len(expressions))
        answers = {
            name: self._query(connection, endpoint, promql, at, until)
            for name, promql in expressions.items()
        }
        try:
            return parse_answers(answers), at
        except BadAnswerError as exc:
            raise MetricsError(f"Prometheus at {endpoint.describe()}: {exc}") from exc

    def _query(
        self,
        connection: PrometheusConnect,
        endpoint: Endpoint,
        promql: str,
        at: float,
        until: float | None,
    ) -> dict[str, Any]:
        problem = ""
        refused = False
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(min(self.backoff * 2 ** (attempt - 1), self._left(endpoint, until)))
            timeout = min(self.timeout, self._left(endpoint, until))
            try:
                result = connection.custom_query(  # requests takes float timeouts; its hint: int
                    promql,
                    params={"time": f"{at:.3f}"},
                    timeout=timeout,  # type: ignore[arg-type]
                )
            except PrometheusApiClientException as exc:
                status, error = _refusal(exc)
                if status >= 500:
                    problem = f"HTTP {status}"
                    continue
                raise MetricsError(
                    f"Prometheus at {endpoint.describe()} refused a query: HTTP {status} "
                    f"{error}".rstrip(),
                    credentials_refused=status in (401, 403),
                ) from exc
            except (requests.RequestException, ValueError) as exc:
                # Includes answers that are not JSON (requests' JSONDecodeError is both).
                refused = isinstance(exc, requests.exceptions.SSLError)
                problem = _describe(exc)
                continue
            except (KeyError, TypeError) as exc:
                raise MetricsError(
                    f"Prometheus at {endpoint.describe()}: not a query answer ({exc!r})"
                ) from exc
            if not isinstance(result, list) or not all(isinstance(s, dict) for s in result):
                # PrometheusConnect returns data.result only: a vector is a list of samples.
                raise MetricsError(
                    f"Prometheus at {endpoint.describe()}: expected an instant vector, got "
                    f"{str(result)[:200]}"
                )
            return {"status": "success", "data": {"resultType": "vector", "result": result}}
        raise MetricsError(
            f"Prometheus at {endpoint.describe()} unreachable after {self.retries + 1} "
            f"attempts ({problem})",
            credentials_refused=refused,
        )

    def _left(self, endpoint: Endpoint, until: float | None) -> float:
        if until is None:
            return self.timeout
        left = until - self.clock.monotonic()
        if left <= 0:
            raise MetricsError(
                f"Prometheus at {endpoint.describe()} did not answer before the read's "
                "deadline (TimeoutError)"
            )
        return left

    def _connection(self, endpoint: Endpoint) -> PrometheusConnect:
        """The endpoint's PrometheusConnect over the Session of its trust store; the ones idle
        for IDLE_SECONDS are dropped, and a Session nobody uses any more is closed."""
        now = self.clock.monotonic()
        with self._lock:
            for idle in [
                e for e, (_, used) in self._connections.items() if now - used > IDLE_SECONDS
            ]:
                del self._connections[idle]
            in_use = {e.ca_bundle for e in self._connections} | {endpoint.ca_bundle}
            for ca in [ca for ca in self._sessions if ca not in in_use]:
                self._sessions.pop(ca)[0].close()
            held = self._connections.get(endpoint)
            if held is not None:
                self._connections[endpoint] = (held[0], now)
                return held[0]
            if endpoint.ca_bundle not in self._sessions:
                session = requests.Session()
                # No proxy variables, .netrc or REQUESTS_CA_BUNDLE from the environment: a
                # tenant's URL gets only what its resource names.
                session.trust_env = False
                adapter = _TrustAdapter(endpoint.ca_bundle)
                self._sessions[endpoint.ca_bundle] = (session, adapter)
            session, adapter = self._sessions[endpoint.ca_bundle]
            headers = {"Accept": "application/json"}
            if endpoint.bearer_token:
                headers["Authorization"] = f"Bearer {endpoint.bearer_token}"
            connection = PrometheusConnect(
                url=endpoint.url.rstrip("/"),
                headers=headers,
                session=session,
                timeout=self.timeout,  # type: ignore[arg-type]
                method="POST",
                retry=Retry(0, read=False),
            )
            # PrometheusConnect mounts an adapter of its own for the URL: ours holds the trust.
            session.mount(connection.url, adapter)
            self._connections[endpoint] = (connection, now)
            return connection

    def close(self) -> None:
        """Close every Session (at the operator's cleanup)."""
        with self._lock:
            for session, _ in self._sessions.values():
                session.close()
            self._sessions.clear()
            self._connections.clear()


def _describe(exc: Exception) -> str:
    """The cause, short: requests wraps it in urllib3's MaxRetryError, whose text repeats the
    whole URL with its query (kilobytes, which would push the cause out of a condition)."""
    cause: Any = exc.args[0] if exc.args else exc
    detail = getattr(cause, "reason", None) or cause
    return f"{type(exc).__name__}: {detail}".rstrip(": ")


_REFUSAL = re.compile(r"HTTP Status Code (\d+) \((.*)\)\Z", re.DOTALL)


def _refusal(exc: PrometheusApiClientException) -> tuple[int, str]:
    """The HTTP status and Prometheus' `error` from PrometheusConnect's exception, which carries
    them only in its message: 'HTTP Status Code 400 (b'{...}')'."""
    found = _REFUSAL.match(str(exc))
    if found is None:
        return 0, str(exc)
    try:
        content = ast.literal_eval(found.group(2))
        answer = json.loads(content)
        error = str(answer.get("error", "")) if isinstance(answer, dict) else ""
    except (ValueError, SyntaxError):
        error = ""
    return int(found.group(1)), error
