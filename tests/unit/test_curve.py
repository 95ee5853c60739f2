"""The speedup curve: per batch-size band, what the live A/B readings say speculation gives."""

from __future__ import annotations

import datetime
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from specpilot.api.models import SpeedupBand
from specpilot.control import curve

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def fed(readings: list[tuple[float, float]]) -> list[SpeedupBand]:
    bands: list[SpeedupBand] = []
    for i, (batch, speedup) in enumerate(readings):
        bands = curve.observe(bands, batch, speedup, T0 + datetime.timedelta(seconds=30 * i))
    return bands


def noisy(batch: float, speedup: float, n: int, seed: int = 1) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    return [(batch, speedup * rng.uniform(0.9, 1.1)) for _ in range(n)]


def test_bands_are_powers_of_two_up_to_the_last() -> None:
    assert curve.band_of(0.3) == (1, 1)
    assert curve.band_of(1) == (1, 1)
    assert curve.band_of(2.6) == (2, 3)
    assert curve.band_of(5) == (4, 7)
    assert curve.band_of(600) == (512, 4096)
    assert curve.band_of(9000) == (512, 4096)


@given(st.floats(min_value=0.0, max_value=10_000.0))
def test_every_batch_falls_in_exactly_one_band(batch: float) -> None:
    start, end = curve.band_of(batch)
    assert start <= max(1, round(batch)) <= end or start == 512
    assert start in curve.BAND_STARTS


def test_a_speedup_is_the_baselines_median_tpot_over_the_servers() -> None:
    assert curve.speedup_reading(0.020, 0.030) == pytest.approx(1.5)
    assert curve.speedup_reading(None, 0.030) is None
    assert curve.speedup_reading(0.020, None) is None
    assert curve.speedup_reading(0.0, 0.030) is None


def test_steady_readings_settle_the_band_and_noise_keeps_it_honest() -> None:
    paying = fed(noisy(2, 1.5, 10))
    [band] = paying
    assert (band.min_batch, band.max_batch, band.readings) == (2, 3, 10)
    assert math.exp(band.log_speedup) == pytest.approx(1.5, rel=0.05)
    assert curve.verdict(band) == "paying"
    assert curve.verdict(fed(noisy(20, 0.7, 10))[0]) == "not paying"
    assert curve.verdict(fed(noisy(20, 0.99, 10))[0]) == "unsettled"  # within the margin
    assert curve.verdict(fed([(20, 0.5), (20, 0.5)])[0]) == "unsettled"  # too few readings
    # Wildly noisy readings around a loss: the bound stays wide, nothing is settled.
    wild = fed([(20, s) for s in (0.3, 2.5, 0.4, 2.0, 0.5, 1.8)])
    assert curve.verdict(wild[0]) == "unsettled"


def test_the_curve_follows_a_drifting_workload() -> None:
    drifted = fed(noisy(8, 1.5, 40) + noisy(8, 0.7, 40, seed=2))
    assert curve.verdict(drifted[0]) == "not paying"
    assert math.exp(drifted[0].log_speedup) == pytest.approx(0.7, rel=0.05)


def test_the_crossover_is_the_lowest_band_that_stops_paying() -> None:
    learned = fed(
        noisy(1, 1.6, 8) + noisy(3, 1.4, 8) + noisy(5, 1.1, 8) + noisy(9, 0.98, 8)
        + noisy(20, 0.8, 8) + noisy(40, 0.7, 8)
    )  # fmt: skip
    found = curve.crossover(learned)
    assert found is not None
    assert (found.min_batch, found.max_batch) == (16, 31)
    assert curve.schedule(learned, 5) == [(1, 15, 5), (16, 4096, 0)]
    # A band above that still pays means the loss below it is not the crossover.
    assert curve.crossover(learned + fed(noisy(100, 1.5, 8))) is None


def test_no_schedule_without_a_crossover_or_when_nothing_pays() -> None:
    assert curve.schedule(fed(noisy(3, 1.5, 8)), 5) is None
    assert curve.schedule(fed(noisy(1, 0.6, 8) + noisy(3, 0.6, 8)), 5) is None


def test_a_band_describes_itself_with_its_bounds() -> None:
    text = curve.describe(fed(noisy(5, 1.2, 6))[0])
    assert text.startswith("batch 4-7: 1.2")
    assert "6 readings" in text


def test_a_bands_first_readings_are_news_and_later_ones_a_refresh() -> None:
    young = fed(noisy(3, 1.4, 4))
    assert curve.learning(young, curve.observe(young, 3, 1.4, T0))
    assert curve.learning(young, curve.observe(young, 40, 0.8, T0))  # a new band
    grown = fed(noisy(3, 1.4, 10))
    assert not curve.learning(grown, curve.observe(grown, 3, 1.4, T0))
    assert not curve.learning(grown, grown)
