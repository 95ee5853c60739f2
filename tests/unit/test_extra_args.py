"""spec.vllm.extraArgs read the way the resource's vLLM release reads them (specpilot.vllm_cli).

The fidelity tier proves these readings against the real parsers; here they are pinned without
vLLM, with the examples of issue 16.
"""

from __future__ import annotations

import argparse
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specpilot.assessment import assess
from specpilot.findings import Finding, Severity
from specpilot.vllm_cli import ServeTable, known_releases, nearest_release, read_args, serve_table
from tests.conftest import manifest


def findings_for(extra: list[str], version: str = "0.33.0", **spec: Any) -> list[Finding]:
    doc = manifest(**spec)
    doc["spec"]["vllm"] = {"image": f"vllm/vllm-openai:v{version}", "extraArgs": extra}
    return [f for f in assess(doc).findings if f.path.startswith("spec.vllm.extraArgs")]


def codes(found: list[Finding]) -> dict[str, str]:
    return {f.path: f.code for f in found if f.severity is Severity.ERROR}


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        (["-sc", '{"method": "ngram", "num_speculative_tokens": 7}'], "spec.speculation"),
        (["--speculative_config", "{}"], "spec.speculation"),
        (["--speculative-config={}"], "spec.speculation"),
        (["-sc.method", "mtp"], "spec.speculation"),
        (["--speculative-conf", "{}"], "spec.speculation"),
        (["--tensor_parallel_size", "4"], "spec.target.tensorParallelSize"),
        (["-tp=4"], "spec.target.tensorParallelSize"),
        (["--tensor-parallel=4"], "spec.target.tensorParallelSize"),
        (["--device-memory-utilization", "0.5"], "spec.gpus.memoryUtilization"),
        (["--spec-tokens", "9"], "spec.speculation.numSpeculativeTokens"),
        (["--spec-method", "ngram"], "spec.speculation.method"),
        (["--kv_cache_dtype", "fp8"], "spec.target.kvCacheDtype"),
        (["--host=127.0.0.1"], "spec.vllm.port"),
        (["--model=other/model"], "spec.target.model"),
    ],
)
def test_every_spelling_of_a_managed_option_is_refused(extra: list[str], field: str) -> None:
    found = findings_for(extra)
    assert codes(found) == {"spec.vllm.extraArgs[0]": "ManagedFlagInExtraArgs"}, found
    assert found[0].fix == f"remove it from extraArgs and set {field} instead."


def test_the_issues_abbreviations_name_what_vllm_reads() -> None:
    found = findings_for(["--gpu-memory-util", "0.99", "--max-model", "131072"])
    assert codes(found) == {
        "spec.vllm.extraArgs[0]": "ManagedFlagInExtraArgs",
        "spec.vllm.extraArgs[2]": "ManagedFlagInExtraArgs",
    }
    assert "--max-model (vLLM reads it as --max-model-len)" in found[1].message
    assert "spec.target.maxModelLen" in found[1].fix


def test_an_unknown_option_names_the_release() -> None:
    found = findings_for(["--foo"], "0.11.0")
    assert codes(found) == {"spec.vllm.extraArgs[0]": "InvalidExtraArg"}
    assert found[0].message == "--foo is not an option of vLLM 0.11.0's `vllm serve`."


def test_an_alias_of_a_newer_release_is_unknown_to_an_older_one() -> None:
    found = findings_for(["-sc", "{}"], "0.11.0")
    assert codes(found) == {"spec.vllm.extraArgs[0]": "InvalidExtraArg"}
    assert "-sc is not an option of vLLM 0.11.0" in found[0].message


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--max", "5"], "abbreviates several options"),
        (["--enforce-eager", "8"], "follows no option that takes a value"),
        (["--chat-template"], "takes a value"),
        (["--chat-template", "--enforce-eager"], "takes a value"),
        (["--enforce-eager=true"], "takes no value"),
        (["-tp4"], "is not an option"),
    ],
)
def test_what_the_parser_refuses_is_refused(extra: list[str], words: str) -> None:
    found = findings_for(extra)
    assert list(codes(found).values()) == ["InvalidExtraArg"], found
    assert words in found[0].message


@pytest.mark.parametrize(
    "extra",
    [
        ["--max-num-seqs", "64"],
        ["--max_num_seqs=64"],
        ["--max-num-batched", "8192"],
        ["--enforce-eager", "--enable-prefix-caching"],
        ["--served-model-name", "a", "b"],
        ["--seed", "-1"],
        ["-O3"],
        ["--hf-overrides.rope_theta", "500000"],
    ],
)
def test_options_vllm_takes_are_accepted(extra: list[str]) -> None:
    assert findings_for(extra) == []


def test_a_repeated_option_is_refused_vllm_would_keep_only_the_last() -> None:
    found = findings_for(["--max-num-seqs", "64", "--max-num-seqs", "32"])
    assert codes(found) == {"spec.vllm.extraArgs[2]": "DuplicateOptionInExtraArgs"}


