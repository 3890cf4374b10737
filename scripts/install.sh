#!/usr/bin/env bash
# Install everything ferry and its tests need on Debian 12, as root; idempotent and quick when done.
# apt: fuse3 libfuse3-dev pkg-config python3-venv python3-dev gcc patch attr fio psmisc util-linux e2fsprogs
# xfsprogs (block volumes: losetup, mkfs.ext4, mkfs.xfs); with --tests also
# iproute2 util-linux docker.io busybox-static (multi-host and Docker tests) etcd-server (the etcd state
# backend's tests: a real etcd cluster on loopback) postgresql (PostgreSQL under kill -9 on a ferry
# volume: a short round in every run, long ones under -m slow) chromium (the status page is tested in a
# real headless browser) mmdebstrap (the managed plugin's rootfs: scripts/build-plugin.sh); $FERRY_APT_EXTRA: more Debian packages to install in the same apt run.
# Virtualenv at ${FERRY_VENV:-.venv} with ferry (editable) and, with --tests, its test extras;
# skipped when a stamp in the virtualenv says this pyproject.toml is installed already.
# --slow is kept for old callers and adds nothing now.
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS="fuse3 libfuse3-dev pkg-config python3-venv python3-dev gcc patch attr fio psmisc util-linux e2fsprogs xfsprogs"
EXTRAS=""
for arg in "$@"; do
  case "$arg" in
    --tests) EXTRAS="[test]"; PKGS="$PKGS iproute2 util-linux docker.io busybox-static etcd-server postgresql postgresql-contrib chromium mmdebstrap" ;;
    --slow) ;;
    *) echo "install.sh: unknown option $arg (known: --tests, --slow)" >&2; exit 2 ;;
  esac
done
PKGS="$PKGS ${FERRY_APT_EXTRA:-}"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  echo "installing Debian packages:$missing"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true
python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
  echo "install.sh: ferry needs python3 >= 3.11 on PATH (found $(python3 -V 2>&1))" >&2
  exit 1
}
VENV=${FERRY_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "install.sh: creating virtualenv $VENV" >&2
  python3 -m venv "$VENV"
fi
# The stamp names what was installed: pyproject.toml's hash, this checkout, the extras.
# A runtime-only install is satisfied by an install with the test extras.
stamp="$VENV/.ferry-installed"
base="$(sha256sum pyproject.toml | cut -c1-16) $(pwd)"
have=$(cat "$stamp" 2>/dev/null || true)
if [ "$have" = "$base $EXTRAS" ] || { [ -z "$EXTRAS" ] && [ "$have" = "$base [test]" ]; }; then
  exit 0
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# pyfuse3 first, with a FUSE fallocate handler, so block volumes can turn discards into
# holes (deploy/pyfuse3); ferry's own install then finds its pyfuse3 requirement met
# instead of building the unpatched one too.
bash deploy/pyfuse3/install.sh "$(cd "$VENV" && pwd)"
"$VENV/bin/python" -m pip install -q -e ".$EXTRAS"
echo "$base $EXTRAS" > "$stamp"
