#!/usr/bin/env bash
# The README's main command: the control loop end to end on this machine, no GPUs needed.
#
# Brings up a local control plane (etcd + kube-apiserver, built once and cached), simulated vLLM
# pods (the pod runner), a real Prometheus and the operator; applies an example resource; plays
# low load -> surge -> low load; prints the operator's Events as they happen; ends with a summary
# table and a PNG timeline under demo-output/. Everything it starts is stopped when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
example=manifests/examples/llama-70b-int8-draft.yaml
echo "== the memory plan for $example (specpilot plan)"
.venv/bin/specpilot plan "$example"
echo
exec .venv/bin/specpilot-lab demo "$@"
