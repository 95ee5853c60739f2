#!/usr/bin/env python3
"""The real `vllm serve` parser of one vLLM release: its option table, and what it makes of args.

Run with the python of a fidelity venv (scripts/vllm-fidelity-env.sh VERSION):

    PY=$(scripts/vllm-fidelity-env.sh 0.33.0 | tail -n1)
    $PY tests/fidelity/serve_options.py table > operator/specpilot/data/vllm-serve/0.33.0.json
    $PY tests/fidelity/serve_options.py resolve CASES.json    # [{"name", "argv"}] -> results

`table`: every option string of the serve parser, the dest it sets and how many values it takes,
plus how vLLM's FlexibleArgumentParser rewrites arguments before argparse sees them (found by
feeding it probes). The operator ships these tables and judges spec.vllm.extraArgs with them and
Python's own argparse (specpilot.vllm_cli), never importing vLLM.

`resolve`: parses `serve MODEL ARGV...` with the real parser and reports, per case, whether vLLM
accepts it and which (option string, dest) pairs argparse applied, in order; `error` holds the
parser's message when it refuses. test_vllm_fidelity.py compares both with the operator.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
REPEATABLE = (
    argparse._AppendAction,
    argparse._AppendConstAction,
    argparse._CountAction,
    argparse._ExtendAction,
)
O_SHORTHANDS = {
    ("--optimization-level", "3"): "optimization-level",
    ("-O", '{"level": 3}'): "compilation-config-level",
    ("-O3",): "none",
}
PROBES = {
    "underscore_after_dot": ["--a_b.c_d", "1"],
    "dotted": ["--a-b.c", "1"],
    "o_attached": ["-O3"],
}


def flexible_parser_cls() -> Any:
    try:
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:
        from vllm.utils import FlexibleArgumentParser
    return FlexibleArgumentParser


def parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """(top-level `vllm` parser, its `serve` subparser), built as vllm/entrypoints/cli/main.py."""
    import vllm.entrypoints.cli.serve as serve_mod

    top = flexible_parser_cls()(prog="vllm")
    subparsers = top.add_subparsers(required=False, dest="subparser")
    return top, serve_mod.ServeSubcommand().subparser_init(subparsers)


def rewritten(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """What FlexibleArgumentParser hands to argparse for `argv` (argparse itself not run)."""
    seen: list[str] = []

    def capture(self: object, args: list[str], namespace: object = None) -> None:
        seen.extend(args)

    base = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = capture  # type: ignore[method-assign]
    try:
        type(parser).parse_args(parser, argv)
    finally:
        argparse.ArgumentParser.parse_args = base  # type: ignore[method-assign]
    return seen


def table() -> dict[str, Any]:
    import vllm

    _, serve = parsers()
    by_action: dict[int, dict[str, Any]] = {}
    for option, action in sorted(serve._option_string_actions.items()):
        entry = by_action.setdefault(
            id(action),
            {
                "dest": action.dest,
                "nargs": action.nargs,
                "exits": isinstance(action, argparse._HelpAction | argparse._VersionAction),
                "repeatable": isinstance(action, REPEATABLE),
                "options": [],
            },
        )
        entry["options"].append(option)
    probes = {name: rewritten(serve, argv) for name, argv in PROBES.items()}
    assert not [a for a in serve._actions if not a.option_strings and a.dest != "model_tag"]
    return {
        "vllm": vllm.__version__,
        "python": platform.python_version(),
        "allow_abbrev": serve.allow_abbrev,
        "prefix_chars": serve.prefix_chars,
        "rewrites": {
            "underscores_after_dot": probes["underscore_after_dot"][0].startswith("--a-b.c-d"),
            "dotted_json": probes["dotted"] == ["--a-b", json.dumps({"c": 1})],
            "o_shorthand": O_SHORTHANDS[tuple(probes["o_attached"])],
        },
        "options": sorted(by_action.values(), key=lambda e: e["options"][0]),
    }


def resolve(argv: list[str]) -> dict[str, Any]:
    """Whether the real parser takes `serve MODEL *argv`, and which options it applied."""
    top, serve = parsers()
    applied: list[list[str | None]] = []
    for action in serve._actions:
        base = type(action)

        def record(
            self: Any,
            parser: Any,
            namespace: Any,
            values: Any,
            option_string: Any = None,
            _base: Any = base,
        ) -> None:
            applied.append([option_string, self.dest])
            _base.__call__(self, parser, namespace, values, option_string)

        action.__class__ = type(f"Recording{base.__name__}", (base,), {"__call__": record})
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            top.parse_args(["serve", MODEL, *argv])
    except SystemExit:
        message = stderr.getvalue().strip().splitlines()
        return {"ok": False, "error": message[-1] if message else "exit", "applied": applied}
    except Exception as exc:  # vLLM's own refusals (ValueError, AssertionError)
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "applied": applied}
    return {"ok": True, "error": None, "applied": [a for a in applied if a[0] is not None]}


def main() -> int:
    import check_args

    check_args._grab_stdout()  # vLLM logs to stdout; the JSON alone goes there
    check_args.install_cpu_platform_plugin(tempfile.mkdtemp(prefix="specpilot-plugin-"))
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "table":
        result: Any = table()
    elif command == "resolve" and len(sys.argv) == 3:
        cases = json.loads(Path(sys.argv[2]).read_text(encoding="utf-8"))
        result = [{"name": c["name"], **resolve(c["argv"])} for c in cases]
    else:
        print(__doc__, file=sys.stderr)
        return 2
    check_args._emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
