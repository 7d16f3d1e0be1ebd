#!/usr/bin/env bash
# .ci/slurm.sh -- a real Slurm 22.05 cluster on localhost for Balsam's CI and the @pytest.mark.slurm tests,
# without systemd. Adapted from the team's proven single-node recipe.
#
# Usage (as root, Debian 12):
#   bash .ci/slurm.sh [start]   install if needed, (re)start, wait, print "READY slurm ..."
#   bash .ci/slurm.sh stop      cancel all jobs, stop every daemon it started (by PID), wipe state
#   bash .ci/slurm.sh status    show daemons and sinfo
#   bash .ci/slurm.sh restart   stop + start
#
# Environment knobs (all optional):
#   CI_SLURM_NODES=1       1 -> one node named `hostname -s`;  N>1 -> fake nodes node[1-N],
#                          one slurmd per node (slurmd -N nodeK), all on 127.0.0.1, ports 17001..
#   CI_SLURM_CPUS=<nproc>  CPUs advertised per node (may exceed the real cores: config_overrides)
#   CI_SLURM_MEM_MB=<auto> RealMemory per node (default: 80% of MemTotal / nodes)
#   CI_SLURM_ACCOUNTING=0  1 -> also MariaDB + slurmdbd, so `sacct` works (+~6 s install, +~1 s start)
#   CI_SLURM_TIMEOUT=60    seconds to wait for readiness
#   CI_SLURM_KEEP_STATE=0  1 -> "stop" keeps controller state and the accounting DB (job ids go on)
#   CI_SLURM_STOP_MUNGE=1  0 -> "stop" leaves munged running
#
# Idempotent: "start" on a healthy cluster with the same config only re-checks readiness;
# a different config (other knobs) restarts it. No systemd, no cgroups.
# Run .ci/mpi.sh FIRST: slurmd loads mpi/pmix only if libpmix2 (from openmpi-bin) exists when it starts.
set -euo pipefail

ACTION=${1:-start}
NODES=${CI_SLURM_NODES:-1}
ACCT=${CI_SLURM_ACCOUNTING:-0}
TIMEOUT=${CI_SLURM_TIMEOUT:-60}
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
CTLD_PID=/run/slurmctld.pid
DBD_PID=/run/slurmdbd.pid
MYSQL_PID=/run/mysqld/mysqld.pid
MYSQL_MARK=/run/ci-slurm-started-mariadb   # present only if this script started mariadbd
STATE_DIR=/var/spool/slurmctld
SPOOL_DIR=/var/spool/slurmd
LOG_DIR=/var/log/slurm
DB_NAME=slurm_acct_db
DB_USER=slurm
DB_PASS=slurm-ci-only

