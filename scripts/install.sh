#!/usr/bin/env bash
# Install everything ferry and its tests need on Debian 12, as root; idempotent and quick when done.
# apt: fuse3 libfuse3-dev pkg-config python3-venv python3-dev gcc patch attr fio psmisc util-linux e2fsprogs
# xfsprogs (block volumes: losetup, mkfs.ext4, mkfs.xfs); with --tests also
# iproute2 util-linux docker.io busybox-static (multi-host and Docker tests) etcd-server (the etcd state
# backend's tests: a real etcd cluster on loopback) postgresql (PostgreSQL under kill -9 on a ferry
# volume: a short round in every run, long ones under -m slow) chromium (the status page is tested in a
# real headless browser); virtualenv at ${FERRY_VENV:-.venv}.
# --slow is kept for old callers and adds nothing now.
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS="fuse3 libfuse3-dev pkg-config python3-venv python3-dev gcc patch attr fio psmisc util-linux e2fsprogs xfsprogs"
for arg in "$@"; do
  case "$arg" in
    --tests) PKGS="$PKGS iproute2 util-linux docker.io busybox-static etcd-server postgresql postgresql-contrib chromium" ;;
    --slow) ;;
    *) echo "install.sh: unknown option $arg (known: --tests, --slow)" >&2; exit 2 ;;
  esac
done
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
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
"$VENV/bin/python" -m pip install -q -e ".${FERRY_EXTRAS:-[test]}"
# pyfuse3 with a FUSE fallocate handler, so block volumes can turn discards into holes (deploy/pyfuse3)
bash deploy/pyfuse3/install.sh "$(cd "$VENV" && pwd)"
