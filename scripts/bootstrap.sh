#!/usr/bin/env bash
# Create (or refresh) the project's virtualenv in .venv with both distributions, editable: specpilot
# (the operator, with its dev tools) and specpilot-lab (lab/: simulator, pod runner, load
# generator, local control plane, demo); and make sure kubectl is there (the local control plane
# of the demo and the tests drives it). Idempotent and quiet when nothing changed; safe to call
# from every entry script.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "specpilot needs Python 3.11 or newer (found: $("$PYTHON" --version 2>&1))" >&2
  exit 1
fi
stamp=.venv/.specpilot-installed
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ lab/pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  # One command, so the lab's dependency on specpilot is met by this checkout, not an index.
  .venv/bin/python -m pip install --quiet -e '.[dev]' -e ./lab
  touch "$stamp"
fi
if ! command -v kubectl >/dev/null; then
  apt-get update -qq && apt-get install -y -qq kubernetes-client >/dev/null
fi
