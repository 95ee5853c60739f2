"""What the cluster admin allows every SpeculativeInference: the operator's flags and the chart's
values, never the resource. A namespace user who may edit SpeculativeInference cannot change it.

Pure data: `review` reads the pod rules and the GPU cap, the control check reads the change
ceiling, and the control loop reads the Prometheus endpoints (docs/security.md).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from specpilot.api.models import MonitoringSpec
from specpilot.findings import Finding, warning

PROMETHEUS_URL_ANNOTATION = "specpilot.io/prometheus-url"
"""On a Secret named by spec.monitoring: the Prometheus URLs (comma-separated) its owner allows
it to be sent to. Only whoever may update the Secret can set it; a user who can merely name the
Secret in a resource cannot redirect it."""
DEFAULT_MAX_CHANGES_PER_HOUR = 12
"""Restarts the control loop may cause per resource per hour: one per five minutes on average,
each costing minutes of GPU capacity."""


class PodPolicy(BaseModel):
    """What spec.pod may put into the GPU pods the operator creates with its own rights."""

    model_config = ConfigDict(frozen=True)

    allow_host_path: bool = False
    """hostPath volumes reach the node's files; refused unless the admin allows them."""
    allow_service_account: bool = True
    """spec.pod.serviceAccountName runs the pods with another ServiceAccount's token."""
    allow_secret_env: bool = True
    """Secrets of the namespace in the pods: env valueFrom.secretKeyRef (HF_TOKEN), secret
    volumes and projected secret sources."""
    max_gpus_per_resource: int | None = Field(default=None, ge=1)
    """Cap on replicas x GPUs per replica; ResourceQuota is the primary guard for totals."""


class AdminPolicy(BaseModel):
    """The operator-wide rules (flags of `specpilot run`, values of the chart)."""

    model_config = ConfigDict(frozen=True)

    prometheus_url: str | None = None
    """The operator-wide Prometheus: the only endpoint the operator-wide token is sent to."""
    allowed_prometheus_urls: tuple[str, ...] = ()
    """Further endpoints spec.monitoring.prometheusUrl may name."""
    max_changes_per_hour: int = Field(default=DEFAULT_MAX_CHANGES_PER_HOUR, ge=1)
    pod: PodPolicy = PodPolicy()

    def allows_prometheus(self, url: str) -> bool:
        """Whether a resource may have its metrics read at `url`."""
        wanted = normalized_url(url)
        allowed = [self.prometheus_url, *self.allowed_prometheus_urls]
        return any(a is not None and normalized_url(a) == wanted for a in allowed)

    def is_default_prometheus(self, url: str) -> bool:
        return self.prometheus_url is not None and normalized_url(
            self.prometheus_url
        ) == normalized_url(url)


def normalized_url(url: str) -> str:
    """One spelling per endpoint: lower-case scheme and host, explicit port, no trailing slash,
    so an allowlist cannot be dodged by writing the same URL differently."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:  # not a port number: matches nothing but itself
        return url.strip()
    host = (parts.hostname or "").lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}{parts.path.rstrip('/')}"


def bound_to(annotation: str, url: str) -> bool:
    """Whether a Secret's PROMETHEUS_URL_ANNOTATION value allows sending it to `url`."""
    wanted = normalized_url(url)
    return any(normalized_url(u) == wanted for u in annotation.split(",") if u.strip())


def url_problem(url: str) -> str | None:
    """What makes `url` unfit as a Prometheus endpoint, or None: credentials never ride in it."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "give an http:// or https:// URL with a host"
    if parts.username is not None or parts.password is not None:
        return "remove the user:password part; give credentials as a token file or Secret"
    if parts.query or parts.fragment:
        return "remove the query and fragment; give the Prometheus base URL"
    try:
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError:
        return "give a port number"
    return None


def monitoring_findings(monitoring: MonitoringSpec, admin: AdminPolicy) -> list[Finding]:
    """A warning at admission for a URL the control loop will hold on and never contact."""
    url = monitoring.prometheus_url
    if url is None or admin.allows_prometheus(url):
        return []
    return [
        warning(
            "PrometheusUrlNotAllowed",
            "spec.monitoring.prometheusUrl",
            f"{url} is not a Prometheus endpoint the operator's admin allows: the control loop "
            "will hold and never contact it.",
            "remove the field to use the operator-wide Prometheus, or ask the admin to allow it "
            "(specpilot run --allowed-prometheus-url, chart allowedPrometheusUrls).",
        )
    ]
