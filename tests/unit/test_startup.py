"""The startup-time model: a restart's price from the weights' bytes."""

from __future__ import annotations

import pytest
import yaml

from specpilot.assessment import assess
from specpilot.planning import startup as s
from tests.conftest import REPO

EXAMPLE = REPO / "manifests" / "examples" / "llama-70b-int8-draft.yaml"


def test_local_startup_is_bytes_over_bandwidth_plus_fixed_parts() -> None:
    est = s.startup(75.0)
    assert est.download_s == 0
    assert est.load_s == pytest.approx(75.0 / s.LOCAL_LOAD_GB_PER_S)
    assert est.seconds == pytest.approx(100 + s.CUDA_GRAPH_CAPTURE_S + s.ENGINE_START_S)


def test_hub_adds_the_download_before_the_load() -> None:
    local, hub = s.startup(50.0), s.startup(50.0, s.WeightSource.HUB)
    assert hub.seconds - local.seconds == pytest.approx(50.0 / s.HUB_DOWNLOAD_GB_PER_S)
    assert "download" in hub.describe()
    assert "download" not in local.describe()


def test_more_bytes_take_longer_and_a_faster_volume_less() -> None:
    assert s.startup(86).seconds > s.startup(39).seconds
    assert s.startup(86, load_gb_per_s=2.0).seconds < s.startup(86).seconds


@pytest.mark.parametrize("bad", [{"weight_gb": -1}, {"weight_gb": 1, "load_gb_per_s": 0}])
def test_impossible_inputs_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="bandwidths"):
        s.startup(**bad)


def test_the_baseline_example_takes_the_documented_about_208_s() -> None:
    body = yaml.safe_load(EXAMPLE.read_text())
    memory = assess(body).plan
    assert memory is not None
    gb = s.weight_gb(memory)
    assert gb == pytest.approx(88.7, abs=1.0)  # 70B INT8 (16-bit embeddings and head) + 8B BF16
    estimate = s.plan_startup(memory)
    assert estimate is not None
    assert estimate.seconds == pytest.approx(s.DEFAULT_STARTUP_S, abs=5)
    assert "89 GB" in estimate.describe()


def test_without_speculation_only_the_target_is_loaded() -> None:
    body = yaml.safe_load(EXAMPLE.read_text())
    body["spec"].pop("speculation")
    memory = assess(body).plan
    assert memory is not None
    assert s.weight_gb(memory) == pytest.approx(72.7, abs=1.0)
