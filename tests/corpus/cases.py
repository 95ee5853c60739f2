"""The bad-input corpus (bad-inputs.yaml) as documents ready to apply."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO

CORPUS = Path(__file__).with_name("bad-inputs.yaml")
BASE = REPO / "manifests" / "examples" / "llama-70b-int8-draft.yaml"
DEEP_LEVELS = 500
"""Deeper than Python's stack lets PyYAML, copy.deepcopy or the kubernetes client recurse."""


def _deep_mapping(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"nodeAffinity": value}
    return value


PLACEHOLDERS: dict[str, Any] = {
    "LONG_MODEL_NAME": "org/" + "m" * 400,
    "LONG_IMAGE": "registry.example.com/" + "i" * 600 + ":v0.33.0",
    "DEEP_AFFINITY": _deep_mapping(DEEP_LEVELS),
}


@dataclass(frozen=True)
class Case:
    name: str
    field: str
    document: dict[str, Any]


def merge(base: Any, patch: Any) -> Any:
    """A JSON merge patch (RFC 7386): null removes, mappings merge (into an empty one where the
    base has none), anything else replaces; a placeholder string stands for its value."""
    if isinstance(patch, str):
        return PLACEHOLDERS.get(patch, patch)
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = dict(base) if isinstance(base, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge(merged.get(key), value)
    return merged


def cases() -> list[Case]:
    base = yaml.safe_load(BASE.read_text())
    return [
        Case(
            name=entry["name"],
            field=entry["field"],
            document=merge(base, entry["patch"]) | {"metadata": {"name": entry["name"]}},
        )
        for entry in yaml.safe_load(CORPUS.read_text())
    ]
