#!/bin/sh
# Install what bench/run.py needs besides the ferry virtualenv: fio, the peers
# (s3fs-fuse, rclone, s3backer), e2fsprogs (mkfs.ext4 for s3backer) and fuse3.
# Idempotent: installs only what is missing; Debian 12, as root.
#
# moto[server] and boto3 come from the virtualenv that runs the harness
# (scripts/test.sh installs them into .venv; /opt/ferry-venv has them too).
set -eu

PKGS="fio s3fs rclone s3backer e2fsprogs fuse3 util-linux"

if [ "$(id -u)" -ne 0 ]; then
    echo "install-peers.sh: run as root (apt-get install)" >&2
    exit 1
fi

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done

if [ -z "$missing" ]; then
    echo "install-peers.sh: all present ($PKGS)"
else
    echo "install-peers.sh: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing
fi

for t in fio s3fs rclone s3backer mkfs.ext4 fusermount3 losetup; do
    command -v "$t" >/dev/null 2>&1 || { echo "install-peers.sh: $t still missing" >&2; exit 1; }
done
[ -e /dev/fuse ] || { echo "install-peers.sh: /dev/fuse is missing (modprobe fuse)" >&2; exit 1; }
echo "install-peers.sh: ok"
