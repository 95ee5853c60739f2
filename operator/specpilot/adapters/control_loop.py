"""The control loop: each tick, read Prometheus once per endpoint for all the resources that are
due, then check each one (`specpilot.control.check.check`) and apply what it decided.

The loop is one asyncio task of the operator, not a timer per resource, so the cost of reading
metrics does not grow with the number of resources. Endpoints are read concurrently, each within a
deadline, a bounded number at once and a few per namespace; one that fails is asked again only after
a back-off (a circuit breaker), so no tenant's dead Prometheus delays another's checks. Decision
state lives in status.control and every check first re-reads the resource: a restarted operator, or
a second replica that kopf's peering did not pause (timers and background tasks are not paused by
peering), finds the last check's time there and skips a resource checked less than half an interval
ago, so no breach is counted twice and no action is repeated.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from specpilot.adapters import telemetry
from specpilot.adapters.kube import SecretError
from specpilot.adapters.prometheus import Endpoint, MetricsError
from specpilot.adapters.runtime import Key, Registration, Runtime
from specpilot.adapters.writers import StatusConflictError, StatusWriteError
from specpilot.api.admin import PROMETHEUS_URL_ANNOTATION, bound_to
from specpilot.api.models import SecretKeyRef, SpeculativeInferenceStatus
from specpilot.assessment import checkpoint_models
from specpilot.control.check import check
from specpilot.control.signals import Readings

TICK_SECONDS = 1.0
CHECK_CONCURRENCY = 16
"""Checks in flight at once: each is a read and a status write, mostly waiting on the API server,
so a thousand resources fit in one cycle."""
READ_CONCURRENCY = 8
"""Prometheus endpoints read at once, whatever the number of tenants; also the width of the read
threads' pool, so a read never waits for a thread."""
READS_PER_NAMESPACE = 2
"""Reads in flight for endpoints only one namespace uses (its own Prometheus or token)."""
READ_DEADLINE_SECONDS = 15.0
"""The most one endpoint's read may take, retries included."""
MAX_BACKOFF_SECONDS = 300.0
"""The longest a failing endpoint waits for its next read."""
logger = logging.getLogger(__name__)


class EndpointHealth(BaseModel):
    """Consecutive failed reads of one endpoint: the circuit breaker's memory."""

    failures: int = 0
    retry_at: float = 0.0
    """Clock time before which the endpoint is not asked again."""
    retry_at_wall: str = ""
    last_error: str = ""


