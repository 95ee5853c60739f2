"""Rendered command lines against the real vLLM parser and engine-config validation (CPU, offline).

Two directions: everything specpilot renders for a release is accepted by that release, and what
specpilot refuses is refused by vLLM too (or, where vLLM accepts it at config time, fails when the
GPU workers start, which is documented per case). scripts/vllm-fidelity-env.sh builds and caches
one virtualenv per release; tests/fidelity/README.md explains the harness.
"""

from __future__ import annotations

import copy
import json
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.version import Version

from specpilot.adapters.checkpoints import CheckpointReader
from specpilot.api.models import SpeculativeInferenceSpec
from specpilot.assessment import assess, checkpoint_models, render
from specpilot.findings import Severity
from specpilot.rendering.args import server_args
from specpilot.rendering.extra_args import extra_args_findings
from specpilot.vllm_cli import ServeTable, read_args, serve_table
from tests.conftest import BASE_MANIFEST, CHECKPOINTS, EXAMPLES, REPO, load_example

pytestmark = pytest.mark.fidelity

HERE = Path(__file__).parent
VERSIONS = ["0.33.0", "0.11.0", "0.8.2"]
LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"
LLAMA_70B = "meta-llama/Llama-3.1-70B-Instruct"
FP8_8B = "RedHatAI/Meta-Llama-3-8B-Instruct-FP8"
W8A8_70B = "RedHatAI/Meta-Llama-3.1-70B-Instruct-quantized.w8a8"
GPTQ_8B = "hugging-quants/Meta-Llama-3.1-8B-Instruct-GPTQ-INT4"
"""desc_act true (its real quantize_config.json); config.json assembled, see its _SOURCE.md."""
GPTQ_8B_STATIC_ORDER = "ModelCloud/Meta-Llama-3.1-8B-Instruct-gptq-4bit"
"""desc_act false (its real quantize_config.json); config.json assembled, see _SOURCE.md."""
READER = CheckpointReader(local_dir=CHECKPOINTS, use_hub=False)
"""The checkpoint facts the operator would read (the repository's fixtures), never the hub."""


@cache
def vllm_python(version: str) -> str:
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "vllm-fidelity-env.sh"), version],
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    assert result.returncode == 0, f"building the vLLM {version} env failed:\n{result.stderr}"
    return result.stdout.strip().splitlines()[-1]


