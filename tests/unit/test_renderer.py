"""The vLLM command line per release, the refusals, and the Deployment around it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from specpilot.assessment import assess, render
from specpilot.findings import InvalidResourceError
from specpilot.rendering.manifests import LABEL_RESOURCE, LABEL_ROLE, LABEL_SPECULATION
from tests.conftest import manifest


def server(doc: dict[str, Any], speculation: bool = True) -> dict[str, Any]:
    deployment: dict[str, Any] = render(doc, speculation=speculation)[0]
    assert deployment["kind"] == "Deployment"
    return deployment


def container(doc: dict[str, Any], speculation: bool = True) -> dict[str, Any]:
    c: dict[str, Any] = server(doc, speculation)["spec"]["template"]["spec"]["containers"][0]
    return c


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_current_vllm_gets_one_speculative_config_json() -> None:
    c = container(manifest())
    assert c["command"] == ["vllm", "serve"]
    args = c["args"]
    assert args[0] == "RedHatAI/Meta-Llama-3.1-70B-Instruct-quantized.w8a8"
    assert flag(args, "--tensor-parallel-size") == "2"
    assert flag(args, "--gpu-memory-utilization") == "0.92"  # the 0.20.0+ default
    assert flag(args, "--max-model-len") == "8192"
    config = json.loads(flag(args, "--speculative-config"))
    assert config == {
        "method": "draft_model",
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "num_speculative_tokens": 5,
        "draft_tensor_parallel_size": 2,
    }
    assert not any(a.startswith("--speculative-model") for a in args)


def test_legacy_vllm_gets_per_flag_options() -> None:
    doc = manifest(
        vllm={"image": "vllm/vllm-openai:v0.6.3"},
        speculation={
            "method": "draft_model",
            "draft": {"model": "meta-llama/Llama-3.1-8B-Instruct", "tensorParallelSize": 1},
            "numSpeculativeTokens": 4,
            "acceptanceMethod": "typical_acceptance_sampler",
            "typicalAcceptancePosteriorThreshold": 0.09,
            "typicalAcceptancePosteriorAlpha": 0.3,
            "disableByBatchSize": 32,
        },
    )
    args = container(doc)["args"]
    assert "--speculative-config" not in args
    assert flag(args, "--speculative-model") == "meta-llama/Llama-3.1-8B-Instruct"
    assert flag(args, "--num-speculative-tokens") == "4"
    assert flag(args, "--speculative-draft-tensor-parallel-size") == "1"
    assert flag(args, "--spec-decoding-acceptance-method") == "typical_acceptance_sampler"
    assert flag(args, "--typical-acceptance-sampler-posterior-threshold") == "0.09"
    assert flag(args, "--typical-acceptance-sampler-posterior-alpha") == "0.3"
    assert flag(args, "--speculative-disable-by-batch-size") == "32"


def test_legacy_ngram_is_the_ngram_pseudo_model() -> None:
    doc = manifest(
        vllm={"image": "vllm/vllm-openai:v0.8.2"},
        speculation={"method": "ngram", "ngram": {"promptLookupMin": 2, "promptLookupMax": 6}},
    )
    args = container(doc)["args"]
    assert flag(args, "--speculative-model") == "[ngram]"
    assert flag(args, "--ngram-prompt-lookup-max") == "6"
    assert flag(args, "--ngram-prompt-lookup-min") == "2"


def test_ngram_json_keys() -> None:
    doc = manifest(speculation={"method": "ngram", "numSpeculativeTokens": 4})
    config = json.loads(flag(container(doc)["args"], "--speculative-config"))
    assert config == {
        "method": "ngram",
        "num_speculative_tokens": 4,
        "prompt_lookup_max": 4,
        "prompt_lookup_min": 1,
    }


def test_speculation_off_rendering_drops_every_speculative_flag() -> None:
    on = container(manifest())
    off = container(manifest(), speculation=False)
    assert "--speculative-config" not in off["args"]
    assert [a for a in on["args"] if a != "--speculative-config" and not a.startswith("{")] == (
        off["args"]
    )
    labels = server(manifest(), speculation=False)["spec"]["template"]["metadata"]["labels"]
    assert labels[LABEL_SPECULATION] == "off"


@pytest.mark.parametrize(
    ("version", "speculation", "path", "code"),
    [
        (
            "0.33.0",
            {
                "method": "draft_model",
                "draft": {"model": "meta-llama/Llama-3.1-8B"},
                "acceptanceMethod": "typical_acceptance_sampler",
            },
            "spec.speculation.acceptanceMethod",
            "TypicalAcceptanceRemoved",
        ),
        (
            "0.10.0",
            {"method": "ngram", "disableByBatchSize": 16},
            "spec.speculation.disableByBatchSize",
            "DisableByBatchSizeRemoved",
        ),
        (
            "0.11.0",
            {"method": "draft_model", "draft": {"model": "meta-llama/Llama-3.1-8B"}},
            "spec.speculation.method",
            "MethodUnsupportedByVersion",
        ),
        (
            "0.13.0",
            {"method": "draft_model", "draft": {"model": "meta-llama/Llama-3.1-8B"}},
            "spec.speculation.method",
            "MethodUnsupportedByVersion",
        ),
        (
            "0.33.0",
            {
                "method": "draft_model",
                "draft": {"model": "meta-llama/Llama-3.1-8B", "tensorParallelSize": 1},
            },
            "spec.speculation.draft.tensorParallelSize",
            "DraftTensorParallelUnsupported",
        ),
        (
            "0.8.2",
            {
                "method": "ngram",
                "schedule": [{"minBatchSize": 1, "maxBatchSize": 8, "numSpeculativeTokens": 5}],
            },
            "spec.speculation.schedule",
            "ScheduleUnsupportedByVersion",
        ),
        (
            "0.8.2",
            {"method": "eagle3", "draft": {"model": "yuhuili/EAGLE3-LLaMA3.1-Instruct-8B"}},
            "spec.speculation.method",
            "MethodUnsupportedByVersion",
        ),
    ],
)
def test_version_refusals_name_the_version_and_field(
    version: str, speculation: dict[str, Any], path: str, code: str
) -> None:
    doc = manifest(vllm={"image": f"vllm/vllm-openai:v{version}"}, speculation=speculation)
    with pytest.raises(InvalidResourceError) as raised:
        render(doc)
    finding = next(f for f in raised.value.findings if f.code == code)
    assert finding.path == path
    assert version in finding.message


def test_draft_model_works_again_from_0_15() -> None:
    assert assess(manifest(vllm={"image": "vllm/vllm-openai:v0.15.0"})).valid
    assert not assess(manifest(vllm={"image": "vllm/vllm-openai:v0.14.1"})).valid
    assert assess(manifest(vllm={"image": "vllm/vllm-openai:v0.9.2"})).valid  # V0 fallback


def test_memory_utilization_default_follows_the_release() -> None:
    old = container(manifest(vllm={"image": "vllm/vllm-openai:v0.19.1"}))["args"]
    new = container(manifest(vllm={"image": "vllm/vllm-openai:v0.20.0"}))["args"]
    assert flag(old, "--gpu-memory-utilization") == "0.9"
    assert flag(new, "--gpu-memory-utilization") == "0.92"


def test_draft_tp_of_one_is_fine_on_v0_and_for_eagle() -> None:
    v0 = manifest(
        vllm={"image": "vllm/vllm-openai:v0.9.2"},
        speculation={
            "method": "draft_model",
            "draft": {"model": "meta-llama/Llama-3.1-8B-Instruct", "tensorParallelSize": 1},
        },
    )
    assert assess(v0).valid
    eagle = manifest(
        speculation={
            "method": "eagle3",
            "draft": {"model": "yuhuili/EAGLE3-LLaMA3.3-Instruct-70B", "tensorParallelSize": 1},
        }
    )
    assert assess(eagle).valid
    three = manifest(
        speculation={
            "method": "eagle3",
            "draft": {"model": "yuhuili/EAGLE3-LLaMA3.3-Instruct-70B", "tensorParallelSize": 4},
        },
        target={
            "model": "RedHatAI/Meta-Llama-3.1-70B-Instruct-quantized.w8a8",
            "quantization": "int8",
            "tensorParallelSize": 8,
            "maxModelLen": 8192,
        },
        gpus={"type": "H100-80GB", "count": 8},
    )
    assert not assess(three).valid


def test_per_batch_size_schedule_on_current_vllm() -> None:
    doc = manifest(
        speculation={
            "method": "ngram",
            "schedule": [
                {"minBatchSize": 1, "maxBatchSize": 16, "numSpeculativeTokens": 5},
                {"minBatchSize": 17, "maxBatchSize": 1024, "numSpeculativeTokens": 0},
            ],
        }
    )
    config = json.loads(flag(container(doc)["args"], "--speculative-config"))
    assert config["num_speculative_tokens_per_batch_size"] == [[1, 16, 5], [17, 1024, 0]]


def test_deployment_shape() -> None:
    doc = manifest(
        pod={
            "nodeSelector": {"gpu": "h100"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
            "resources": {"requests": {"cpu": "8", "memory": "64Gi"}},
            "env": [{"name": "HF_HOME", "value": "/cache"}],
            "serviceAccountName": "vllm",
            "imagePullSecrets": [{"name": "regcred"}],
            "labels": {"team": "ml"},
        },
    )
    d = server(doc)
    pod = d["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert d["metadata"]["namespace"] == "inference"
    assert d["spec"]["replicas"] == 1
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert c["resources"]["requests"] == {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "2"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["ports"][0]["containerPort"] == 8000
    assert pod["nodeSelector"] == {"gpu": "h100"}
    assert pod["serviceAccountName"] == "vllm"
    labels = d["spec"]["template"]["metadata"]["labels"]
    assert labels[LABEL_RESOURCE] == "llama"
    assert labels["team"] == "ml"
    assert d["spec"]["selector"]["matchLabels"] == {LABEL_RESOURCE: "llama", LABEL_ROLE: "server"}
    assert isinstance(c["args"], list)


def test_replicas_left_to_an_autoscaler_when_unset() -> None:
    assert "replicas" not in server(manifest(replicas=None))["spec"]


def test_control_replicas_get_a_baseline_deployment_without_speculation() -> None:
    objects = render(manifest(policy={"controlReplicas": 1}, monitoring={"podMonitor": True}))
    kinds = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert kinds == [
        ("Deployment", "llama"),
        ("Deployment", "llama-baseline"),
        ("Service", "llama"),
        ("PodMonitor", "llama"),
    ]
    baseline = objects[1]
    assert baseline["spec"]["replicas"] == 1
    assert (
        "--speculative-config" not in baseline["spec"]["template"]["spec"]["containers"][0]["args"]
    )
    assert objects[2]["spec"]["selector"] == {LABEL_RESOURCE: "llama"}


@settings(max_examples=80, deadline=None)
@given(
    version=st.sampled_from(["0.6.3", "0.8.2", "0.9.2", "0.10.1", "0.14.0", "0.33.0"]),
    method=st.sampled_from(["draft_model", "ngram", "eagle", "eagle3", "suffix", "none"]),
    k=st.integers(min_value=1, max_value=8),
    tp=st.sampled_from([1, 2, 4, 8]),
    extra=st.lists(
        st.text(alphabet=st.characters(codec="utf-8", min_codepoint=32), max_size=20).filter(
            lambda s: not s.startswith("-")
        ),
        max_size=3,
    ),
)
def test_render_properties(version: str, method: str, k: int, tp: int, extra: list[str]) -> None:
    speculation: dict[str, Any] = {"method": method}
    if method != "none":
        speculation["numSpeculativeTokens"] = k
    if method in ("draft_model", "eagle", "eagle3"):
        speculation["draft"] = {
            "model": {
                "draft_model": "meta-llama/Llama-3.1-8B-Instruct",
                "eagle": "yuhuili/EAGLE-LLaMA3.1-Instruct-8B",
                "eagle3": "yuhuili/EAGLE3-LLaMA3.1-Instruct-8B",
            }[method]
        }
    doc = manifest(
        vllm={"image": f"vllm/vllm-openai:v{version}", "extraArgs": extra},
        target={
            "model": "RedHatAI/Meta-Llama-3.1-70B-Instruct-quantized.w8a8",
            "quantization": "int8",
            "tensorParallelSize": tp,
            "maxModelLen": 4096,
        },
        gpus={"type": "H200-141GB", "count": tp},
        speculation=speculation,
    )
    result = assess(doc)
    if not result.valid:
        return  # refusals are covered above; here: whatever renders is well formed
    args = container(doc)["args"]
    assert all(isinstance(a, str) for a in args)
    assert args[-len(extra) :] == extra if extra else True
    legacy = version in ("0.6.3", "0.8.2")
    if method == "none":
        assert not any("specul" in a for a in args[: len(args) - len(extra)])
    elif legacy:
        assert "--speculative-config" not in args
        assert flag(args, "--num-speculative-tokens") == str(k)
    else:
        config = json.loads(flag(args, "--speculative-config"))
        assert config["method"] == method
        assert config["num_speculative_tokens"] == k
        assert "tensor_parallel_size" not in config


@settings(max_examples=300, deadline=None)
@example(value={"k" * 1100: None})  # found by hypothesis: YAML's implicit keys end at 1024
@example(value={"1": [True, None], "\U0001f600": {"k": ["x"]}})
@given(
    value=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda children: st.lists(children) | st.dictionaries(st.text(), children),
        max_leaves=10,
    )
)
def test_template_values_survive_yaml_exactly(value: Any) -> None:
    import yaml

    from specpilot.rendering.manifests import yaml_scalar

    assert yaml.safe_load(yaml_scalar(value)) == value
