#!/usr/bin/env bash
# The test command (README): installs everything the tests need on a fresh
# Debian 12 machine as root (apt packages, a virtualenv, pip packages), then
# runs the whole suite with pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
VENV=${FERRY_VENV:-.venv}
set +e
"$VENV/bin/python" -m pytest "$@"
rc=$?
# Never leave a FUSE mount behind, even if a test's cleanup failed.
grep -E ' fuse\.ferry ' /proc/mounts | awk '{print $2}' | while read -r m; do fusermount3 -u -z "$m" || true; done
exit $rc
