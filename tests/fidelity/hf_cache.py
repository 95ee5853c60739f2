"""Throw-away Hugging Face hub cache for checking vLLM command lines offline.

Stdlib only: importable from the project's own interpreter (to prepare the
cache and the environment) and from the vLLM fidelity venv.

Each model lives in ``configs/ORG/NAME/``.  Every file there is copied into
``<cache>/models--ORG--NAME/snapshots/<hash>/`` except files whose name starts
with ``_`` (metadata).  ``_stubs.json`` may ask for generated files:

    {"consolidated.safetensors": {"safetensors_dtype": "BF16"}}

writes a valid one-element safetensors file, so that code which inspects a
repository's file list or reads safetensors headers (for example vLLM's
Mistral-format detection and dtype probing) sees what it would see in the
real repository, without any weights.

The snapshot hash is derived from the file contents, so a rebuilt cache is
byte-identical.  ``refs/main`` points at it, which is all that
``huggingface_hub`` needs in offline mode (HF_HUB_OFFLINE=1).

Command line (prints ``export`` lines for a shell):

    python tests/fidelity/hf_cache.py DEST [MODEL ...]
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
from collections.abc import Iterable
from pathlib import Path

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
STUBS_FILE = "_stubs.json"


def available_models(configs_dir: Path = CONFIGS_DIR) -> list[str]:
    """All ``ORG/NAME`` ids that have a ``config.json`` under configs_dir."""
    return sorted(
        p.parent.relative_to(configs_dir).as_posix() for p in configs_dir.glob("*/*/config.json")
    )


def _safetensors_stub(dtype: str) -> bytes:
    # One element of the given dtype; enough for header-only readers and a
    # valid file for the safetensors library as well.
    sizes = {
        "BF16": 2,
        "F16": 2,
        "F32": 4,
        "F8_E4M3": 1,
        "I8": 1,
        "U8": 1,
        "I32": 4,
        "F64": 8,
        "I64": 8,
    }
    nbytes = sizes[dtype]
    header = {
        "__metadata__": {"format": "pt", "note": "specpilot fidelity stub"},
        "stub": {"dtype": dtype, "shape": [1], "data_offsets": [0, nbytes]},
    }
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # 8-byte alignment, as writers do
    return struct.pack("<Q", len(raw)) + raw + b"\0" * nbytes


def _model_files(model_dir: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for path in sorted(model_dir.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(model_dir).as_posix()
        if path.name.startswith("_"):
            continue
        files[rel] = path.read_bytes()
    stubs_path = model_dir / STUBS_FILE
    if stubs_path.is_file():
        for name, spec in json.loads(stubs_path.read_text()).items():
            if "safetensors_dtype" in spec:
                files[name] = _safetensors_stub(spec["safetensors_dtype"])
            elif "text" in spec:
                files[name] = spec["text"].encode()
            else:
                raise ValueError(f"{stubs_path}: unknown stub spec for {name}: {spec}")
    if "config.json" not in files:
        raise FileNotFoundError(f"{model_dir}/config.json missing")
    return files


def write_model(cache_dir: Path, model_id: str, configs_dir: Path = CONFIGS_DIR) -> Path:
    """Write one model into the hub cache; returns its snapshot folder."""
    org, name = model_id.split("/", 1)
    files = _model_files(configs_dir / org / name)
    digest = hashlib.sha1()
    for rel, data in sorted(files.items()):
        digest.update(rel.encode() + b"\0" + hashlib.sha1(data).digest())
    commit = digest.hexdigest()
    repo = Path(cache_dir) / f"models--{org}--{name}"
    snap = repo / "snapshots" / commit
    for rel, data in files.items():
        target = snap / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() or target.read_bytes() != data:
            target.write_bytes(data)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snap


def build_cache(
    cache_dir: str | os.PathLike,
    models: Iterable[str] | None = None,
    configs_dir: Path = CONFIGS_DIR,
) -> Path:
    """Write all (or the given) models into ``cache_dir`` (created if needed)."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    for model_id in list(models) if models else available_models(configs_dir):
        write_model(cache_dir, model_id, configs_dir)
    return cache_dir


def offline_env(
    cache_dir: str | os.PathLike,
    base: dict[str, str] | None = None,
    vllm_cache_root: str | None = None,
) -> dict[str, str]:
    """Environment for running vLLM against ``cache_dir`` with no network.

    ``base`` defaults to os.environ; the returned dict is a full environment.
    HF_HOME is pointed inside the cache so no real token or user cache is read.
    VLLM_TARGET_DEVICE=cpu makes vLLM (0.8.x and later) pick its CPU platform
    instead of probing for GPUs and ending up on UnspecifiedPlatform.
    ``vllm_cache_root`` (VLLM_CACHE_ROOT) holds vLLM's model-class inspection
    cache; keeping it across runs saves ~7 s per architecture (default: inside
    cache_dir, i.e. thrown away with it).
    """
    cache_dir = str(Path(cache_dir).resolve())
    env = dict(os.environ if base is None else base)
    for key in (
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_ENDPOINT",
        "VLLM_USE_MODELSCOPE",
        "TRANSFORMERS_CACHE",
        "HUGGINGFACE_HUB_CACHE",
    ):
        env.pop(key, None)
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "HF_HUB_CACHE": cache_dir,
            "HF_HOME": os.path.join(cache_dir, ".hf_home"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "VLLM_TARGET_DEVICE": "cpu",
            "VLLM_CACHE_ROOT": vllm_cache_root or os.path.join(cache_dir, ".vllm_cache"),
            "VLLM_CONFIG_ROOT": os.path.join(cache_dir, ".vllm_config"),
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1",
        }
    )
    return env


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[-1].strip())
        print("models:", " ".join(available_models()))
        return 0 if argv else 2
    dest = build_cache(argv[0], argv[1:] or None)
    base_env = dict(os.environ)
    env = offline_env(dest, base={})
    for key, value in sorted(env.items()):
        if base_env.get(key) != value:
            print(f"export {key}={value!s}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
