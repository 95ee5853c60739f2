"""The Helm chart under test and what both of its test modules use: the pinned helm binary, the
chart's and the kustomize install's folders, and lookups in rendered objects."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO

CHART = REPO / "charts" / "specpilot"
MANIFESTS = REPO / "manifests"
EXAMPLE = "llama-70b-int8-draft.yaml"
WEBHOOK_ARGS = ["--webhook-port", "9443", "--webhook-service"]

Doc = dict[str, Any]


class Helm:
    """The pinned helm binary (scripts/helm-assets.sh) with its state in a private folder."""

    def __init__(self, binary: Path, home: Path) -> None:
        self.binary = binary
        self.env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def __call__(
        self, *args: str, kubeconfig: Path | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env = dict(self.env)
        if kubeconfig is not None:
            env["KUBECONFIG"] = str(kubeconfig)
        result = subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, env=env, timeout=120
        )
        if check:
            assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}{result.stderr}"
        return result

    def template(self, *args: str, release: str = "specpilot") -> list[Doc]:
        out = self("template", release, str(CHART), "-n", "specpilot-system", *args).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]


def pinned_helm(home: Path) -> Helm:
    """$HELM_BIN if set (scripts/test.sh sets it), else scripts/helm-assets.sh's install."""
    env_bin = os.environ.get("HELM_BIN")
    if env_bin and os.access(env_bin, os.X_OK):
        binary = Path(env_bin)
    else:
        result = subprocess.run(
            ["bash", str(REPO / "scripts" / "helm-assets.sh")],
            stdout=subprocess.PIPE,
            text=True,
            check=True,
            timeout=600,
        )
        binary = Path(result.stdout.strip().splitlines()[-1])
    return Helm(binary, home)


def by_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[Doc], kind: str) -> Doc:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def container(docs: list[Doc]) -> Doc:
    containers: list[Doc] = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def cluster_role_rules() -> list[Doc]:
    role = next(
        d
        for d in yaml.safe_load_all((MANIFESTS / "rbac" / "cluster-role.yaml").read_text())
        if d["kind"] == "ClusterRole"
    )
    rules: list[Doc] = role["rules"]
    return rules


def named(docs: list[Doc], kind: str, name: str) -> Doc:
    (found,) = [d for d in by_kind(docs, kind) if d["metadata"]["name"] == name]
    return found
