#!/usr/bin/env bash
# The recipe ships with the lab (lab/specpilot_lab/local/assets/kube-assets.sh), so an installed
# specpilot-lab finds it without this checkout; this is the same script, run from here.
exec bash "$(dirname "$0")/../lab/specpilot_lab/local/assets/kube-assets.sh" "$@"
