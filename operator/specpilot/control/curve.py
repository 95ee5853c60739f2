"""Where speculation stops paying, learned per batch-size band from live A/B readings. Pure.

A fixed acceptance threshold is a poor proxy: whether speculation pays depends on k, the
draft's relative cost and, most of all, on how many requests the engine batches (issue 18: on
the simulator, acceptance 0.48 still gives 1.5x at 1 QPS and 0.93x at 6 QPS). With control
replicas serving the same traffic without speculation, every check measures the speedup
directly: the control replicas' latency over the speculating server's, in the user's SLO
(spec.policy.slo: P99 TPOT by default; a median hides the queueing and the tail that
speculation costs at high load), at the server's running batch per replica. The curve keeps,
per band of batch sizes (powers of two, the way vLLM's per-batch-size schedule is written), an
exponentially weighted mean and variance of log(speedup), so it follows a drifting workload and
says how sure it is.

A band is *not paying* when even the upper confidence bound of its speedup is below 1 - margin,
and *paying* when the lower bound is above 1 + margin; otherwise it is unsettled. The
crossover is the lowest band that is not paying with no band above it paying: from there on,
speculation costs more than it gives.
"""

from __future__ import annotations

import datetime
import math
from typing import Literal

from packaging.version import Version

from specpilot.api.models import SpeculativeInferenceSpec, SpeedupBand
from specpilot.vllm_versions import ENGINE_SCHEDULE_METHODS, Feature, supports

Verdict = Literal["paying", "not paying", "unsettled"]

BAND_STARTS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
"""Batch-size bands [start, next start - 1]; the last runs to MAX_BATCH. Powers of two: the
payoff moves with the batch roughly logarithmically, and vLLM schedules are written so."""
MAX_BATCH = 4096
"""The last band's end (vLLM looks the schedule up only up to max_num_seqs)."""
FORGETTING = 0.1
"""The weight of a new reading once a band has 1 / FORGETTING readings: older ones fade, so the
curve follows a workload that drifts (about the last 20 readings count)."""
MIN_READINGS = 3
"""Readings a band needs before it is judged at all."""
Z_ONE_SIDED_95 = 1.645
MARGIN = 0.05
"""A band must be at least 5% away from break-even (either way) to be settled."""


def bounds(band: SpeedupBand) -> tuple[float, float]:
    """The one-sided 95% bounds of a band's speedup (from its effective number of readings)."""
    effective = min(band.readings, (2 - FORGETTING) / FORGETTING)
    error = Z_ONE_SIDED_95 * math.sqrt(band.log_variance / max(effective, 1))
    return math.exp(band.log_speedup - error), math.exp(band.log_speedup + error)


def verdict(band: SpeedupBand) -> Verdict:
    if band.readings < MIN_READINGS:
        return "unsettled"
    low, high = bounds(band)
    if high < 1 - MARGIN:
        return "not paying"
    if low > 1 + MARGIN:
        return "paying"
    return "unsettled"


def describe(band: SpeedupBand) -> str:
    low, high = bounds(band)
    return (
        f"batch {band.min_batch}-{band.max_batch}: {math.exp(band.log_speedup):.2f}x "
        f"({low:.2f}-{high:.2f}, {band.readings} readings)"
    )


def describe_curve(curve: list[SpeedupBand]) -> str:
    """Every band, lowest first, as the Events give them."""
    return "; ".join(describe(b) for b in sorted(curve, key=lambda b: b.min_batch))


def band_of(batch: float) -> tuple[int, int]:
    """The band a running batch per replica falls in (at least 1: a reading has requests)."""
    size = max(1, round(batch))
    start = max(s for s in BAND_STARTS if s <= size)
    index = BAND_STARTS.index(start)
    end = BAND_STARTS[index + 1] - 1 if index + 1 < len(BAND_STARTS) else MAX_BATCH
    return start, end


def speedup_reading(server: float | None, baseline: float | None) -> float | None:
    """Speculation's speedup from one check: the control replicas' latency over the
    speculating server's (the same SLO latency), both serving the same traffic in one window."""
    if not server or not baseline or server <= 0 or baseline <= 0:
        return None
    return baseline / server


def observe(
    curve: list[SpeedupBand], batch: float, speedup: float, at: datetime.datetime
) -> list[SpeedupBand]:
    """The curve with one more reading: `speedup` at a running batch of `batch` per replica."""
    start, end = band_of(batch)
    bands = {b.min_batch: b for b in curve}
    band = bands.get(start) or SpeedupBand(min_batch=start, max_batch=end)
    weight = max(1 / (band.readings + 1), FORGETTING)
    difference = math.log(speedup) - band.log_speedup
    mean = band.log_speedup + weight * difference
    variance = (1 - weight) * (band.log_variance + weight * difference**2)
    bands[start] = band.model_copy(
        update={
            "readings": band.readings + 1,
            "log_speedup": mean,
            "log_variance": variance,
            "last_read": at,
        }
    )
    return sorted(bands.values(), key=lambda b: b.min_batch)


def learning(before: list[SpeedupBand], after: list[SpeedupBand]) -> bool:
    """Whether `after` adds a reading to a band still in its first 1 / FORGETTING readings,
    where each reading still moves the estimate a lot (worth a status write of its own)."""
    old = {b.min_batch: b for b in before}
    return any(
        band != old.get(band.min_batch)
        and (old[band.min_batch].readings if band.min_batch in old else 0) < 1 / FORGETTING
        for band in after
    )


def crossover(curve: list[SpeedupBand]) -> SpeedupBand | None:
    """The lowest band where speculation is not paying and no band above it pays; None while
    no band is settled as not paying."""
    ordered = sorted(curve, key=lambda b: b.min_batch)
    for index, band in enumerate(ordered):
        if verdict(band) != "not paying":
            continue
        if all(verdict(above) != "paying" for above in ordered[index + 1 :]):
            return band
    return None


def first_losing(curve: list[SpeedupBand]) -> int | None:
    """The curve's guess before any band settles: the start of the lowest band read below
    break-even (by the margin) with no band above it read at or above break-even; None if
    there is none. A guess from few readings: only a latency disable, the policy's own evidence
    of a loss, makes it the schedule's crossover."""
    ordered = sorted(curve, key=lambda b: b.min_batch)
    for index, band in enumerate(ordered):
        if band.log_speedup >= math.log(1 - MARGIN):
            continue
        if all(above.log_speedup < 0 for above in ordered[index + 1 :]):
            return band.min_batch
    return None


def schedule(curve: list[SpeedupBand], k: int) -> list[tuple[int, int, int]] | None:
    """vLLM's num_speculative_tokens_per_batch_size from the curve: k below the crossover, 0 from
    it on. None without a crossover, or when it is the first band (speculation pays at no batch
    size: turning it off is the restart's job)."""
    found = crossover(curve)
    if found is None or found.min_batch <= 1:
        return None
    return steps_from(found.min_batch, k)


def steps_from(start: int, k: int) -> list[tuple[int, int, int]]:
    """k up to batch start - 1, 0 from start (the tail after the last range keeps its 0)."""
    return [(1, start - 1, k), (start, MAX_BATCH, 0)]


def engine_schedule_possible(spec: SpeculativeInferenceSpec, version: Version) -> bool:
    """Whether the operator may render a learned per-batch-size schedule: the release has it,
    the method is one the engine schedules, and the user wrote none (theirs is theirs)."""
    speculation = spec.speculation
    return (
        speculation is not None
        and speculation.schedule is None
        and speculation.method.value in ENGINE_SCHEDULE_METHODS
        and supports(version, Feature.PER_BATCH_SIZE_SCHEDULE)
    )
