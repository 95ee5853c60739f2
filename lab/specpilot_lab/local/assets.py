"""The recipes that provide the local stand-ins' binaries, shipped with the lab (package data).

`kube-assets.sh` builds or finds etcd + kube-apiserver, `prometheus-assets.sh` finds or unpacks
Prometheus; both cache under ``${SPECPILOT_CACHE:-~/.cache/specpilot}`` and print the folder as
their last line on stdout (logs on stderr). scripts/kube-assets.sh and scripts/prometheus-assets.sh
in the source checkout run these same files.
"""

from __future__ import annotations

import subprocess
from importlib import resources
from pathlib import Path


class AssetsError(RuntimeError):
    """A recipe failed or printed no usable folder."""


def script(name: str) -> Path:
    """The shipped recipe `name` (e.g. ``kube-assets.sh``) as a file bash can run."""
    path = Path(str(resources.files(__package__ or "specpilot_lab.local") / "assets" / name))
    if not path.is_file():
        raise AssetsError(f"{name} is missing from the installed specpilot-lab (looked at {path})")
    return path


def run_script(name: str, timeout: float | None = None, quiet: bool = False) -> Path:
    """Run the recipe and return the folder it prints last; stderr is let through unless quiet."""
    path = script(name)
    proc = subprocess.run(
        ["bash", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if quiet else None,
        text=True,
        check=False,
        timeout=timeout,
    )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        detail = f":\n{proc.stderr}" if quiet and proc.stderr else "; see its messages on stderr"
        raise AssetsError(f"{path} failed (exit {proc.returncode}){detail}")
    return Path(lines[-1].strip())
