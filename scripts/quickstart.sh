#!/usr/bin/env bash
# Run ferry for real on this machine: a volume on a file:// store, mounted and usable.
# Usage (as root on Debian 12): bash scripts/quickstart.sh [MOUNTPOINT]
# Installs what it needs (apt: fuse3, libfuse3-dev, pkg-config, python3-venv; a virtualenv in .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
MNT=${1:-/mnt/ferry-demo}
STORE_DIR=${FERRY_STORE_DIR:-/var/lib/ferry/store}
CACHE_DIR=${FERRY_CACHE_DIR:-/var/cache/ferry/demo}
VOL=${FERRY_VOLUME:-demo}

bash scripts/install.sh
FERRY="$(pwd)/${FERRY_VENV:-.venv}/bin/ferry"

mkdir -p "$STORE_DIR" "$MNT" "$CACHE_DIR"
if ! $FERRY fs inspect --store "file://$STORE_DIR" "$VOL" >/dev/null 2>&1; then
  $FERRY fs mkfs --store "file://$STORE_DIR" "$VOL"
fi
if mountpoint -q "$MNT"; then
  echo "$MNT is already mounted"
else
  $FERRY fs mount --store "file://$STORE_DIR" --cache-dir "$CACHE_DIR" "$VOL" "$MNT"
fi
echo "hello from ferry" > "$MNT/hello.txt"
sync "$MNT/hello.txt"
cat "$MNT/hello.txt"
$FERRY fs inspect --store "file://$STORE_DIR" "$VOL"
cat <<TXT

ferry volume '$VOL' is mounted on $MNT (store file://$STORE_DIR, cache $CACHE_DIR).
  use it:      ls -l $MNT
  unmount:     $FERRY fs umount $MNT        (commits everything and releases the volume)
  check it:    $FERRY fs fsck --store file://$STORE_DIR $VOL
TXT
