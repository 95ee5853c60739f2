"""Operator memory under a stream of updates: does RSS level off or keep growing?

The soak showed the operator's RSS stepping up during 409 churn. This isolates it: the real API
server, `specpilot run`, one resource (the 70B INT8 example; its Prometheus does not exist, so the
control loop holds), and rounds of 300 annotation updates, each one a watch event and a reconcile.
It prints the RSS after each round and the growth over the last rounds.

    .venv/bin/python bench/churn_memory.py [--rounds 14]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from specpilot.api.models import GROUP, PLURAL, VERSION
from specpilot_lab.local.controlplane import ControlPlane
from specpilot_lab.local.operator_process import OperatorProcess, wait_for
from specpilot_lab.local.stack import install_crds

REPO = Path(__file__).resolve().parent.parent
NAMESPACE = "churn"
UPDATES_PER_ROUND = 300


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=14)
    args = parser.parse_args()
    doc: dict[str, Any] = yaml.safe_load(
        (REPO / "manifests" / "examples" / "llama-70b-int8-draft.yaml").read_text()
    )
    doc["metadata"]["namespace"] = NAMESPACE
    name = doc["metadata"]["name"]
    with ControlPlane() as plane:
        install_crds(plane)
        plane.kubectl("create", "namespace", NAMESPACE)
        custom = k8s.CustomObjectsApi(k8s_config.new_client_from_config(str(plane.kubeconfig)))
        with OperatorProcess(plane.kubeconfig, "--standalone", "-n", NAMESPACE) as operator:
            assert operator.process is not None
            custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, doc)
            wait_for(
                lambda: (
                    custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
                    .get("status", {})
                    .get("phase")
                ),
                what="the first reconcile",
            )
            readings = [operator.rss_mb()]
            print(f"start: {readings[0]:.1f} MB", flush=True)
            updates = 0
            for _round in range(args.rounds):
                for _ in range(UPDATES_PER_ROUND):
                    updates += 1
                    patch = {"metadata": {"annotations": {"example.com/churn": str(updates)}}}
                    custom.patch_namespaced_custom_object(
                        GROUP, VERSION, NAMESPACE, PLURAL, name, patch
                    )
                    time.sleep(0.02)
                time.sleep(5)
                readings.append(operator.rss_mb())
                print(f"after {updates:5d} updates: {readings[-1]:.1f} MB", flush=True)
    tail = readings[-4:]
    print(f"\nRSS {readings[0]:.1f} -> {readings[-1]:.1f} MB over {updates} updates; "
          f"last {len(tail) - 1} rounds: {tail[-1] - tail[0]:+.1f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
