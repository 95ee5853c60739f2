"""The checkpoint reader against a local fake of the Hugging Face hub (its resolve URLs, HEAD
metadata, range requests), so huggingface_hub's real code path runs; never the real hub."""

from __future__ import annotations

import hashlib
import http.server
import json
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import constants
from huggingface_hub.utils import reset_sessions

from specpilot.adapters.checkpoints import FAILURE_TTL_SECONDS, CheckpointReader
from tests.adapters.fakes import FakeClock
from tests.conftest import CHECKPOINTS

FP8_8B = "RedHatAI/Meta-Llama-3-8B-Instruct-FP8"
QWEN3_8B = "Qwen/Qwen3-8B"
TINY = "tests/tiny-single-file"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def safetensors_file(tensors: dict[str, tuple[str, list[int], int]]) -> bytes:
    """A valid safetensors file: header (dtype, shape, offsets) then zero bytes of data."""
    header, offset = {}, 0
    for name, (dtype, shape, size) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(offset)


def repositories() -> dict[str, dict[str, bytes]]:
    repos: dict[str, dict[str, bytes]] = {}
    for model in (FP8_8B, QWEN3_8B):
        repos[model] = {p.name: p.read_bytes() for p in (CHECKPOINTS / model).glob("*.json")}
    tiny_config = json.loads((CHECKPOINTS / QWEN3_8B / "config.json").read_text())
    repos[TINY] = {
        "config.json": json.dumps(tiny_config).encode(),
        "model.safetensors": safetensors_file(
            {"embed": ("BF16", [4, 8], 64), "proj.weight": ("F8_E4M3", [8, 8], 64)}
        ),
    }
    return repos


class FakeHub(http.server.ThreadingHTTPServer):
    def __init__(self, repos: dict[str, dict[str, bytes]]) -> None:
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.repos = repos
        self.requests: list[str] = []
        self.delay = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class HubHandler(http.server.BaseHTTPRequestHandler):
    server: FakeHub

    def log_message(self, *_: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        self.server.requests.append(f"{self.command} {self.path}")
        time.sleep(self.server.delay)
        parts = self.path.split("?")[0].strip("/").split("/")
        # /ORG/NAME/resolve/REVISION/FILENAME
        if len(parts) != 5 or parts[2] != "resolve":
            self._error(404, "EntryNotFound")
            return
        repo = self.server.repos.get(f"{parts[0]}/{parts[1]}")
        if repo is None:
            self._error(401, "RepoNotFound")
            return
        content = repo.get(parts[4])
        if content is None:
            self._error(404, "EntryNotFound")
            return
        status, payload = 200, content
        wanted = self.headers.get("Range")
        if wanted and wanted.startswith("bytes="):
            start, _, end = wanted[len("bytes=") :].partition("-")
            payload = content[int(start) : int(end) + 1 if end else None]
            status = 206
        self.send_response(status)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(content).hexdigest()}"')
        self.send_header("Content-Length", str(len(payload)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {wanted[6:]}/{len(content)}")
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def _error(self, status: int, code: str) -> None:
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """The fake hub as HF_ENDPOINT, huggingface_hub online (tests/conftest.py keeps it off)."""
    server = FakeHub(repositories())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    reset_sessions()
    yield server
    server.shutdown()
    server.server_close()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    reset_sessions()


def test_config_and_index_come_from_the_hub_once(hub: FakeHub, tmp_path: Path) -> None:
    reader = CheckpointReader(cache_dir=tmp_path, clock=FakeClock())
    found = reader.read([FP8_8B, QWEN3_8B])
    assert found.unreadable == {}
    fp8 = found.read[FP8_8B]
    assert fp8.weight_bytes == 9_081_202_432  # the index's total_size
    assert fp8.quantization is not None
    assert fp8.quantization.method == "fp8"
    assert "hub" in fp8.source
    assert found.read[QWEN3_8B].head_dim == 128
    asked = len(hub.requests)
    assert reader.read([FP8_8B]).read[FP8_8B] == fp8
    assert len(hub.requests) == asked  # cached: no second trip
    reader.close()


def test_a_single_file_checkpoint_is_sized_from_its_safetensors_header(
    hub: FakeHub, tmp_path: Path
) -> None:
    reader = CheckpointReader(cache_dir=tmp_path, clock=FakeClock())
    facts = reader.read([TINY]).read[TINY]
    assert facts.weight_bytes == 128  # 64 + 64 bytes of tensors, read by a range request
    assert any("model.safetensors" in r and r.startswith("GET") for r in hub.requests)
    reader.close()


def test_an_unknown_repository_is_unreadable_with_the_hubs_reason_and_retried_later(
    hub: FakeHub, tmp_path: Path
) -> None:
    clock = FakeClock()
    reader = CheckpointReader(cache_dir=tmp_path, clock=clock)
    found = reader.read(["nobody/nothing"])
    assert found.read == {}
    assert "RepositoryNotFoundError" in found.unreadable["nobody/nothing"]
    asked = len(hub.requests)
    assert reader.read(["nobody/nothing"]).unreadable  # remembered: no new request
    assert len(hub.requests) == asked
    clock.advance(FAILURE_TTL_SECONDS + 1)
    reader.read(["nobody/nothing"])
    assert len(hub.requests) > asked
    reader.close()


def test_a_silent_hub_costs_at_most_the_timeout(hub: FakeHub, tmp_path: Path) -> None:
    hub.delay = 1.0
    reader = CheckpointReader(cache_dir=tmp_path, clock=FakeClock(), timeout_seconds=0.3)
    started = time.monotonic()
    found = reader.read([FP8_8B, QWEN3_8B])
    assert time.monotonic() - started < 0.9
    assert found.unreadable[FP8_8B] == "no answer within 0.3 s"
    reader.close()
    hub.delay = 0.0
    time.sleep(2.5)  # the abandoned reads finish before the hub goes away


def test_offline_reads_what_the_hub_cache_already_holds(hub: FakeHub, tmp_path: Path) -> None:
    CheckpointReader(cache_dir=tmp_path, clock=FakeClock()).read([FP8_8B])
    hub.shutdown()
    constants.HF_HUB_OFFLINE = True  # the fixture puts it back
    reset_sessions()
    offline = CheckpointReader(cache_dir=tmp_path, clock=FakeClock())
    found = offline.read([FP8_8B, QWEN3_8B])
    assert found.read[FP8_8B].weight_bytes == 9_081_202_432
    assert "LocalEntryNotFoundError" in found.unreadable[QWEN3_8B]
    offline.close()


def test_a_local_directory_mirrors_the_hub_and_nothing_outside_it_is_read(tmp_path: Path) -> None:
    reader = CheckpointReader(local_dir=CHECKPOINTS, use_hub=False, clock=FakeClock())
    found = reader.read([FP8_8B, "meta-llama/Llama-3.1-8B-Instruct", "../../../etc", "x/y"])
    assert found.read[FP8_8B].weight_bytes == 9_081_202_432
    assert found.read["meta-llama/Llama-3.1-8B-Instruct"].weight_bytes == 16_060_522_496
    # Not there and the hub is off: left to the catalog or the spec, not an error.
    assert set(found.read) == {FP8_8B, "meta-llama/Llama-3.1-8B-Instruct"}
    assert found.unreadable == {}
    broken = tmp_path / "org" / "broken"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text('{"hidden_size": 4096}')
    problem = CheckpointReader(local_dir=tmp_path, use_hub=False).read(["org/broken"])
    assert "num_hidden_layers" in problem.unreadable["org/broken"]
    reader.close()
