"""Fixtures for tests on a real kube-apiserver + etcd (one control plane per test session)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from specpilot.local.controlplane import REPO, ControlPlane
from specpilot.local.operator_process import OperatorProcess
from specpilot.local.stack import install_crds


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    with ControlPlane() as plane:
        install_crds(plane)
        yield plane


@pytest.fixture(scope="session")
def api(control_plane: ControlPlane) -> k8s.ApiClient:
    client: k8s.ApiClient = k8s_config.new_client_from_config(
        config_file=str(control_plane.kubeconfig)
    )
    return client


@pytest.fixture
def namespace(control_plane: ControlPlane) -> str:
    """A fresh namespace per test (the test server cannot delete them: no controller-manager)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    return name


@pytest.fixture
def operator(control_plane: ControlPlane, namespace: str) -> Iterator[OperatorProcess]:
    """An operator (standalone: no peering) for the test's namespace only: tests that run an
    operator of their own (restricted RBAC, peering) must not meet a second one."""
    with OperatorProcess(control_plane.kubeconfig, "--standalone", "-n", namespace) as process:
        yield process


def example(name: str, namespace: str, **spec_changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO / "manifests" / "examples" / name).read_text())
    doc["metadata"]["namespace"] = namespace
    doc["spec"].update(spec_changes)
    return doc
