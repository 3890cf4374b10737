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
# Looks at the installed source, not `import pyfuse3`: that needs trio, which a fresh
# virtualenv does not have yet (scripts/install.sh installs pyfuse3 before ferry).
has_fallocate='import importlib.util as u, pathlib, sys
s = u.find_spec("pyfuse3")
f = pathlib.Path(s.submodule_search_locations[0], "_pyfuse3.py") if s and s.submodule_search_locations else None
sys.exit(0 if f and f.exists() and "def fallocate" in f.read_text() else 1)'
if "$PY" -c "$has_fallocate" 2>/dev/null; then
  exit 0
fi
echo "deploy/pyfuse3: building pyfuse3 $VERSION with fallocate (about 20 seconds)" >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# --no-binary for pyfuse3 alone: `:all:` would also build its build dependencies
# (Cython, setuptools) from source, which took minutes.
"$PY" -m pip download -q --no-deps --no-binary pyfuse3 "pyfuse3==$VERSION" -d "$work" 2>/dev/null
tar -xzf "$work/pyfuse3-$VERSION.tar.gz" -C "$work"
patch -s -d "$work/pyfuse3-$VERSION" -p1 < fallocate.patch
"$PY" -m pip install -q --no-deps --force-reinstall "$work/pyfuse3-$VERSION"
"$PY" -c "$has_fallocate" || { echo "deploy/pyfuse3: the installed pyfuse3 has no fallocate" >&2; exit 1; }
