"""Reads checkpoint metadata (config.json and the safetensors sizes, never weights) from a local
directory or the Hugging Face hub, within a timeout, and caches what it read.

Only translation happens here: the facts themselves are built by
`specpilot.planning.checkpoint.facts_from_config`. The hub is reached through huggingface_hub,
so its environment applies: HF_TOKEN (gated repositories), HF_ENDPOINT (a mirror) and
HF_HUB_OFFLINE (its local cache only).
"""

from __future__ import annotations

import json
import os
import struct
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

from specpilot.adapters.clock import Clock, SystemClock
from specpilot.planning.checkpoint import (
    CheckpointFacts,
    Checkpoints,
    facts_from_config,
    weight_bytes_from_headers,
    weight_bytes_from_index,
)

CONFIG = "config.json"
INDEX = "model.safetensors.index.json"
TIMEOUT_SECONDS = 10.0
FAILURE_TTL_SECONDS = 300.0
"""How long a failed read stands before the next assessment tries again (a hub outage must not
cost every reconcile the full timeout)."""
MAX_HEADER_BYTES = 100_000_000


class CheckpointReader:
    """The one place that reads checkpoint metadata; thread-safe, successes cached for good
    (a model id's config does not change under a running deployment), failures for a while."""

    def __init__(
        self,
        local_dir: Path | None = None,
        use_hub: bool = True,
        timeout_seconds: float = TIMEOUT_SECONDS,
        clock: Clock | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self._local_dir = local_dir
        self._use_hub = use_hub
        self._timeout = timeout_seconds
        self._clock = clock or SystemClock()
        self._cache_dir = cache_dir
        self._lock = threading.Lock()
        self._read: dict[str, CheckpointFacts] = {}
        self._failed: dict[str, tuple[float, str]] = {}
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="checkpoints")

    def read(self, models: Iterable[str]) -> Checkpoints:
        """The facts of every model, read in parallel, each within the timeout. With the hub
        off, a model the local directory does not hold is left unread (the catalog or the spec
        describes it, and the plan names that source)."""
        wanted = list(dict.fromkeys(models))
        read: dict[str, CheckpointFacts] = {}
        unreadable: dict[str, str] = {}
        pending = {}
        now = self._clock.monotonic()
        with self._lock:
            for model in wanted:
                if model in self._read:
                    read[model] = self._read[model]
                elif model in self._failed and now - self._failed[model][0] < FAILURE_TTL_SECONDS:
                    unreadable[model] = self._failed[model][1]
                else:
                    pending[model] = self._pool.submit(self._read_one, model)
        for model, future in pending.items():
            try:
                facts = future.result(timeout=self._timeout)
            except FutureTimeout:
                problem = f"no answer within {self._timeout:g} s"
            except Exception as exc:  # any failure of the read is a finding, never a crash
                problem = _describe(exc)
            else:
                if facts is not None:
                    read[model] = facts
                    with self._lock:
                        self._read[model] = facts
                continue
            unreadable[model] = problem
            with self._lock:
                self._failed[model] = (self._clock.monotonic(), problem)
        return Checkpoints(read=read, unreadable=unreadable)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _read_one(self, model: str) -> CheckpointFacts | None:
        directory = self._directory(model)
        if directory is not None:
            return _read_directory(model, directory)
        return self._read_hub(model) if self._use_hub else None

    def _directory(self, model: str) -> Path | None:
        """ORG/NAME (or a pod's path such as /models/llama) under the local directory, never
        outside it: a model path names the pod's filesystem, not the operator's."""
        if self._local_dir is None:
            return None
        root = self._local_dir.resolve()
        candidate = (root / model.strip("/")).resolve()
        if not candidate.is_relative_to(root) or not (candidate / CONFIG).is_file():
            return None
        return candidate

    def _read_hub(self, model: str) -> CheckpointFacts:
        from huggingface_hub import HfApi, constants
        from huggingface_hub.errors import (
            EntryNotFoundError,
            LocalEntryNotFoundError,
            NotASafetensorsRepoError,
        )

        offline = constants.HF_HUB_OFFLINE  # HF_HUB_OFFLINE, as huggingface_hub read it
        api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)

        def download(filename: str) -> Any:
            path = api.hf_hub_download(
                model,
                filename,
                cache_dir=self._cache_dir,
                local_files_only=offline,
                etag_timeout=self._timeout,
            )
            return json.loads(Path(path).read_text())

        config = download(CONFIG)
        weight_bytes: int | None = None
        try:
            weight_bytes = weight_bytes_from_index(download(INDEX))
        except (EntryNotFoundError, LocalEntryNotFoundError):
            if not offline:  # one safetensors file: its header, by a range request
                weight_bytes = _single_file_bytes(api, model, NotASafetensorsRepoError)
        return facts_from_config(model, f"{model}'s config.json on the hub", config, weight_bytes)


def _single_file_bytes(api: Any, model: str, not_safetensors: type[Exception]) -> int | None:
    """Tensor bytes from model.safetensors' header; None for a repository without safetensors
    (e.g. pytorch_model.bin only): its weights are then estimated from its config."""
    try:
        metadata = api.get_safetensors_metadata(model)
    except not_safetensors:
        return None
    return int(
        sum(
            info.data_offsets[1] - info.data_offsets[0]
            for file in metadata.files_metadata.values()
            for info in file.tensors.values()
        )
    )


def _read_directory(model: str, directory: Path) -> CheckpointFacts:
    config = json.loads((directory / CONFIG).read_text())
    weight_bytes = None
    if (directory / INDEX).is_file():
        weight_bytes = weight_bytes_from_index(json.loads((directory / INDEX).read_text()))
    else:
        headers = [_safetensors_header(p) for p in sorted(directory.glob("*.safetensors"))]
        weight_bytes = weight_bytes_from_headers(headers) if headers else None
    return facts_from_config(model, f"{directory / CONFIG}", config, weight_bytes)


def _safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file: 8 bytes of length, then the header itself."""
    with path.open("rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        if length > MAX_HEADER_BYTES:
            raise ValueError(f"{path} has a {length}-byte header: not a safetensors file")
        header: dict[str, Any] = json.loads(file.read(length))
    return header


def _describe(exc: Exception) -> str:
    """One line naming what failed (huggingface_hub's messages run to several lines)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}"[:300]
