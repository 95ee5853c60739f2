"""The README's main command, end to end: `specpilot-lab demo` (what scripts/demo.sh runs once the
environment is set up) on its own control plane, simulated pods (a finite GPU pool, pods that take
their scaled startup), Prometheus and operator: the surge act and the full-pool act."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def lost_pod_seconds(row: str) -> float:
    """A summary row's `lost pod-s`: the column after `spec on` (the one ending in %)."""
    cells = row.split()
    share = next(i for i, cell in enumerate(cells) if cell.endswith("%"))
    return 0.0 if cells[share + 1] == "-" else float(cells[share + 1])


def test_the_demo_shows_the_surge_its_restart_gap_and_a_full_pool_revert(
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
    surge, full_pool = result.stdout.split("== act 2")
    # Act 1: the first surge sets the engine schedule, a restart whose gap costs capacity; the
    # engine handles the rest of the trace, the second surge included, with no restart.
    assert "EngineScheduleSet" in surge, shown
    assert "SpeculationDisabled" not in surge, shown
    assert "RolloutComplete" in surge, shown
    summary = re.search(r"== summary \((\d+) requests, (\d+) errors\)", surge)
    assert summary, shown
    assert int(summary.group(1)) > 1000
    table = surge.split("== summary")[1]
    _, first, low_again, second, low_at_last = table.splitlines()[3:8]
    assert second.startswith("second surge"), table
    assert lost_pod_seconds(first) + lost_pod_seconds(low_again) > 0, table
    assert lost_pod_seconds(second) == lost_pod_seconds(low_at_last) == 0, table
    assert surge.count("EngineScheduleSet") == 1, shown  # one change in all
    # Act 2: the surge pod finds no GPUs; the operator reverts instead of stranding the rollout.
    stuck = full_pool.index("RolloutStuck", full_pool.index("SpeculationDisabled"))
    assert "RolloutReverted" in full_pool[stuck:], shown
    assert "RolloutComplete" in full_pool[stuck:], shown  # the pods back on what ran
    assert "the rollout that could not get GPUs was reverted" in full_pool, shown
    for name in ("timeline.png", "full-pool.png"):
        (png,) = tmp_path.glob(f"*/{name}")
        assert png.stat().st_size > 10_000
