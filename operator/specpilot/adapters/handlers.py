"""kopf handlers: each fetches what it needs, calls the pure core, and writes the result.

Reconciling is level-based: create, update and resume all run the same function on the whole
resource, and an event on an owned Deployment (drift, rollout progress) runs it for the owner.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from specpilot import reconcile
from specpilot.adapters import telemetry
from specpilot.adapters.kube import ApplyError, status_changed
from specpilot.adapters.runtime import Runtime
from specpilot.adapters.writers import StatusConflictError, StatusWriteError
from specpilot.api.admin import AdminPolicy, monitoring_findings
from specpilot.api.models import GROUP, PLURAL, VERSION
from specpilot.assessment import assess, checkpoint_models
from specpilot.findings import Severity
from specpilot.rendering.manifests import LABEL_MANAGED_BY, LABEL_RESOURCE, LABEL_ROLE, Manifest

RESOURCE = (GROUP, VERSION, PLURAL)
logger = logging.getLogger(__name__)


def run_reconcile(
    body: Mapping[str, Any],
    runtime: Runtime,
    trigger: str,
    changed_by: str | None = None,
) -> bool:
    """Apply what the resource asks for and record the outcome; False if anything failed.
    `changed_by` names whoever changed an owned object, for the drift Event. StatusConflictError
    if the resource changed meanwhile (the caller reads it again and redoes it)."""
    raw = copy.deepcopy(dict(body))
    key = (raw["metadata"]["namespace"], raw["metadata"]["name"])
    with runtime.locks.hold(key), telemetry.RECONCILE_SECONDS.time():
        checkpoints = runtime.checkpoints.read(checkpoint_models(raw))
        wanted = reconcile.desired(raw, runtime.admin, checkpoints)
        runtime.managed.track(raw["metadata"]["uid"], wanted.assessment.valid)
        spec = wanted.assessment.resource.spec if wanted.assessment.resource else None
        runtime.registry.register(key[0], key[1], spec)
        observed = reconcile.Observed()
        applied_events = []
        server: Manifest | None = None
        for obj in wanted.objects:
            deferral = _deferral(obj, server, runtime)
            if deferral is not None:
                observed.deployments.append(deferral[0])
                observed.deferred.append(deferral[1])
                continue
            try:
                applied, changed = runtime.kube.apply(obj, raw)
            except ApplyError as exc:
                telemetry.APPLY_ERRORS.labels(kind=obj["kind"]).inc()
                observed.apply_errors.append(str(exc))
                continue
            if applied["kind"] == "Deployment":
                observed.deployments.append(applied)
                if applied["metadata"]["labels"].get(LABEL_ROLE) == "server":
                    server = applied
            if changed is not None:
                drift = trigger == "drift" and changed == "updated"
                applied_events.append(
                    reconcile.Event(
                        type="Normal",
                        reason="DriftCorrected" if drift else "Applied",
                        message=f"{applied['kind']} {applied['metadata']['name']} "
                        + (_restored(changed_by) if drift else str(changed)),
                    )
                )
        observed.pods = _rollout_pods(observed.deployments, runtime)
        status, events = reconcile.status_after_apply(raw, wanted, observed, runtime.clock.now())
        if status_changed(raw.get("status"), status):
            try:
                runtime.status.write(raw, status, writer="reconcile")
            except StatusWriteError as exc:
                raise kopf.TemporaryError(str(exc), delay=30) from exc  # said in an Event
        for event in applied_events + events:
            runtime.events.post(raw, event.type, event.reason, event.message)
    ok = not observed.apply_errors
    telemetry.RECONCILES.labels(trigger=trigger, result="ok" if ok else "error").inc()
    return ok


def _deferral(
    obj: Manifest, server: Manifest | None, runtime: Runtime
) -> tuple[Manifest, str] | None:
    """A control-replica Deployment whose change waits for the server's rollout
    (reconcile.deferred_change): the stored one, which keeps running, and why."""
    if obj["kind"] != "Deployment" or obj["metadata"]["labels"].get(LABEL_ROLE) != "baseline":
        return None
    if server is not None and reconcile.deployment_rollout(server).complete:
        return None  # nothing to wait for: no read
    meta = obj["metadata"]
    try:
        live = runtime.kube.get_deployment(meta["namespace"], meta["name"])
    except ApplyError:
        return None  # apply as usual; an error there is reported as such
    reason = reconcile.deferred_change(server, obj, live)
    return None if reason is None or live is None else (live, reason)


def _rollout_pods(deployments: list[Manifest], runtime: Runtime) -> dict[str, list[Manifest]]:
    """The Pods of each Deployment whose rollout is not complete (its matchLabels), whose status
    says why (reconcile.pod_causes). A failed read leaves them out: the rollout's message is then
    the Deployment's alone, and the reconcile goes on."""
    found: dict[str, list[Manifest]] = {}
    for deployment in deployments:
        if reconcile.deployment_rollout(deployment).complete:
            continue
        meta = deployment["metadata"]
        selector = ((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels")
        if not selector:
            continue
        try:
            found[meta["name"]] = runtime.kube.list_pods(meta["namespace"], selector)
        except ApplyError as exc:
            logger.warning("the causes of %s's rollout are unknown: %s", meta["name"], exc)
    return found


def _restored(changed_by: str | None) -> str:
    return "restored to the spec" + (f" (changed by {changed_by})" if changed_by else "")


def reconcile_latest(
    namespace: str,
    name: str,
    runtime: Runtime,
    trigger: str,
    changed_by: str | None = None,
) -> bool:
    """Reconcile the stored resource; a conflicting write meanwhile (409) means: read, redo."""
    for body in runtime.attempts(namespace, name):
        if body is None:
            return True  # deleted meanwhile
        try:
            return run_reconcile(body, runtime, trigger, changed_by)
        except StatusConflictError:
            logger.info("%s/%s changed during the reconcile; reconciling again", namespace, name)
    raise kopf.TemporaryError("the resource kept changing during reconciles", delay=5)


@kopf.on.event(*RESOURCE)
async def remember_resource(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Every version the watch delivers, for the control loop's checks (no read per check)."""
    runtime: Runtime = memo.runtime
    runtime.bodies.observe(body, deleted=type == "DELETED")


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE)
def reconcile_resource(body: kopf.Body, memo: kopf.Memo, reason: str, **_: Any) -> None:
    meta = body["metadata"]
    if not reconcile_latest(meta["namespace"], meta["name"], memo.runtime, str(reason)):
        raise kopf.TemporaryError("some objects could not be applied (see Degraded)", delay=30)


@kopf.on.event(
    "apps",
    "v1",
    "deployments",
    labels={LABEL_MANAGED_BY: "specpilot", LABEL_RESOURCE: kopf.PRESENT},
)
def owned_deployment_changed(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """An owned Deployment changed: restore drift and refresh the owner's Ready condition."""
    if type is None or type == "DELETED":
        return  # the initial listing (resume handles it) or our owner is going away
    meta = body["metadata"]
    owner = meta["labels"][LABEL_RESOURCE]
    changed_by = reconcile.spec_writer(body)
    reconcile_latest(meta["namespace"], owner, memo.runtime, "drift", changed_by)


@kopf.on.delete(*RESOURCE, optional=True)
def forget_resource(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime = memo.runtime
    runtime.managed.forget(body["metadata"]["uid"])
    runtime.registry.forget((body["metadata"]["namespace"], body["metadata"]["name"]))


def validate(body: kopf.Body, warnings: list[str], memo: kopf.Memo, **_: Any) -> None:
    """Admission: the same verdict and messages as `specpilot validate`.

    Registered by `specpilot run --webhook-port` only: kopf requires a server for it. It also
    warns of a Prometheus URL this operator will not read, which only the operator knows.
    """
    admin: AdminPolicy = memo.options.admin
    runtime: Runtime = memo.runtime
    checkpoints = runtime.checkpoints.read(checkpoint_models(body))
    result = assess(dict(body), admin, checkpoints)
    if result.resource is not None:
        result.findings += monitoring_findings(result.resource.spec.monitoring, admin)
    for finding in result.findings:
        if finding.severity is Severity.WARNING:
            warnings.append(str(finding))
    if result.plan is not None and result.plan.verdict == "tight":
        warnings.append(
            f"plan is tight: {result.plan.max_concurrent_sequences} full-length sequences per "
            "replica"
        )
    problems = [f for f in result.findings if f.severity is Severity.ERROR]
    if problems:
        raise kopf.AdmissionError(
            f"{len(problems)} error(s): " + " | ".join(str(f) for f in problems), code=422
        )
