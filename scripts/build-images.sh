#!/usr/bin/env bash
# `make images`: build the containerlab runtime's images qkdtwin/node and qkdtwin/broker.
#
#   1. a Docker engine (scripts/docker-up.sh starts one when needed),
#   2. the base image: $QKDTWIN_BASE when given (e.g. python:3.11-slim-bookworm on hosts that
#      reach a registry); otherwise a local Debian bookworm made with debootstrap and
#      `docker import`, reused when it already exists,
#   3. a wheelhouse built on this host with `pip wheel` (the images install from it with
#      --no-index, so they build without PyPI access),
#   4. `docker build` of images/Dockerfile.node and images/Dockerfile.broker.
#
# Environment: QKDTWIN_BASE (base image), QKDTWIN_DEBIAN_MIRROR, QKDTWIN_IMAGE_TAG (latest),
# QKDTWIN_IMAGE_EXCLUDE (distributions left out of the node image, default "matplotlib ldpc
# scipy ducc0": only the host draws figures, LDPC reconciliation with its ~300 MB of
# dependencies runs on the netns runtime only unless this is changed, and privacy
# amplification falls back from ducc0's FFT (44 MB) to numpy's, same bits, slower), PYTHON (host interpreter for `pip wheel`, default .venv/bin/python).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

LOCAL_BASE=qkdtwin/base:bookworm
# Bump when build_local_base changes: an older local base is then rebuilt, not reused.
BASE_RECIPE=2
BASE=${QKDTWIN_BASE:-$LOCAL_BASE}
TAG=${QKDTWIN_IMAGE_TAG:-latest}
EXCLUDE=${QKDTWIN_IMAGE_EXCLUDE:-matplotlib ldpc scipy ducc0}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
BUILD=$ROOT/build/images
CTX=$BUILD/context
# The legacy builder takes `--network host` without BuildKit entitlements; our dockerd runs
# without a bridge, so RUN steps reach the Debian mirror through the host's network.
export DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0}

say() { echo "images: $*"; }
quiet_pip() { grep -v '^WARNING: Location .* is ignored' >&2 || true; }
quiet_build() { grep -vE 'DEPRECATED: The legacy builder|BuildKit is currently disabled|environment-variable\.$|^$' >&2 || true; }
die() { echo "images: $*" >&2; exit 1; }

[ -x "$PYTHON" ] || die "no Python at $PYTHON (run \`make venv\` first or set PYTHON)"

scripts/docker-up.sh || die "no Docker engine (see above)"

# --- 2. base image ---------------------------------------------------------------------
debian_mirror() {
  if [ -n "${QKDTWIN_DEBIAN_MIRROR:-}" ]; then echo "$QKDTWIN_DEBIAN_MIRROR"; return; fi
  # The host's own mirror for bookworm main (deb822 or one-line sources).
  local uri
  uri=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
          /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | grep -E 'debian/?( |$)' | grep -v security | head -n1 \
        | sed -E 's/^URIs:[[:space:]]*//; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//' \
        | awk '{print $1}')
  echo "${uri:-http://deb.debian.org/debian}"
}

