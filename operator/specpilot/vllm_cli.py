"""How a vLLM release's `vllm serve` reads an argument list, without importing vLLM.

Each release's option table (every option string, the dest it sets, how many values it takes) is
generated from the real parser by tests/fidelity/serve_options.py and shipped as package data
(data/vllm-serve/VERSION.json). `read_args` walks an argument list the way vLLM does: first
FlexibleArgumentParser's rewrites (underscores to dashes, dotted JSON keys such as
`-sc.method ngram`, the -O shorthand), then argparse's rules (exact option strings, `=` values,
unambiguous prefix abbreviations, attached values of single-dash options, which tokens count as
values). It mirrors argparse of Python 3.11, the Python the tables were generated with; the
fidelity tests compare its answers with the real parser of each release.
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from typing import Literal

from packaging.version import Version
from pydantic import BaseModel, ConfigDict

TABLE_DIR = "data/vllm-serve"
Nargs = int | Literal["?", "*", "+"] | None


class ServeOption(BaseModel):
    """One argparse action of `vllm serve`: all the strings that reach it."""

    model_config = ConfigDict(frozen=True)

    dest: str
    nargs: Nargs
    exits: bool
    """--help: prints and exits instead of serving."""
    repeatable: bool
    """append/extend/count actions, where giving the option twice adds instead of replacing."""
    options: list[str]


class Rewrites(BaseModel):
    """What FlexibleArgumentParser does to arguments before argparse sees them."""

    underscores_after_dot: bool
    """Underscores become dashes in the whole option name (else only before its first '.')."""
    dotted_json: bool
    """`--a.b v` becomes `--a '{"b": v}'`, moved to the end of the argument list."""
    o_shorthand: Literal["optimization-level", "compilation-config-level", "none"]
    """How -O3 is rewritten (argparse alone reads it as -O with the attached value 3)."""


class ServeTable(BaseModel):
    vllm: str
    python: str
    allow_abbrev: bool
    prefix_chars: str
    rewrites: Rewrites
    options: list[ServeOption]

    def by_string(self) -> dict[str, ServeOption]:
        return {string: option for option in self.options for string in option.options}


@cache
def known_releases() -> tuple[Version, ...]:
    """The releases specpilot ships a parser table for, oldest first."""
    folder = resources.files("specpilot").joinpath(TABLE_DIR)
    return tuple(
        sorted(
            Version(entry.name.removesuffix(".json"))
            for entry in folder.iterdir()
            if entry.name.endswith(".json")
        )
    )


@cache
def serve_table(release: str) -> ServeTable:
    """The option table of a release specpilot ships one for (see known_releases)."""
    text = resources.files("specpilot").joinpath(f"{TABLE_DIR}/{release}.json").read_text()
    return ServeTable.model_validate(json.loads(text))


def nearest_release(version: Version) -> Version:
    """The shipped table to judge `version` by: its own, else the newest older one, else the
    oldest."""
    releases = known_releases()
    older = [r for r in releases if r <= version]
    return older[-1] if older else releases[0]


class Applied(BaseModel):
    """An option the parser applies: written as `written` at argument `index`."""

    index: int
    written: str
    option: ServeOption
    values: list[str]


class Problem(BaseModel):
    """An argument vLLM's parser refuses, in argparse's terms."""

    index: int
    kind: Literal["unknown", "ambiguous", "stray-value", "missing-value", "unexpected-value"]
    written: str
    candidates: list[str] = []


class Reading(BaseModel):
    applied: list[Applied]
    problems: list[Problem]


_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")
_UNDERSCORES_BEFORE_DOT = re.compile(r"(?<=--)[^.]*")


def _rewritten(table: ServeTable, args: list[str]) -> list[tuple[int, str]]:
    """FlexibleArgumentParser's rewrites, each token paired with the index it came from."""
    rules = table.rewrites
    out: list[tuple[int, str]] = []
    dotted: list[tuple[int, str]] = []
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            key, eq, value = arg.partition("=")
            if rules.underscores_after_dot:
                key = "--" + key[2:].replace("_", "-")
            else:
                key = _UNDERSCORES_BEFORE_DOT.sub(lambda m: m.group(0).replace("_", "-"), key, 1)
            arg = key + eq + value
        elif arg.startswith("-O") and arg != "-O" and rules.o_shorthand != "none":
            if not (rules.o_shorthand == "compilation-config-level" and arg[2] == "."):
                level = arg[3:] if arg[2] == "=" else arg[2:]
                if rules.o_shorthand == "optimization-level":
                    out += [(i, "--optimization-level"), (i, level)]
                    continue
                arg = f"-O.level={level}"
        elif arg == "-O" and i + 1 < len(args) and args[i + 1] in {"0", "1", "2", "3"}:
            if rules.o_shorthand == "optimization-level":
                arg = "--optimization-level"
            elif rules.o_shorthand == "compilation-config-level":
                arg = "-O.level"
        out.append((i, arg))
    if not rules.dotted_json:
        return out
    kept: list[tuple[int, str]] = []
    skip_next = False
    for n, (i, arg) in enumerate(out):
        if skip_next:
            skip_next = False
            continue
        if not arg.startswith("-") or "." not in arg:
            kept.append((i, arg))
            continue
        name, eq, _ = arg.partition("=")
        if eq and "." not in name:
            kept.append((i, arg))  # the dot was in the value
            continue
        if not eq:
            skip_next = True  # the next argument is the value, whatever it looks like
            if n + 1 == len(out):
                kept.append((i, arg))  # vLLM fails with an IndexError; argparse-wise unknown
                continue
        dotted.append((i, name.split(".", 1)[0]))
    # vLLM appends each dotted key once, with its merged JSON value, after everything else.
    firsts: dict[str, int] = {}
    for i, key in dotted:
        firsts.setdefault(key, i)
    for key, i in firsts.items():
        kept += [(i, key), (i, "{}")]
    return kept


