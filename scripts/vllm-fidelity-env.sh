#!/usr/bin/env bash
# Build (once) a CPU-only virtualenv holding the real vLLM VERSION, for
# tests/fidelity/check_args.py.  Idempotent and cached:
#
#   scripts/vllm-fidelity-env.sh 0.33.0        # last stdout line: the venv's python
#   PY=$(scripts/vllm-fidelity-env.sh 0.33.0 | tail -n1)
#
# venv:     ${SPECPILOT_CACHE:-$HOME/.cache/specpilot}/vllm-fidelity/VERSION
# wheels:   ${SPECPILOT_CACHE:-$HOME/.cache/specpilot}/vllm-fidelity/wheels (vLLM wheels, kept)
# packages: tests/fidelity/requirements-vllm-VERSION.txt (exact pins, --no-deps)
#
# Order: torch==2.13.0 (CPU wheel, --no-deps), `pip download --no-deps vllm==VERSION`
# + `pip install --no-deps`, then the pinned requirements with --no-deps, so pip never
# resolves vLLM's own torch pin (which would pull gigabytes of CUDA packages).
# A marker file is written only after a smoke check passed; a venv without a
# matching marker (half-built, or built from other pins) is deleted and rebuilt.
#
# Environment knobs:
#   SPECPILOT_CACHE           cache root (default ~/.cache/specpilot)
#   SPECPILOT_PYTHON          interpreter for the venv (default: python3.11, else python3)
#   SPECPILOT_TORCH_SPEC      torch requirement (default torch==2.13.0; must resolve to a
#                             CPU build: pip's find-links /opt/wheels has one here)
#   SPECPILOT_TORCH_INDEX_URL extra index for torch, e.g. https://download.pytorch.org/whl/cpu
#   SPECPILOT_FIDELITY_REBUILD=1  force a rebuild
set -euo pipefail

VERSION="${1:-}"
if [[ -z "$VERSION" || "$VERSION" == -* ]]; then
    echo "usage: $0 VLLM_VERSION   (e.g. 0.33.0)" >&2
    exit 2
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FIDELITY="$ROOT/tests/fidelity"
REQ="$FIDELITY/requirements-vllm-$VERSION.txt"
if [[ ! -f "$REQ" ]]; then
    echo "error: no pinned requirements for vLLM $VERSION: $REQ" >&2
    echo "known: $(cd "$FIDELITY" && ls requirements-vllm-*.txt 2>/dev/null | sed 's/requirements-vllm-//; s/\.txt$//' | tr '\n' ' ')" >&2
    exit 2
fi

CACHE="${SPECPILOT_CACHE:-$HOME/.cache/specpilot}/vllm-fidelity"
VENV="$CACHE/$VERSION"
WHEELS="$CACHE/wheels"
MARKER="$VENV/.specpilot-fidelity-complete"
TORCH_SPEC="${SPECPILOT_TORCH_SPEC:-torch==2.13.0}"
SCRIPT_REV=1   # bump when the build steps change

log() { echo "[vllm-fidelity $VERSION] $*" >&2; }

pick_python() {
    if [[ -n "${SPECPILOT_PYTHON:-}" ]]; then echo "$SPECPILOT_PYTHON"; return; fi
    for c in python3.11 python3; do
        if command -v "$c" >/dev/null 2>&1; then command -v "$c"; return; fi
    done
    echo "error: no python3 found (set SPECPILOT_PYTHON)" >&2
    exit 2
}

# What the marker must say for the venv to count as complete.
# The interpreter path is deliberately not part of it (pyenv shims vs real paths).
want_marker() {
    local req_hash
    req_hash="$(sha256sum "$REQ" | cut -d' ' -f1)"
    printf 'rev=%s\nvllm=%s\ntorch=%s\nrequirements_sha256=%s\n' \
        "$SCRIPT_REV" "$VERSION" "$TORCH_SPEC" "$req_hash"
}

is_complete() {
    [[ -f "$MARKER" && -x "$VENV/bin/python" ]] || return 1
    [[ "${SPECPILOT_FIDELITY_REBUILD:-0}" != "1" ]] || return 1
    diff -q <(want_marker) <(sed -n '1,4p' "$MARKER") >/dev/null 2>&1
}

mkdir -p "$CACHE" "$WHEELS"

# Serialise concurrent builds of the same version (e.g. parallel test workers).
exec 9>"$CACHE/.lock-$VERSION"
if command -v flock >/dev/null 2>&1; then
    flock 9
fi

if is_complete; then
    log "cached: $VENV"
    echo "$VENV/bin/python"
    exit 0
fi

START=$(date +%s)
PY="$(pick_python)"
log "building $VENV with $("$PY" --version 2>&1) ($PY)"
rm -rf "$VENV"
"$PY" -m venv "$VENV"
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip --disable-pip-version-check --no-input)

