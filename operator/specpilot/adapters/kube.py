"""Kubernetes I/O for the operator: server-side apply of owned objects, reads, status writes
and Events, over the operator's one API client.

Translation only: what to apply and what status to write is decided in `specpilot.reconcile`;
what a failed status write or Event means is decided by `adapters.writers`.
"""

from __future__ import annotations

import base64
import datetime
import json
import threading
from collections.abc import Mapping
from typing import Any, Literal

import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ResourceNotFoundError
from pydantic import BaseModel

from specpilot.api.finite import non_finite_paths
from specpilot.api.models import GROUP, PLURAL, VERSION, SecretKeyRef
from specpilot.rendering.manifests import FIELD_MANAGER, Manifest

REQUEST_TIMEOUT_SECONDS = 60.0
"""The longest one API call may take (kopf's own calls have the same, settings.networking): a hung
API server must not hold a reconcile thread or a check forever."""

MAX_PODS_LISTED = 100
"""The most Pods one `list_pods` reads (one page): enough to name why a rollout is stuck."""

Change = Literal["created", "updated"] | None


class SecretError(Exception):
    """A Secret a resource names cannot be read; the message names it and the cause."""


class SecretKey(BaseModel):
    """One key of a Secret, decoded, and the Secret's annotations (what its owner allows)."""

    value: str
    annotations: dict[str, str]


class ApplyError(Exception):
    """An object could not be applied; the message names the object and the API's answer."""


class NonFiniteStatusError(ValueError):
    """A status carrying NaN or Infinity, refused before it is sent: the API server accepts only
    JSON numbers, so it would refuse this write and every later one."""


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    """A controller reference, so deleting the resource deletes its objects (via the GC)."""
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def describe_api_error(exc: ApiException, action: str) -> str:
    """One line an SRE can act on; a 403 names the verb and resource that RBAC refused."""
    reason = exc.reason or ""
    detail = ""
    if exc.body:
        try:
            detail = json.loads(exc.body).get("message", "")
        except ValueError:
            detail = str(exc.body)[:300]
    if exc.status == 403:
        return f"{action}: forbidden by RBAC ({detail or reason}); grant this permission"
    return f"{action}: HTTP {exc.status} {reason}: {detail}".rstrip(": ")


