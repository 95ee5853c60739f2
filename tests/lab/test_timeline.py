"""The demo's timeline PNG and summary table, on hand-built timelines."""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.image import imread

from specpilot.api.models import Thresholds
from specpilot_lab.demo.timeline import (
    DISABLE_BELOW,
    REVIEW_BELOW,
    DecisionMark,
    Series,
    Timeline,
    render_png,
    summary_table,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def series(*points: tuple[float, float]) -> Series:
    return Series(points=list(points))


def demo_timeline() -> Timeline:
    """Speculation on, acceptance collapses, the loop disables, then re-enables at low load."""
    ticks = range(0, 300, 10)
    return Timeline(
        qps=series(*((t, 2.0 if t < 100 or t >= 200 else 12.0) for t in ticks)),
        acceptance=series(*((t, 0.8 if t < 100 else 0.4) for t in ticks if t < 130 or t >= 220)),
        p99_tpot_ms=series(*((t, 30.0 if t < 100 else 60.0) for t in ticks)),
        baseline_p99_tpot_ms=series(*((t, 45.0) for t in ticks)),
        speculation=[(0.0, True), (130.0, False), (220.0, True)],
        decisions=[
            DecisionMark(t=60.0, action="keep", reason="acceptance 0.80"),
            DecisionMark(t=130.0, action="disable-speculation", reason="acceptance 0.40 < 0.50"),
            DecisionMark(t=180.0, action="hold", reason="cooldown"),
            DecisionMark(t=220.0, action="enable-speculation", reason="load back down"),
            DecisionMark(t=250.0, action="step-quantization", reason="memory"),
        ],
    )


def assert_png(path: Path, width: int, height: int) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 20_000, "a five-panel plot with data is far more than a blank image"
    pixels = imread(path)
    assert pixels.shape[:2] == (height, width)


def test_png_is_written_with_the_requested_dimensions(tmp_path: Path) -> None:
    out = tmp_path / "timeline.png"
    render_png(demo_timeline(), out, "llama-70b: draft acceptance collapse")
    assert_png(out, 1200, 1200)

    small = tmp_path / "small.png"
    render_png(demo_timeline(), small, "small", size_inches=(6.0, 5.0), dpi=80)
    assert_png(small, 480, 400)


def test_speculation_is_shaded_green_and_missing_data_is_not(tmp_path: Path) -> None:
    out = tmp_path / "timeline.png"
    timeline = Timeline(
        qps=series((0.0, 1.0), (100.0, 1.0)),
        speculation=[(0.0, True), (50.0, False)],
    )
    render_png(timeline, out, "shade", size_inches=(10.0, 6.0), dpi=100)
    pixels = imread(out)
    height, width = pixels.shape[:2]

    def greenish(x_fraction: float) -> bool:
        # The empty bottom panel, clear of lines, the "no data" text and the legends.
        r, g, b = pixels[int(height * 0.85), int(width * x_fraction), :3]
        return bool(g > r + 0.05 and g > b + 0.05)

    # The axes span roughly 5%..85% of the width: about t=19 is on, t=81 off.
    assert greenish(0.2)
    assert not greenish(0.7)


@pytest.mark.parametrize(
    "timeline",
    [
        pytest.param(
            demo_timeline().model_copy(
                update={"baseline_p99_tpot_ms": Series(), "acceptance": Series()}
            ),
            id="no-baseline-no-acceptance",
        ),
        pytest.param(Timeline(), id="empty"),
        pytest.param(
            Timeline(acceptance=series((5.0, 0.7)), speculation=[(5.0, True)]),
            id="single-point",
        ),
    ],
)
def test_renders_with_empty_series(tmp_path: Path, timeline: Timeline) -> None:
    out = tmp_path / "timeline.png"
    render_png(timeline, out, "sparse")
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert imread(out).shape[:2] == (1200, 1200)


def test_plot_thresholds_match_the_policy_defaults() -> None:
    thresholds = Thresholds()
    assert thresholds.disable_below_acceptance == DISABLE_BELOW
    assert thresholds.review_below_acceptance == REVIEW_BELOW


def rows(table: str) -> dict[str, str]:
    lines = table.splitlines()
    assert lines[0].startswith("phase")
    assert set(lines[1].replace(" ", "")) == {"-"}
    return {line.split()[0]: line for line in lines[2:]}


def test_summary_means_and_speculation_share() -> None:
    timeline = Timeline(
        qps=series((0.0, 2.0), (10.0, 4.0), (20.0, 10.0), (30.0, 20.0)),
        acceptance=series((0.0, 0.6), (10.0, 0.8)),
        drafts_per_token=series((0.0, 1.2), (10.0, 0.8), (20.0, 0.0), (30.0, 0.0)),
        p99_tpot_ms=series((0.0, 30.0), (10.0, 40.0), (20.0, 50.0), (30.0, 70.0)),
        baseline_p99_tpot_ms=series((20.0, 44.0), (30.0, 46.0)),
        speculation=[(0.0, True), (30.0, False)],
    )
    table = summary_table(timeline, [("warm", 0.0, 20.0), ("peak", 20.0, 40.0)])
    warm, peak = rows(table)["warm"].split(), rows(table)["peak"].split()
    # name, start, end, QPS, acceptance, drafts/tok, p99 spec, p99 base, spec on, lost pod-s,
    # decisions: at the peak speculation is on but the engine drafts nothing (k=0)
    assert warm == ["warm", "0", "20", "3.0", "0.70", "1.00", "35.0", "-", "100%", "-", "-"]
    assert peak == ["peak", "20", "40", "15.0", "-", "0.00", "60.0", "45.0", "50%", "-", "-"]


def test_speculation_share_before_the_first_step_is_off() -> None:
    timeline = Timeline(speculation=[(15.0, True), (20.0, False), (25.0, True)])
    assert timeline.speculation_share(0.0, 20.0) == pytest.approx(0.25)
    assert timeline.speculation_share(0.0, 40.0) == pytest.approx(20 / 40)
    assert timeline.speculation_share(10.0, 10.0) is None
    assert Timeline().speculation_share(0.0, 10.0) == 0.0
    # Repeated states and an explicit "off" first step change nothing.
    repeated = Timeline(speculation=[(0.0, False), (10.0, True), (20.0, True), (30.0, False)])
    assert repeated.speculation_share(0.0, 40.0) == pytest.approx(0.5)
    assert repeated.speculation_spans(40.0) == [(10.0, 30.0)]


def test_decisions_land_in_their_phase_and_passive_ones_are_counted() -> None:
    table = summary_table(
        demo_timeline(),
        [("healthy", 0.0, 100.0), ("collapse", 100.0, 200.0), ("recovered", 200.0, 300.0)],
    )
    by_phase = rows(table)
    assert by_phase["healthy"].endswith("1x keep")
    assert "disable" not in by_phase["healthy"]
    assert by_phase["collapse"].endswith("130s disable-speculation, 1x hold")
    assert by_phase["recovered"].endswith("220s enable-speculation, 250s step-quantization")
    # 130..200 off, 100..130 on: 30% of the collapse phase speculated.
    assert " 30% " in by_phase["collapse"]
    assert " 80% " in by_phase["recovered"]


def test_a_decision_on_a_boundary_belongs_to_the_phase_it_starts() -> None:
    timeline = Timeline(decisions=[DecisionMark(t=50.0, action="disable-speculation")])
    by_phase = rows(summary_table(timeline, [("a", 0.0, 50.0), ("b", 50.0, 100.0)]))
    assert by_phase["a"].endswith("-")
    assert by_phase["b"].endswith("50s disable-speculation")


def test_columns_line_up() -> None:
    table = summary_table(
        demo_timeline(), [("x", 0.0, 100.0), ("a-much-longer-phase", 100.0, 300.0)]
    )
    lines = table.splitlines()
    starts = {line.index("%") for line in lines[2:]}
    assert len(starts) == 1, table
    assert lines[0].index("spec on") + len("spec on") - 1 == starts.pop()


def test_a_restart_gap_is_lost_capacity_in_its_phase() -> None:
    # One serving pod: it stops at 30 s (speculation off), its replacement is Pending for GPUs
    # until 35 s, loads until 45 s and is Ready from then on.
    timeline = Timeline(
        desired_pods=1,
        ready_pods=series(
            (0.0, 1), (10.0, 1), (20.0, 1), (30.0, 0), (35.0, 0), (45.0, 1), (50.0, 1)
        ),
        starting_pods=series((0.0, 0), (35.0, 1), (45.0, 0)),
        pending_pods=series((0.0, 0), (30.0, 1), (35.0, 0)),
        decisions=[DecisionMark(t=30.0, action="disable-speculation")],
    )
    assert timeline.capacity_gaps() == [(30.0, 45.0)]
    assert timeline.lost_pod_seconds(0.0, 60.0) == pytest.approx(15.0)
    assert timeline.lost_pod_seconds(40.0, 60.0) == pytest.approx(5.0)
    assert timeline.lost_pod_seconds(100.0, 200.0) is None
    table = rows(summary_table(timeline, [("before", 0.0, 30.0), ("restart", 30.0, 60.0)]))
    assert table["before"].split()[9] == "0"
    assert table["restart"].split()[9] == "15"


def test_the_restart_gap_is_hatched_on_the_plot(tmp_path: Path) -> None:
    out = tmp_path / "gap.png"
    timeline = Timeline(
        desired_pods=1, ready_pods=series((0.0, 1), (40.0, 0), (60.0, 1), (100.0, 1))
    )
    render_png(timeline, out, "gap", size_inches=(10.0, 8.0), dpi=100)
    pixels = imread(out)
    height, width = pixels.shape[:2]

    def reddish(x_fraction: float) -> bool:
        # The empty load panel's column, above its "no data": any red hatching there.
        column = pixels[int(height * 0.05) : int(height * 0.12), int(width * x_fraction), :3]
        return bool(((column[:, 0] > column[:, 2] + 0.1) & (column[:, 0] > 0.6)).any())

    assert reddish(0.42)  # about t=50: in the gap
    assert not reddish(0.2)  # about t=20: all pods Ready