def test_a_config_file_could_set_anything_and_is_refused() -> None:
    found = findings_for(["--config", "/etc/vllm.yaml"])
    assert codes(found) == {"spec.vllm.extraArgs[0]": "ConfigFileInExtraArgs"}


def test_load_format_is_managed_only_where_specpilot_renders_it() -> None:
    assert findings_for(["--load-format", "safetensors"]) == []
    bnb = {
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "quantization": "bitsandbytes",
        "maxModelLen": 8192,
    }
    found = findings_for(
        ["--load-format", "safetensors"],
        target=bnb,
        speculation=None,
        gpus={"type": "H100-80GB", "count": 1},
    )
    assert codes(found) == {"spec.vllm.extraArgs[0]": "ManagedFlagInExtraArgs"}
    assert "spec.target.quantization" in found[0].fix


def test_a_release_without_a_table_is_judged_by_the_nearest_older_one() -> None:
    from packaging.version import Version

    assert nearest_release(Version("0.20.0")) == Version("0.11.0")
    assert nearest_release(Version("0.6.3")) == Version("0.8.2")
    unknown = findings_for(["--foo"], "0.20.0")
    assert [f.code for f in unknown] == ["UncheckedExtraArg"]
    assert unknown[0].severity is Severity.WARNING
    assert "nearest release" in unknown[0].message
    # 0.11.0 lacks --spec-method, but 0.33.0 reads it as a managed option: still refused.
    managed = findings_for(["--spec-method", "ngram"], "0.20.0")
    assert codes(managed) == {"spec.vllm.extraArgs[0]": "ManagedFlagInExtraArgs"}


def _argparse_of(table: ServeTable) -> tuple[argparse.ArgumentParser, list[str]]:
    """Python's own argparse with the table's options, each recording the dest it sets."""
    applied: list[str] = []

    class Record(argparse.Action):
        def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
            applied.append(self.dest)

    class Refusing(argparse.ArgumentParser):
        def error(self, message: str) -> Any:
            raise ValueError(message)

    parser = Refusing(allow_abbrev=table.allow_abbrev, add_help=False)
    for option in table.options:
        parser.add_argument(*option.options, dest=option.dest, nargs=option.nargs, action=Record)
    return parser, applied


ARGPARSE_CASES = [
    ["--max-model", "8192"],
    ["--max", "1"],
    ["-tp", "2", "--enforce-eager"],
    ["-tp=2"],
    ["-tp2"],
    ["-q", "fp8", "-pp", "2"],
    ["--served-model-name", "a", "b", "--seed", "-3"],
    ["--enforce-eager", "x"],
    ["--chat-template", "--enforce-eager"],
    ["--enforce-eager=1"],
    ["--disable-log", "x"],
    ["-h"],
    ["--kv-cache-dtype=fp8", "--dtype", "half"],
    ["value with space"],
]


@pytest.mark.parametrize("release", [str(r) for r in known_releases()])
@pytest.mark.parametrize("args", ARGPARSE_CASES, ids=" ".join)
def test_the_reading_is_pythons_argparse(release: str, args: list[str]) -> None:
    """Without vLLM's rewrites (no underscores, dots or -O here), read_args is argparse itself."""
    table = serve_table(release)
    parser, applied = _argparse_of(table)
    try:
        _, extras = parser.parse_known_args(args)
        refused = bool(extras)
    except ValueError:
        refused = True
    reading = read_args(table, args)
    assert bool(reading.problems) == refused, (reading, applied)
    if not refused:
        assert [a.option.dest for a in reading.applied] == applied


def _words(release: str) -> list[str]:
    """Option strings, their prefixes and = forms, and values of each shape argparse tells apart;
    none that vLLM rewrites first (a '.', -O), which the fidelity tests cover."""
    strings = sorted(serve_table(release).by_string())
    picked = [*strings[::7], "-tp", "-q", "-pp", "--max-model-len", "--served-model-name"]
    words = picked + [s[: max(3, len(s) // 2)] for s in picked] + [f"{s}=1" for s in picked[::3]]
    words += ["1", "-1", "-25", "x y", "auto", "--", "-x", "--nope", "-tp2", ""]
    return [w for w in words if "." not in w and not w.startswith("-O")]


@pytest.mark.parametrize("release", [str(r) for r in known_releases()])
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_argument_list_is_read_as_argparse_reads_it(release: str, data: st.DataObject) -> None:
    args = data.draw(st.lists(st.sampled_from(_words(release)), max_size=6))
    if "--" in args:
        args = args[: args.index("--")]  # after "--" argparse reads positionals only
    test_the_reading_is_pythons_argparse(release, args)


def test_an_option_specpilot_renders_for_the_release_cannot_be_given_again() -> None:
    """vLLM before 0.6.2 gets --use-v2-block-manager from specpilot (speculation needs it)."""
    found = findings_for(["--use-v2-block-manager"], "0.6.1")
    assert codes(found) == {"spec.vllm.extraArgs[0]": "ManagedFlagInExtraArgs"}
    assert "specpilot sets itself for this resource" in found[0].message
    assert "vLLM 0.6.1's use_v2_block_manager" in found[0].message
    assert findings_for(["--use-v2-block-manager"], "0.8.2") == []
