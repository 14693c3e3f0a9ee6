#!/usr/bin/env bash
# (kept in this repository so the tests never depend on anything outside it)
# start-ceph.sh — single-node Ceph 16.2 (Debian bookworm packages) + radosgw (beast) on 127.0.0.1.
#   1 mon (msgr2 only), 1 OSD (bluestore on a sparse file, or memstore), optional mgr, 1 radosgw,
#   cephx everywhere, one S3 user + one bucket. No systemd, no cephadm, no containers, no internet
#   except the Debian mirror for the first install.
# Idempotent: installs packages only if missing; if the cluster is already running it just prints
# the connection info; if a previous cluster was stopped it restarts it on the same data.
# Env knobs (all optional):
#   S3_SERVER_DIR=/tmp/s3-test-server  CEPH_DIR=$S3_SERVER_DIR/ceph  CEPH_RGW_PORT=7480  CEPH_MON_PORT=3300
#   CEPH_OSD_STORE=bluestore|memstore  CEPH_OSD_SIZE_GB=24  CEPH_WITH_MGR=0|1  CEPH_FRESH=0|1 (wipe first)
#   S3_ACCESS_KEY / S3_SECRET_KEY / S3_BUCKET
# Output: KEY=VALUE lines on stdout (also written to $CEPH_DIR/s3.env); pids in $S3_SERVER_DIR/ceph.pid
set -euo pipefail

BASE=${S3_SERVER_DIR:-/var/tmp/artifactstore-s3}
C=${CEPH_DIR:-$BASE/ceph}
RGW_PORT=${CEPH_RGW_PORT:-7480}
MON_PORT=${CEPH_MON_PORT:-3300}
OSD_STORE=${CEPH_OSD_STORE:-bluestore}
OSD_SIZE_GB=${CEPH_OSD_SIZE_GB:-24}   # a sparse file: only what is written takes disk
WITH_MGR=${CEPH_WITH_MGR:-0}
ACCESS=${S3_ACCESS_KEY:-CIACCESSKEY00000001}
SECRET=${S3_SECRET_KEY:-cisecretkey0000000000000000000000000001}
BUCKET=${S3_BUCKET:-ci-bucket}
PIDFILE=$BASE/ceph.pid
ENDPOINT=http://127.0.0.1:$RGW_PORT
EMPTY_SHA256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
CEPH="ceph -c $C/ceph.conf --connect-timeout 20"
log() { echo "[start-ceph] $*" >&2; }
T0=$(date +%s)

mkdir -p "$BASE"

# ---------- 1. install (Debian bookworm: ceph 16.2.15) ----------
PKGS="ceph-mon ceph-osd radosgw ceph-common curl"
[ "$WITH_MGR" = 1 ] && PKGS="$PKGS ceph-mgr"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  log "installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  # Try with the existing package lists first; on a fresh machine (no/stale lists) update and retry.
  if ! apt-get install -y -qq --no-install-recommends $missing >&2 2>/dev/null; then
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends $missing >&2
  fi
  log "install done after $(( $(date +%s) - T0 ))s"
fi

