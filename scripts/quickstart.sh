#!/usr/bin/env bash
# ferry's real job on one machine, in one command: a Docker volume whose data lives
# in object storage, written by one container and read by another.
#
#   bash scripts/quickstart.sh          # install, start the services, run the demo
#   bash scripts/quickstart.sh --down   # stop and remove what it started (data stays)
#   bash scripts/quickstart.sh --down --purge   # ... and delete the demo's store and state
#
# As root on Debian 12. What it does, each step once (run it again: it says what runs):
# - installs fuse3, Python's venv, ferry in .venv (scripts/install.sh) and, when no Docker
#   engine answers, Debian's docker.io;
# - starts the control service (SQLite) and this host's agent (store file:///var/lib/ferry/store)
#   as systemd units when systemd runs, as plain background daemons otherwise;
# - docker volume create -d ferry demo; one container writes, another reads; ferry status.
# Everything it prints is for you to read; the details go to the log file it names.
#
# Paths move under $FERRY_QS_ROOT (default /) so the test suite can run it in a sandbox;
# FERRY_QS_SERVICES=systemd|daemons picks how the services run (default: systemd if it runs).
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$(pwd)

DOWN=0; PURGE=0
for arg in "$@"; do
  case "$arg" in
    --down) DOWN=1 ;;
    --purge) PURGE=1 ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "quickstart.sh: unknown option $arg (known: --down, --purge, --help)" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "quickstart.sh: run it as root (it installs packages and mounts FUSE filesystems)" >&2; exit 1; }

