"""The Prometheus rules ship valid (`promtool check rules`) and do what they say
(`promtool test rules` with specpilot-rules.test.yaml: recording values, alerts firing and not)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from specpilot_lab.local.prometheus import prometheus_bin
from tests.conftest import REPO

RULES = REPO / "manifests" / "observability" / "specpilot-rules.yaml"
HERE = Path(__file__).parent


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(prometheus_bin() / "promtool"), *args],
        capture_output=True,
        text=True,
        cwd=HERE,
        timeout=120,
    )


def test_rules_are_valid() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 10 rules found" in result.stdout


def test_rules_unit_tests_pass() -> None:
    result = promtool("test", "rules", "specpilot-rules.test.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_wrong_expectation_fails(tmp_path: Path) -> None:
    """The unit tests can fail: the same file expecting the healthy resource to alert does."""
    wrong = (
        (HERE / "specpilot-rules.test.yaml")
        .read_text()
        .replace(
            "specpilot_io_resource: chat\n              specpilot_io_role: server",
            "specpilot_io_resource: code\n              specpilot_io_role: server",
        )
    )
    wrong = wrong.replace("../../manifests", str(REPO / "manifests"))
    (tmp_path / "wrong.test.yaml").write_text(wrong)
    result = promtool("test", "rules", str(tmp_path / "wrong.test.yaml"))
    assert result.returncode != 0
    assert "SpecpilotAcceptanceBelowThreshold" in result.stdout + result.stderr
