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
PLACEHOLDERS = {
    "LONG_MODEL_NAME": "org/" + "m" * 400,
    "LONG_IMAGE": "registry.example.com/" + "i" * 600 + ":v0.33.0",
}


@dataclass(frozen=True)
class Case:
    name: str
    field: str
    document: dict[str, Any]


def merge(base: Any, patch: Any) -> Any:
    """A JSON merge patch (RFC 7386): null removes, mappings merge, anything else replaces."""
    if not isinstance(patch, dict) or not isinstance(base, dict):
        return PLACEHOLDERS.get(patch, patch) if isinstance(patch, str) else copy.deepcopy(patch)
    merged = dict(base)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge(base.get(key), value)
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