class KubeWriter:
    """The operator's one Kubernetes API client, wrapped; every call bounded by a timeout."""

    def __init__(
        self, api_client: k8s.ApiClient, request_timeout: float = REQUEST_TIMEOUT_SECONDS
    ) -> None:
        self._api_client = api_client
        self._timeout = request_timeout
        self._custom = k8s.CustomObjectsApi(api_client)
        self._core = k8s.CoreV1Api(api_client)
        self._discovery_lock = threading.Lock()
        self._dynamic_client: DynamicClient | None = None

    @property
    def _dynamic(self) -> DynamicClient:
        """Built at the first apply: its discovery asks the API server, which nothing else
        needs up front."""
        with self._discovery_lock:
            if self._dynamic_client is None:
                self._dynamic_client = DynamicClient(self._api_client)
            return self._dynamic_client

    def apply(self, obj: Manifest, owner: Mapping[str, Any]) -> tuple[Manifest, Change]:
        """Server-side apply under the `specpilot` field manager; says what it changed."""
        body = {**obj, "metadata": {**obj["metadata"], "ownerReferences": [owner_reference(owner)]}}
        meta = body["metadata"]
        what = f"apply {body['kind']} {meta['namespace']}/{meta['name']}"
        try:
            resource = self._dynamic.resources.get(
                api_version=body["apiVersion"], kind=body["kind"]
            )
        except ResourceNotFoundError as exc:
            raise ApplyError(f"{what}: the API server does not serve {body['kind']}") from exc
        try:
            before = self._existing_version(resource, meta["name"], meta["namespace"])
            applied = resource.server_side_apply(
                body=body,
                name=meta["name"],
                namespace=meta["namespace"],
                field_manager=FIELD_MANAGER,
                force_conflicts=True,
                _request_timeout=self._timeout,
            ).to_dict()
        except ApiException as exc:
            raise ApplyError(describe_api_error(exc, what)) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise ApplyError(f"{what}: {exc}") from exc
        if before is None:
            return applied, "created"
        return applied, "updated" if applied["metadata"]["resourceVersion"] != before else None

    def get_deployment(self, namespace: str, name: str) -> Manifest | None:
        """A Deployment as stored (None when there is none); ApplyError when it cannot be read."""
        what = f"read Deployment {namespace}/{name}"
        try:
            resource = self._dynamic.resources.get(api_version="apps/v1", kind="Deployment")
            found: Manifest = resource.get(
                name=name, namespace=namespace, _request_timeout=self._timeout
            ).to_dict()
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise ApplyError(describe_api_error(exc, what)) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise ApplyError(f"{what}: {exc}") from exc
        return found

    def list_pods(self, namespace: str, selector: Mapping[str, str]) -> list[Manifest]:
        """The Pods whose labels match `selector` (a Deployment's matchLabels), as stored, at
        most MAX_PODS_LISTED; ApplyError when they cannot be read."""
        label_selector = ",".join(f"{key}={value}" for key, value in sorted(selector.items()))
        what = f"list Pods in {namespace} ({label_selector})"
        try:
            response: Any = self._core.list_namespaced_pod(
                namespace,
                label_selector=label_selector,
                limit=MAX_PODS_LISTED,
                _preload_content=False,
                _request_timeout=self._timeout,
            )
            try:
                items: list[Manifest] = json.loads(response.data).get("items") or []
            finally:
                response.release_conn()
        except ApiException as exc:
            raise ApplyError(describe_api_error(exc, what)) from exc
        except (urllib3.exceptions.HTTPError, ValueError) as exc:
            raise ApplyError(f"{what}: {exc}") from exc
        return items

    def _existing_version(self, resource: Any, name: str, namespace: str) -> str | None:
        try:
            existing = resource.get(name=name, namespace=namespace, _request_timeout=self._timeout)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        version: str = existing.metadata.resourceVersion
        return version

    def get_resource(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            body: dict[str, Any] = self._custom.get_namespaced_custom_object(  # type: ignore[assignment]
                GROUP, VERSION, namespace, PLURAL, name, _request_timeout=self._timeout
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return body

    def read_secret_key(self, namespace: str, ref: SecretKeyRef) -> SecretKey:
        """One key of a Secret, decoded; SecretError says what to fix."""
        what = f"Secret {namespace}/{ref.name}"
        try:
            secret = self._core.read_namespaced_secret(
                ref.name, namespace, _request_timeout=self._timeout
            )
        except urllib3.exceptions.HTTPError as exc:
            raise SecretError(f"get {what}: {exc}") from exc
        except ApiException as exc:
            if exc.status == 404:
                raise SecretError(f"{what} does not exist") from exc
            message = describe_api_error(exc, f"get {what}")
            if exc.status == 403:
                message += " (Helm chart: list it under secretAccess)"
            raise SecretError(message) from exc
        data = secret.data or {}
        if ref.key not in data:
            raise SecretError(f"{what} has no key {ref.key!r}")
        return SecretKey(
            value=base64.b64decode(data[ref.key]).decode().strip(),
            annotations=(secret.metadata.annotations if secret.metadata else None) or {},
        )

    def create_event(
        self,
        owner: Mapping[str, Any],
        type_: str,
        reason: str,
        message: str,
        at: datetime.datetime,
    ) -> None:
        """A core/v1 Event on the resource, as `kubectl describe` shows; raises ApiException."""
        meta = owner["metadata"]
        event = k8s.CoreV1Event(
            metadata=k8s.V1ObjectMeta(
                generate_name=f"{meta['name']}.", namespace=meta["namespace"]
            ),
            involved_object=k8s.V1ObjectReference(
                api_version=owner["apiVersion"],
                kind=owner["kind"],
                name=meta["name"],
                namespace=meta["namespace"],
                uid=meta["uid"],
                resource_version=meta.get("resourceVersion"),
            ),
            type=type_,
            reason=reason,
            message=message,
            source=k8s.V1EventSource(component=FIELD_MANAGER),
            reporting_component=FIELD_MANAGER,
            first_timestamp=at,
            last_timestamp=at,
            count=1,
        )
        self._core.create_namespaced_event(meta["namespace"], event, _request_timeout=self._timeout)

    def close(self) -> None:
        self._api_client.close()

    def patch_status(self, body: Mapping[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        """Write status; the resourceVersion precondition turns a stale write into a 409
        (ApiException; urllib3's HTTPError for a timeout or a lost connection).
        Returns the resource as stored after the write. NonFiniteStatusError, naming the JSON
        paths, for a status holding NaN or Infinity (nothing is sent)."""
        meta = body["metadata"]
        non_finite = non_finite_paths(status, "status")
        if non_finite:
            raise NonFiniteStatusError(
                f"not writing the status of {meta['namespace']}/{meta['name']}: "
                f"{', '.join(non_finite)} is not a JSON number (NaN or Infinity)"
            )
        patch = {
            "metadata": {"resourceVersion": meta["resourceVersion"]},
            "status": _with_removals(body.get("status") or {}, status),
        }
        written: dict[str, Any] = self._custom.patch_namespaced_custom_object_status(  # type: ignore[assignment]
            GROUP,
            VERSION,
            meta["namespace"],
            PLURAL,
            meta["name"],
            patch,
            field_manager=FIELD_MANAGER,
            _request_timeout=self._timeout,
        )
        return written


def _with_removals(before: Mapping[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """A merge patch from `before` to `after` for specpilot's keys (kopf's own are left alone)."""
    patch: dict[str, Any] = dict(after)
    for key in before:
        if key not in after and key != "kopf":
            patch[key] = None
    return patch


def status_changed(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> bool:
    mine = {k: v for k, v in (before or {}).items() if k != "kopf"}
    return mine != dict(after)
