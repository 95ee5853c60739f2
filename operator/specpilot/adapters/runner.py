"""`specpilot run`: operator settings and start-up (kopf), with the reasons for each setting."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import kopf
import prometheus_client
from pydantic import BaseModel

from specpilot.adapters import handlers  # importing registers the reconcile handlers
from specpilot.adapters.checkpoints import CheckpointReader
from specpilot.adapters.control_loop import CHECK_CONCURRENCY, ControlLoop
from specpilot.adapters.kube import KubeWriter
from specpilot.adapters.prometheus import DefaultCredentials
from specpilot.adapters.runtime import KubeConnection, Runtime
from specpilot.adapters.webhook import (
    ServiceWebhookServer,
    self_signed_certificate,
    service_host_names,
)
from specpilot.api.admin import AdminPolicy

HANDLER_THREADS = 16
RECURSION_LIMIT = 25_000
"""The API server stores JSON nested up to 10,000 levels (Go's decoder bound), and kopf deep-copies
and diffs every body recursively, two frames a level, before any handler of ours can refuse it;
Python's default of 1,000 would make one such resource stall the operator (RecursionError).
Pure-Python frames cost no C stack on 3.11, so the limit costs only memory when used."""
THREAD_STACK_BYTES = 64 * 1024 * 1024
"""For the C parts of that recursion (JSON encoding) in handler threads; untouched pages cost
nothing."""
logger = logging.getLogger(__name__)


class RunOptions(BaseModel):
    namespaces: list[str] = []
    """Empty means cluster-wide."""
    standalone: bool = False
    peering: str = "specpilot"
    priority: int | None = None
    liveness: str | None = "http://0.0.0.0:8080/healthz"
    metrics_address: str = "0.0.0.0"
    metrics_port: int | None = 9100
    webhook_port: int | None = None
    webhook_address: str = "0.0.0.0"
    webhook_host: str | None = None
    webhook_service: tuple[str, str] | None = None
    """(namespace, name) of the Service in front of the webhook; then the API server uses it."""
    webhook_service_port: int = 443
    webhook_cert: Path | None = None
    webhook_key: Path | None = None
    webhook_ca: Path | None = None
    """The CA bundle the API server should trust; the certificate itself if unset."""
    manage_webhook: bool = True
    webhook_configuration: str = "specpilot.io"
    admin: AdminPolicy = AdminPolicy()
    credentials: DefaultCredentials = DefaultCredentials()
    checkpoint_dir: Path | None = None
    """Checkpoint metadata (ORG/NAME/config.json) read before the hub."""
    read_hub: bool = True


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    options: RunOptions = memo.options
    settings.posting.reporting_component = "specpilot"
    # Handler progress and the last-handled spec live in status, never in the user's metadata,
    # so GitOps tools see no drift on the objects they own.
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(
        field="status.kopf.lastHandledConfiguration"
    )
    # Watches can go silent without closing (kopf issues #204, #585): ask the server to end
    # each watch after 5 minutes, and give up on the client side shortly after.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    # No runtime scanning of CRDs and namespaces: it needs cluster-wide list/watch on both,
    # which least privilege does not grant. Install the CRD before starting the operator.
    settings.scanning.disabled = True
    # Reconciles are sync handlers in kopf's thread pool, each mostly waiting on API calls: a
    # resume of a thousand resources goes as fast as the pool is wide (bench/scale.py).
    settings.execution.max_workers = HANDLER_THREADS
    if options.webhook_port is not None:
        settings.admission.server = _webhook_server(options)
        settings.admission.managed = (
            options.webhook_configuration if options.manage_webhook else None
        )
    memo.runtime = Runtime(
        kube=KubeWriter(_kube_connection(memo).api_client()),
        admin=options.admin,
        credentials=options.credentials,
        checkpoints=CheckpointReader(local_dir=options.checkpoint_dir, use_hub=options.read_hub),
    )
    if options.metrics_port is not None:
        prometheus_client.start_http_server(options.metrics_port, addr=options.metrics_address)


@kopf.on.login()
def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    """kopf's watches use the credentials our client uses, loaded once (kopf's own login would
    load them a second time, its own way)."""
    return _kube_connection(memo).connection_info()


def _kube_connection(memo: kopf.Memo) -> KubeConnection:
    """Loaded by `run` before kopf starts; loaded here for an operator started otherwise (e.g.
    kopf's KopfRunner with a memo of its own)."""
    if getattr(memo, "kube_connection", None) is None:
        memo.kube_connection = _load_kube_connection()
    connection: KubeConnection = memo.kube_connection
    return connection


def _load_kube_connection() -> KubeConnection:
    # A connection per concurrent control check and per reconcile thread.
    return KubeConnection.load(pool_size=CHECK_CONCURRENCY + HANDLER_THREADS)


@kopf.on.startup()
async def start_control_loop(memo: kopf.Memo, **_: Any) -> None:
    """One background task reads metrics for every resource (see adapters.control_loop)."""
    runtime: Runtime = memo.runtime

    def reconcile(namespace: str, name: str, trigger: str) -> bool:
        return handlers.reconcile_latest(namespace, name, runtime, trigger)

    memo.control_loop = ControlLoop(runtime, reconcile)
    memo.control_task = asyncio.create_task(memo.control_loop.run(), name="specpilot-control-loop")


@kopf.on.cleanup()
async def stop_control_loop(memo: kopf.Memo, **_: Any) -> None:
    task: asyncio.Task[None] | None = getattr(memo, "control_task", None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    loop: ControlLoop | None = getattr(memo, "control_loop", None)
    if loop is not None:
        loop.close()
    runtime: Runtime | None = getattr(memo, "runtime", None)
    if runtime is not None:
        runtime.close()


def _webhook_server(options: RunOptions) -> kopf.WebhookServer:
    if options.webhook_service is not None:
        hosts = service_host_names(*options.webhook_service)
    else:
        hosts = [options.webhook_host or options.webhook_address]
    cert, key = options.webhook_cert, options.webhook_key
    if cert is None or key is None:
        cert, key = self_signed_certificate(
            hosts, Path(tempfile.mkdtemp(prefix="specpilot-webhook-"))
        )
    # Files, not their bytes: kopf re-reads them when they change (e.g. cert-manager renewals).
    tls: dict[str, Any] = {
        "addr": options.webhook_address,
        "port": options.webhook_port,
        "host": hosts[0],
        "certfile": str(cert),
        "pkeyfile": str(key),
        "cafile": str(options.webhook_ca or cert),
    }
    if options.webhook_service is None:
        return kopf.WebhookServer(**tls)
    namespace, name = options.webhook_service
    return ServiceWebhookServer(
        namespace=namespace, name=name, service_port=options.webhook_service_port, **tls
    )


def run(options: RunOptions) -> None:
    sys.setrecursionlimit(RECURSION_LIMIT)
    threading.stack_size(THREAD_STACK_BYTES)
    # With peering, the replica with the highest priority works and the others pause; a random
    # priority per process makes that one replica (kopf has no lease-based election).
    priority = options.priority if options.priority is not None else random.randint(1, 10**6)
    if options.webhook_port is not None:
        kopf.on.validate(*handlers.RESOURCE, id="validate")(handlers.validate)
    kopf.configure(verbose=False)
    kopf.run(
        clusterwide=not options.namespaces,
        namespaces=options.namespaces,
        standalone=options.standalone,
        peering_name=None if options.standalone else options.peering,
        priority=priority,
        liveness_endpoint=options.liveness,
        memo=kopf.Memo(options=options, kube_connection=_load_kube_connection()),
    )
