#!/usr/bin/env bash
# THE test command (README, CI): on a fresh Debian 12 machine, as root, with no
# manual steps. Installs what the tests need (Debian packages, a virtualenv at
# ${FERRY_VENV:-.venv} with ferry and its test extras), then runs pytest over
# the whole suite: real FUSE mounts, moto_server as S3, the file:// store.
#
#   bash scripts/test.sh                  # everything
#   bash scripts/test.sh -k posix -x      # extra arguments go to pytest
#
# Exits with pytest's exit code. Test files and daemon logs of a failed run are
# kept (the path is printed); a passing run removes them.
set -euo pipefail
cd "$(dirname "$0")/.."

# --- Debian packages, Python >= 3.11, the virtualenv with ferry[test], /dev/fuse
# (PostgreSQL too when the slow tests are asked for: -m slow, --run-slow, FERRY_RUN_SLOW=1)
extra=""
case " $* ${FERRY_RUN_SLOW:+--run-slow} " in *slow*) extra="--slow" ;; esac
bash scripts/install.sh --tests $extra
VENV=${FERRY_VENV:-.venv}

# --- run pytest with a private temp dir, and never leave a mount behind
RUN_TMP=$(mktemp -d "${TMPDIR:-/tmp}/ferry-tests.XXXXXX")
chmod 755 "$RUN_TMP"          # some tests act as another uid on their mounts

unmount_leftovers() {
  local mp dev
  # block volumes first: their kernel filesystem, then the loop device on a ferry image
  awk '$3 == "ext4" || $3 == "xfs" { print $2 }' /proc/mounts | while read -r mp; do
    case "$mp" in
      "$RUN_TMP"/*) echo "test.sh: unmounting leftover $mp" >&2; umount -l "$mp" 2>/dev/null || true ;;
    esac
  done
  for dev in /sys/block/loop*; do
    case "$(cat "$dev/loop/backing_file" 2>/dev/null)" in
      "$RUN_TMP"/*) echo "test.sh: detaching leftover /dev/${dev##*/}" >&2; losetup -d "/dev/${dev##*/}" || true ;;
    esac
  done
  awk '$3 ~ /^fuse/ { print $2 }' /proc/mounts | while read -r mp; do
    case "$mp" in
      "$RUN_TMP"/*) echo "test.sh: unmounting leftover $mp" >&2; fusermount3 -u -z "$mp" 2>/dev/null || true ;;
    esac
  done
}
trap unmount_leftovers EXIT

set +e
TMPDIR="$RUN_TMP" "$VENV/bin/python" -m pytest "$@"
rc=$?
set -e

unmount_leftovers
if [ "$rc" -eq 0 ]; then
  rm -rf --one-file-system "$RUN_TMP"
else
  echo "test.sh: pytest exited with $rc; test files and daemon logs are in $RUN_TMP" >&2
fi
exit "$rc"
