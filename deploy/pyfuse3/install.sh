#!/usr/bin/env bash
# pyfuse3 with FUSE fallocate: build pyfuse3 from its sdist with fallocate.patch
# and install it into the virtualenv given as $1 (default .venv).
#
# Why: block volumes (docs/block.md) turn the kernel filesystem's discards
# (fstrim, -o discard) into holes in the ferry image, so GC can free what the
# kernel filesystem no longer uses. The loop driver sends a discard as
# fallocate(PUNCH_HOLE) on the image; pyfuse3 3.5 has no fallocate handler
# (the kernel then answers EOPNOTSUPP). The patch adds the handler and an
# `Operations.fallocate` that defaults to ENOSYS, nothing else.
# Idempotent: does nothing when the installed pyfuse3 has `fallocate`.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${1:-../../.venv}
PY="$VENV/bin/python"
VERSION=3.5.0
if "$PY" -c 'import sys, pyfuse3; sys.exit(0 if hasattr(pyfuse3.Operations, "fallocate") else 1)' 2>/dev/null; then
  exit 0
fi
echo "deploy/pyfuse3: building pyfuse3 $VERSION with fallocate (about a minute)" >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" -m pip download -q --no-deps --no-binary :all: "pyfuse3==$VERSION" -d "$work" 2>/dev/null
tar -xzf "$work/pyfuse3-$VERSION.tar.gz" -C "$work"
patch -s -d "$work/pyfuse3-$VERSION" -p1 < fallocate.patch
"$PY" -m pip install -q --no-deps --force-reinstall "$work/pyfuse3-$VERSION"
"$PY" -c 'import pyfuse3; assert hasattr(pyfuse3.Operations, "fallocate")'