def run_vllm(version: str, cases: list[dict[str, Any]], tmp: Path) -> dict[str, dict[str, Any]]:
    path = tmp / f"cases-{version}.json"
    path.write_text(json.dumps(cases))
    result = subprocess.run(
        [vllm_python(version), str(HERE / "check_args.py"), str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
        cwd=REPO,
    )
    assert result.stdout.strip(), f"check_args.py printed nothing:\n{result.stderr[-3000:]}"
    return {r["name"]: r for r in json.loads(result.stdout)}


def resource(**spec: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE_MANIFEST)
    doc["spec"].update(spec)
    return doc


VARIANTS: dict[str, dict[str, Any]] = {
    "eagle-8b": {
        "target": {"model": LLAMA_8B, "maxModelLen": 8192},
        "speculation": {
            "method": "eagle",
            "draft": {"model": "yuhuili/EAGLE-LLaMA3.1-Instruct-8B"},
        },
        "gpus": {"type": "H100-80GB", "count": 1},
    },
    "awq-70b-ngram": {
        "target": {
            "model": "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4",
            "quantization": "awq",
            "maxModelLen": 8192,
        },
        "speculation": {"method": "ngram", "numSpeculativeTokens": 3},
        "gpus": {"type": "H100-80GB", "count": 1},
    },
    "gptq-8b-ngram": {
        "target": {"model": GPTQ_8B, "quantization": "gptq", "maxModelLen": 8192},
        "speculation": {"method": "ngram", "numSpeculativeTokens": 3},
        "gpus": {"type": "H100-80GB", "count": 1},
    },
    "gptq-8b-static-order-ngram": {
        "target": {"model": GPTQ_8B_STATIC_ORDER, "quantization": "gptq", "maxModelLen": 8192},
        "speculation": {"method": "ngram", "numSpeculativeTokens": 3},
        "gpus": {"type": "H100-80GB", "count": 1},
    },
    "mistral-ngram-half": {
        "target": {
            "model": "mistralai/Mistral-7B-Instruct-v0.3",
            "maxModelLen": 16384,
            "dtype": "half",
        },
        "speculation": {"method": "ngram", "ngram": {"promptLookupMin": 2, "promptLookupMax": 5}},
        "gpus": {"type": "L40S-48GB", "count": 1},
    },
    "qwen72b-draft-7b-tp4": {
        "target": {
            "model": "Qwen/Qwen2.5-72B-Instruct",
            "tensorParallelSize": 4,
            "maxModelLen": 8192,
        },
        "speculation": {
            "method": "draft_model",
            "draft": {"model": "Qwen/Qwen2.5-7B-Instruct"},
            "numSpeculativeTokens": 4,
        },
        "gpus": {"type": "H100-80GB", "count": 4},
    },
    "fp8-checkpoint-8b": {
        "target": {"model": FP8_8B, "quantization": "fp8", "maxModelLen": 8192},
        "speculation": {"method": "ngram"},
        "gpus": {"type": "H100-80GB", "count": 1},
    },
    "405b-tp8-ngram-fp8-kv": {
        "target": {
            "model": "meta-llama/Llama-3.1-405B-Instruct",
            "tensorParallelSize": 8,
            "maxModelLen": 8192,
            "kvCacheDtype": "fp8",
        },
        "speculation": {"method": "ngram"},
        "gpus": {"type": "H200-141GB", "count": 8},
    },
    "8b-schedule": {
        "target": {"model": LLAMA_8B, "maxModelLen": 8192},
        "speculation": {
            "method": "ngram",
            "numSpeculativeTokens": 5,
            "schedule": [
                {"minBatchSize": 1, "maxBatchSize": 16, "numSpeculativeTokens": 5},
                {"minBatchSize": 17, "maxBatchSize": 64, "numSpeculativeTokens": 2},
                {"minBatchSize": 65, "maxBatchSize": 4096, "numSpeculativeTokens": 0},
            ],
        },
        "gpus": {"type": "H100-80GB", "count": 1},
    },
    "8b-no-speculation": {
        "target": {"model": LLAMA_8B, "maxModelLen": 32768, "dtype": "bfloat16"},
        "speculation": None,
        "gpus": {"type": "A100-80GB", "count": 1, "memoryUtilization": 0.85},
    },
}
CPU_ONLY_REJECTIONS = {("0.11.0", "405b-tp8-ngram-fp8-kv")}
"""vLLM 0.11.0's CPU backend refuses an fp8 KV cache that a GPU accepts (see the README)."""
REFUSED_BY_VLLM_ALTHOUGH_RENDERED: dict[tuple[str, str], str] = {}
"""Known gaps, not CPU artefacts: (release, case) -> vLLM's error for what specpilot renders and
the release refuses on any platform. Pinned here so that either side changing shows. Empty: the
GPTQ desc_act=True gap on 0.33.0 is now refused by specpilot (GPTQActOrderUnsupported, REFUSALS)."""


def rendered_cases(version: str) -> list[dict[str, Any]]:
    """Every example and variant that specpilot renders for `version`, both on and off."""
    docs = {f"example-{p.stem}": load_example(p) for p in EXAMPLES}
    docs |= {name: resource(**spec) for name, spec in VARIANTS.items()}
    cases = []
    for name, doc in docs.items():
        if (version, name) in CPU_ONLY_REJECTIONS:
            continue
        doc = copy.deepcopy(doc)
        doc["spec"].setdefault("vllm", {})["image"] = f"vllm/vllm-openai:v{version}"
        checkpoints = READER.read(checkpoint_models(doc))
        if not assess(doc, checkpoints=checkpoints).valid:
            continue  # refused for this release: covered by the refusal cases below
        for speculation in (True, False):
            objects = render(doc, speculation=speculation, checkpoints=checkpoints)
            container = objects[0]["spec"]["template"]["spec"]["containers"][0]
            assert container["command"] == ["vllm", "serve"]
            cases.append(
                {
                    "name": f"{name}-{'on' if speculation else 'off'}",
                    "argv": container["args"],
                    "expect": "pass",
                }
            )
    return cases


@pytest.mark.parametrize("version", VERSIONS)
def test_everything_specpilot_renders_is_accepted_by_vllm(version: str, tmp_path: Path) -> None:
    cases = rendered_cases(version)
    assert len(cases) >= 8, "too few cases render for this version to mean anything"
    results = run_vllm(version, cases, tmp_path)
    gaps = {
        f"{name}-{state}": needle
        for (gap_version, name), needle in REFUSED_BY_VLLM_ALTHOUGH_RENDERED.items()
        if gap_version == version
        for state in ("on", "off")
    }
    failures = {n: r["error"] for n, r in results.items() if not r["ok"] and n not in gaps}
    assert not failures, json.dumps(failures, indent=1)[:4000]
    for name, needle in gaps.items():
        assert name in results, f"{name} no longer renders for {version}: drop the known gap"
        assert not results[name]["ok"], f"vLLM {version} now accepts {name}: drop the known gap"
        assert needle in (results[name]["error"] or ""), results[name]["error"]
    assert set(results) == {c["name"] for c in cases}


def test_the_gptq_variants_are_planned_within_three_percent_of_a_logged_load() -> None:
    """The issue's criterion for the GPTQ case: the resource whose command vLLM checks above is
    planned within 3% of what vLLM logged loading that checkpoint (startup-logs.yaml)."""
    records = yaml.safe_load((REPO / "tests" / "fixtures" / "startup-logs.yaml").read_text())
    logged = next(r for r in records if r["id"] == "gptq-llama3-8b")
    assert logged["target"]["model"] == GPTQ_8B
    for name in ("gptq-8b-ngram", "gptq-8b-static-order-ngram"):
        doc = resource(**VARIANTS[name])
        doc["spec"]["vllm"] = {"image": f"vllm/vllm-openai:v{logged['vllm']}"}
        result = assess(doc, checkpoints=READER.read(checkpoint_models(doc)))
        assert result.valid
        assert result.plan is not None
        assert result.plan.target is not None
        assert result.plan.target.checkpoint_quantization == "gptq"
        weights = result.plan.target.weights_gb_per_gpu * 1e9 / 2**30
        error = weights / logged["logged"]["weights_gib_per_gpu"] - 1
        assert abs(error) <= 0.03, f"{name}: {weights:.3f} GiB ({error:+.1%})"


def _args_as_if(doc: dict[str, Any], render_as: str) -> list[str]:
    """What a renderer that ignored specpilot's refusals would pass (as for `render_as`)."""
    spec = SpeculativeInferenceSpec.model_validate(doc["spec"])
    return server_args(spec, Version(render_as))


def _refused(doc: dict[str, Any], version: str, code: str) -> None:
    """specpilot refuses `doc` on `version` with `code`, from the catalog and from the checkpoint
    facts the operator would read alike; with no code, it accepts it as the operator reads it."""
    doc = copy.deepcopy(doc)
    doc["spec"]["vllm"] = {"image": f"vllm/vllm-openai:v{version}"}
    read = READER.read(checkpoint_models(doc))
    for checkpoints in (None, read) if code else (read,):
        codes = {
            f.code
            for f in assess(doc, checkpoints=checkpoints).findings
            if f.severity is Severity.ERROR
        }
        if code:
            assert code in codes, f"specpilot does not refuse this ({codes})"
        else:
            assert not codes, f"specpilot refuses this ({codes})"


REFUSALS: list[tuple[str, str, str, dict[str, Any], str, str]] = [
    # (case, vLLM release, specpilot's code, resource spec, render as, vLLM's verdict)
    (
        "draft-model-on-0.11",
        "0.11.0",
        "MethodUnsupportedByVersion",
        {},
        "0.33.0",
        "fail:not supported",
    ),
    (
        "vocab-mismatch-qwen",
        "0.33.0",
        "DraftVocabSizeMismatch",
        {
            "target": {"model": "Qwen/Qwen2.5-7B-Instruct", "maxModelLen": 8192},
            "speculation": {
                "method": "draft_model",
                "draft": {"model": "Qwen/Qwen2.5-0.5B-Instruct"},
            },
            "gpus": {"type": "H100-80GB", "count": 1},
        },
        "0.33.0",
        "fail:vocab",
    ),
    (
        "typical-acceptance-on-0.33",
        "0.33.0",
        "TypicalAcceptanceRemoved",
        {
            "speculation": {
                "method": "draft_model",
                "draft": {"model": LLAMA_8B},
                "acceptanceMethod": "typical_acceptance_sampler",
            }
        },
        "0.9.2",
        "fail:acceptance_method",
    ),
    (
        "disable-by-batch-size-on-0.33",
        "0.33.0",
        "DisableByBatchSizeRemoved",
        {
            "speculation": {
                "method": "draft_model",
                "draft": {"model": LLAMA_8B},
                "disableByBatchSize": 32,
            }
        },
        "0.9.2",
        "fail:disable_by_batch_size",
    ),
    ("legacy-flags-on-0.33", "0.33.0", "", {}, "0.8.2", "fail:--speculative-model"),
    (
        "heads-not-divisible-tp3",
        "0.33.0",
        "HeadsNotDivisibleByTP",
        {
            "target": {
                "model": LLAMA_70B,
                "quantization": "int8",
                "tensorParallelSize": 3,
                "maxModelLen": 8192,
            },
            "speculation": None,
            "gpus": {"type": "H100-80GB", "count": 3},
        },
        "0.33.0",
        "fail:divisible",
    ),
    (
        "max-model-len-above-model",
        "0.33.0",
        "MaxModelLenAboveModel",
        {
            "target": {"model": LLAMA_8B, "maxModelLen": 200000},
            "speculation": None,
            "gpus": {"type": "H200-141GB", "count": 1},
        },
        "0.33.0",
        "fail:max_model_len",
    ),
    # GPTQ group activation ordering (desc_act true, group_size 128): vLLM 0.30.0 removed it
    # (AutoGPTQConfig raises on any platform); 0.11.0 still loads the same checkpoint.
    (
        "gptq-desc-act-on-0.33",
        "0.33.0",
        "GPTQActOrderUnsupported",
        VARIANTS["gptq-8b-ngram"],
        "0.33.0",
        "fail:group activation ordering (desc_act=True) is no longer supported",
    ),
    ("gptq-desc-act-on-0.11", "0.11.0", "", VARIANTS["gptq-8b-ngram"], "0.11.0", "pass"),
    (
        "gptq-static-order-on-0.33",
        "0.33.0",
        "",
        VARIANTS["gptq-8b-static-order-ngram"],
        "0.33.0",
        "pass",
    ),
    # enable_adaptive_verification: vLLM 0.33.0's SpeculativeConfig takes the key for eagle (an
    # unknown key fails as an extra input) and the engine config then refuses it for the CPU's
    # Model Runner V1; the GPU checks after it (full CUDA graphs, PP) cannot run here.
    (
        "adaptive-verification-on-0.33-cpu",
        "0.33.0",
        "",
        {
            **VARIANTS["eagle-8b"],
            "speculation": {**VARIANTS["eagle-8b"]["speculation"], "adaptiveVerification": True},
        },
        "0.33.0",
        "fail:Model Runner V1 does not support: adaptive draft verification",
    ),
    # 0.11.0 silently ignores the key: a lever the engine would drop, which specpilot refuses.
    (
        "adaptive-verification-ignored-by-0.11",
        "0.11.0",
        "AdaptiveVerificationUnsupportedByVersion",
        {"speculation": {"method": "ngram", "adaptiveVerification": True}},
        "0.33.0",
        "pass",
    ),
    # vLLM's config accepts a draft TP of 1 under target TP 2; its GPU workers then refuse it
    # ("draft_tensor_parallel_size and tensor_parallel_size must be the same"), which cannot
    # run here: specpilot refuses it up front.
    (
        "draft-tp1-under-tp2",
        "0.33.0",
        "DraftTensorParallelUnsupported",
        {
            "speculation": {
                "method": "draft_model",
                "draft": {"model": LLAMA_8B, "tensorParallelSize": 1},
            }
        },
        "0.33.0",
        "pass",
    ),
]


def test_what_specpilot_refuses_vllm_refuses_too(tmp_path: Path) -> None:
    by_version: dict[str, list[dict[str, Any]]] = {}
    verdicts = {}
    for name, version, code, spec, render_as, verdict in REFUSALS:
        doc = resource(**spec)
        if code or verdict == "pass":
            _refused(doc, version, code)
        case = {"name": name, "argv": _args_as_if(doc, render_as)}
        by_version.setdefault(version, []).append(case)
        verdicts[name] = verdict
    for version, cases in by_version.items():
        results = run_vllm(version, cases, tmp_path)
        for name, result in results.items():
            verdict = verdicts[name]
            if verdict == "pass":
                assert result["ok"], f"{name}: {result['error']}"
                continue
            assert not result["ok"], f"{name}: vLLM {version} accepted it"
            needle = verdict.removeprefix("fail:").lower()
            assert needle in (result["error"] or "").lower(), f"{name}: {result['error']}"


EXTRA_ARGS_CASES: list[dict[str, Any]] = json.loads(
    (HERE / "cases" / "extra-args.json").read_text()
)
REFUSED_BY_VLLM_ITSELF = {"model", "config", "help"}
"""Dests after which vLLM does not serve although argparse read them: a second model, a config
file (missing here), the help text (it exits)."""


@cache
def real_readings(version: str) -> dict[str, dict[str, Any]]:
    """What the real `vllm serve` parser of `version` makes of every extraArgs case."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cases.json"
        path.write_text(json.dumps(EXTRA_ARGS_CASES))
        result = subprocess.run(
            [vllm_python(version), str(HERE / "serve_options.py"), "resolve", str(path)],
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
            cwd=REPO,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    return {r["name"]: r for r in json.loads(result.stdout)}


@pytest.mark.parametrize("version", VERSIONS)
def test_shipped_option_table_matches_the_real_parser(version: str) -> None:
    """Drift: the table the operator ships is what tests/fidelity/serve_options.py reads from
    the release's parser today (regenerate it with that script)."""
    result = subprocess.run(
        [vllm_python(version), str(HERE / "serve_options.py"), "table"],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
        cwd=REPO,
    )
    fresh = ServeTable.model_validate_json(result.stdout)
    assert fresh.model_dump(exclude={"python"}) == serve_table(version).model_dump(
        exclude={"python"}
    )


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", EXTRA_ARGS_CASES, ids=lambda c: c["name"])
def test_extra_args_are_judged_as_the_real_parser_reads_them(
    version: str, case: dict[str, Any]
) -> None:
    """specpilot's reading of an argument list is vLLM's: the same options applied in the same
    order, and a refusal exactly where vLLM's parser refuses. Every managed option specpilot
    refuses is one vLLM either refuses or applies to that managed dest."""
    real = real_readings(version)[case["name"]]
    recorded = [dest for _, dest in real["applied"]] if real["ok"] else "refused"
    assert recorded == case["vllm"][version], "the real parser changed: update the case file"
    reading = read_args(serve_table(version), case["argv"])
    mine = [a.option.dest for a in reading.applied]
    if reading.problems:
        assert not real["ok"], f"vLLM {version} accepts what specpilot reads as {reading.problems}"
    elif real["ok"]:
        assert mine == [dest for _, dest in real["applied"]], real
    else:
        assert REFUSED_BY_VLLM_ITSELF & set(mine), f"vLLM {version} refuses it: {real['error']}"
    doc = resource(vllm={"image": f"vllm/vllm-openai:v{version}", "extraArgs": case["argv"]})
    spec = SpeculativeInferenceSpec.model_validate(doc["spec"])
    found = extra_args_findings(spec, Version(version))
    if not found:
        assert real["ok"], f"specpilot accepts what vLLM {version} refuses: {real['error']}"
    for finding in found:
        assert finding.severity is Severity.ERROR, finding
        index = int(finding.path.rsplit("[", 1)[1].rstrip("]"))
        dests = {a.option.dest for a in reading.applied if a.index == index}
        if finding.code == "ManagedFlagInExtraArgs":
            assert not real["ok"] or dests & {dest for _, dest in real["applied"]}, real
        elif finding.code == "InvalidExtraArg":
            assert not real["ok"]


def test_a_quantization_flag_contradicting_the_checkpoint_is_refused_by_both(
    tmp_path: Path,
) -> None:
    """The flag specpilot used to render for `quantization: fp8` on a pre-quantized checkpoint:
    vLLM refuses it as specpilot now does, and without it vLLM loads the checkpoint's method."""
    doc = resource(
        target={"model": W8A8_70B, "quantization": "fp8", "tensorParallelSize": 2},
        speculation=None,
    )
    checkpoints = READER.read([W8A8_70B])
    codes = {f.code for f in assess(doc, checkpoints=checkpoints).findings}
    assert "QuantizationContradictsCheckpoint" in codes
    doc["spec"]["target"]["quantization"] = "int8"
    args = render(doc, checkpoints=checkpoints)[0]["spec"]["template"]["spec"]["containers"][0][
        "args"
    ]
    assert "--quantization" not in args
    cases = [
        {"name": "flag-fp8-on-compressed-tensors", "argv": [*args, "--quantization", "fp8"]},
        {"name": "no-flag-on-compressed-tensors", "argv": args},
    ]
    results = run_vllm("0.33.0", cases, tmp_path)
    refused = results["flag-fp8-on-compressed-tensors"]
    assert not refused["ok"]
    assert "does not match the quantization method" in (refused["error"] or "")
    assert results["no-flag-on-compressed-tensors"]["ok"], results
