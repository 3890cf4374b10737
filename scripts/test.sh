#!/usr/bin/env bash
# THE test command (README, CI): on a fresh Debian 12 machine, as root, with no
# manual steps. Installs what the tests need (Debian packages, a virtualenv at
# ${FERRY_VENV:-.venv} with ferry and its test extras), runs ruff and mypy,
# then pytest over the whole suite: real FUSE mounts, moto_server as S3, the
# file:// store.
#
#   bash scripts/test.sh                  # everything
#   bash scripts/test.sh -k posix -x      # extra arguments go to pytest
#   FERRY_SKIP_CHECKS=1 bash scripts/test.sh -k posix    # without ruff and mypy
#
# Exits 1 if ruff or mypy find anything, else with pytest's exit code. Test files and daemon logs of a failed run are
# kept (the path is printed); a passing run removes them.
set -euo pipefail
cd "$(dirname "$0")/.."

# --- Debian packages (PostgreSQL included), Python >= 3.11, the virtualenv with ferry[test], /dev/fuse
bash scripts/install.sh --tests
VENV=${FERRY_VENV:-.venv}

# --- checks first: lint (ruff) and types (mypy; --strict rules for the pure cores),
# both configured in pyproject.toml. FERRY_SKIP_CHECKS=1 skips them while iterating.
if [ -z "${FERRY_SKIP_CHECKS:-}" ]; then
  "$VENV/bin/ruff" check . || { echo "test.sh: ruff found the problems above (ruff check --fix . repairs many)" >&2; exit 1; }
  "$VENV/bin/mypy" || { echo "test.sh: mypy found the problems above" >&2; exit 1; }
fi

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

# A FUSE daemon stuck in the kernel (D state) ignores every signal, and so does
# a test blocked on its mount: past the limit (FERRY_TEST_TIMEOUT seconds, 75
# min by default, under CI's 90) the watchdog aborts the FUSE connections of
# this run's mounts, which unblocks everything, then stops pytest, so the run
# ends with its output instead of being cut off silently.
[ -n "$(ls -A /sys/fs/fuse/connections 2>/dev/null)" ] || mount -t fusectl none /sys/fs/fuse/connections 2>/dev/null || true
abort_fuse_of_run() {
  awk -v t="$RUN_TMP/" 'index($5, t) == 1 && $0 ~ / - fuse/ { split($3, d, ":"); print d[2] }' /proc/self/mountinfo |
    while read -r minor; do echo 1 > "/sys/fs/fuse/connections/$minor/abort" 2>/dev/null || true; done
}
set +e
TMPDIR="$RUN_TMP" "$VENV/bin/python" -m pytest -rs "$@" &     # -rs: say why each skipped test was skipped
pytest_pid=$!
( trap 'kill "$nap" 2>/dev/null; exit 0' TERM       # leave no sleeping child behind when the suite ends
  sleep "${FERRY_TEST_TIMEOUT:-4500}" & nap=$!
  wait "$nap"
  echo "test.sh: the suite ran longer than ${FERRY_TEST_TIMEOUT:-4500}s; aborting its FUSE mounts and stopping pytest" >&2
  abort_fuse_of_run; kill -TERM "$pytest_pid" 2>/dev/null; sleep 30; abort_fuse_of_run; kill -KILL "$pytest_pid" 2>/dev/null
) &
watchdog=$!
wait "$pytest_pid"
rc=$?
kill "$watchdog" 2>/dev/null
wait "$watchdog" 2>/dev/null
set -e

unmount_leftovers
if [ "$rc" -eq 0 ]; then
  rm -rf --one-file-system "$RUN_TMP"
else
  echo "test.sh: pytest exited with $rc; test files and daemon logs are in $RUN_TMP" >&2
fi
exit "$rc"
