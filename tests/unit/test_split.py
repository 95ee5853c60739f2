"""Two distributions: the operator (specpilot) never contains or imports the lab (specpilot-lab,
lab/): not in its wheel, not in its command, not in any import of its source."""

from __future__ import annotations

import ast
import shutil
import zipfile
from pathlib import Path

from click.testing import CliRunner

from specpilot.cli import main
from tests.conftest import REPO, build_wheel

OPERATOR = REPO / "operator" / "specpilot"
OPERATOR_COMMANDS = {"plan", "render", "validate", "crd", "run"}
LAB_MODULES = {"sim", "podrunner", "loadgen", "local", "demo", "controlplane", "processes"}


def test_the_operator_wheel_holds_no_lab_module(tmp_path: Path) -> None:
    # Built from what the image's build stage copies (a checkout's build/ folder may hold modules
    # of an older layout, which setuptools would pack too).
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(
        REPO / "operator",
        source / "operator",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
    )
    wheel = build_wheel(source, tmp_path / "wheels", "specpilot")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "specpilot/cli.py" in names
    packages = {name.split("/")[0] for name in names}
    assert packages == {"specpilot", wheel.name.split("-py")[0] + ".dist-info"}, packages
    parts = {part.removesuffix(".py") for name in names for part in name.split("/")}
    assert not parts & LAB_MODULES, sorted(parts & LAB_MODULES)
    assert not any("specpilot_lab" in name or "assets.sh" in name for name in names)


def test_the_operator_command_has_only_the_operators_subcommands() -> None:
    assert set(main.commands) == OPERATOR_COMMANDS
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    listed = result.output.split("Commands:", 1)[1].split()
    assert set(listed) >= OPERATOR_COMMANDS
    for lab_command in ("sim", "podrunner", "loadgen", "demo"):
        assert lab_command not in listed


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found.add(str(node.args[0].value))
    return found


def test_the_operator_source_never_imports_the_lab() -> None:
    sources = sorted(OPERATOR.rglob("*.py"))
    assert len(sources) > 20
    offenders = {
        str(path.relative_to(REPO)): sorted(
            name for name in _imports(path) if name.split(".")[0] == "specpilot_lab"
        )
        for path in sources
    }
    assert not {path: names for path, names in offenders.items() if names}
    # Nor modules that moved to the lab under their old names.
    stale = {
        str(path.relative_to(REPO)): name
        for path in sources
        for name in _imports(path)
        if name.split(".")[:2]
        in (["specpilot", "sim"], ["specpilot", "local"], ["specpilot", "demo"])
    }
    assert not stale
    for folder in ("sim", "local", "demo"):
        assert not (OPERATOR / folder).exists()


def test_the_scanner_sees_every_form_of_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import specpilot_lab.sim\n"
        "from specpilot_lab.local import stack\n"
        "from . import sibling\n"
        "def f():\n"
        "    import importlib\n"
        "    return importlib.import_module('specpilot_lab.demo')\n"
    )
    assert _imports(sample) == {
        "specpilot_lab.sim",
        "specpilot_lab.local",
        "importlib",
        "specpilot_lab.demo",
    }