def _resolve(
    table: ServeTable, strings: dict[str, ServeOption], arg: str
) -> tuple[ServeOption | None, str | None, list[str]] | None:
    """argparse's _parse_optional: None for a value; else (option, explicit value, matches)."""
    if not arg or arg[0] not in table.prefix_chars:
        return None
    if arg in strings:
        return strings[arg], None, [arg]
    if len(arg) == 1:
        return None
    name, eq, explicit = arg.partition("=")
    if eq and name in strings:
        return strings[name], explicit, [name]
    matches: list[tuple[ServeOption, str, str | None]] = []
    if arg[1] in table.prefix_chars:
        if table.allow_abbrev:
            matches = [
                (option, string, explicit if eq else None)
                for string, option in strings.items()
                if string.startswith(name)
            ]
    else:
        for string, option in strings.items():
            if string == arg[:2]:
                matches.append((option, string, arg[2:]))
            elif string.startswith(arg):
                matches.append((option, string, None))
    if len(matches) > 1:
        return None, None, [string for _, string, _ in matches]
    if matches:
        option, string, value = matches[0]
        return option, value, [string]
    if _NEGATIVE_NUMBER.match(arg) or " " in arg:
        return None
    return None, None, []


def read_args(table: ServeTable, args: list[str]) -> Reading:
    """Which options `vllm serve MODEL ARGS...` applies, and which arguments it refuses."""
    strings = table.by_string()
    tokens = _rewritten(table, args)
    resolved = [_resolve(table, strings, arg) for _, arg in tokens]
    applied: list[Applied] = []
    problems: list[Problem] = []
    n = 0
    while n < len(tokens):
        index, arg = tokens[n]
        found = resolved[n]
        n += 1
        if found is None or arg == "--":  # after "--" argparse reads only positionals
            problems.append(Problem(index=index, kind="stray-value", written=args[index]))
            continue
        option, explicit, matches = found
        if option is None:
            kind: Literal["unknown", "ambiguous"] = "ambiguous" if matches else "unknown"
            problems.append(
                Problem(index=index, kind=kind, written=args[index], candidates=matches)
            )
            while n < len(tokens) and resolved[n] is None and tokens[n][1] != "--":
                n += 1  # its values go with it
            continue
        if explicit is not None:
            if option.nargs == 0 or (isinstance(option.nargs, int) and option.nargs > 1):
                problems.append(Problem(index=index, kind="unexpected-value", written=args[index]))
                continue
            values = [explicit]
        else:
            available = 0
            while n + available < len(tokens) and resolved[n + available] is None:
                available += 1
            taken = _values_taken(option.nargs, available)
            if taken is None:
                problems.append(Problem(index=index, kind="missing-value", written=args[index]))
                continue
            values = [arg for _, arg in tokens[n : n + taken]]
            n += taken
        applied.append(Applied(index=index, written=args[index], option=option, values=values))
    return Reading(applied=applied, problems=problems)


def _values_taken(nargs: Nargs, available: int) -> int | None:
    """How many of the `available` following values an option takes; None if too few."""
    if nargs is None:
        return 1 if available else None
    if nargs == "?":
        return min(1, available)
    if nargs == "*":
        return available
    if nargs == "+":
        return available or None
    return nargs if available >= nargs else None
