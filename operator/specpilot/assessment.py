"""One assessment of a manifest: parse, cross-field checks, vLLM release, memory plan.

`specpilot validate`, `specpilot plan`, `specpilot render`, the admission webhook, the reconcile
and the control check all call `assess`, so each gives the same answer for the same manifest.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from packaging.version import Version
from pydantic import BaseModel

from specpilot.api.admin import AdminPolicy
from specpilot.api.models import SpeculativeInference
from specpilot.api.pod import pod_findings
from specpilot.api.validation import parse_manifest
from specpilot.findings import Finding, InvalidResourceError, Severity, errors, related
from specpilot.planning.checkpoint import Checkpoints
from specpilot.planning.memory import MemoryPlan, Verdict, plan
from specpilot.planning.rollout import rollout_findings
from specpilot.rendering.compat import compatibility_findings, resolve_version
from specpilot.rendering.extra_args import extra_args_findings
from specpilot.rendering.manifests import Manifest, manifests

MEMORY_INPUTS = ("spec.target", "spec.speculation", "spec.gpus", "spec.vllm")
CANNOT_BE_DEPLOYED: Literal["cannot-be-deployed"] = "cannot-be-deployed"
OverallVerdict = Verdict | Literal["cannot-be-deployed"]
"""The memory plan's verdict, unless an error of any kind stops the resource from deploying."""


class Assessment(BaseModel):
    resource: SpeculativeInference | None
    """The resource, when it has no errors at all."""
    vllm_version: str | None
    plan: MemoryPlan | None
    findings: list[Finding]
    checkpoints: Checkpoints = Checkpoints()
    """The checkpoint facts the plan used; rendering uses the same ones."""

    @property
    def valid(self) -> bool:
        return self.resource is not None

    @property
    def verdict(self) -> OverallVerdict | None:
        """What the resource gets: never "fits" beside an error that keeps it from deploying;
        None when there is neither an error nor a plan."""
        if errors(self.findings):
            return CANNOT_BE_DEPLOYED
        return self.plan.verdict if self.plan is not None else None

    @property
    def version(self) -> Version:
        if self.vllm_version is None:
            raise InvalidResourceError(errors(self.findings))
        return Version(self.vllm_version)


def assess(
    raw: Any, admin: AdminPolicy | None = None, checkpoints: Checkpoints | None = None
) -> Assessment:
    """`admin`: the operator's rules (specpilot run's flags); the defaults where None.
    `checkpoints`: what the caller read of the resource's checkpoints (`checkpoint_models`
    says which); without it the catalog and the spec's architecture describe the models."""
    admin = admin or AdminPolicy()
    checkpoints = checkpoints or Checkpoints()
    parsed = parse_manifest(raw)
    findings = list(parsed.findings)
    resource = parsed.repaired
    if resource is None:
        return Assessment(
            resource=None,
            vllm_version=None,
            plan=None,
            findings=findings,
            checkpoints=checkpoints,
        )

    def keep(new: list[Finding]) -> list[Finding]:
        return [f for f in new if not f.involves(parsed.dropped)]

    spec = resource.spec
    findings += keep(pod_findings(spec, admin.pod))
    version, version_findings = resolve_version(spec)
    findings += keep(version_findings)
    memory_plan = None
    if version is not None and not errors(version_findings):
        findings += keep(compatibility_findings(spec, version))
        findings += keep(extra_args_findings(spec, version))
        if not any(related(d, m) for d in parsed.dropped for m in MEMORY_INPUTS):
            memory_plan = plan(spec, version, checkpoints)
            findings += keep(memory_plan.findings)
            findings += keep(rollout_findings(spec, memory_plan))
    has_errors = any(f.severity is Severity.ERROR for f in findings)
    return Assessment(
        resource=None if has_errors else resource,
        vllm_version=str(version) if version else None,
        plan=memory_plan,
        findings=findings,
        checkpoints=checkpoints,
    )


def render(
    raw: Any,
    speculation: bool = True,
    admin: AdminPolicy | None = None,
    checkpoints: Checkpoints | None = None,
) -> list[Manifest]:
    """Manifests for a valid resource; raises InvalidResourceError with every error otherwise."""
    result = assess(raw, admin, checkpoints)
    if result.resource is None:
        raise InvalidResourceError(errors(result.findings))
    return manifests(result.resource, result.version, speculation, result.checkpoints)


def checkpoint_models(raw: Any) -> list[str]:
    """The model ids a manifest names (target, draft, quantization ladder): the checkpoints to
    read before assessing it. Lenient: a malformed manifest names what it can."""

    def section(value: Any, *keys: str) -> Any:
        for key in keys:
            value = value.get(key) if isinstance(value, Mapping) else None
        return value

    spec = section(raw, "spec")
    ladder = section(spec, "policy", "quantizationLadder")
    candidates = [
        section(spec, "target", "model"),
        section(spec, "speculation", "draft", "model"),
        *(section(step, "model") for step in (ladder if isinstance(ladder, list) else [])),
    ]
    models = [m for m in candidates if isinstance(m, str) and m]
    return list(dict.fromkeys(models))
