"""The control loop: each tick, read Prometheus once for all the resources that are due, then
check each one (`specpilot.control.check`) and apply what it decided.

The loop is one asyncio task of the operator, not a timer per resource, so the cost of reading
metrics does not grow with the number of resources. Decision state lives in status.control and
every check first re-reads the resource: a restarted operator, or a second replica that kopf's
peering did not pause (timers and background tasks are not paused by peering), finds the last
check's time there and skips a resource checked less than half an interval ago, so no breach is
counted twice and no action is repeated.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel, ConfigDict

from specpilot import control
from specpilot.adapters import telemetry
from specpilot.adapters.kube import KubeWriter, SecretError
from specpilot.adapters.prometheus import Endpoint, MetricsError, PrometheusClient
from specpilot.api.models import (
    SecretKeyRef,
    SpeculativeInferenceSpec,
    SpeculativeInferenceStatus,
)
from specpilot.policy import seconds
from specpilot.signals import Readings

TICK_SECONDS = 1.0
STATUS_CONFLICT_RETRIES = 3
CHECK_CONCURRENCY = 16
"""Checks in flight at once: each is a read and a status write, mostly waiting on the API server,
so a thousand resources fit in one cycle."""
logger = logging.getLogger(__name__)

Key = tuple[str, str]


class Registration(BaseModel):
    """What the loop needs to know about a resource between checks."""

    model_config = ConfigDict(frozen=True)

    interval: float
    window: str
    prometheus_url: str | None
    bearer_token_secret: SecretKeyRef | None
    ca_bundle_secret: SecretKeyRef | None


REGISTRY: dict[Key, Registration] = {}
"""Valid resources under control, kept current by the reconcile handlers."""

BODIES: dict[Key, dict[str, Any]] = {}
"""The newest version of every resource seen on kopf's watch or in a write's answer. A check
starts from it instead of reading the resource: a stale copy costs a 409 and one read."""


def observe(body: Any, deleted: bool = False) -> None:
    """Keep `body` if it is newer than the copy held (resourceVersions are etcd revisions)."""
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    if deleted:
        BODIES.pop(key, None)
        return
    held = BODIES.get(key)
    if held is None or _revision(meta) >= _revision(held["metadata"]):
        BODIES[key] = dict(body)


def attempts(writer: KubeWriter, namespace: str, name: str) -> Iterator[dict[str, Any] | None]:
    """The resource for each try of a read, decide, write cycle (None once it is gone): the
    newest copy held first, then a fresh read after every conflicting write (409)."""
    held = BODIES.get((namespace, name))
    for attempt in range(STATUS_CONFLICT_RETRIES):
        if attempt or held is None:
            held = writer.get_resource(namespace, name)
            if held is not None:
                observe(held)
        yield held


def _revision(meta: Any) -> int:
    try:
        return int(meta.get("resourceVersion") or 0)
    except ValueError:  # not an etcd revision: always take the newer copy
        return 0


def register(namespace: str, name: str, spec: SpeculativeInferenceSpec | None) -> None:
    """Track a resource (spec given) or stop tracking it (None: invalid, deleted, mode off)."""
    key = (namespace, name)
    if spec is None or spec.policy.mode.value == "off":
        REGISTRY.pop(key, None)
        return
    REGISTRY[key] = Registration(
        interval=seconds(spec.policy.interval),
        window=spec.policy.window,
        prometheus_url=spec.monitoring.prometheus_url,
        bearer_token_secret=spec.monitoring.bearer_token_secret,
        ca_bundle_secret=spec.monitoring.ca_bundle_secret,
    )


class DefaultPrometheus(BaseModel):
    """The operator-wide Prometheus (flags), for resources that name none."""

    url: str | None = None
    bearer_token_file: Path | None = None
    ca_file: Path | None = None


class ControlLoop:
    def __init__(
        self,
        writer: KubeWriter,
        default: DefaultPrometheus,
        reconcile: Callable[[str, str, KubeWriter, str], bool],
        client: PrometheusClient | None = None,
    ) -> None:
        self.writer = writer
        self.default = default
        self.reconcile = reconcile
        self.client = client or PrometheusClient()
        self.last_check: dict[Key, float] = {}
        self.pool = ThreadPoolExecutor(CHECK_CONCURRENCY, thread_name_prefix="specpilot-check")

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # the loop must outlive any one bad tick
                logger.exception("control loop tick failed")
            await asyncio.sleep(TICK_SECONDS)

    async def tick(self) -> None:
        now = time.monotonic()
        due = [
            (key, reg)
            for key, reg in list(REGISTRY.items())
            if now - self.last_check.get(key, float("-inf")) >= reg.interval
        ]
        if not due:
            return
        loop = asyncio.get_running_loop()
        with telemetry.CONTROL_CYCLE_SECONDS.time():
            groups: dict[tuple[Endpoint | str, str], list[Key]] = {}
            for key, reg in due:
                self.last_check[key] = now
                endpoint = await loop.run_in_executor(self.pool, self._endpoint, key[0], reg)
                groups.setdefault((endpoint, reg.window), []).append(key)
            for (endpoint, window), keys in groups.items():
                readings, error, at = await self._read(endpoint, window)
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
        telemetry.CONTROL_CYCLE_RESOURCES.observe(len(due))

    async def _read(
        self, endpoint: Endpoint | str, window: str
    ) -> tuple[Readings | None, str | None, float]:
        if isinstance(endpoint, str):
            return None, endpoint, time.time()
        with telemetry.PROMETHEUS_READ_SECONDS.time():
            try:
                readings, at = await self.client.read(endpoint, window)
            except MetricsError as exc:
                telemetry.PROMETHEUS_READ_ERRORS.inc()
                logger.warning("%s", exc)
                return None, str(exc), time.time()
        return readings, None, at

    def _endpoint(self, namespace: str, reg: Registration) -> Endpoint | str:
        """Where this resource's metrics are, or why that cannot be known (a held check)."""
        url = reg.prometheus_url or self.default.url
        if url is None:
            return (
                "no Prometheus URL: set spec.monitoring.prometheusUrl or run the operator "
                "with --prometheus-url"
            )
        try:
            token = (
                self.writer.read_secret_key(namespace, reg.bearer_token_secret)
                if reg.bearer_token_secret
                else _read_file(self.default.bearer_token_file)
            )
            ca = (
                self.writer.read_secret_key(namespace, reg.ca_bundle_secret)
                if reg.ca_bundle_secret
                else _read_file(self.default.ca_file)
            )
        except (SecretError, OSError) as exc:
            return f"cannot read Prometheus credentials: {exc}"
        return Endpoint(url=url, bearer_token=token, ca_bundle=ca)

    def check_one(
        self,
        namespace: str,
        name: str,
        readings: Readings | None,
        error: str | None,
        at: float,
    ) -> None:
        sampled_at = datetime.datetime.fromtimestamp(at, datetime.UTC)
        for body in attempts(self.writer, namespace, name):
            if body is None:
                REGISTRY.pop((namespace, name), None)
                return
            now = datetime.datetime.now(datetime.UTC)
            if _checked_recently(body, now):
                return
            result = control.check(body, readings, error, sampled_at, now)
            if result is None:
                return
            if not result.worth_writing:
                # Only lastCheck would move: skip the write. A restarted operator may then check
                # this resource early, which is harmless: the same hold counts nothing.
                telemetry.CONTROL_DECISIONS.labels(action=result.action.value).inc()
                return
            try:
                observe(self.writer.patch_status(body, result.status))
            except ApiException as exc:
                if exc.status == 409:
                    telemetry.STATUS_CONFLICTS.labels(writer="control").inc()
                    continue  # changed meanwhile: read it again and redo the check
                raise
            telemetry.CONTROL_DECISIONS.labels(action=result.action.value).inc()
            for event in result.events:
                self.writer.post_event(body, event.type, event.reason, event.message)
            if result.rerender:
                self.reconcile(namespace, name, self.writer, "control")
            return
        logger.info("%s/%s kept changing; checking it next interval", namespace, name)


def _read_file(path: Path | None) -> str | None:
    return path.read_text().strip() if path is not None else None


def _checked_recently(body: dict[str, Any], now: datetime.datetime) -> bool:
    control = SpeculativeInferenceStatus.model_validate(body.get("status") or {}).control
    registration = REGISTRY.get((body["metadata"]["namespace"], body["metadata"]["name"]))
    if control is None or control.last_check is None or registration is None:
        return False
    return (now - control.last_check).total_seconds() < registration.interval / 2
