from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

# No test reaches the Hugging Face hub: `specpilot` commands plan from the catalog and the spec
# unless a test points them at checkpoint fixtures (or a local fake of the hub).
os.environ["SPECPILOT_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

REPO = Path(__file__).resolve().parent.parent
CHECKPOINTS = REPO / "tests" / "fixtures" / "checkpoints"
"""Real checkpoint metadata (config.json, model.safetensors.index.json; no weights), ORG/NAME."""
EXAMPLES = sorted((REPO / "manifests" / "examples").glob("*.yaml"))

BASE_MANIFEST: dict[str, Any] = {
    "apiVersion": "specpilot.io/v1alpha1",
    "kind": "SpeculativeInference",
    "metadata": {"name": "llama", "namespace": "inference"},
    "spec": {
        "vllm": {"image": "vllm/vllm-openai:v0.33.0"},
        "target": {
            "model": "RedHatAI/Meta-Llama-3.1-70B-Instruct-quantized.w8a8",
            "quantization": "int8",
            "tensorParallelSize": 2,
            "maxModelLen": 8192,
        },
        "speculation": {
            "method": "draft_model",
            "draft": {"model": "meta-llama/Llama-3.1-8B-Instruct"},
        },
        "gpus": {"type": "H100-80GB", "count": 2},
        "replicas": 1,
        "monitoring": {"prometheusUrl": "http://prometheus:9090"},
    },
}


def manifest(**spec_changes: Any) -> dict[str, Any]:
    """The base manifest with top-level spec sections replaced (None removes a section)."""
    doc = copy.deepcopy(BASE_MANIFEST)
    for key, value in spec_changes.items():
        if value is None:
            doc["spec"].pop(key, None)
        else:
            doc["spec"][key] = value
    return doc


def load_example(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    return doc


@pytest.fixture
def base() -> dict[str, Any]:
    return copy.deepcopy(BASE_MANIFEST)


def build_wheel(source: Path, into: Path, name: str) -> Path:
    """The wheel of the distribution at `source` (no dependencies), built into `into`; `name`
    is its file-name prefix (specpilot, specpilot_lab)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "--wheel-dir", str(into),
         str(source)],
        check=True,
        timeout=300,
    )  # fmt: skip
    (wheel,) = into.glob(f"{name}-*.whl")
    return wheel