class ControlLoop:
    """Owns the loop's schedule: when each resource was last checked, the reads in flight and
    each endpoint's health. What it shares with the handlers is in the `Runtime`."""

    def __init__(
        self,
        runtime: Runtime,
        reconcile: Callable[[str, str, str], bool],
        read_deadline: float = READ_DEADLINE_SECONDS,
    ) -> None:
        self.runtime = runtime
        self.reconcile = reconcile
        """Re-render a resource after a decision: (namespace, name, trigger) -> ok."""
        self.read_deadline = read_deadline
        self.last_check: dict[Key, float] = {}
        self.health: dict[Endpoint, EndpointHealth] = {}
        self.checking: set[Key] = set()
        """Resources whose read and check are under way: not due again until they end."""
        self.reading: dict[Endpoint, str] = {}
        """Endpoints being read now, with the namespace they count against ('' when shared)."""
        self.reads = asyncio.Semaphore(READ_CONCURRENCY)
        """Held from a read's start until its thread ends, even when the loop stopped waiting:
        a thread reading a hung endpoint keeps its slot, so no read queues behind it."""
        self.read_threads = 0
        """Reads whose thread is running, waited for or not."""
        self.tasks: set[asyncio.Task[None]] = set()
        self.pool = ThreadPoolExecutor(CHECK_CONCURRENCY, thread_name_prefix="specpilot-check")
        self.read_pool = ThreadPoolExecutor(READ_CONCURRENCY, thread_name_prefix="specpilot-read")

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # the loop must outlive any one bad tick
                logger.exception("control loop tick failed")
            await asyncio.sleep(TICK_SECONDS)

    def close(self) -> None:
        """Stop the threads; a read still running ends at its own timeout."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.read_pool.shutdown(wait=False, cancel_futures=True)

    async def tick(self) -> None:
        """Start a read for every endpoint with due resources, and return: a slow or dead
        endpoint delays only the resources behind it."""
        now = self.runtime.clock.monotonic()
        due = [
            (key, reg)
            for key, reg in self.runtime.registry.items()
            if now - self.last_check.get(key, float("-inf")) >= reg.interval
            and key not in self.checking
        ]
        if not due:
            return
        loop = asyncio.get_running_loop()
        endpoints = await asyncio.gather(
            *(loop.run_in_executor(self.pool, self._endpoint, key[0], reg) for key, reg in due)
        )
        groups: dict[tuple[Endpoint | str, str], list[Key]] = {}
        for (key, reg), endpoint in zip(due, endpoints, strict=True):
            groups.setdefault((endpoint, reg.window), []).append(key)
        started = 0
        for (endpoint, window), keys in _fair_order(groups):
            if isinstance(endpoint, Endpoint):
                if endpoint in self.reading or self._namespace_busy(keys):
                    continue  # its resources stay due and are grouped again next tick
                self.reading[endpoint] = _sole_namespace(keys)
            for key in keys:
                self.last_check[key] = now
            self.checking.update(keys)
            started += len(keys)
            name = endpoint.describe() if isinstance(endpoint, Endpoint) else "held"
            self._spawn(
                self._read_and_check(endpoint, window, keys, interval=self._interval(keys)),
                name=f"specpilot-read {name}",
            )
        telemetry.CONTROL_CYCLE_RESOURCES.observe(started)

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _namespace_busy(self, keys: list[Key]) -> bool:
        """Whether the one namespace behind these resources already has its share of reads in
        flight: a tenant with many dead endpoints cannot take every slot."""
        namespace = _sole_namespace(keys)
        if not namespace:
            return False
        return list(self.reading.values()).count(namespace) >= READS_PER_NAMESPACE

    def _interval(self, keys: list[Key]) -> float:
        registrations = (self.runtime.registry.get(key) for key in keys)
        return min((r.interval for r in registrations if r is not None), default=TICK_SECONDS)

    async def _read_and_check(
        self, endpoint: Endpoint | str, window: str, keys: list[Key], interval: float
    ) -> None:
        try:
            with telemetry.CONTROL_CYCLE_SECONDS.time():
                readings, error, at = await self._read(endpoint, window, interval, keys)
                loop = asyncio.get_running_loop()
                outcomes = await asyncio.gather(
                    *(
                        loop.run_in_executor(
                            self.pool, self.check_one, namespace, name, readings, error, at
                        )
                        for namespace, name in keys
                    ),
                    return_exceptions=True,
                )
            for (namespace, name), outcome in zip(keys, outcomes, strict=True):
                if isinstance(outcome, Exception):  # one bad check must not stop the others
                    logger.error("control check of %s/%s failed: %r", namespace, name, outcome)
        finally:
            self.checking.difference_update(keys)
            if isinstance(endpoint, Endpoint):
                self.reading.pop(endpoint, None)

    async def _read(
        self, endpoint: Endpoint | str, window: str, interval: float, keys: list[Key]
    ) -> tuple[Readings | None, str | None, float]:
        now = self.runtime.clock.now().timestamp()
        if isinstance(endpoint, str):
            return None, endpoint, now
        health = self.health.get(endpoint)
        if health is not None and self.runtime.clock.monotonic() < health.retry_at:
            return None, _circuit_open(endpoint, health), now
        await self.reads.acquire()
        try:
            reading = self._start_read(endpoint, window)
        except BaseException:
            self.reads.release()
            raise
        with telemetry.PROMETHEUS_READ_SECONDS.time():
            try:
                readings, at = await asyncio.wait_for(asyncio.shield(reading), self.read_deadline)
            except (MetricsError, TimeoutError) as exc:
                telemetry.PROMETHEUS_READ_ERRORS.inc()
                message = str(exc) or (
                    f"Prometheus at {endpoint.describe()} did not answer within "
                    f"{self.read_deadline:.0f}s (TimeoutError)"
                )
                logger.warning("%s", message)
                self._failed(endpoint, message, interval)
                if isinstance(exc, MetricsError) and exc.credentials_refused:
                    self._forget_credentials(keys)
                return None, message, self.runtime.clock.now().timestamp()
        self.health.pop(endpoint, None)
        return readings, None, at

    def _start_read(
        self, endpoint: Endpoint, window: str
    ) -> asyncio.Future[tuple[Readings, float]]:
        """The read in a thread of its own pool; its slot is released when the thread ends."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(
            self.read_pool, self.runtime.prometheus.read, endpoint, window, self.read_deadline
        )

        def ended(done: asyncio.Future[tuple[Readings, float]]) -> None:
            self.read_threads -= 1
            self.reads.release()
            if not done.cancelled():
                done.exception()  # retrieved: a read nobody waited for any more fails quietly

        self.read_threads += 1
        future.add_done_callback(ended)
        return future

    def _forget_credentials(self, keys: list[Key]) -> None:
        """Prometheus refused what the Secrets gave: read them again before the next try."""
        for namespace, name in keys:
            reg = self.runtime.registry.get((namespace, name))
            for ref in (reg.bearer_token_secret, reg.ca_bundle_secret) if reg else ():
                if ref is not None:
                    self.runtime.secrets.invalidate(namespace, ref)

    def _failed(self, endpoint: Endpoint, message: str, interval: float) -> None:
        """Back off: the next read waits one interval, doubled per failure in a row."""
        health = self.health.get(endpoint) or EndpointHealth()
        failures = health.failures + 1
        wait = min(interval * 2 ** (failures - 1), MAX_BACKOFF_SECONDS)
        retry_wall = self.runtime.clock.now() + datetime.timedelta(seconds=wait)
        self.health[endpoint] = EndpointHealth(
            failures=failures,
            retry_at=self.runtime.clock.monotonic() + wait,
            retry_at_wall=retry_wall.strftime("%Y-%m-%dT%H:%M:%SZ"),
            last_error=message,
        )

    def _endpoint(self, namespace: str, reg: Registration) -> Endpoint | str:
        """Where this resource's metrics are and which credentials go there, or why it cannot
        be read (a held check). A credential goes only where its owner allowed: the operator's
        token to the operator's Prometheus, a Secret to the URLs its annotation names."""
        admin = self.runtime.admin
        url = reg.prometheus_url or admin.prometheus_url
        if url is None:
            return (
                "no Prometheus URL: set spec.monitoring.prometheusUrl or run the operator "
                "with --prometheus-url"
            )
        if not admin.allows_prometheus(url):
            return (
                f"spec.monitoring.prometheusUrl {url} is not a Prometheus endpoint the "
                "operator's admin allows; ask them to allow it (specpilot run "
                "--allowed-prometheus-url, chart allowedPrometheusUrls), or remove the field "
                "to use the operator-wide Prometheus"
            )
        default = admin.is_default_prometheus(url)
        credentials = self.runtime.credentials
        try:
            token = (
                self._bound_secret(namespace, reg.bearer_token_secret, url)
                if reg.bearer_token_secret
                else _read_file(credentials.bearer_token_file if default else None)
            )
            ca = (
                self._bound_secret(namespace, reg.ca_bundle_secret, url)
                if reg.ca_bundle_secret
                else _read_file(credentials.ca_file if default else None)
            )
        except (SecretError, OSError) as exc:
            return f"cannot read Prometheus credentials: {exc}"
        return Endpoint(url=url, bearer_token=token, ca_bundle=ca)

    def _bound_secret(self, namespace: str, ref: SecretKeyRef, url: str) -> str:
        secret = self.runtime.secrets.read(namespace, ref)
        if not bound_to(secret.annotations.get(PROMETHEUS_URL_ANNOTATION, ""), url):
            raise SecretError(
                f"Secret {namespace}/{ref.name} is not bound to {url}: whoever owns the Secret "
                f"annotates it {PROMETHEUS_URL_ANNOTATION}={url} to allow sending it there"
            )
        return secret.value

    def check_one(
        self,
        namespace: str,
        name: str,
        readings: Readings | None,
        error: str | None,
        at: float,
    ) -> None:
        runtime = self.runtime
        sampled_at = datetime.datetime.fromtimestamp(at, datetime.UTC)
        for body in runtime.attempts(namespace, name):
            if body is None:
                runtime.registry.forget((namespace, name))
                return
            now = runtime.clock.now()
            if self._checked_recently(body, now):
                return
            checkpoints = runtime.checkpoints.read(checkpoint_models(body))
            result = check(body, readings, error, sampled_at, now, runtime.admin, checkpoints)
            if result is None:
                return
            if not result.worth_writing:
                # Only lastCheck would move: skip the write. A restarted operator may then check
                # this resource early, which is harmless: the same hold counts nothing.
                telemetry.CONTROL_DECISIONS.labels(action=result.action.value).inc()
                return
            try:
                runtime.status.write(body, result.status, writer="control")
            except StatusConflictError:
                continue  # changed meanwhile: read it again and redo the check
            except StatusWriteError:
                return  # said in an Event; the next interval tries again
            telemetry.CONTROL_DECISIONS.labels(action=result.action.value).inc()
            for event in result.events:
                runtime.events.post(body, event.type, event.reason, event.message)
            if result.rerender:
                self.reconcile(namespace, name, "control")
            return
        logger.info("%s/%s kept changing; checking it next interval", namespace, name)

    def _checked_recently(self, body: dict[str, Any], now: datetime.datetime) -> bool:
        control = SpeculativeInferenceStatus.model_validate(body.get("status") or {}).control
        meta = body["metadata"]
        registration = self.runtime.registry.get((meta["namespace"], meta["name"]))
        if control is None or control.last_check is None or registration is None:
            return False
        return (now - control.last_check).total_seconds() < registration.interval / 2


