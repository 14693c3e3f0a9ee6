#!/usr/bin/env bash
# stop-ceph.sh — stop the daemons started by start-ceph.sh, by pid (rgw, mgr, osd, mon order).
#   --purge   also delete the cluster directory (next start bootstraps a fresh cluster)
set -uo pipefail
BASE=${S3_SERVER_DIR:-/var/tmp/artifactstore-s3}
C=${CEPH_DIR:-$BASE/ceph}
PIDFILE=$BASE/ceph.pid
stop_pid() {
  local p=$1 name=$2
  [ -n "$p" ] && kill -0 "$p" 2>/dev/null || return 0
  # make sure the pid really is a ceph daemon of ours before signalling it
  grep -qa "$C/ceph.conf" "/proc/$p/cmdline" 2>/dev/null || { echo "[stop-ceph] pid $p is not ours, skipped" >&2; return 0; }
  kill -TERM "$p"
  for _ in $(seq 1 120); do kill -0 "$p" 2>/dev/null || { echo "[stop-ceph] stopped $name ($p)" >&2; return 0; }; sleep 0.25; done
  echo "[stop-ceph] $name ($p) did not exit in 30s, SIGKILL" >&2; kill -KILL "$p" 2>/dev/null
}
for d in client.rgw.a mgr.x osd.0 mon.a; do stop_pid "$(cat "$C/run/$d.pid" 2>/dev/null || true)" "$d"; done
# anything else recorded in the combined pid file
if [ -f "$PIDFILE" ]; then while read -r p; do stop_pid "$p" "pid"; done < "$PIDFILE"; rm -f "$PIDFILE"; fi
if [ "${1:-}" = --purge ]; then
  for d in client.rgw.a mgr.x osd.0 mon.a; do p=$(cat "$C/run/$d.pid" 2>/dev/null || true); if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then echo "[stop-ceph] $d ($p) still alive, not purging" >&2; exit 1; fi; done
  rm -rf "$C"; echo "[stop-ceph] purged $C" >&2
fi
