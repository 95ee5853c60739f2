"""spec.speculation.adaptiveVerification: rendered where vLLM has it, refused where it does not
(docs/vllm-versions.md, section 14), before anything is scheduled."""

from __future__ import annotations

import json
from typing import Any

import pytest

from specpilot.assessment import assess, render
from specpilot.findings import Severity
from tests.conftest import BASE_MANIFEST, manifest

DRAFT = BASE_MANIFEST["spec"]["speculation"]


def doc(version: str, speculation: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    body = manifest(speculation={**(speculation or DRAFT), "adaptiveVerification": True}, **spec)
    body["spec"]["vllm"] = {"image": f"vllm/vllm-openai:v{version}"}
    return body


def errors(body: dict[str, Any]) -> dict[str, str]:
    return {
        f.code: f"{f.path}: {f.message} {f.fix}"
        for f in assess(body).findings
        if f.severity is Severity.ERROR
    }


def speculative_config(body: dict[str, Any]) -> dict[str, Any]:
    args = render(body, speculation=True)[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    config: dict[str, Any] = json.loads(args[args.index("--speculative-config") + 1])
    return config


def test_it_is_rendered_into_the_speculative_config_where_the_release_has_it() -> None:
    body = doc("0.33.0")
    assert errors(body) == {}
    assert speculative_config(body)["enable_adaptive_verification"] is True
    assert "enable_adaptive_verification" not in speculative_config(manifest())


def test_a_release_without_it_is_refused_naming_the_field_and_the_releases() -> None:
    found = errors(doc("0.29.0"))
    assert set(found) == {"AdaptiveVerificationUnsupportedByVersion"}
    message = found["AdaptiveVerificationUnsupportedByVersion"]
    assert message.startswith("spec.speculation.adaptiveVerification: vLLM 0.29.0")
    assert "eagle, eagle3 and mtp in 0.30.0 and later, draft_model in 0.31.0" in message


@pytest.mark.parametrize(
    ("version", "speculation", "accepted"),
    [
        ("0.30.0", DRAFT, False),  # Model Runner V2 runs draft_model only from 0.31.0
        ("0.31.0", DRAFT, True),
        ("0.30.0", {"method": "mtp"}, True),
        ("0.33.0", {"method": "ngram"}, False),  # the n-gram drafter silently has none
        ("0.33.0", {"method": "suffix"}, False),
    ],
)
def test_the_methods_follow_the_release(
    version: str, speculation: dict[str, Any], accepted: bool
) -> None:
    found = errors(doc(version, speculation))
    assert ("AdaptiveVerificationUnsupportedByMethod" not in found) is accepted, found


def test_pipeline_parallelism_is_refused_as_vllm_refuses_it() -> None:
    target = {**BASE_MANIFEST["spec"]["target"], "tensorParallelSize": 1, "pipelineParallelSize": 2}
    found = errors(doc("0.33.0", target=target))
    assert "AdaptiveVerificationWithPipelineParallel" in found
    assert (
        "not currently compatible with pipeline parallelism"
        in (found["AdaptiveVerificationWithPipelineParallel"])
    )


@pytest.mark.parametrize(
    ("extra", "refused"),
    [
        (["--enforce-eager"], True),
        (["--enforce_eager"], True),
        (["--no-enforce-eager"], False),
        (["--enable-lora"], True),
    ],
)
def test_extra_args_vllm_refuses_beside_it_are_refused(extra: list[str], refused: bool) -> None:
    body = doc("0.33.0")
    body["spec"]["vllm"]["extraArgs"] = extra
    found = errors(body)
    assert ("AdaptiveVerificationConflict" in found) is refused, found
    if refused:
        assert found["AdaptiveVerificationConflict"].startswith("spec.vllm.extraArgs[0]")
    # without adaptive verification the same options are the user's to pass
    plain = manifest()
    plain["spec"]["vllm"] = {"image": "vllm/vllm-openai:v0.33.0", "extraArgs": extra}
    assert "AdaptiveVerificationConflict" not in errors(plain)
