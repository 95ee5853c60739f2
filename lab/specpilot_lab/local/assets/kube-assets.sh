#!/usr/bin/env bash
# Provide a folder holding `etcd` and `kube-apiserver` for the integration-test control plane
# (the KUBEBUILDER_ASSETS convention of controller-runtime's envtest).
#
#   scripts/kube-assets.sh            # prints the folder as the last line on stdout; logs on stderr
#
# 1. If KUBEBUILDER_ASSETS names a folder with executable etcd and kube-apiserver, that folder is used.
# 2. Otherwise "${SPECPILOT_CACHE:-$HOME/.cache/specpilot}/kube-assets/1.20.2/" is filled once:
#    - etcd: Debian bookworm's etcd-server (apt-get download + dpkg -x, nothing installed),
#    - kube-apiserver: built from Debian bookworm's `kubernetes` source package (the upstream
#      v1.20.2 tree with vendor/) with Debian's Go 1.19 (apt-get download + dpkg -x), by upstream's
#      `make WHAT=cmd/kube-apiserver`. vendor/github.com/modern-go/reflect2 (1.0.1) is replaced by
#      Debian's 1.0.2 sources: with 1.0.1, a server built by Go >= 1.18 crashes on the first
#      custom-object write ("fatal error: fault" in mapiterinit/aeshashbody). The OpenAPI
#      validator's zero-value check is dropped as upstream did (kubernetes/kube-openapi#230):
#      with Go >= 1.16 it rejects every "" in custom objects and CRD defaults as null.
#    apt reads a private sources list and private index folder; /etc/apt is never modified.
#    The build happens in a temporary folder next to the cache and is moved into place with a
#    marker file only when complete, so an interrupted build is redone, never half-used.
#    A cold build takes about 6-10 minutes on 2 cores and needs about 3 GB of temporary disk.
#
# Environment: KUBEBUILDER_ASSETS, SPECPILOT_CACHE, SPECPILOT_DEBIAN_MIRROR (default
# http://deb.debian.org/debian), SPECPILOT_KEEP_BUILD=1 (keep the build folder on failure).
set -euo pipefail

# Everything this script and its children print goes to stderr; only the result goes to stdout.
exec 3>&1 1>&2

