"""What the demo recorded, drawn as one PNG and summarised as one terminal table.

Pure apart from writing the PNG: the demo fills a Timeline from Prometheus and the operator's
decisions, and these functions only read it, so they can be tested on hand-built timelines.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pydantic import BaseModel, Field

DISABLE_BELOW = 0.50
"""Acceptance below which the policy disables speculation (Thresholds' default)."""
REVIEW_BELOW = 0.65
"""Acceptance below which the policy weighs P99 TPOT against the baseline (Thresholds' default)."""

PASSIVE_ACTIONS = frozenset({"keep", "hold"})
"""Decisions that change nothing: counted in the table, not marked on the plot."""
_MARKS = {
    "disable-speculation": ("off", "tab:red"),
    "enable-speculation": ("on", "tab:green"),
    "step-quantization": ("quant", "tab:purple"),
    "undo-quantization-step": ("unquant", "tab:pink"),
    "set-engine-schedule": ("schedule", "tab:cyan"),
    "revert-rollout": ("revert", "tab:brown"),
}
_SPECULATION_SHADE = "#c8ecc8"
_GAP_FACTOR = 2.5
"""A step this many times the usual sample spacing is a gap: the line breaks there."""


class Series(BaseModel):
    """Samples of one metric as (seconds since start, value), in any order."""

    points: list[tuple[float, float]] = []

    def sorted_points(self) -> list[tuple[float, float]]:
        return sorted(self.points)

    def mean_between(self, start: float, end: float) -> float | None:
        """Plain mean of the samples in [start, end); None when there are none.

        Samples come at a fixed scrape interval, so a plain mean is a time average.
        """
        values = [v for t, v in self.points if start <= t < end]
        return statistics.fmean(values) if values else None


class DecisionMark(BaseModel):
    """One decision of the control loop, as reported in its Event."""

    t: float
    action: str
    """The policy's action: disable-speculation, enable-speculation, step-quantization, ..."""
    reason: str = ""


class Timeline(BaseModel):
    """Everything one demo run recorded, on a shared clock (seconds since start)."""

    qps: Series = Field(default_factory=Series)
    """Requests per second offered by the load generator."""
    acceptance: Series = Field(default_factory=Series)
    """Draft acceptance rate, 0..1; no samples while speculation is off."""
    drafts_per_token: Series = Field(default_factory=Series)
    """Draft tokens the serving replicas proposed per output token: about k / (1 + accepted) while
    the engine speculates, 0 where its per-batch-size schedule runs k=0 (no restart needed)."""
    p99_tpot_ms: Series = Field(default_factory=Series)
    """P99 time per output token of the serving (speculating) replicas."""
    baseline_p99_tpot_ms: Series = Field(default_factory=Series)
    """P99 time per output token of the control replica without speculation; may be empty."""
    speculation: list[tuple[float, bool]] = []
    """Step function: from each time on, whether speculation is on. Off before the first step."""
    decisions: list[DecisionMark] = []
    ready_pods: Series = Field(default_factory=Series)
    """Serving pods Ready (the control replica apart), sampled as the pod runner reports them."""
    starting_pods: Series = Field(default_factory=Series)
    """Serving pods on their GPUs but still loading: not Ready, serving nothing."""
    pending_pods: Series = Field(default_factory=Series)
    """Serving pods waiting for GPUs the pool does not have."""
    desired_pods: int = 0
    """spec.replicas: the serving pods the resource asks for."""

    def end(self) -> float:
        """The last time anything was recorded (0 for an empty timeline)."""
        times = [t for s in self._series() for t, _ in s.points]
        times += [t for t, _ in self.speculation]
        times += [d.t for d in self.decisions]
        return max(times, default=0.0)

    def speculation_spans(self, end: float) -> list[tuple[float, float]]:
        """The [start, stop) intervals with speculation on, an open last one closed at end."""
        spans: list[tuple[float, float]] = []
        since: float | None = None
        for t, on in sorted(self.speculation, key=lambda step: step[0]):
            if on and since is None:
                since = t
            elif not on and since is not None:
                spans.append((since, t))
                since = None
        if since is not None and end > since:
            spans.append((since, end))
        return spans

    def speculation_share(self, start: float, end: float) -> float | None:
        """The share of [start, end) with speculation on; None for an empty interval."""
        if end <= start:
            return None
        on = sum(
            max(0.0, min(stop, end) - max(begin, start))
            for begin, stop in self.speculation_spans(end)
        )
        return on / (end - start)

    def capacity_gaps(self) -> list[tuple[float, float]]:
        """The [start, stop) intervals with fewer serving pods Ready than desired: a restart's
        gap, each sample holding until the next."""
        gaps: list[tuple[float, float]] = []
        since: float | None = None
        points = self.ready_pods.sorted_points()
        for t, ready in points:
            if ready < self.desired_pods and since is None:
                since = t
            elif ready >= self.desired_pods and since is not None:
                gaps.append((since, t))
                since = None
        if since is not None and points and points[-1][0] > since:
            gaps.append((since, points[-1][0]))
        return gaps

    def lost_pod_seconds(self, start: float, end: float) -> float | None:
        """Serving-pod seconds missing from [start, end): (desired - ready) integrated over the
        samples, each holding until the next; None without samples in the interval."""
        points = self.ready_pods.sorted_points()
        if not any(start <= t < end for t, _ in points):
            return None
        lost = 0.0
        for (t, ready), (t_next, _) in itertools.pairwise([*points, (math.inf, 0.0)]):
            overlap = min(t_next, end) - max(t, start)
            if overlap > 0 and math.isfinite(overlap):
                lost += max(0.0, self.desired_pods - ready) * overlap
        return lost

    def _series(self) -> tuple[Series, ...]:
        return (
            self.qps,
            self.acceptance,
            self.drafts_per_token,
            self.p99_tpot_ms,
            self.baseline_p99_tpot_ms,
            self.ready_pods,
            self.starting_pods,
            self.pending_pods,
        )


def render_png(
    timeline: Timeline,
    path: Path,
    title: str,
    *,
    size_inches: tuple[float, float] = (12.0, 12.0),
    dpi: int = 100,
    disable_below: float = DISABLE_BELOW,
    review_below: float = REVIEW_BELOW,
) -> None:
    """Draw load, acceptance, the engine's drafting, P99 TPOT and the serving pods over time,
    with speculation, the restarts' capacity gaps and the decisions overlaid.

    The image is exactly size_inches * dpi pixels. Uses the Agg canvas directly rather than
    pyplot, so no global backend or figure registry is touched.
    """
    figure = Figure(figsize=size_inches, dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    qps_ax, acceptance_ax, drafts_ax, tpot_ax, pods_ax = figure.subplots(5, 1, sharex=True)
    figure.suptitle(title)
    end = timeline.end()
    spans = timeline.speculation_spans(end)
    panels = (qps_ax, acceptance_ax, drafts_ax, tpot_ax, pods_ax)

    for ax in panels:
        _shade(ax, spans, labelled=ax is qps_ax)
        _shade_gaps(ax, timeline.capacity_gaps(), labelled=ax is qps_ax)
        ax.grid(visible=True, alpha=0.3)
    has_data = dict.fromkeys(panels, False)
    has_data[qps_ax] = _plot(qps_ax, timeline.qps, "offered QPS", "tab:blue")
    qps_ax.set_ylabel("offered load (req/s)")
    qps_ax.set_ylim(bottom=0)

    has_data[acceptance_ax] = _plot(
        acceptance_ax, timeline.acceptance, "draft acceptance", "tab:orange"
    )
    acceptance_ax.axhline(
        disable_below, color="tab:red", linestyle="--", label=f"disable below {disable_below:.2f}"
    )
    acceptance_ax.axhline(
        review_below, color="tab:olive", linestyle="--", label=f"review below {review_below:.2f}"
    )
    acceptance_ax.set_ylabel("acceptance rate (0-1)")
    acceptance_ax.set_ylim(0, 1.05)

    has_data[drafts_ax] = _plot(
        drafts_ax, timeline.drafts_per_token, "draft tokens per output token", "tab:cyan"
    )
    drafts_ax.set_ylabel("drafted / output\n(0: engine k=0)")
    drafts_ax.set_ylim(bottom=0)
    serving = _plot(tpot_ax, timeline.p99_tpot_ms, "P99 TPOT, serving", "tab:blue")
    baseline = _plot(
        tpot_ax, timeline.baseline_p99_tpot_ms, "P99 TPOT, baseline (no spec)", "tab:gray"
    )
    has_data[tpot_ax] = serving or baseline
    tpot_ax.set_ylabel("P99 TPOT (ms)")
    tpot_ax.set_ylim(bottom=0)

    pod_lines = [  # Ready last and widest: on top where the counts meet
        _steps(pods_ax, timeline.pending_pods, "Pending (no GPUs)", "tab:red", 1.5),
        _steps(pods_ax, timeline.starting_pods, "starting (loading)", "tab:orange", 1.5),
        _steps(pods_ax, timeline.ready_pods, "Ready", "tab:green", 2.5),
    ]
    has_data[pods_ax] = any(pod_lines)
    if timeline.desired_pods:
        pods_ax.axhline(
            timeline.desired_pods, color="black", linestyle="--", linewidth=0.8, label="desired"
        )
    pods_ax.set_ylabel("serving pods")
    pods_ax.set_ylim(bottom=0, top=max(timeline.desired_pods, 1) + 1.5)
    pods_ax.set_xlabel("time since start (s)")

    _mark_decisions(panels, timeline.decisions)
    if end > 0:
        pods_ax.set_xlim(0, end)
    for ax, plotted in has_data.items():
        if not plotted:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", color="gray")
        if ax.get_legend_handles_labels()[0]:
            # Outside the axes, so a legend never hides data or a decision marker.
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    figure.savefig(path, dpi=dpi, format="png")


def _steps(ax: Axes, series: Series, label: str, color: str, width: float) -> bool:
    """A count held from each sample to the next (pods change in steps, not slopes)."""
    if not series.points:
        return False
    times, values = zip(*series.sorted_points(), strict=True)
    ax.step(times, values, where="post", label=label, color=color, linewidth=width)
    return True


def _plot(ax: Axes, series: Series, label: str, color: str) -> bool:
    """Plot a series, breaking the line across gaps instead of drawing through them.

    Returns whether there was anything to plot.
    """
    if not series.points:
        return False
    times, values = _with_breaks(series.sorted_points())
    ax.plot(times, values, label=label, color=color, marker=".", markersize=3, linewidth=1.2)
    return True


def _with_breaks(points: Sequence[tuple[float, float]]) -> tuple[list[float], list[float]]:
    steps = [b[0] - a[0] for a, b in itertools.pairwise(points) if b[0] > a[0]]
    usual = statistics.median(steps) if steps else math.inf
    times: list[float] = []
    values: list[float] = []
    for i, (t, v) in enumerate(points):
        if i and t - points[i - 1][0] > _GAP_FACTOR * usual:
            times.append(math.nan)
            values.append(math.nan)
        times.append(t)
        values.append(v)
    return times, values


def _shade(ax: Axes, spans: Iterable[tuple[float, float]], *, labelled: bool) -> None:
    for i, (start, stop) in enumerate(spans):
        label = "speculation on" if labelled and i == 0 else None
        ax.axvspan(start, stop, color=_SPECULATION_SHADE, alpha=0.6, label=label, zorder=0)


def _shade_gaps(ax: Axes, gaps: Iterable[tuple[float, float]], *, labelled: bool) -> None:
    for i, (start, stop) in enumerate(gaps):
        label = "serving pods not Ready (capacity lost)" if labelled and i == 0 else None
        ax.axvspan(
            start, stop, facecolor="none", edgecolor="tab:red", hatch="//", alpha=0.35,
            linewidth=0, label=label, zorder=0,
        )  # fmt: skip


def _mark_decisions(axes: Sequence[Axes], decisions: Iterable[DecisionMark]) -> None:
    """A vertical line on every panel for each acting decision, labelled above the top panel."""
    for decision in sorted(decisions, key=lambda d: d.t):
        if decision.action in PASSIVE_ACTIONS:
            continue
        text, color = _MARKS.get(decision.action, (decision.action, "black"))
        for ax in axes:
            ax.axvline(decision.t, color=color, linestyle=":", linewidth=1.5)
        axes[0].text(
            decision.t,
            1.01,
            text,
            transform=axes[0].get_xaxis_transform(),
            color=color,
            fontsize="small",
            fontweight="bold",
            ha="center",
            va="bottom",
        )


def summary_table(timeline: Timeline, phases: list[tuple[str, float, float]]) -> str:
    """One fixed-width row per (name, start, end) phase, each covering [start, end) seconds.

    Columns: mean offered QPS, mean acceptance, mean draft tokens per output token (0 where the
    engine's schedule runs k=0), mean P99 TPOT serving and baseline, the share
    of the phase with speculation on, the serving-pod seconds lost to restarts, and the
    decisions taken (acting ones with their time, keep/hold only counted, since the loop
    repeats them every interval).
    """
    header = (
        "phase", "start s", "end s", "QPS", "accept", "drafts/tok", "p99 ms spec", "p99 ms base",
        "spec on", "lost pod-s",
    )  # fmt: skip
    rows = [header]
    decisions_column = ["decisions"]
    for name, start, end in phases:
        share = timeline.speculation_share(start, end)
        rows.append(
            (
                name,
                f"{start:.0f}",
                f"{end:.0f}",
                _fmt(timeline.qps.mean_between(start, end), 1),
                _fmt(timeline.acceptance.mean_between(start, end), 2),
                _fmt(timeline.drafts_per_token.mean_between(start, end), 2),
                _fmt(timeline.p99_tpot_ms.mean_between(start, end), 1),
                _fmt(timeline.baseline_p99_tpot_ms.mean_between(start, end), 1),
                "-" if share is None else f"{share * 100:.0f}%",
                _fmt(timeline.lost_pod_seconds(start, end), 0),
            )
        )
        decisions_column.append(_decisions_in(timeline.decisions, start, end))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for row, decisions in zip(rows, decisions_column, strict=True):
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join([*cells, decisions]).rstrip())
    rule = "  ".join("-" * width for width in [*widths, len(decisions_column[0])])
    lines.insert(1, rule)
    return "\n".join(lines) + "\n"


def _decisions_in(decisions: Iterable[DecisionMark], start: float, end: float) -> str:
    inside = sorted((d for d in decisions if start <= d.t < end), key=lambda d: d.t)
    acting = [f"{d.t:.0f}s {d.action}" for d in inside if d.action not in PASSIVE_ACTIONS]
    passive = Counter(d.action for d in inside if d.action in PASSIVE_ACTIONS)
    counted = [f"{passive[a]}x {a}" for a in sorted(passive)]
    return ", ".join(acting + counted) or "-"


def _fmt(value: float | None, places: int) -> str:
    return "-" if value is None else f"{value:.{places}f}"
