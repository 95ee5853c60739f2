#!/usr/bin/env bash
# The README's main command. Until the local cluster demo lands, it shows what the operator will do
# with an example before any cluster exists: the memory plan, the verdict and the manifests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
example=${1:-manifests/examples/llama-70b-int8-draft.yaml}
.venv/bin/specpilot plan "$example"
echo
echo "== what the operator would apply (specpilot render $example)"
.venv/bin/specpilot render "$example"
echo
echo "== and a manifest it refuses (specpilot plan manifests/examples/does-not-fit.yaml)"
.venv/bin/specpilot plan manifests/examples/does-not-fit.yaml || echo "(exit $?: refused before any GPU is scheduled)"