def _circuit_open(endpoint: Endpoint, health: EndpointHealth) -> str:
    return (
        f"Prometheus at {endpoint.describe()} failed {health.failures} reads in a row, not "
        f"asking it again before {health.retry_at_wall} (last: {health.last_error})"
    )


def _sole_namespace(keys: list[Key]) -> str:
    namespaces = {namespace for namespace, _ in keys}
    return next(iter(namespaces)) if len(namespaces) == 1 else ""


def _fair_order(
    groups: dict[tuple[Endpoint | str, str], list[Key]],
) -> list[tuple[tuple[Endpoint | str, str], list[Key]]]:
    """Groups taking turns by namespace (shared endpoints first), so no namespace's many
    endpoints go ahead of every other namespace's one."""
    by_namespace: dict[str, list[tuple[tuple[Endpoint | str, str], list[Key]]]] = {}
    for group, keys in groups.items():
        by_namespace.setdefault(_sole_namespace(keys), []).append((group, keys))
    queues = [by_namespace.pop("", []), *by_namespace.values()]
    ordered: list[tuple[tuple[Endpoint | str, str], list[Key]]] = []
    while any(queues):
        for queue in queues:
            if queue:
                ordered.append(queue.pop(0))
    return ordered


def _read_file(path: Path | None) -> str | None:
    return path.read_text().strip() if path is not None else None
