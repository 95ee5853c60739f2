"""The README's main command, end to end: `specpilot-lab demo` (what scripts/demo.sh runs once the
environment is set up) on its own control plane, simulated pods, Prometheus and operator."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_the_demo_turns_speculation_off_in_the_surge_and_draws_the_timeline(
    tmp_path: Path,
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "specpilot_lab", "demo", "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    shown = f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert result.returncode == 0, shown
    assert "SpeculationDisabled" in result.stdout, shown
    summary = re.search(r"== summary \((\d+) requests, (\d+) errors\)", result.stdout)
    assert summary, shown
    assert int(summary.group(1)) > 1000
    (png,) = tmp_path.glob("*/timeline.png")
    assert png.stat().st_size > 10_000
