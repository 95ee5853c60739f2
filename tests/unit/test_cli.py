"""The CLI as a user meets it: exit codes, readable tables, errors without tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_plan_json() -> None:
    code, out, _ = run("plan", "-o", "json", str(EXAMPLES / "does-not-fit.yaml"))
    assert code == 2
    report = json.loads(out)[0]
    assert report["valid"] is False
    assert report["plan"]["verdict"] == "does-not-fit"
    assert any(f["code"] == "WeightsExceedMemory" for f in report["findings"])


def test_plan_of_does_not_fit_exits_2_with_the_reason() -> None:
    code, out, _ = run("plan", str(EXAMPLES / "does-not-fit.yaml"))
    assert code == 2
    assert "DOES NOT FIT" in out
    assert "WeightsExceedMemory" in out


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
