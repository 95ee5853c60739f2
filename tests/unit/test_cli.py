"""The CLI as a user meets it: exit codes, readable tables, errors without tracebacks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from specpilot.cli import main
from tests.conftest import CHECKPOINTS, REPO, manifest

EXAMPLES = REPO / "manifests" / "examples"


def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), input=stdin)
    assert "Traceback" not in result.output + result.stderr
    return result.exit_code, result.stdout, result.stderr


def test_plan_prints_the_memory_table_and_verdict() -> None:
    code, out, _ = run("plan", str(EXAMPLES / "llama-70b-int8-draft.yaml"))
    assert code == 0
    assert "Verdict: fits" in out
    assert "left after weights, all GPUs:       71.3 GB" in out
    assert "INT8" in out
    assert "1:9" in out


def test_plan_prints_the_startup_and_what_a_change_costs() -> None:
    code, out, _ = run("plan", str(EXAMPLES / "llama-70b-model-cache.yaml"))
    assert code == 0
    assert "expected startup:      208s" in out
    assert "from the model cache (PVC hf-model-cache)" in out
    assert "maxSurge 0, maxUnavailable 1, progressDeadlineSeconds 600" in out
    assert "each of 2 replicas in turn" in out
    assert out.index("Startup and rollout") < out.index("Verdict: fits")


def test_plan_json_has_the_rollout() -> None:
    code, out, _ = run("plan", "-o", "json", str(EXAMPLES / "llama-70b-int8-draft.yaml"))
    assert code == 0
    assert json.loads(out)[0]["rollout"] == {
        "expectedStartupSeconds": 386,
        "weightsFrom": "hub",
        "startupSecondsFromCache": 208,
        "startupSecondsFromHub": 386,
        "maxSurge": 0,
        "maxUnavailable": 1,
        "progressDeadlineSeconds": 892,
        "changeIsAnOutage": True,
    }


def test_plan_json() -> None:
    code, out, _ = run("plan", "-o", "json", str(EXAMPLES / "does-not-fit.yaml"))
    assert code == 2
    report = json.loads(out)[0]
    assert report["valid"] is False
    assert report["verdict"] == report["plan"]["verdict"] == "cannot-be-deployed"
    assert report["plan"]["memoryVerdict"] == "does-not-fit"
    assert report["reasons"][0].startswith("spec.gpus: weights need")
    assert any(f["code"] == "WeightsExceedMemory" for f in report["findings"])
    assert report["rollout"] is None  # nothing is rolled out


def test_plan_of_does_not_fit_exits_2_with_the_reason() -> None:
    code, out, _ = run("plan", str(EXAMPLES / "does-not-fit.yaml"))
    assert code == 2
    assert (
        "Verdict: CANNOT BE DEPLOYED: 1 error(s), listed below; the memory alone: DOES NOT FIT"
        in out
    )
    assert "WeightsExceedMemory" in out


def _with(tmp_path: Path, change: dict[str, Any]) -> str:
    doc = yaml.safe_load((EXAMPLES / "llama-70b-int8-draft.yaml").read_text())
    for section, fields in change.items():
        doc["spec"].setdefault(section, {}).update(fields)
    path = tmp_path / "resource.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_plan_never_says_fits_beside_an_error(tmp_path: Path) -> None:
    """The issue's case: the memory fits, but extraArgs would serve another context length."""
    path = _with(tmp_path, {"vllm": {"extraArgs": ["--max-model", "131072"]}})
    code, out, _ = run("plan", path)
    assert code == 2
    assert "Verdict: fits" not in out
    assert "Verdict: CANNOT BE DEPLOYED: 1 error(s), listed below; the memory alone: fits" in out
    assert "--max-model (vLLM reads it as --max-model-len) sets vLLM 0.33.0's max_model_len" in out
    code, out, _ = run("plan", "-o", "json", path)
    report = json.loads(out)[0]
    assert (report["valid"], report["verdict"]) == (False, "cannot-be-deployed")
    assert report["plan"]["verdict"] == "cannot-be-deployed"
    assert report["plan"]["memoryVerdict"] == "fits"
    assert report["memoryUnit"] == "GB = 10^9 bytes"