build_local_base() {
  command -v debootstrap >/dev/null || scripts/install-apt.sh debootstrap
  local mirror rootfs
  mirror=$(debian_mirror)
  rootfs=$(mktemp -d "${TMPDIR:-/tmp}/qkdtwin-base.XXXXXX")
  trap 'rm -rf "$rootfs"' RETURN
  say "making $LOCAL_BASE with debootstrap from $mirror (a few minutes, once)"
  debootstrap --variant=minbase --include=python3 bookworm "$rootfs" "$mirror" \
    >"$BUILD/debootstrap.log" 2>&1 || die "debootstrap failed; see $BUILD/debootstrap.log"
  # Image hygiene: no package lists, caches, docs or man pages; apt must not keep .debs.
  # Later apt installs in the Dockerfiles skip them too (dpkg path-exclude).
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
         "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/usr/share/doc/* \
         "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* \
         "$rootfs"/var/log/*.log
  printf 'path-exclude=%s\n' '/usr/share/doc/*' '/usr/share/man/*' '/usr/share/info/*' \
    '/usr/share/locale/*' >"$rootfs/etc/dpkg/dpkg.cfg.d/90qkdtwin-nodoc"
  printf 'deb %s bookworm main\n' "$mirror" >"$rootfs/etc/apt/sources.list"
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
    >"$rootfs/etc/apt/apt.conf.d/90qkdtwin-no-recommends"
  tar -C "$rootfs" --numeric-owner -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    --change "LABEL io.qkdtwin.base-recipe=$BASE_RECIPE" \
    - "$LOCAL_BASE" >/dev/null
}

mkdir -p "$BUILD"
base_recipe() {
  docker image inspect -f '{{ index .Config.Labels "io.qkdtwin.base-recipe" }}' "$1" 2>/dev/null
}
if [ "$BASE" = "$LOCAL_BASE" ] && [ "$(base_recipe "$BASE")" = "$BASE_RECIPE" ]; then
  say "base $BASE present (reused)"
elif [ "$BASE" != "$LOCAL_BASE" ] && docker image inspect "$BASE" >/dev/null 2>&1; then
  say "base $BASE present"
elif [ "$BASE" = "$LOCAL_BASE" ]; then
  build_local_base
else
  say "pulling base $BASE"
  docker pull "$BASE" >/dev/null || die "cannot pull $BASE; unset QKDTWIN_BASE to build \
the local base $LOCAL_BASE with debootstrap instead"
fi

# The wheels are built for the host's Python; the base must run the same minor version.
host_py=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
base_py=$(docker run --rm --network none "$BASE" python3 -c \
  'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) \
  || die "base $BASE has no python3"
[ "$host_py" = "$base_py" ] || die "base $BASE has Python $base_py but the wheelhouse is \
built with Python $host_py ($PYTHON); use a base with Python $host_py or set PYTHON"

# --- 3. wheelhouse ---------------------------------------------------------------------
say "wheelhouse (pip wheel on the host)"
rm -rf "$CTX"
mkdir -p "$CTX/wheels" "$BUILD/wheels"
"$PYTHON" - "$EXCLUDE" >"$CTX/requirements.txt" <<'EOF'
import re, sys, tomllib
exclude = {re.sub(r"[-_.]+", "-", n).lower() for n in sys.argv[1].replace(",", " ").split()}
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
for d in deps:
    name = re.split(r"[\s<>=!~;\[(]", d, maxsplit=1)[0]
    if re.sub(r"[-_.]+", "-", name).lower() not in exclude:
        print(d)
EOF
# $BUILD/wheels is a cache across runs; the qkdtwin wheel is always rebuilt (same version,
# new code).
rm -f "$BUILD"/wheels/qkdtwin-*.whl
# The cache alone first (offline, fast); the package index only for what it lacks.
"$PYTHON" -m pip wheel -q --no-index --wheel-dir "$BUILD/wheels" --find-links "$BUILD/wheels" \
  -r "$CTX/requirements.txt" pip >/dev/null 2>&1 \
|| "$PYTHON" -m pip wheel -q --wheel-dir "$BUILD/wheels" --find-links "$BUILD/wheels" \
  -r "$CTX/requirements.txt" pip 2> >(quiet_pip) \
|| die "pip wheel failed (no package index and no cached wheels?)"
# setuptools builds in build/lib and never removes files deleted from src/: start clean.
rm -rf "$ROOT/build/lib" "$ROOT"/build/bdist.*
# A fixed timestamp makes the wheel byte-identical while the sources are, so Docker's layer
# cache holds and an unchanged tree rebuilds in seconds.
SOURCE_DATE_EPOCH=315532800 \
"$PYTHON" -m pip wheel -q --no-deps --wheel-dir "$BUILD/wheels" "$ROOT" 2> >(quiet_pip) \
  || die "cannot build the qkdtwin wheel"
# Only what the requirements need (plus pip) goes into the build context.
"$PYTHON" -m pip download -q --no-index --find-links "$BUILD/wheels" \
  --dest "$CTX/wheels" -r "$CTX/requirements.txt" pip 2> >(quiet_pip) \
  || die "wheelhouse incomplete"
cp "$BUILD"/wheels/qkdtwin-*.whl "$CTX/wheels/"
say "wheelhouse: $(ls "$CTX/wheels" | wc -l) wheels, $(du -sh "$CTX/wheels" | cut -f1)"

# --- 4. images -------------------------------------------------------------------------
say "building qkdtwin/node:$TAG from $BASE"
# The venv stage is tagged too: an untagged stage would be pruned below and lose its cache.
docker build -q --force-rm --network host --build-arg "BASE=$BASE" -f images/Dockerfile.node \
  --target venv -t "qkdtwin/node-venv:$TAG" "$CTX" >/dev/null 2> >(quiet_build)
docker build -q --force-rm --network host --build-arg "BASE=$BASE" -f images/Dockerfile.node \
  -t "qkdtwin/node:$TAG" "$CTX" >/dev/null 2> >(quiet_build)
say "building qkdtwin/broker:$TAG"
docker build -q --force-rm --network host --build-arg "NODE_IMAGE=qkdtwin/node:$TAG" \
  -f images/Dockerfile.broker -t "qkdtwin/broker:$TAG" "$CTX" >/dev/null 2> >(quiet_build)
# Superseded images and build stages of earlier runs (untagged, ours only).
docker image prune -f --filter label=io.qkdtwin.build=1 >/dev/null
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' \
  | grep -E "^(qkdtwin/(node|broker):$TAG|$BASE) " | sed 's/^/images: /'
