"""No status write carries a number JSON cannot hold: the API server would refuse it and every
later write, and the status would freeze."""

from __future__ import annotations

import math
from typing import Any

import pytest
from kubernetes import client as k8s

from specpilot.adapters.kube import KubeWriter, NonFiniteStatusError
from specpilot.api.finite import non_finite_paths


def test_non_finite_numbers_are_named_by_their_json_path() -> None:
    status = {
        "control": {"baselineLoad": math.inf, "breaches": 2, "target": "m@none"},
        "decisions": [{"reason": "nan"}, {"x": [1.0, -math.inf]}],
        "lastMetrics": {"p99TpotMs": math.nan, "acceptanceRate": 0.7},
    }
    assert non_finite_paths(status, "status") == [
        "status.control.baselineLoad",
        "status.decisions[1].x[1]",
        "status.lastMetrics.p99TpotMs",
    ]
    assert non_finite_paths({"a": 1e308, "b": [0.5, None, True]}) == []


class RecordingStatusApi:
    def __init__(self) -> None:
        self.patches: list[Any] = []

    def patch_namespaced_custom_object_status(self, *args: Any, **kwargs: Any) -> Any:
        self.patches.append(args)
        return {}


def writer_with(api: RecordingStatusApi) -> KubeWriter:
    """A writer whose status API is `api` (building one asks no server)."""
    writer = KubeWriter(k8s.ApiClient())
    writer._custom = api
    return writer


BODY = {"metadata": {"namespace": "ml", "name": "chat", "resourceVersion": "7"}}


def test_a_status_with_infinity_is_refused_before_it_is_sent() -> None:
    api = RecordingStatusApi()
    status = {"control": {"baselineLoad": math.inf}, "phase": "Ready"}
    with pytest.raises(NonFiniteStatusError, match=r"ml/chat: status.control.baselineLoad"):
        writer_with(api).patch_status(BODY, status)
    assert api.patches == []
    writer_with(api).patch_status(BODY, {"control": {"baselineLoad": 2.0}})
    assert len(api.patches) == 1
