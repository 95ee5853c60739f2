"""The guard that keeps NaN and Infinity out of what is written to the API server. Pure.

JSON has no NaN or Infinity: the API server refuses a status that carries one, and keeps
refusing every later write of it, so one impossible number would freeze the status. The control
check holds instead of returning such a status, and the Kubernetes writer refuses to send one.
"""

from __future__ import annotations

import math
from typing import Any


def non_finite_paths(obj: Any, path: str = "") -> list[str]:
    """The JSON paths (`status.control.baselineLoad`, `status.decisions[2].x`) under `path` that
    hold NaN or an infinity; empty when `obj` is valid JSON as far as numbers go."""
    if isinstance(obj, float):
        return [] if math.isfinite(obj) else [path]
    if isinstance(obj, dict):
        return [p for key, value in obj.items() for p in non_finite_paths(value, _key(path, key))]
    if isinstance(obj, list | tuple):
        return [p for i, value in enumerate(obj) for p in non_finite_paths(value, f"{path}[{i}]")]
    return []


def _key(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)