K8S_VERSION=1.20.2
K8S_COMMIT=faecb196815e248d3ecfb03c680a4507229c2a56 # upstream v1.20.2 (version info only)
# Bump when the build recipe changes: a cache built by an older recipe is rebuilt.
RECIPE=2
DEBIAN_SUITE=bookworm
MIRROR=${SPECPILOT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

log() { echo "kube-assets: $*"; }
die() {
  echo "kube-assets: error: $*"
  exit 1
}
have_assets() { [[ -x "$1/etcd" && -x "$1/kube-apiserver" ]]; }
result() {
  echo "$1" >&3
  exit 0
}

if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
  if have_assets "$KUBEBUILDER_ASSETS"; then
    result "$(cd "$KUBEBUILDER_ASSETS" && pwd)"
  fi
  log "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks an executable etcd or kube-apiserver; using the cache"
fi

CACHE=${SPECPILOT_CACHE:-$HOME/.cache/specpilot}/kube-assets
DEST=$CACHE/$K8S_VERSION
MARKER=$DEST/.complete-recipe-$RECIPE

if [[ -f "$MARKER" ]] && have_assets "$DEST"; then
  result "$DEST"
fi

mkdir -p "$CACHE"
# One builder at a time (parallel test sessions); the others wait and then reuse its result.
exec 9>"$CACHE/.lock"
if ! flock -n 9; then
  log "another kube-assets build holds $CACHE/.lock; waiting for it"
  flock 9
fi
if [[ -f "$MARKER" ]] && have_assets "$DEST"; then
  result "$DEST"
fi

# We hold the lock: anything half-done lying around is from an interrupted run.
rm -rf "$CACHE"/.build-* "$CACHE"/.stage-*
if [[ -e "$DEST" ]]; then
  log "removing $DEST (incomplete, or built by an older recipe)"
  rm -rf "$DEST"
fi

if [[ $(id -u) -ne 0 ]] && ! { command -v make && command -v rsync; } >/dev/null; then
  die "make and rsync are needed and installing them needs root"
fi
arch=$(dpkg --print-architecture)
start=$(date +%s)
log "building etcd + kube-apiserver $K8S_VERSION into $DEST (cold build: about 6-10 minutes)"

WORK=$(mktemp -d "$CACHE/.build-XXXXXX")
STAGE=$(mktemp -d "$CACHE/.stage-XXXXXX")
cleanup() {
  local rc=$?
  if [[ $rc -ne 0 && "${SPECPILOT_KEEP_BUILD:-}" == 1 ]]; then
    log "build failed; kept $WORK for inspection"
  else
    chmod -R u+w "$WORK" 2>/dev/null || true # Go makes its module cache read-only
    rm -rf "$WORK"
  fi
  rm -rf "$STAGE"
}
trap cleanup EXIT

# --- tools: make and rsync are used by upstream's build scripts ---------------------------------
missing=()
for tool in make rsync; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if ((${#missing[@]})); then
  log "installing ${missing[*]} with apt-get"
  apt_install=(apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=600 "${missing[@]}")
  DEBIAN_FRONTEND=noninteractive "${apt_install[@]}" ||
    { apt-get update -q -o DPkg::Lock::Timeout=600 && DEBIAN_FRONTEND=noninteractive "${apt_install[@]}"; }
fi

# --- private apt configuration: binary and source indexes for bookworm, outside /etc/apt --------
APT_DIR=$WORK/apt
mkdir -p "$APT_DIR"/lists/partial "$APT_DIR"/cache/archives/partial "$APT_DIR"/sources.list.d
cat >"$APT_DIR/sources.list" <<EOF
deb [signed-by=$KEYRING] $MIRROR $DEBIAN_SUITE main
deb-src [signed-by=$KEYRING] $MIRROR $DEBIAN_SUITE main
EOF
APT=(apt-get -q
  -o Dir::Etc::SourceList="$APT_DIR/sources.list"
  -o Dir::Etc::SourceParts="$APT_DIR/sources.list.d"
  -o Dir::State::Lists="$APT_DIR/lists"
  -o Dir::Cache="$APT_DIR/cache"
  -o APT::Sandbox::User=root)
log "apt-get update (private list: $APT_DIR/sources.list)"
"${APT[@]}" update

DL=$WORK/dl
mkdir -p "$DL"
log "downloading etcd-server, golang-1.19-go, golang-1.19-src, golang-github-modern-go-reflect2-dev"
(cd "$DL" && "${APT[@]}" download etcd-server golang-1.19-go golang-1.19-src \
  golang-github-modern-go-reflect2-dev)
log "downloading the kubernetes source package"
(cd "$DL" && "${APT[@]}" source --download-only kubernetes)
orig=$(ls "$DL"/kubernetes_*.orig.tar.* 2>/dev/null | head -n1 || true)
[[ -n "$orig" ]] || die "no kubernetes orig tarball downloaded"
[[ "$orig" == *"really$K8S_VERSION.orig"* ]] || die "unexpected kubernetes source $(basename "$orig") (want ...really$K8S_VERSION)"

ROOT=$WORK/root # the unpacked .debs
for deb in "$DL"/*.deb; do dpkg -x "$deb" "$ROOT"; done
deb_version() { dpkg-deb -f "$(ls "$DL/${1}"_*.deb)" Version; }
GO_DEB_VERSION=$(deb_version golang-1.19-go)
REFLECT2_DEB_VERSION=$(deb_version golang-github-modern-go-reflect2-dev)
ETCD_DEB_VERSION=$(deb_version etcd-server)

# --- etcd ----------------------------------------------------------------------------------------
install -m 0755 "$ROOT/usr/bin/etcd" "$STAGE/etcd"

# --- Go toolchain (no system install) ------------------------------------------------------------
export GOROOT=$ROOT/usr/lib/go-1.19
if [[ ! -d "$GOROOT/src/runtime" ]]; then # src is a symlink into /usr/share/go-1.19
  rm -rf "$GOROOT/src"
  ln -s "$ROOT/usr/share/go-1.19/src" "$GOROOT/src"
fi
"$GOROOT/bin/go" version

# --- kubernetes source tree ----------------------------------------------------------------------
TREE=$WORK/kubernetes
mkdir -p "$TREE"
log "unpacking $(basename "$orig")"
tar -xf "$orig" -C "$TREE" --strip-components=1
[[ -f "$TREE/cmd/kube-apiserver/apiserver.go" && -d "$TREE/vendor" ]] ||
  die "$(basename "$orig") does not hold the upstream tree with vendor/"
rm -rf "$DL" # 150 MB of archives no longer needed

R2=$ROOT/usr/share/gocode/src/github.com/modern-go/reflect2
[[ -f "$R2/reflect2.go" ]] || die "reflect2 sources not found in golang-github-modern-go-reflect2-dev"
log "replacing vendor/github.com/modern-go/reflect2 with Debian's $REFLECT2_DEB_VERSION"
rm -rf "$TREE/vendor/github.com/modern-go/reflect2"
mkdir -p "$TREE/vendor/github.com/modern-go/reflect2"
cp -rL "$R2"/. "$TREE/vendor/github.com/modern-go/reflect2/"
find "$TREE/vendor/github.com/modern-go/reflect2" -name '*_test.go' -delete

# Go >= 1.16: reflect.Zero shares one zero buffer, so the OpenAPI type validator's zero check
# (reflect.DeepEqual of two reflect.Values) starts matching "" and the server rejects every empty
# string in a custom object or CRD default with 'must be of type string: "null"'. Upstream dropped
# the check (kubernetes/kube-openapi#230, Kubernetes 1.21); do the same.
zero_check='if data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {'
for f in "$TREE/vendor/k8s.io/kube-openapi/pkg/validation/validate/type.go" \
  "$TREE/vendor/github.com/go-openapi/validate/type.go"; do
  grep -qF "$zero_check" "$f" || die "expected zero-value check not found in $f"
  sed -i 's/if data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {/if data == nil {/' "$f"
  ! grep -qF "reflect.DeepEqual(reflect.Zero" "$f" || die "could not patch $f"
done
log "patched the OpenAPI validator's empty-string check (kube-openapi#230)"

# --- build ---------------------------------------------------------------------------------------
cat >"$WORK/version.env" <<EOF
KUBE_GIT_COMMIT='$K8S_COMMIT'
KUBE_GIT_TREE_STATE='clean'
KUBE_GIT_VERSION='v$K8S_VERSION'
KUBE_GIT_MAJOR='1'
KUBE_GIT_MINOR='20'
EOF
mkdir -p "$TREE/.go/src/k8s.io"
ln -s "$TREE" "$TREE/.go/src/k8s.io/kubernetes"
log "make WHAT=cmd/kube-apiserver (GOPATH mode, Go $("$GOROOT/bin/go" env GOVERSION))"
(
  cd "$TREE/.go/src/k8s.io/kubernetes"
  env PATH="$GOROOT/bin:$PATH" GOROOT="$GOROOT" GOPATH="$TREE/.go" GO111MODULE=off \
    GOFLAGS= GOPROXY=off GOTOOLCHAIN=local CGO_ENABLED=0 GOCACHE="$WORK/gocache" \
    KUBE_GIT_VERSION_FILE="$WORK/version.env" KUBE_VERBOSE="${KUBE_VERBOSE:-1}" \
    make WHAT=cmd/kube-apiserver
)
bin=$TREE/_output/local/bin/linux/$arch/kube-apiserver
[[ -x "$bin" ]] || bin=$TREE/_output/bin/kube-apiserver
[[ -x "$bin" ]] || die "make finished but no kube-apiserver binary was found under $TREE/_output"
install -m 0755 "$bin" "$STAGE/kube-apiserver"

"$STAGE/kube-apiserver" --version
"$STAGE/etcd" --version

# --- move into place -----------------------------------------------------------------------------
log "removing the build tree"
chmod -R u+w "$WORK" 2>/dev/null || true
rm -rf "$WORK"
elapsed=$(($(date +%s) - start))
cat >"$STAGE/VERSION" <<EOF
kube-apiserver $("$STAGE/kube-apiserver" --version | awk '{print $2}') built from Debian $DEBIAN_SUITE kubernetes source $(basename "$orig")
  with Debian golang-1.19-go $GO_DEB_VERSION, vendor/github.com/modern-go/reflect2 from Debian golang-github-modern-go-reflect2-dev $REFLECT2_DEB_VERSION
etcd $("$STAGE/etcd" --version | awk '/etcd Version/ {print $3}') from Debian $DEBIAN_SUITE etcd-server $ETCD_DEB_VERSION
patched: vendor/k8s.io/kube-openapi + go-openapi validate type.go empty-string check (kube-openapi#230)
built $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m) in ${elapsed}s (recipe $RECIPE)
EOF
touch "$STAGE/${MARKER##*/}"
chmod 0755 "$STAGE"
mv "$STAGE" "$DEST"
log "done in ${elapsed}s: $DEST"
result "$DEST"