log() { echo "[ci/slurm] $*" >&2; }
die() { echo "FAILED slurm: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"

pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
pid_of() { [ -s "$1" ] && cat "$1" 2>/dev/null || true; }
stop_pid() { # stop_pid <pid> <seconds>: TERM, wait, KILL
  local p=$1 n=$(( ${2:-10} * 10 ))
  pid_alive "$p" || return 0
  kill -TERM "$p" 2>/dev/null || true
  for _ in $(seq 1 $n); do pid_alive "$p" || return 0; sleep 0.1; done
  log "KILL $p"; kill -KILL "$p" 2>/dev/null || true
}

short_host() { hostname -s 2>/dev/null || hostname; }
node_names() { if [ "$NODES" -le 1 ]; then short_host; else for i in $(seq 1 "$NODES"); do echo "node$i"; done; fi; }
node_expr() { if [ "$NODES" -le 1 ]; then short_host; else echo "node[1-$NODES]"; fi; }

install_pkgs() {
  local pkgs=() b
  for b in slurmctld slurmd sbatch squeue munged mungekey; do command -v "$b" >/dev/null 2>&1 || pkgs=(slurm-wlm slurmctld slurmd slurm-client munge); done
  if [ "$ACCT" = 1 ]; then
    for b in slurmdbd mariadbd; do command -v "$b" >/dev/null 2>&1 || pkgs+=(slurmdbd mariadb-server); done
  fi
  if [ ${#pkgs[@]} -gt 0 ]; then
    log "installing from apt: $(printf '%s\n' "${pkgs[@]}" | sort -u | tr '\n' ' ')"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2046
    apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${pkgs[@]}" | sort -u) >/dev/null
  fi
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
start_munge() {
  install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
  install -d -o munge -g munge -m 0755 /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    log "creating munge key"
    mungekey --create --keyfile=/etc/munge/munge.key
  fi
  chown munge:munge /etc/munge/munge.key; chmod 0600 /etc/munge/munge.key
  munge_ok && return 0
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged --force
  for _ in $(seq 1 50); do munge_ok && return 0; sleep 0.1; done
  die "munged did not come up"
}

mysql_ok() { mariadb-admin ping >/dev/null 2>&1; }
start_mariadb() {
  install -d -o mysql -g mysql -m 0755 /run/mysqld
  if ! mysql_ok; then
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    log "starting mariadbd (unix socket only)"
    setsid /usr/sbin/mariadbd --user=mysql --skip-networking --pid-file=$MYSQL_PID \
      --log-error=$LOG_DIR/mariadb.log </dev/null >/dev/null 2>&1 &
    touch $MYSQL_MARK
    for _ in $(seq 1 $(( TIMEOUT * 10 ))); do mysql_ok && break; sleep 0.1; done
    mysql_ok || die "mariadbd did not come up (see $LOG_DIR/mariadb.log)"
  fi
  mariadb -e "CREATE DATABASE IF NOT EXISTS $DB_NAME;
    CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
    ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost'; FLUSH PRIVILEGES;"
}

start_slurmdbd() {
  cat > "$DBD_CONF" <<EOF
# Generated by balsam .ci/slurm.sh
AuthType=auth/munge
DbdHost=$(short_host)
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=$DB_NAME
StorageUser=$DB_USER
StoragePass=$DB_PASS
PidFile=$DBD_PID
LogFile=$LOG_DIR/slurmdbd.log
EOF
  chmod 0600 "$DBD_CONF"
  if ! pid_alive "$(pid_of $DBD_PID)"; then log "starting slurmdbd"; slurmdbd; fi
  local deadline=$(( $(date +%s) + TIMEOUT ))
  until sacctmgr -n -P list cluster format=cluster >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || { tail -n 20 $LOG_DIR/slurmdbd.log >&2; die "slurmdbd not answering"; }
    sleep 0.2
  done
  sacctmgr -n -P list cluster format=cluster | grep -qx ci || sacctmgr -i add cluster ci >/dev/null
}

write_conf() { # writes the slurm.conf we want to $1
  local host cpus mem memtotal_mb
  host=$(short_host)
  cpus=${CI_SLURM_CPUS:-$(nproc)}
  memtotal_mb=$(awk '/^MemTotal:/{print int($2/1024)}' /proc/meminfo)
  mem=${CI_SLURM_MEM_MB:-$(( memtotal_mb * 8 / 10 / NODES ))}
  cat > "$1" <<EOF
# Generated by balsam .ci/slurm.sh -- CI cluster on localhost, no systemd/cgroups
ClusterName=ci
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# batch_sched_delay=0: start batch jobs at the next 1 s tick instead of up to 3 s later.
# NEVER put a word containing "defer" here (e.g. defer_batch): slurmctld matches the
# substring and then stops scheduling at submit time, so every srun waits ~3 s.
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SlurmdParameters=config_overrides
JobCompType=jobcomp/filetxt
JobCompLoc=${LOG_DIR}/jobcomp.log
StateSaveLocation=${STATE_DIR}
SlurmdSpoolDir=${SPOOL_DIR}/%n
SlurmctldPidFile=${CTLD_PID}
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd-%n.log
SlurmctldPort=6817
SlurmdPort=6818
ReturnToService=2
MinJobAge=600
KillWait=5
InactiveLimit=0
Waittime=0
EOF
  if [ "$ACCT" = 1 ]; then
    printf '%s\n' "AccountingStorageType=accounting_storage/slurmdbd" "AccountingStorageHost=127.0.0.1" \
      "AccountingStoragePort=6819" "JobAcctGatherType=jobacct_gather/linux" >> "$1"
  else
    printf '%s\n' "AccountingStorageType=accounting_storage/none" "JobAcctGatherType=jobacct_gather/none" >> "$1"
  fi
  if [ "$NODES" -le 1 ]; then
    echo "NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem} State=UNKNOWN" >> "$1"
  else
    # Per-node TmpFS: the PMIx plugin makes <TmpFS>/spmix_appdir_<uid>_<job>.<step>; with one
    # shared /tmp the fake nodes collide ("File exists") and srun --mpi=pmix fails.
    echo "TmpFS=/tmp/slurm-tmp-%n" >> "$1"
    echo "NodeName=node[1-${NODES}] NodeHostname=${host} NodeAddr=127.0.0.1 Port=[17001-$((17000 + NODES))] CPUs=${cpus} RealMemory=${mem} State=UNKNOWN" >> "$1"
  fi
  echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP" >> "$1"
}

ctld_running() { pid_alive "$(pid_of $CTLD_PID)"; }
slurmd_pids() { local f; for f in /run/slurmd-*.pid /run/slurmd.pid; do [ -s "$f" ] && cat "$f"; done 2>/dev/null || true; }

all_up() { # every configured node is idle/mixed/allocated/completing
  local want got
  want=$(node_names | wc -l)
  got=$(sinfo -h -N -o '%N %T' 2>/dev/null | awk '$2 ~ /^(idle|mixed|allocated|completing)$/' | sort -u | wc -l) || return 1
  [ "$got" -ge "$want" ]
}

wait_ready() {
  local deadline=$(( $(date +%s) + TIMEOUT ))
  until scontrol ping >/dev/null 2>&1 && all_up; do
    [ "$(date +%s)" -lt "$deadline" ] || { sinfo -N -l >&2 || true; tail -n 20 $LOG_DIR/slurmctld.log >&2 || true; die "cluster not ready after ${TIMEOUT}s"; }
    sleep 0.3
  done
  # smoke test: a real one-task step through slurmctld -> slurmd -> slurmstepd
  timeout "$TIMEOUT" srun -J ci-smoke -N1 -n1 -t 1 true </dev/null >/dev/null || die "smoke srun failed"
  if [ "$ACCT" = 1 ]; then # the first records reach slurmdbd ~4 s after registration
    until [ -n "$(sacct -n -X -P --name=ci-smoke -o JobID 2>/dev/null)" ]; do
      [ "$(date +%s)" -lt "$deadline" ] || die "smoke job never reached sacct"
      sleep 0.2
    done
  fi
}

do_stop() {
  if ctld_running; then
    local ids
    ids=$(squeue -h -o '%A' 2>/dev/null | sort -u | tr '\n' ' ' || true)
    if [ -n "${ids// /}" ]; then
      log "cancelling jobs: $ids"
      # shellcheck disable=SC2086
      scancel $ids 2>/dev/null || true
      for _ in $(seq 1 50); do [ -z "$(squeue -h -o '%A' 2>/dev/null)" ] && break; sleep 0.2; done
    fi
    scontrol shutdown >/dev/null 2>&1 || true   # stops slurmctld and every slurmd
  fi
  local p
  for p in $(pid_of $CTLD_PID) $(slurmd_pids); do stop_pid "$p" 10; done
  rm -f $CTLD_PID /run/slurmd-*.pid /run/slurmd.pid
  if pid_alive "$(pid_of $DBD_PID)"; then stop_pid "$(pid_of $DBD_PID)" 10; fi
  rm -f $DBD_PID
  if [ "${CI_SLURM_KEEP_STATE:-0}" != 1 ]; then
    rm -rf "${STATE_DIR:?}"/* "${SPOOL_DIR:?}"/* 2>/dev/null || true
    # job ids restart at 1 with a fresh StateSaveLocation, so old DB rows would collide
    if mysql_ok 2>/dev/null; then mariadb -e "DROP DATABASE IF EXISTS $DB_NAME" 2>/dev/null || true; fi
  fi
  if [ -e $MYSQL_MARK ]; then   # only a mariadbd that this script started
    stop_pid "$(pid_of $MYSQL_PID)" 30; rm -f $MYSQL_MARK
  fi
  if [ "${CI_SLURM_STOP_MUNGE:-1}" = 1 ]; then stop_pid "$(pid_of /run/munge/munged.pid)" 10; fi
  echo "STOPPED slurm"
}

do_start() {
  install_pkgs
  getent hosts "$(hostname)" >/dev/null 2>&1 || echo "127.0.0.1 $(hostname)" >> /etc/hosts
  start_munge
  mkdir -p "$STATE_DIR" "$SPOOL_DIR" "$LOG_DIR" /etc/slurm
  local tmp; tmp=$(mktemp)
  write_conf "$tmp"
  if ctld_running && cmp -s "$tmp" "$CONF"; then
    log "already running with identical config"
    rm -f "$tmp"
  else
    if ctld_running || pid_alive "$(pid_of $DBD_PID)"; then
      log "config changed or partial cluster: restarting"
      CI_SLURM_STOP_MUNGE=0 do_stop >/dev/null
    fi
    local p; for p in $(slurmd_pids); do stop_pid "$p" 5; done   # orphan slurmds
    install -m 0644 "$tmp" "$CONF"; rm -f "$tmp"
    if [ "$ACCT" = 1 ]; then start_mariadb; start_slurmdbd; fi
    : > $LOG_DIR/slurmctld.log
    slurmctld          # daemonizes; pid in $CTLD_PID
    local n
    for n in $(node_names); do
      mkdir -p "$SPOOL_DIR/$n"; : > "$LOG_DIR/slurmd-$n.log"
      [ "$NODES" -le 1 ] || install -d -m 1777 "/tmp/slurm-tmp-$n"
      slurmd -N "$n"   # daemonizes; pid in /run/slurmd-$n.pid
    done
  fi
  wait_ready
  local ver; ver=$(sinfo -V | awk '{print $2}')
  echo "READY slurm ${ver} nodes=$(node_expr) cpus_per_node=${CI_SLURM_CPUS:-$(nproc)} partition=debug accounting=$([ "$ACCT" = 1 ] && echo slurmdbd || echo none) conf=${CONF}"
}

case "$ACTION" in
  start) do_start ;;
  stop) do_stop ;;
  restart) do_stop; do_start ;;
  status)
    echo "slurmctld pid: $(pid_of $CTLD_PID) alive=$(ctld_running && echo yes || echo no)"
    echo "slurmd pids: $(slurmd_pids | tr '\n' ' ')"
    echo "slurmdbd pid: $(pid_of $DBD_PID)   mariadbd pid: $(pid_of $MYSQL_PID)   munged pid: $(pid_of /run/munge/munged.pid)"
    sinfo -N -l 2>&1 || true ;;
  *) die "unknown action $ACTION (start|stop|status|restart)" ;;
esac