# ---------- helpers ----------
alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
pid_of() { cat "$C/run/$1.pid" 2>/dev/null || true; }
rgw_up() { curl -s -o /dev/null --max-time 2 "$ENDPOINT/"; }
print_info() {
  cat > "$C/s3.env" <<EOF
S3_ENDPOINT=$ENDPOINT
AWS_ACCESS_KEY_ID=$ACCESS
AWS_SECRET_ACCESS_KEY=$SECRET
AWS_REGION=us-east-1
AWS_DEFAULT_REGION=us-east-1
S3_BUCKET=$BUCKET
S3_FORCE_PATH_STYLE=true
CEPH_CONF=$C/ceph.conf
EOF
  cat "$C/s3.env"
}
write_pids() {
  : > "$PIDFILE.tmp"
  for d in client.rgw.a mgr.x osd.0 mon.a; do p=$(pid_of $d); alive "$p" && echo "$p" >> "$PIDFILE.tmp"; done
  mv "$PIDFILE.tmp" "$PIDFILE"
}
wait_for() { # wait_for <seconds> <description> <command...>
  local t=$1 what=$2; shift 2
  for _ in $(seq 1 $((t * 4))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  log "timeout waiting for $what"; tail -n 30 "$C"/log/*.log >&2 || true; return 1
}

# ---------- 2. already running? ----------
if [ "${CEPH_FRESH:-0}" != 1 ] && alive "$(pid_of mon.a)" && alive "$(pid_of osd.0)" && alive "$(pid_of client.rgw.a)" && rgw_up; then
  log "already running"; write_pids; print_info; exit 0
fi

# ---------- 3. bootstrap (only if no initialised cluster dir) ----------
if [ "${CEPH_FRESH:-0}" = 1 ] || [ ! -f "$C/mon/a/store.db/CURRENT" ] || [ ! -f "$C/osd/0/ready" ] || [ ! -f "$C/ceph.conf" ]; then
  # refuse to wipe a dir whose daemons are still alive
  for d in client.rgw.a mgr.x osd.0 mon.a; do p=$(pid_of $d); if alive "$p"; then log "$d (pid $p) still running; run stop-ceph.sh first"; exit 1; fi; done
  rm -rf "$C"; mkdir -p "$C"/{run,log,mon/a,osd/0,mgr/x,rgw}
  FSID=$(cat /proc/sys/kernel/random/uuid)
  if [ "$OSD_STORE" = memstore ]; then
    OSD_STORE_CONF="osd objectstore = memstore
memstore device bytes = $((OSD_SIZE_GB * 1024 * 1024 * 1024))"
  else
    OSD_STORE_CONF="osd objectstore = bluestore
bluestore block create = true
bluestore block size = $((OSD_SIZE_GB * 1024 * 1024 * 1024))
bluestore fsck on mount = false"
  fi
  cat > "$C/ceph.conf" <<EOF
[global]
fsid = $FSID
mon host = v2:127.0.0.1:$MON_PORT/0
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv6 = false
ms bind msgr1 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
run dir = $C/run
pid file = $C/run/\$name.pid
admin socket = $C/run/\$cluster-\$name.asok
log file = $C/log/\$cluster-\$name.log
keyring = $C/keyring.\$name
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon max pg per osd = 1000
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 2
mon data avail crit = 1
mon warn on insecure global id reclaim allowed = false
[mon]
mon data = $C/mon/\$id
mon cluster log file = $C/log/cluster.log
[mgr]
mgr data = $C/mgr/\$id
[osd]
osd data = $C/osd/\$id
$OSD_STORE_CONF
osd memory target = 1073741824
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$RGW_PORT
rgw data = $C/rgw
# Reclaim deleted objects' data within a minute (the default waits two hours), so benchmarks
# and test runs that delete what they write do not fill the OSD.
rgw gc obj min wait = 60
rgw gc processor period = 60
EOF
  # keys: mon., client.admin
  ceph-authtool --create-keyring "$C/keyring.mon.a" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool --create-keyring "$C/keyring.client.admin" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
  ceph-authtool "$C/keyring.mon.a" --import-keyring "$C/keyring.client.admin" >/dev/null
  monmaptool --create --fsid "$FSID" --addv a "[v2:127.0.0.1:$MON_PORT]" "$C/monmap" >/dev/null
  ceph-mon -c "$C/ceph.conf" --mkfs -i a --monmap "$C/monmap" --keyring "$C/keyring.mon.a"
  NEW=1
else
  NEW=0
fi

# ---------- 4. start daemons (they daemonize themselves and write $C/run/<name>.pid) ----------
alive "$(pid_of mon.a)" || ceph-mon -c "$C/ceph.conf" -i a
wait_for 60 "mon quorum" $CEPH mon stat

if [ "$NEW" = 1 ]; then
  OSD_UUID=$(cat /proc/sys/kernel/random/uuid)
  OSD_SECRET=$(ceph-authtool --gen-print-key)
  echo "{\"cephx_secret\": \"$OSD_SECRET\"}" > "$C/osd/0/new.json"
  OSD_ID=$($CEPH osd new "$OSD_UUID" -i "$C/osd/0/new.json")
  [ "$OSD_ID" = 0 ] || { log "unexpected osd id '$OSD_ID'"; exit 1; }
  ceph-authtool --create-keyring "$C/keyring.osd.0" --name osd.0 --add-key "$OSD_SECRET" >/dev/null
  ceph-osd -c "$C/ceph.conf" -i 0 --mkfs --osd-uuid "$OSD_UUID" > "$C/log/osd-mkfs.log" 2>&1 \
    || { cat "$C/log/osd-mkfs.log" >&2; exit 1; }
  $CEPH auth get-or-create client.rgw.a mon 'allow rw' osd 'allow rwx' mgr 'allow rw' > "$C/keyring.client.rgw.a"
  [ "$WITH_MGR" = 1 ] && $CEPH auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' > "$C/keyring.mgr.x"
fi
alive "$(pid_of osd.0)" || ceph-osd -c "$C/ceph.conf" -i 0
wait_for 90 "osd.0 up" bash -c "$CEPH osd dump 2>/dev/null | grep -q '^osd.0 up'"

if [ "$WITH_MGR" = 1 ]; then
  [ -f "$C/keyring.mgr.x" ] || $CEPH auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' > "$C/keyring.mgr.x"
  alive "$(pid_of mgr.x)" || ceph-mgr -c "$C/ceph.conf" -i x
fi

alive "$(pid_of client.rgw.a)" || radosgw -c "$C/ceph.conf" -n client.rgw.a
wait_for 120 "radosgw on $ENDPOINT" rgw_up
write_pids

# ---------- 5. S3 user + bucket (idempotent) ----------
if ! radosgw-admin -c "$C/ceph.conf" user info --uid=ci >/dev/null 2>&1; then
  radosgw-admin -c "$C/ceph.conf" user create --uid=ci --display-name="CI user" \
    --access-key="$ACCESS" --secret-key="$SECRET" >/dev/null
fi
# curl >= 7.75 signs SigV4 itself (S3 also needs x-amz-content-sha256 = sha256 of the empty body);
# 200 = created, 409 BucketAlreadyOwnedByYou = fine
code=$(curl -s -o "$C/log/mkbucket.out" -w '%{http_code}' --aws-sigv4 "aws:amz:us-east-1:s3" \
       --user "$ACCESS:$SECRET" -H "x-amz-content-sha256: $EMPTY_SHA256" -X PUT "$ENDPOINT/$BUCKET")
case "$code" in 200|409) ;; *) log "bucket create failed: HTTP $code $(cat "$C/log/mkbucket.out")"; exit 1;; esac

log "ready after $(( $(date +%s) - T0 ))s (store=$OSD_STORE, mgr=$WITH_MGR); pids: $(tr '\n' ' ' < "$PIDFILE")"
print_info
