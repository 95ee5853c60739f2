"""Which vLLM release a resource runs, and what that release cannot do with it."""

from __future__ import annotations

from packaging.version import Version

from specpilot.api.models import SpeculationMethod, SpeculativeInferenceSpec
from specpilot.findings import Finding, error, warning
from specpilot.vllm_versions import (
    NEWEST_VERIFIED,
    OLDEST_SUPPORTED,
    Feature,
    adaptive_verification_methods,
    availability,
    parse_version,
    supports,
    version_from_image,
)

METHOD_FEATURES = {
    SpeculationMethod.DRAFT_MODEL: Feature.METHOD_DRAFT_MODEL,
    SpeculationMethod.NGRAM: Feature.METHOD_NGRAM,
    SpeculationMethod.EAGLE: Feature.METHOD_EAGLE,
    SpeculationMethod.EAGLE3: Feature.METHOD_EAGLE3,
    SpeculationMethod.MTP: Feature.METHOD_MTP,
    SpeculationMethod.SUFFIX: Feature.METHOD_SUFFIX,
}
_PIN_FIX = "or pin another release with spec.vllm.image (and spec.vllm.version)."


def resolve_version(spec: SpeculativeInferenceSpec) -> tuple[Version | None, list[Finding]]:
    """The explicit version wins; otherwise the image tag must name a release."""
    if spec.vllm.version is not None:
        version = parse_version(spec.vllm.version)
    else:
        version = version_from_image(spec.vllm.image)
        if version is None:
            return None, [
                error(
                    "VLLMVersionUnknown",
                    "spec.vllm.version",
                    f"the image {spec.vllm.image} does not name a vLLM release in its tag, and "
                    "the flags differ between releases.",
                    "set spec.vllm.version to the release inside the image (e.g. 0.33.0).",
                    also=["spec.vllm.image"],
                )
            ]
    assert version is not None  # the field's pattern admits only release numbers
    if version < OLDEST_SUPPORTED:
        return version, [
            error(
                "VLLMVersionUnsupported",
                "spec.vllm.version",
                f"vLLM {version} is older than {OLDEST_SUPPORTED}, the oldest release specpilot "
                "renders.",
                f"use vLLM {OLDEST_SUPPORTED} or later in spec.vllm.image.",
                also=["spec.vllm.image"],
            )
        ]
    if version.release[:2] > NEWEST_VERIFIED.release[:2]:
        return version, [
            warning(
                "VLLMVersionUnverified",
                "spec.vllm.version",
                f"vLLM {version} is newer than {NEWEST_VERIFIED}, the newest release specpilot's "
                f"command lines were verified against; it renders as for {NEWEST_VERIFIED}.",
                "check the pods start, and report any flag vLLM rejects.",
            )
        ]
    return version, []


def compatibility_findings(spec: SpeculativeInferenceSpec, version: Version) -> list[Finding]:
    """What this vLLM release cannot do with the resource, each naming version and field."""
    speculation = spec.speculation
    if speculation is None or speculation.method is SpeculationMethod.NONE:
        return []
    found: list[Finding] = []
    also = ["spec.vllm.version", "spec.vllm.image"]
    method = speculation.method
    feature = METHOD_FEATURES[method]
    if not supports(version, feature):
        found.append(
            error(
                "MethodUnsupportedByVersion",
                "spec.speculation.method",
                f"vLLM {version} cannot run method {method.value} (it exists in "
                f"{availability(feature)}).",
                f"choose another method, {_PIN_FIX}",
                also=also,
            )
        )
    v0 = supports(version, Feature.V0_ENGINE)
    if speculation.acceptance_method == "typical_acceptance_sampler" and not supports(
        version, Feature.TYPICAL_ACCEPTANCE_SAMPLER
    ):
        found.append(
            error(
                "TypicalAcceptanceRemoved",
                "spec.speculation.acceptanceMethod",
                f"vLLM {version} has no typical acceptance sampler (removed with the V0 engine "
                f"in 0.10.0; it exists in {availability(Feature.TYPICAL_ACCEPTANCE_SAMPLER)}).",
                f"remove acceptanceMethod and its parameters (rejection sampling), {_PIN_FIX}",
                also=also,
            )
        )
    if speculation.disable_by_batch_size is not None and not supports(
        version, Feature.DISABLE_BY_BATCH_SIZE
    ):
        replacement = (
            "use spec.speculation.schedule with numSpeculativeTokens 0 for large batches"
            if supports(version, Feature.PER_BATCH_SIZE_SCHEDULE)
            else "remove it (the control loop turns speculation off under load)"
        )
        found.append(
            error(
                "DisableByBatchSizeRemoved",
                "spec.speculation.disableByBatchSize",
                f"vLLM {version} cannot disable speculation by batch size (removed in 0.10.0 "
                "with the V0 engine).",
                f"{replacement}, {_PIN_FIX}",
                also=also,
            )
        )
    if speculation.schedule and not supports(version, Feature.PER_BATCH_SIZE_SCHEDULE):
        found.append(
            error(
                "ScheduleUnsupportedByVersion",
                "spec.speculation.schedule",
                f"vLLM {version} has no per-batch-size schedule "
                f"(num_speculative_tokens_per_batch_size exists in "
                f"{availability(Feature.PER_BATCH_SIZE_SCHEDULE)}).",
                f"remove spec.speculation.schedule, {_PIN_FIX}",
                also=also,
            )
        )
    found += _draft_findings(spec, version)
    found += _adaptive_verification_findings(spec, version)
    if spec.target.pipeline_parallel_size > 1 and not v0:
        found.append(
            warning(
                "SpeculationWithPipelineParallel",
                "spec.target.pipelineParallelSize",
                f"vLLM {version} speculation with pipeline parallelism is not supported by every "
                "method; prefer tensor parallelism.",
            )
        )
    return found