ROOT=${FERRY_QS_ROOT:-}
ETC=$ROOT/etc/ferry
VAR=$ROOT/var/lib/ferry
CACHE=$ROOT/var/cache/ferry
RUN=$ROOT/run/ferry-quickstart           # pid files of the daemons it started, and what it created
LOG=${FERRY_QS_LOG:-$ROOT/var/log/ferry-quickstart.log}
BIN=$ROOT/usr/local/bin
STORE="file://$VAR/store"
CONTROL=127.0.0.1:7450
HTTP=127.0.0.1:7451
VOLUME=${FERRY_QS_VOLUME:-demo}
IMAGE=ferry-quickstart-busybox
FERRY="$SRC/${FERRY_VENV:-.venv}/bin/ferry"
if [ -n "${FERRY_QS_SERVICES:-}" ]; then MODE=$FERRY_QS_SERVICES
elif [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then MODE=systemd
else MODE=daemons; fi
[ "$MODE" = systemd ] && [ -n "$ROOT" ] && { echo "quickstart.sh: systemd units need FERRY_QS_ROOT unset" >&2; exit 2; }
export FERRY_CONTROL=$CONTROL FERRY_TOKEN_FILE=$ETC/token

mkdir -p "$(dirname "$LOG")" "$RUN"
START=$(date +%s.%N)
echo "---- quickstart $* $(date -Is)" >> "$LOG"

ok()   { printf '  \033[32m✓\033[0m %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
fail() {
  printf '  \033[31m✗\033[0m %s\n' "$1" >&2
  shift
  for line in "$@"; do printf '    %s\n' "$line" >&2; done
  printf '    the last lines of %s:\n' "$LOG" >&2
  tail -n 15 "$LOG" | sed 's/^/      /' >&2
  exit 1
}
quiet() { "$@" >> "$LOG" 2>&1; }              # run, details to the log
mark()  { echo "$1" >> "$RUN/created"; }      # something --down removes
created() { grep -qxF "$1" "$RUN/created" 2>/dev/null; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
elapsed() { awk -v s="$START" -v e="$(date +%s.%N)" 'BEGIN { printf "%.0f", e - s }'; }
wait_for() {   # wait_for SECONDS COMMAND...: poll until COMMAND succeeds
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

# ---------------------------------------------------------------- --down
if [ "$DOWN" -eq 1 ]; then
  echo "ferry quickstart --down (details: $LOG)"
  if [ -x "$FERRY" ] && docker info >/dev/null 2>&1 && docker volume inspect "$VOLUME" >/dev/null 2>&1; then
    users=$(docker ps -aq --filter "volume=$VOLUME")
    [ -z "$users" ] || quiet docker rm -f $users || true
    if [ "$PURGE" -eq 1 ]; then
      quiet docker volume rm "$VOLUME" && ok "removed volume $VOLUME (and its objects in the store)"
    fi
  fi
  # Unmount what the agent mounted (commits everything), then stop the services.
  if [ -d "$VAR/mounts" ]; then
    for mp in "$VAR"/mounts/*; do
      if mountpoint -q "$mp" 2>/dev/null; then
        quiet "$FERRY" fs umount "$mp" && ok "unmounted ${mp##*/} (everything committed to the store)"
      fi
    done
  fi
  if [ "$MODE" = systemd ]; then
    for unit in ferry-agent ferry-control; do
      if created "unit:$unit"; then
        quiet systemctl disable --now "$unit" || true
        rm -f "/etc/systemd/system/$unit.service"
        ok "stopped and removed $unit.service"
      fi
    done
    quiet systemctl daemon-reload || true
  fi
  for svc in agent control dockerd; do
    if alive "$RUN/$svc.pid"; then
      pid=$(cat "$RUN/$svc.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      ok "stopped $svc (pid $pid)"
    fi
    rm -f "$RUN/$svc.pid"
  done
  # A filesystem daemon left behind (its mount was not under $VAR/mounts): stop it too.
  pkill -TERM -f -- "-m cli fs mount .*$CACHE/" 2>/dev/null || true
  created "link:$BIN/ferry" && rm -f "$BIN/ferry"
  created "file:$ETC/ferry.env" && rm -f "$ETC/ferry.env"
  if [ "$PURGE" -eq 1 ]; then
    rm -rf "$VAR/store" "$VAR/control.db" "$VAR/agent" "$VAR/mounts" "$CACHE" "$ETC/token" "$ETC/read-token"
    ok "deleted the store ($VAR/store), the control state and the cache"
  else
    note "kept: the store $VAR/store, the control state $VAR/control.db, the token $ETC/token"
    note "(bash scripts/quickstart.sh --down --purge deletes them)"
  fi
  rm -rf "$RUN"
  ok "nothing of the quickstart runs any more"
  exit 0
fi

# ---------------------------------------------------------------- up
echo "ferry quickstart: a Docker volume that lives in object storage (details: $LOG)"

# 1. packages
apt_extra=""
docker info >/dev/null 2>&1 || command -v dockerd >/dev/null || apt_extra="docker.io"
dpkg -s busybox-static >/dev/null 2>&1 || apt_extra="$apt_extra busybox-static"   # the demo's image
t0=$(date +%s)
[ -x "$FERRY" ] || note "installing (a first run takes about a minute) ..."
FERRY_APT_EXTRA="$apt_extra" quiet bash scripts/install.sh || fail "installing packages failed" \
  "scripts/install.sh installs fuse3, Python's venv and ferry's Python packages"
ok "ferry installed in ${FERRY_VENV:-.venv} ($(( $(date +%s) - t0 )) s)${apt_extra:+, with${apt_extra}}"

# 2. a Docker engine
if docker info >/dev/null 2>&1; then
  ok "Docker engine: running ($(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))"
elif [ "$MODE" = systemd ]; then
  quiet systemctl start docker || fail "could not start docker.service" "see: journalctl -u docker"
  wait_for 60 docker info || fail "docker.service started but the engine does not answer"
  ok "Docker engine: started docker.service"
else
  mkdir -p "$RUN"
  setsid dockerd >> "$LOG" 2>&1 < /dev/null &
  echo $! > "$RUN/dockerd.pid"
  wait_for 60 docker info || fail "dockerd did not start"
  ok "Docker engine: started dockerd (pid $(cat "$RUN/dockerd.pid"))"
fi

# 3. configuration: a cluster token, and the ferry command on PATH
mkdir -p "$ETC" "$VAR" "$CACHE"
if [ ! -d "$VAR/store" ]; then
  mkdir -p "$VAR/store"
  note "made the store directory: $STORE"
fi
if [ ! -s "$ETC/token" ]; then
  (umask 077; head -c 32 /dev/urandom | base64 > "$ETC/token")
  note "made a cluster token: $ETC/token"
fi
[ -s "$ETC/read-token" ] || (umask 077; head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$ETC/read-token")
if [ ! -e "$BIN/ferry" ]; then
  mkdir -p "$BIN" && ln -s "$FERRY" "$BIN/ferry" && mark "link:$BIN/ferry"
fi

# 4. the control service and this host's agent
CONTROL_ARGS=(control serve --listen "$CONTROL" --state "sqlite:$VAR/control.db" --token-file "$ETC/token"
              --http "$HTTP" --http-read-token-file "$ETC/read-token")
AGENT_ARGS=(agent serve --control "$CONTROL" --host-id "$(hostname)" --store "$STORE" --cache-dir "$CACHE"
            --token-file "$ETC/token" --mount-root "$VAR/mounts" --state-dir "$VAR/agent")
control_up() { "$FERRY" status >/dev/null 2>&1; }
agent_up() {   # the plugin socket answers Docker's handshake
  "$SRC/${FERRY_VENV:-.venv}/bin/python" - <<'PY'
import http.client, socket, sys
class Conn(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(5)
        self.sock.connect("/run/docker/plugins/ferry.sock")
c = Conn("plugin")
c.request("POST", "/Plugin.Activate", body=b"{}")
sys.exit(0 if b"VolumeDriver" in c.getresponse().read() else 1)
PY
} 2>/dev/null
start_daemon() {   # start_daemon NAME ARGS...: a background daemon with its pid file
  local name=$1; shift
  setsid "$FERRY" "$@" >> "$LOG" 2>&1 < /dev/null &
  echo $! > "$RUN/$name.pid"
}
started() {   # started NAME CHECK: wait until CHECK passes, failing fast if the daemon died
  local deadline=$(( $(date +%s) + 30 ))
  until $2 >/dev/null 2>&1; do
    alive "$RUN/$1.pid" && [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}
if [ "$MODE" = systemd ]; then
  if [ ! -e "$ETC/ferry.env" ]; then
    { echo "# written by scripts/quickstart.sh (removed by --down)"
      echo "FERRY_CONTROL_LISTEN=$CONTROL"
      echo "FERRY_CONTROL_STATE=sqlite:$VAR/control.db"
      echo "FERRY_CONTROL_ARGS=--http $HTTP --http-read-token-file $ETC/read-token"
      echo "FERRY_CONTROL=$CONTROL"
      echo "FERRY_STORE=$STORE"; } > "$ETC/ferry.env"
    mark "file:$ETC/ferry.env"
  fi
  for unit in ferry-control ferry-agent; do
    if systemctl is-active -q "$unit"; then
      ok "$unit.service: already running"
      continue
    fi
    if [ ! -e "/etc/systemd/system/$unit.service" ]; then
      cp "deploy/$unit.service" /etc/systemd/system/ && mark "unit:$unit"
      quiet systemctl daemon-reload
    fi
    quiet systemctl enable --now "$unit" || fail "could not start $unit.service" "see: journalctl -u $unit"
    ok "$unit.service: started"
  done
  wait_for 30 control_up || fail "the control service does not answer on $CONTROL" "see: journalctl -u ferry-control"
  wait_for 30 agent_up || fail "the agent did not register" "see: journalctl -u ferry-agent"
else
  if control_up; then
    ok "control service: already running on $CONTROL"
  else
    start_daemon control "${CONTROL_ARGS[@]}"
    started control control_up || fail "the control service did not start"
    ok "control service: started (pid $(cat "$RUN/control.pid"); state sqlite:$VAR/control.db; listens on $CONTROL)"
  fi
  if agent_up; then
    ok "agent: already running (the plugin socket /run/docker/plugins/ferry.sock answers)"
  else
    mkdir -p /run/docker/plugins
    start_daemon agent "${AGENT_ARGS[@]}"
    started agent agent_up || fail "the agent did not start"
    ok "agent: started (pid $(cat "$RUN/agent.pid"); Docker volume driver \"ferry\"; store $STORE)"
  fi
fi

# 5. the demo: a volume, a container that writes and fsyncs, another that reads
if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  rootfs=$(mktemp -d)
  mkdir -p "$rootfs/bin" "$rootfs/data" "$rootfs/tmp"
  cp /usr/bin/busybox "$rootfs/bin/busybox"
  for a in sh cat echo date hostname ls sync; do ln -s busybox "$rootfs/bin/$a"; done
  tar -C "$rootfs" -c . | quiet docker import - "$IMAGE" || fail "docker import of a busybox image failed"
  rm -rf "$rootfs"
fi
if docker volume inspect "$VOLUME" >/dev/null 2>&1; then
  ok "docker volume $VOLUME: already there (driver $(docker volume inspect -f '{{.Driver}}' "$VOLUME"))"
else
  quiet docker volume create -d ferry "$VOLUME" || fail "docker volume create -d ferry $VOLUME failed"
  ok "docker volume create -d ferry $VOLUME"
fi
stamp=$(date -u +%H:%M:%S)
quiet docker run --rm --network none -v "$VOLUME:/data" "$IMAGE" \
  sh -c "echo 'written by container 1 at $stamp UTC' > /data/hello.txt && sync /data/hello.txt" ||
  fail "the writing container failed"
ok "container 1 wrote /data/hello.txt and synced it: it is in the store now"
read_back=$(docker run --rm --network none -v "$VOLUME:/data" "$IMAGE" cat /data/hello.txt 2>> "$LOG") ||
  fail "the reading container failed"
ok "container 2 read: $read_back"
[ "$read_back" = "written by container 1 at $stamp UTC" ] || fail "container 2 did not read what container 1 wrote"

echo
"$FERRY" status || true
objects=$(find "$VAR/store" -type f 2>/dev/null | wc -l)
cat <<TXT

Done in $(elapsed) s. The volume's data and journal are $objects objects in $STORE; any
host with the same store and control service can mount it (a planned move loses nothing;
a lost host loses nothing that fsync acknowledged).

  status page:   http://$HTTP/#token=$(cat "$ETC/read-token")
  cluster:       ferry status          (ferry volume ls, ferry hosts, ferry --help)
  use it:        docker run --rm -it -v $VOLUME:/data $IMAGE sh
  stop it all:   bash scripts/quickstart.sh --down     (--down --purge also deletes the data)
  more hosts:    docs/cluster-setup.md; real object storage: --store s3://BUCKET?endpoint=...
TXT
