"""What the pods run, which can differ from spec after a control decision. Pure.

The control loop never writes the user's spec: it records its decisions in status.control, and
rendering reads them back from there through these functions.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from specpilot.api.models import (
    Checkpoint,
    PolicyMode,
    PolicyState,
    SpeculativeInferenceSpec,
    TargetSpec,
)
from specpilot.rendering.args import is_speculating


def target_identity(target: TargetSpec) -> str:
    return f"{target.model}@{target.quantization.value}"


def active_checkpoint(
    spec: SpeculativeInferenceSpec, control: PolicyState | None
) -> tuple[int, Checkpoint | None]:
    """The ladder step the pods run, if the control loop stepped spec.target back."""
    if (
        control is None
        or spec.policy.mode is not PolicyMode.AUTO
        or control.checkpoint_index == 0
        or control.target != target_identity(spec.target)
        or control.checkpoint_index > len(spec.policy.quantization_ladder)
    ):
        return 0, None
    index = control.checkpoint_index
    return index, spec.policy.quantization_ladder[index - 1]


def speculation_wanted(spec: SpeculativeInferenceSpec, control: PolicyState | None) -> bool:
    """Speculation as configured, unless the control loop (auto mode) turned it off."""
    turned_off = (
        spec.policy.mode is PolicyMode.AUTO and control is not None and not control.speculation_on
    )
    return is_speculating(spec) and not turned_off


def with_checkpoint(body: Mapping[str, Any], checkpoint: Checkpoint) -> dict[str, Any]:
    """The resource as if spec.target were the checkpoint, for planning and rendering.

    The checkpoint is served under spec.target's name (unless extraArgs names one), so clients
    keep working when the control loop steps the target back.
    """
    effective = copy.deepcopy(dict(body))
    spec = effective["spec"]
    original = spec["target"]["model"]
    spec["target"]["model"] = checkpoint.model
    spec["target"]["quantization"] = checkpoint.quantization.value
    vllm = spec.setdefault("vllm", {})
    extra = list(vllm.get("extraArgs") or [])
    if not any(str(a).split("=")[0] == "--served-model-name" for a in extra):
        vllm["extraArgs"] = [*extra, "--served-model-name", original]
    return effective
