#!/bin/sh
# The managed plugin's entry point (scripts/build-plugin.sh puts it at
# /opt/ferry/entrypoint.sh in the plugin's rootfs). Docker passes the
# settings of `docker plugin set` as environment; this turns them into a
# `ferry agent serve` that serves the plugin socket Docker expects.
set -eu
missing=""
for v in CONTROL STORE TOKEN; do
  eval "val=\${$v:-}"
  [ -n "$val" ] || missing="$missing $v"
done
if [ -n "$missing" ]; then
  echo "ferry plugin: set$missing first: docker plugin set ferry:TAG CONTROL=HOST:PORT STORE=s3://... TOKEN=..." >&2
  exit 2
fi
mkdir -p /var/lib/ferry/cache /var/lib/ferry/agent /mnt/ferry
export FERRY_TOKEN="$TOKEN"
set -- --control "$CONTROL" --host-id "${HOST_ID:-$(hostname)}" --store "$STORE" \
  --cache-dir /var/lib/ferry/cache --state-dir /var/lib/ferry/agent --mount-root /mnt/ferry \
  --socket /run/docker/plugins/ferry.sock --docker-host none
[ -z "${TLS_CA:-}" ] || set -- "$@" --tls-ca "$TLS_CA"
exec /opt/ferry/bin/ferry agent serve "$@"
