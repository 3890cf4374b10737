#!/usr/bin/env bash
# Build ferry as a Docker managed plugin from this checkout (docs/plugin.md).
#
#   bash scripts/build-plugin.sh DIR            # DIR/config.json + DIR/rootfs
#   docker plugin create ferry:0.1.0 DIR        # then: docker plugin set ..., docker plugin enable
#
# As root, on Debian 12 (what scripts/install.sh sets up), with Debian's
# mirror and PyPI reachable; no registry needed. The rootfs is a minimal
# Debian 12 (mmdebstrap) with python3, fuse3 and the tools block volumes
# use, plus a virtualenv at /opt/ferry holding ferry and its dependencies,
# installed from wheels built here (pyfuse3 has no binary wheel): so the
# host's Python must be the rootfs's, 3.11.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$(pwd)
OUT=${1:?usage: build-plugin.sh DIR (created; must not exist or be empty)}
if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT" 2>/dev/null)" ]; then
  echo "build-plugin.sh: $OUT exists and is not empty; give a new directory" >&2; exit 2
fi
PY=${FERRY_VENV:-.venv}/bin/python
[ -x "$PY" ] || { echo "build-plugin.sh: no virtualenv at ${FERRY_VENV:-.venv}: run scripts/install.sh first" >&2; exit 2; }
"$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' || {
  echo "build-plugin.sh: the plugin's rootfs is Debian 12 (Python 3.11); the wheels built here must match, but $PY is $("$PY" -V 2>&1)" >&2
  exit 2
}
command -v mmdebstrap >/dev/null || {
  echo "build-plugin.sh: mmdebstrap missing: apt-get install mmdebstrap (scripts/install.sh --tests does)" >&2; exit 2; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

echo "build-plugin.sh: [1/4] wheels of ferry and its dependencies" >&2
# From a copy of the tracked files, so the build leaves nothing in the checkout.
git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$WORK" --one-top-level=src
"$PY" -m pip wheel -q -w "$WORK/wheels" "$WORK/src" >&2

echo "build-plugin.sh: [2/4] Debian 12 rootfs (mmdebstrap)" >&2
mmdebstrap --quiet --variant=apt \
  --include=python3,python3-venv,fuse3,libfuse3-3,ca-certificates,e2fsprogs,xfsprogs,util-linux,mount \
  bookworm "$OUT/rootfs" >&2

echo "build-plugin.sh: [3/4] the virtualenv /opt/ferry" >&2
mkdir -p "$OUT/rootfs/tmp/wheels"
cp "$WORK"/wheels/*.whl "$OUT/rootfs/tmp/wheels/"
chroot "$OUT/rootfs" sh -c 'python3 -m venv /opt/ferry &&
  PIP_CONFIG_FILE=/dev/null /opt/ferry/bin/pip install -q --no-index --find-links /tmp/wheels ferry &&
  rm -rf /tmp/wheels /root/.cache' >&2
install -m 0755 deploy/plugin/entrypoint.sh "$OUT/rootfs/opt/ferry/entrypoint.sh"
# Slimmer: apt's lists and caches are not needed at run time.
rm -rf "$OUT/rootfs/var/lib/apt/lists"/* "$OUT/rootfs/var/cache/apt"/*

echo "build-plugin.sh: [4/4] config.json" >&2
cp deploy/plugin/config.json "$OUT/config.json"
VERSION=$("$PY" -c 'import importlib.metadata as m; print(m.version("ferry"))' 2>/dev/null || echo dev)
echo "built $OUT ($(du -sh "$OUT" | cut -f1)); next:"
echo "  docker plugin create ferry:$VERSION $OUT"
echo "  docker plugin set ferry:$VERSION CONTROL=HOST:PORT STORE=s3://BUCKET?endpoint=URL TOKEN=... AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=..."
echo "  docker plugin enable ferry:$VERSION"