@pytest.mark.parametrize("command", ["plan", "render", "validate"])
def test_snake_case_fields_are_refused_not_applied(tmp_path: Path, command: str) -> None:
    path = _with(tmp_path, {"vllm": {"tensor_parallel_size": 4}, "target": {"max_model_len": 1}})
    code, out, err = run(command, path)
    assert code == 2
    text = out + err
    assert "spec.vllm.tensor_parallel_size: not a field of spec.vllm, so it is not applied" in text
    assert "did you mean spec.target.tensorParallelSize or" in text
    assert "spec.target.max_model_len: not a field" in text
    assert "did you mean spec.target.maxModelLen?" in text


def test_plan_names_the_memory_unit() -> None:
    _, out, _ = run("plan", str(EXAMPLES / "llama-70b-int8-draft.yaml"))
    assert "(GB = 10^9 bytes;" in out


def test_render_prints_manifests() -> None:
    code, out, _ = run("render", str(EXAMPLES / "ngram-summarization.yaml"))
    assert code == 0
    kinds = [d["kind"] for d in yaml.safe_load_all(out)]
    assert kinds == ["Deployment", "Service", "PodMonitor"]


def test_render_refuses_invalid_with_exit_2() -> None:
    code, out, err = run("render", str(EXAMPLES / "does-not-fit.yaml"))
    assert code == 2
    assert out == ""
    assert "spec.gpus: weights need" in err


def test_validate_reads_stdin_and_reports_every_error(tmp_path: Path) -> None:
    doc = yaml.safe_load((EXAMPLES / "llama-70b-int8-draft.yaml").read_text())
    doc["spec"]["gpus"]["count"] = 3
    doc["spec"]["speculation"]["method"] = "magic"
    code, out, _ = run("validate", "-", stdin=yaml.safe_dump(doc))
    assert code == 2
    assert "spec.speculation.method" in out
    assert "spec.gpus.count" in out


def test_validate_valid_example() -> None:
    code, out, _ = run("validate", str(EXAMPLES / "eagle3-single-h100.yaml"))
    assert code == 0
    assert "valid" in out


def test_malformed_yaml_is_a_clean_error() -> None:
    code, _, err = run("validate", "-", stdin="spec: [unclosed")
    assert code == 2
    assert "not valid YAML" in err


def test_crd_command_prints_the_crd() -> None:
    code, out, _ = run("crd")
    assert code == 0
    assert yaml.safe_load(out)["kind"] == "CustomResourceDefinition"


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("--webhook-service", "specpilot-webhook", "NAMESPACE/NAME"),
        ("--webhook-service", "ns/a/b", "NAMESPACE/NAME"),
        ("--webhook-configuration", "specpilot", "specpilot.specpilot.io"),
    ],
)
def test_run_rejects_bad_webhook_options_before_starting(
    option: str, value: str, named: str
) -> None:
    result = CliRunner().invoke(main, ["run", "--webhook-port", "9443", option, value])
    assert result.exit_code == 2
    assert option in result.output
    assert named in result.output


def test_plan_reads_a_model_outside_the_catalog_from_a_checkpoint_directory(
    tmp_path: Path,
) -> None:
    doc = tmp_path / "qwen3.yaml"
    doc.write_text(
        yaml.safe_dump(
            manifest(
                target={"model": "Qwen/Qwen3-8B", "maxModelLen": 8192},
                speculation={"method": "ngram"},
                gpus={"type": "H100-80GB", "count": 1},
            )
        )
    )
    code, _, _ = run("plan", str(doc), "--offline")
    assert code == 2  # not in the catalog, nothing read
    code, out, _ = run("plan", str(doc), "--offline", "--checkpoint-dir", str(CHECKPOINTS))
    assert code == 0, out
    assert "Qwen3-8B/config.json" in out
    assert "Verdict: fits" in out
