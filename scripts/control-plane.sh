#!/usr/bin/env bash
# A local test control plane (etcd + kube-apiserver 1.20, no kubelet/controller-manager).
#
#   scripts/control-plane.sh up [--keep-files]   # foreground; prints `export KUBECONFIG=...`; Ctrl-C stops it
#   scripts/control-plane.sh assets               # build/locate the binaries only; prints their folder
#
# Binaries: $KUBEBUILDER_ASSETS, else built once and cached by scripts/kube-assets.sh.
# See docs/control-plane.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[[ -x .venv/bin/python ]] && PYTHON=.venv/bin/python

cmd=${1:-}
case "$cmd" in
  up)
    shift
    exec "$PYTHON" -m specpilot_lab.local.controlplane "$@"
    ;;
  assets)
    exec bash scripts/kube-assets.sh
    ;;
  *)
    echo "usage: $0 up [--keep-files] | assets" >&2
    exit 2
    ;;
esac
