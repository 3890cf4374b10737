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
# CACHE_DIR (a host directory, bound at /var/lib/ferry-host) keeps the cache,
# the local journals of durability=local volumes and the agent's mount table
# outside the plugin's rootfs, so they outlive `docker plugin rm` and a
# replacement of the plugin.
state=/var/lib/ferry-host/ferry-plugin
mkdir -p "$state/cache" "$state/agent" /mnt/ferry
export FERRY_TOKEN="$TOKEN"
set -- --control "$CONTROL" --host-id "${HOST_ID:-$(hostname)}" --store "$STORE" \
  --cache-dir "$state/cache" --state-dir "$state/agent" --mount-root /mnt/ferry \
  --socket /run/docker/plugins/ferry.sock --docker-host none --managed-plugin
[ -z "${TLS_CA:-}" ] || set -- "$@" --tls-ca "$TLS_CA"
exec /opt/ferry/bin/ferry agent serve "$@"
