"""The simulator speaks vLLM's HTTP API: the real `openai` client against it on loopback."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import urllib.request
from collections.abc import Iterator

import openai
import pytest
from aiohttp import web

from specpilot_lab.sim.serve import build_engine
from specpilot_lab.sim.server import application
from specpilot_lab.sim.vllm_args import SimArgsError, parse_server_args

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
EAGLE3 = (
    '{"method": "eagle3", "model": "yuhuili/EAGLE3-LLaMA3.1-Instruct-8B", '
    '"num_speculative_tokens": 3}'
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class SimServer:
    """A simulator on a loopback port, run in its own event loop thread."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.port = free_port()
        self.engine = build_engine(
            [*argv, "--port", str(self.port)], {"SPECPILOT_SIM_TIME_SCALE": "50", **env}
        )
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(application(self.engine))
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> SimServer:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    async def _start(self) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0)

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as response:
            text = response.read().decode()
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                series, value = line.rsplit(" ", 1)
                name = series.split("{")[0]
                position = re.search(r'position="(\d+)"', series)
                key = f'{name}{{position="{position.group(1)}"}}' if position else name
                values[key] = float(value)
        return values


@pytest.fixture(scope="module")
def eagle3() -> Iterator[SimServer]:
    with SimServer([MODEL, "--max-model-len", "4096", "--speculative-config", EAGLE3], {}) as s:
        yield s


def test_completions_and_models(eagle3: SimServer) -> None:
    client = eagle3.client()
    assert [m.id for m in client.models.list().data] == [MODEL]
    completion = client.completions.create(
        model=MODEL, prompt="say hello to the operator", max_tokens=12, temperature=0
    )
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 12
    assert len(completion.choices[0].text.split()) == 12


def test_streaming_completions_and_chat(eagle3: SimServer) -> None:
    client = eagle3.client()
    stream = client.completions.create(
        model=MODEL,
        prompt="a b c",
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert len(text.split()) == 20
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 20
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi there"}], max_tokens=8
    )
    assert len((chat.choices[0].message.content or "").split()) == 8
    streamed = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True
    )
    assert (
        len("".join(c.choices[0].delta.content or "" for c in streamed if c.choices).split()) == 5
    )


def test_errors_look_like_vllms(eagle3: SimServer) -> None:
    client = eagle3.client()
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="other/model", prompt="x", max_tokens=1)
    with pytest.raises(openai.BadRequestError, match="maximum context length is 4096"):
        client.completions.create(model=MODEL, prompt="x", max_tokens=5000)


def test_metrics_carry_vllms_names_and_speculation_counters(eagle3: SimServer) -> None:
    client = eagle3.client()
    for temperature in (0.0, 0.0, 0.0):
        client.completions.create(
            model=MODEL, prompt="hello", max_tokens=60, temperature=temperature
        )
    m = eagle3.metrics()
    for name in (
        "vllm:num_requests_running",
        "vllm:kv_cache_usage_perc",
        "vllm:generation_tokens_total",
        "vllm:prompt_tokens_total",
        "vllm:time_to_first_token_seconds_count",
        "vllm:e2e_request_latency_seconds_count",
        "vllm:inter_token_latency_seconds_count",
        "vllm:request_time_per_output_token_seconds_count",
        "vllm:spec_decode_num_drafts_total",
    ):
        assert name in m, name
    assert "vllm:time_per_output_token_seconds_count" not in m  # hidden from 0.12, gone in 0.15
    drafted = m["vllm:spec_decode_num_draft_tokens_total"]
    accepted = m["vllm:spec_decode_num_accepted_tokens_total"]
    assert drafted == 3 * m["vllm:spec_decode_num_drafts_total"]
    assert 0.5 < accepted / drafted < 0.97  # EAGLE-3 at temperature 0
    assert (
        m['vllm:spec_decode_num_accepted_tokens_per_pos_total{position="0"}']
        >= (m['vllm:spec_decode_num_accepted_tokens_per_pos_total{position="2"}'])
    )


def test_legacy_release_exports_v0_metrics() -> None:
    argv = [
        MODEL,
        "--max-model-len",
        "4096",
        "--speculative-model",
        "[ngram]",
        "--num-speculative-tokens",
        "4",
        "--ngram-prompt-lookup-max",
        "4",
    ]
    with SimServer(argv, {}) as server:
        assert server.engine.config.vllm_version == "0.8.2"
        server.client().completions.create(model=MODEL, prompt="x y z", max_tokens=30)
        m = server.metrics()
    assert "vllm:spec_decode_draft_acceptance_rate" in m
    assert "vllm:gpu_cache_usage_perc" in m
    assert "vllm:time_per_output_token_seconds_count" in m
    assert "vllm:spec_decode_num_drafts_total" not in m


def test_arguments_vllm_would_refuse_are_refused() -> None:
    with pytest.raises(SimArgsError, match="unrecognized arguments: --bogus"):
        parse_server_args([MODEL, "--bogus", "1"], {})
    with pytest.raises(SimArgsError, match="unrecognized arguments: --speculative-model"):
        parse_server_args(
            [MODEL, "--speculative-model", "[ngram]", "--num-speculative-tokens", "3"],
            {"SPECPILOT_SIM_VLLM_VERSION": "0.33.0"},
        )
    with pytest.raises(SimArgsError, match="tensor_parallel_size"):
        parse_server_args(
            [MODEL, "--speculative-config", '{"method": "ngram", "tensor_parallel_size": 2}'], {}
        )
    with pytest.raises(SimArgsError, match="vLLM would not start"):
        build_engine(["meta-llama/Llama-3.1-70B-Instruct", "--max-model-len", "8192"], {})
