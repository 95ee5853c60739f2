#!/usr/bin/env bash
# Prints a folder holding `prometheus` and `promtool` (Debian bookworm's package, 2.42), fetched
# once with apt-get download + dpkg -x into the cache; nothing is installed system-wide.
# PROMETHEUS_BIN_DIR, when set and holding both binaries, is used as is.
set -euo pipefail
if [[ -n "${PROMETHEUS_BIN_DIR:-}" && -x "$PROMETHEUS_BIN_DIR/prometheus" && -x "$PROMETHEUS_BIN_DIR/promtool" ]]; then
  echo "$PROMETHEUS_BIN_DIR"
  exit 0
fi
if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  dirname "$(command -v prometheus)"
  exit 0
fi
cache="${SPECPILOT_CACHE:-$HOME/.cache/specpilot}/prometheus"
bin="$cache/root/usr/bin"
if [[ ! -f "$cache/.complete" ]]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && { apt-get download prometheus >/dev/null 2>&1 || { apt-get update -qq >&2 && apt-get download prometheus >&2; }; })
  rm -rf "$cache" && mkdir -p "$cache/root"
  dpkg -x "$tmp"/prometheus_*.deb "$cache/root"
  "$bin/prometheus" --version >&2
  touch "$cache/.complete"
fi
echo "$bin"
