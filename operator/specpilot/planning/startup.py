"""How long a vLLM pod takes from scheduled to serving: the price of every restart. Pure.

A restart (speculation off or on, a quantization step) replaces the GPU pods, and a new pod
serves nothing until it has its weights on the GPUs and its engine up:

    startup = [download: bytes / hub bandwidth] + bytes / load bandwidth
              + CUDA graph capture + engine start

`bytes` are the rendered configuration's weights, target plus draft (the memory plan's
`weights_gb`), read once per pod (each tensor-parallel rank reads its shard in parallel from the
same volume, so the volume's bandwidth is the limit, not the rank count).

Default figures (each a stated assumption, with where it comes from):

- `LOCAL_LOAD_GB_PER_S` 0.75: weights already on a node-local disk or a PVC. vLLM issue #2233
  ("How long does it generally take to load a 70B open-source model?"): a 67B BF16 checkpoint
  (about 134 GB) loads in "3 mins" from a healthy disk, about 0.75 GB/s; #2253 reports 2 minutes
  after replacing a faulty drive and 40 minutes and more from slow storage, so this is a
  healthy-disk figure, not a worst case.
- `HUB_DOWNLOAD_GB_PER_S` 0.5: no cache, the pod downloads from the Hugging Face Hub first.
  hf_transfer's own description calls itself "a power user tool, to go beyond ~500MB/s on very
  high bandwidth network", so 0.5 GB/s is the good case of a download; the weights are then
  loaded from the local disk as above.
- `CUDA_GRAPH_CAPTURE_S` 60: vLLM issue #16716 (0.8.3, V1: "the capture time of cuda graph is
  always 65s"), PR #29275 ("CUDA graph capture takes up to a minute"); RFC #20098: 67 graphs by
  default, "more than 10s" depending on the model and GPU.
- `ENGINE_START_S` 30: process start, NCCL, torch.compile (from its cache), memory profiling and
  the first health check. vLLM issue #20264: "init engine (profile, create kv cache, warmup
  model) took 34.11 seconds" of which 17 s graph capture, and the first response 59 s after the
  start for a 3.4 GiB model whose weights took 0.9 s.

For the decision framework's baseline (Llama-3.1-70B INT8, 72.7 GB with its 16-bit embeddings and
head, plus a BF16 8B draft, 16.1 GB: 89 GB) that is about 208 s from a local cache and about 386 s
from the Hub.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel

from specpilot.planning.memory import MemoryPlan

LOCAL_LOAD_GB_PER_S = 0.75
HUB_DOWNLOAD_GB_PER_S = 0.5
CUDA_GRAPH_CAPTURE_S = 60.0
ENGINE_START_S = 30.0
DEFAULT_STARTUP_S = 208.0
"""The estimate when the weights' bytes are unknown (the architecture is not in the catalog nor
in the checkpoint's config): the 89 GB baseline from a local cache, rounded."""


class WeightSource(StrEnum):
    LOCAL = "local"
    """Node-local cache or a PVC holding the weights."""
    HUB = "hub"
    """Downloaded from the Hugging Face Hub at every start, then loaded."""


class StartupEstimate(BaseModel):
    """The expected seconds from a new pod scheduled to serving, and its parts."""

    weight_gb: float
    source: WeightSource
    download_s: float
    load_s: float
    graph_capture_s: float
    engine_start_s: float

    @property
    def seconds(self) -> float:
        return self.download_s + self.load_s + self.graph_capture_s + self.engine_start_s

    def describe(self) -> str:
        """One line for a reason or an Event: the total and where it comes from."""
        fetch = (
            f"{self.download_s:.0f}s download at {HUB_DOWNLOAD_GB_PER_S:g} GB/s + "
            if self.source is WeightSource.HUB
            else ""
        )
        return (
            f"{self.seconds:.0f}s ({fetch}{self.load_s:.0f}s loading {self.weight_gb:.0f} GB "
            f"at {LOCAL_LOAD_GB_PER_S:g} GB/s + {self.graph_capture_s:.0f}s CUDA graphs + "
            f"{self.engine_start_s:.0f}s engine start)"
        )


def startup(
    weight_gb: float,
    source: WeightSource = WeightSource.LOCAL,
    load_gb_per_s: float = LOCAL_LOAD_GB_PER_S,
    download_gb_per_s: float = HUB_DOWNLOAD_GB_PER_S,
) -> StartupEstimate:
    """The startup of one pod holding `weight_gb` of weights (target plus draft)."""
    if weight_gb < 0 or load_gb_per_s <= 0 or download_gb_per_s <= 0:
        raise ValueError("weights must be >= 0 GB and bandwidths > 0 GB/s")
    return StartupEstimate(
        weight_gb=weight_gb,
        source=source,
        download_s=weight_gb / download_gb_per_s if source is WeightSource.HUB else 0.0,
        load_s=weight_gb / load_gb_per_s,
        graph_capture_s=CUDA_GRAPH_CAPTURE_S,
        engine_start_s=ENGINE_START_S,
    )


def weight_gb(memory: MemoryPlan) -> float | None:
    """The rendered configuration's weights, target plus draft, from its memory plan (None when
    the target's architecture is unknown)."""
    if memory.target is None:
        return None
    return memory.target.weights_gb + (memory.draft.weights_gb if memory.draft else 0.0)


def plan_startup(
    memory: MemoryPlan | None, source: WeightSource = WeightSource.LOCAL
) -> StartupEstimate | None:
    """The startup of a pod of this plan, or None when its weights are unknown."""
    gb = weight_gb(memory) if memory is not None else None
    return None if gb is None else startup(gb, source)
