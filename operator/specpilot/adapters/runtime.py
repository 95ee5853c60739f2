"""The operator's runtime state, owned by one object (`Runtime`) that kopf's memo carries.

kopf's handler threads, the control loop's task and its check threads all reach the same facts:
which resources are under control, the newest copy of each, the clients. They get them from the
`Runtime` built by the startup handler, never from module globals, so a test builds one with fakes
and two operators in one process do not share anything.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from pydantic import BaseModel, ConfigDict

from specpilot.adapters import telemetry
from specpilot.adapters.checkpoints import CheckpointReader
from specpilot.adapters.clock import Clock, SystemClock
from specpilot.adapters.kube import KubeWriter, SecretKey
from specpilot.adapters.prometheus import DefaultCredentials, PrometheusClient
from specpilot.adapters.writers import EventWriter, StatusWriter
from specpilot.api.admin import AdminPolicy
from specpilot.api.models import SecretKeyRef, SpeculativeInferenceSpec
from specpilot.control.policy import seconds

Key = tuple[str, str]
"""(namespace, name) of a SpeculativeInference."""

STATUS_CONFLICT_RETRIES = 3
SECRET_TTL_SECONDS = 30.0
"""How long a Secret value read for Prometheus is reused: one default check interval. The operator
may only `get` named Secrets (no list/watch: least privilege), so it cannot be told of a change;
a rotation or a removed binding annotation takes effect within this time, or at once when
Prometheus refuses the credentials (401/403, or a TLS failure), which drops them."""


class Registration(BaseModel):
    """What the control loop needs to know about a resource between checks."""

    model_config = ConfigDict(frozen=True)

    interval: float
    window: str
    prometheus_url: str | None
    bearer_token_secret: SecretKeyRef | None
    ca_bundle_secret: SecretKeyRef | None


class Registry:
    """Valid resources under control, kept current by the reconcile handlers (kopf's threads)
    and read by the control loop (its task and check threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[Key, Registration] = {}

    def register(self, namespace: str, name: str, spec: SpeculativeInferenceSpec | None) -> None:
        """Track a resource (spec given) or stop tracking it (None: invalid, deleted, mode off)."""
        key = (namespace, name)
        with self._lock:
            if spec is None or spec.policy.mode.value == "off":
                self._entries.pop(key, None)
                return
            self._entries[key] = Registration(
                interval=seconds(spec.policy.interval),
                window=spec.policy.window,
                prometheus_url=spec.monitoring.prometheus_url,
                bearer_token_secret=spec.monitoring.bearer_token_secret,
                ca_bundle_secret=spec.monitoring.ca_bundle_secret,
            )

    def forget(self, key: Key) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def get(self, key: Key) -> Registration | None:
        with self._lock:
            return self._entries.get(key)

    def items(self) -> list[tuple[Key, Registration]]:
        """A copy: the handlers may change the registry while the loop walks it."""
        with self._lock:
            return list(self._entries.items())

    def __len__(self) -> int:
        return len(self._entries)


class BodyCache:
    """The newest version of every resource seen on kopf's watch or in a write's answer. A check
    starts from it instead of reading the resource: a stale copy costs a 409 and one read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bodies: dict[Key, dict[str, Any]] = {}

    def observe(self, body: Any, deleted: bool = False) -> None:
        """Keep `body` if it is newer than the copy held (resourceVersions are etcd revisions)."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        with self._lock:
            if deleted:
                self._bodies.pop(key, None)
                return
            held = self._bodies.get(key)
            if held is None or _revision(meta) >= _revision(held["metadata"]):
                self._bodies[key] = dict(body)

    def get(self, key: Key) -> dict[str, Any] | None:
        with self._lock:
            return self._bodies.get(key)

    def __len__(self) -> int:
        return len(self._bodies)


def _revision(meta: Any) -> int:
    try:
        return int(meta.get("resourceVersion") or 0)
    except ValueError:  # not an etcd revision: always take the newer copy
        return 0


class KeyedLocks:
    """One reconcile in flight per resource (its own and its Deployment's handlers race). A lock
    lives only while someone holds or waits for it, so churn leaves nothing behind."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[Key, tuple[threading.Lock, int]] = {}

    @contextlib.contextmanager
    def hold(self, key: Key) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key) or (threading.Lock(), 0)
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                users = self._locks[key][1] - 1
                if users:
                    self._locks[key] = (lock, users)
                else:
                    del self._locks[key]

    def __len__(self) -> int:
        return len(self._locks)


class ManagedResources:
    """uid -> whether the resource is valid, for the operator's gauges."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._valid: dict[str, bool] = {}

    def track(self, uid: str, valid: bool) -> None:
        with self._lock:
            self._valid[uid] = valid
            self._update_gauges()

    def forget(self, uid: str) -> None:
        with self._lock:
            self._valid.pop(uid, None)
            self._update_gauges()

    def _update_gauges(self) -> None:
        telemetry.RESOURCES_MANAGED.set(len(self._valid))
        telemetry.INVALID_RESOURCES.set(sum(1 for valid in self._valid.values() if not valid))


class SecretCache:
    """Secret values for Prometheus, reused for `SECRET_TTL_SECONDS` (see there why a TTL and not
    a watch). Failed reads are not kept: a missing Secret is asked for again at the next check."""

    def __init__(
        self, kube: KubeWriter, clock: Clock, ttl_seconds: float = SECRET_TTL_SECONDS
    ) -> None:
        self._kube = kube
        self._clock = clock
        self._ttl = ttl_seconds
        self._lock = threading.Lock()
        self._values: dict[tuple[str, str, str], tuple[SecretKey, float]] = {}

    def read(self, namespace: str, ref: SecretKeyRef) -> SecretKey:
        """The key's value and the Secret's annotations; SecretError says what to fix."""
        key = (namespace, ref.name, ref.key)
        now = self._clock.monotonic()
        with self._lock:
            held = self._values.get(key)
            if held is not None and now < held[1]:
                return held[0]
            for stale in [k for k, (_, until) in self._values.items() if until <= now]:
                del self._values[stale]
        value = self._kube.read_secret_key(namespace, ref)
        with self._lock:
            self._values[key] = (value, now + self._ttl)
        return value

    def invalidate(self, namespace: str, ref: SecretKeyRef) -> None:
        """Prometheus refused what this Secret gave: read it again next time."""
        with self._lock:
            for key in [k for k in self._values if k[:2] == (namespace, ref.name)]:
                del self._values[key]

    def __len__(self) -> int:
        return len(self._values)


class KubeConnection:
    """The one place the operator loads its Kubernetes credentials: our client uses them, and
    kopf's own watches get them through the login handler (kopf would otherwise load them again,
    its own way)."""

    def __init__(self, configuration: k8s.Configuration) -> None:
        self.configuration = configuration

    @classmethod
    def load(cls, pool_size: int) -> KubeConnection:
        configuration = k8s.Configuration()
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)
        except k8s_config.ConfigException:
            k8s_config.load_kube_config(client_configuration=configuration)
        configuration.connection_pool_maxsize = pool_size
        return cls(configuration)

    def api_client(self) -> k8s.ApiClient:
        return k8s.ApiClient(self.configuration)

    def connection_info(self) -> kopf.ConnectionInfo:
        """For kopf; called again when the API server refuses the credentials (401), so a
        rotated ServiceAccount token is re-read here."""
        config = self.configuration
        refresh = getattr(config, "refresh_api_key_hook", None)
        if callable(refresh):
            refresh(config)
        header = config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix(
            "authorization"
        )
        parts = header.split(" ", 1) if header else []
        scheme, token = (
            (None, None)
            if not parts
            else (None, parts[0])
            if len(parts) == 1
            else (parts[0], parts[1])
        )
        return kopf.ConnectionInfo(
            server=config.host,
            ca_path=config.ssl_ca_cert,
            insecure=not config.verify_ssl,
            username=config.username or None,
            password=config.password or None,
            scheme=scheme,
            token=token,
            certificate_path=config.cert_file,
            private_key_path=config.key_file,
        )


class Runtime:
    """Everything the handlers and the control loop share: the registry, the caches, the one
    Kubernetes client, the one Prometheus client, the clock, and the one writer of status and of
    Events that both use."""

    def __init__(
        self,
        kube: KubeWriter,
        admin: AdminPolicy,
        credentials: DefaultCredentials | None = None,
        clock: Clock | None = None,
        prometheus: PrometheusClient | None = None,
        secret_ttl_seconds: float = SECRET_TTL_SECONDS,
        checkpoints: CheckpointReader | None = None,
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        self.admin = admin
        self.credentials = credentials or DefaultCredentials()
        self.kube = kube
        self.registry = Registry()
        self.bodies = BodyCache()
        self.locks = KeyedLocks()
        self.managed = ManagedResources()
        self.secrets = SecretCache(kube, self.clock, secret_ttl_seconds)
        self.events = EventWriter(kube, self.clock)
        self.status = StatusWriter(kube, self.bodies, self.events)
        self.prometheus = prometheus or PrometheusClient(self.clock)
        self.checkpoints = checkpoints or CheckpointReader(clock=self.clock)
        """Checkpoint metadata (config.json, sizes) read once per model for every assessment."""

    def attempts(self, namespace: str, name: str) -> Iterator[dict[str, Any] | None]:
        """The resource for each try of a read, decide, write cycle (None once it is gone): the
        newest copy held first, then a fresh read after every conflicting write (409)."""
        held = self.bodies.get((namespace, name))
        for attempt in range(STATUS_CONFLICT_RETRIES):
            if attempt or held is None:
                held = self.kube.get_resource(namespace, name)
                if held is not None:
                    self.bodies.observe(held)
            yield held

    def close(self) -> None:
        """At the operator's cleanup: close the clients' connections."""
        self.prometheus.close()
        self.kube.close()
        self.checkpoints.close()