def _adaptive_verification_findings(
    spec: SpeculativeInferenceSpec, version: Version
) -> list[Finding]:
    """What vLLM refuses of adaptive verification at start-up, said before the pods start."""
    speculation = spec.speculation
    assert speculation is not None
    if not speculation.adaptive_verification:
        return []
    field = "spec.speculation.adaptiveVerification"
    methods = adaptive_verification_methods(version)
    if not supports(version, Feature.ADAPTIVE_VERIFICATION):
        return [
            error(
                "AdaptiveVerificationUnsupportedByVersion",
                field,
                f"vLLM {version} has no adaptive verification for {speculation.method.value} "
                "(enable_adaptive_verification: eagle, eagle3 and mtp in 0.30.0 and later, "
                "draft_model in 0.31.0 and later).",
                f"remove adaptiveVerification, {_PIN_FIX}",
                also=["spec.vllm.version", "spec.vllm.image"],
            )
        ]
    found: list[Finding] = []
    if speculation.method.value not in methods:
        found.append(
            error(
                "AdaptiveVerificationUnsupportedByMethod",
                field,
                f"vLLM {version} verifies adaptively only for {', '.join(methods)}, not "
                f"{speculation.method.value} (its drafter would ignore it or the engine refuses "
                "it).",
                "remove adaptiveVerification, or choose one of those methods (draft_model "
                "from vLLM 0.31.0).",
                also=["spec.speculation.method", "spec.vllm.image"],
            )
        )
    if spec.target.pipeline_parallel_size > 1:
        found.append(
            error(
                "AdaptiveVerificationWithPipelineParallel",
                field,
                f"vLLM {version} refuses adaptive verification with pipeline parallelism "
                '("Adaptive verification is not currently compatible with pipeline '
                'parallelism").',
                "remove adaptiveVerification, or set spec.target.pipelineParallelSize to 1 "
                "and use tensor parallelism",
                also=["spec.target.pipelineParallelSize"],
            )
        )
    return found


def _draft_findings(spec: SpeculativeInferenceSpec, version: Version) -> list[Finding]:
    assert spec.speculation is not None
    draft = spec.speculation.draft
    if draft is None:
        return []
    found: list[Finding] = []
    also = ["spec.vllm.version", "spec.vllm.image", "spec.target.tensorParallelSize"]
    target_tp = spec.target.tensor_parallel_size
    draft_tp = draft.tensor_parallel_size
    method = spec.speculation.method
    if draft_tp not in (None, 1, target_tp):
        found.append(
            error(
                "DraftTensorParallelUnsupported",
                "spec.speculation.draft.tensorParallelSize",
                f"vLLM runs a draft on 1 GPU or on the target's {target_tp}, not on {draft_tp}.",
                f"set spec.speculation.draft.tensorParallelSize to 1 or {target_tp}, or remove it.",
                also=also,
            )
        )
    elif (
        draft_tp not in (None, target_tp)
        and method is SpeculationMethod.DRAFT_MODEL
        and supports(version, Feature.DRAFT_TP_MUST_EQUAL_TARGET)
    ):
        found.append(
            error(
                "DraftTensorParallelUnsupported",
                "spec.speculation.draft.tensorParallelSize",
                f"vLLM {version} runs a draft_model draft only with the target's tensor "
                f"parallelism ({target_tp}); {draft_tp} passes config checks but fails when the "
                "GPU workers start.",
                f"remove spec.speculation.draft.tensorParallelSize or set it to {target_tp}.",
                also=also,
            )
        )
    if (
        method is SpeculationMethod.EAGLE
        and supports(version, Feature.EAGLE_NAME_DETECTION)
        and "eagle-" not in draft.model.lower()
    ):
        found.append(
            error(
                "EagleNotDetected",
                "spec.speculation.draft.model",
                f"vLLM {version} decides the method from the draft's name and treats "
                f"{draft.model} as a draft_model, since it lacks 'eagle-'.",
                f"use a checkpoint path containing 'eagle-', {_PIN_FIX}",
                also=["spec.vllm.version", "spec.vllm.image"],
            )
        )
    return found