# 1. torch (CPU build), without its dependencies (those are pinned in $REQ).
torch_args=(install --no-deps "$TORCH_SPEC")
if [[ -n "${SPECPILOT_TORCH_INDEX_URL:-}" ]]; then
    torch_args+=(--extra-index-url "$SPECPILOT_TORCH_INDEX_URL")
fi
log "installing $TORCH_SPEC"
"${PIP[@]}" "${torch_args[@]}" >&2

# 2. vLLM itself, no dependencies.
shopt -s nullglob
wheel=("$WHEELS"/vllm-"$VERSION"-*.whl)
if (( ${#wheel[@]} == 0 )); then
    log "downloading vllm==$VERSION (wheel only, no dependencies)"
    "${PIP[@]}" download --no-deps --only-binary :all: "vllm==$VERSION" -d "$WHEELS" >&2
    wheel=("$WHEELS"/vllm-"$VERSION"-*.whl)
fi
(( ${#wheel[@]} == 1 )) || { log "error: expected one vllm $VERSION wheel in $WHEELS, found ${#wheel[@]}"; exit 1; }
log "installing ${wheel[0]##*/} (--no-deps)"
"${PIP[@]}" install --no-deps "${wheel[0]}" >&2

# 3. The pinned pure-Python dependencies, no resolution.
log "installing pinned requirements from ${REQ#"$ROOT"/} (--no-deps)"
"${PIP[@]}" install --no-deps --prefer-binary -r "$REQ" >&2

# 4. Never keep triton for versions that do not list it (it is 1 GB and unused on CPU).
if "$VPY" -c 'import importlib.util,sys; sys.exit(0 if importlib.util.find_spec("triton") else 1)' \
        && ! grep -qiE '^triton==' "$REQ"; then
    log "removing triton (not pinned for this version)"
    "${PIP[@]}" uninstall -y triton >&2
fi

# 5. Sanity: CPU torch, and a real end-to-end check (also warms vLLM's model-info cache).
"$VPY" - <<'EOF' >&2
import sys, torch
if torch.version.cuda is not None:
    sys.exit(f"torch {torch.__version__} is a CUDA build; set SPECPILOT_TORCH_SPEC/SPECPILOT_TORCH_INDEX_URL to a CPU wheel")
print(f"torch {torch.__version__} (CPU build) ok")
EOF
SMOKE="$(mktemp)"
trap 'rm -f "$SMOKE" "$SMOKE.out"' EXIT
cat >"$SMOKE" <<'EOF'
[{"name": "smoke", "expect": "pass",
  "argv": ["meta-llama/Llama-3.1-8B-Instruct", "--tensor-parallel-size", "2", "--max-model-len", "8192"]},
 {"name": "smoke-unknown-flag", "expect": "fail:parse",
  "argv": ["meta-llama/Llama-3.1-8B-Instruct", "--no-such-flag"]}]
EOF
log "smoke check"
if ! "$VPY" "$FIDELITY/check_args.py" "$SMOKE" --strict >"$SMOKE.out"; then
    cat "$SMOKE.out" >&2
    rm -f "$SMOKE.out"
    log "error: smoke check failed; venv left incomplete (no marker)"
    exit 1
fi
rm -f "$SMOKE.out"

# Warm vLLM's model-info cache (kept in the venv) for every architecture in
# tests/fidelity/configs, so later runs skip ~7 s per architecture. Not fatal.
cat >"$SMOKE" <<'EOF'
[{"name": "warm-qwen2", "argv": ["Qwen/Qwen2.5-0.5B-Instruct"]},
 {"name": "warm-mistral", "argv": ["mistralai/Mistral-7B-Instruct-v0.3"]},
 {"name": "warm-eagle", "argv": ["meta-llama/Llama-3.1-8B-Instruct", "--speculative-config",
   "{\"method\": \"eagle\", \"model\": \"yuhuili/EAGLE-LLaMA3.1-Instruct-8B\", \"num_speculative_tokens\": 3}"]},
 {"name": "warm-eagle3", "argv": ["meta-llama/Llama-3.1-8B-Instruct", "--speculative-config",
   "{\"method\": \"eagle3\", \"model\": \"yuhuili/EAGLE3-LLaMA3.1-Instruct-8B\", \"num_speculative_tokens\": 3}"]}]
EOF
log "warming vLLM's model-info cache"
"$VPY" "$FIDELITY/check_args.py" "$SMOKE" >/dev/null 2>&1 || log "warm-up had failures (ignored)"

{
    want_marker
    echo "python=$("$VPY" -c 'import sys; print(sys.version.split()[0])')"
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "build_seconds=$(( $(date +%s) - START ))"
    echo "size=$(du -sh "$VENV" | cut -f1)"
} >"$MARKER"
log "done in $(( $(date +%s) - START ))s, $(du -sh "$VENV" | cut -f1)"
echo "$VPY"
