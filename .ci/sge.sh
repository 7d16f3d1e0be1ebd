#!/usr/bin/env bash
# .ci/sge.sh -- a real (Son of) Grid Engine 8.1.9 cell on localhost for Balsam's CI and the @pytest.mark.sge
# tests, without systemd. Adapted from the team's proven single-node recipe.
#
# Usage (as root, Debian 12):
#   bash .ci/sge.sh [start]   install if needed, configure, start qmaster+execd, wait, print "READY sge ..."
#   bash .ci/sge.sh stop      delete all jobs, stop sge_execd and sge_qmaster by PID
#   bash .ci/sge.sh status
#   bash .ci/sge.sh restart
#
# Knobs: CI_SGE_SLOTS=<nproc> slots in all.q;  CI_SGE_TIMEOUT=60 seconds to wait for readiness.
#
# Result: cell "default" under SGE_ROOT=/var/lib/gridengine (Debian's clients default to it, so
# no environment is needed), one queue all.q@localhost, parallel environments "smp" ($pe_slots)
# and "mpi" ($fill_up), root allowed to run jobs (min_uid=0), scheduler every 1 s, accounting
# on (qacct works). SGE's host name for this machine is always "localhost" (see host_aliases).
# NOTE: gridengine-client conflicts with slurm-wlm-torque (both ship qsub/qstat/qdel).
set -euo pipefail

ACTION=${1:-start}
TIMEOUT=${CI_SGE_TIMEOUT:-60}
SLOTS=${CI_SGE_SLOTS:-$(nproc)}
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
COMMON=$SGE_ROOT/$SGE_CELL/common
QM_PID=/var/spool/gridengine/qmaster/qmaster.pid
EX_PID=/var/spool/gridengine/execd/localhost/execd.pid
SGEHOST=localhost

log() { echo "[ci/sge] $*" >&2; }
die() { echo "FAILED sge: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"

pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
pid_of() { [ -s "$1" ] && cat "$1" 2>/dev/null || true; }
qm_running() { pid_alive "$(pid_of $QM_PID)"; }
ex_running() { pid_alive "$(pid_of $EX_PID)"; }

install_pkgs() {
  # dpkg, not `command -v qsub`: slurm-wlm-torque also ships a qsub (and conflicts with gridengine-client)
  if [ "$(dpkg-query -W -f='${Status} ' gridengine-master gridengine-exec gridengine-client 2>/dev/null)" != \
       "install ok installed install ok installed install ok installed " ]; then
    log "installing gridengine-master/exec/client from apt"
    export DEBIAN_FRONTEND=noninteractive
    # Without this preseed the postinst leaves act_qmaster empty.
    debconf-set-selections <<EOF
gridengine-common shared/gridengineconfig boolean true
gridengine-common shared/gridenginecell string default
gridengine-common shared/gridenginemaster string ${SGEHOST}
EOF
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends gridengine-master gridengine-exec gridengine-client >/dev/null
  fi
  [ -d "$COMMON" ] || die "$COMMON missing: the gridengine-master postinst did not create the cell"
}

host_setup() {
  # some containers have a hostname that does not resolve at all; SGE needs it to
  getent hosts "$(hostname)" >/dev/null 2>&1 || echo "127.0.0.1 $(hostname)" >> /etc/hosts
  # SGE insists that the name a client calls itself equals the reverse lookup of the IP it
  # connects from. Here `hostname` resolves to 127.0.0.1, whose reverse name is "localhost",
  # so every command fails with "access denied (client IP resolved to host name "localhost".
  # This is not identical to clients host name ...)". host_aliases maps the real hostname
  # onto "localhost" so that all SGE components agree on one name.
  local h; h=$(hostname)
  if [ "$h" != "$SGEHOST" ]; then echo "$SGEHOST $h $(hostname -s 2>/dev/null || true)" | tr -s ' ' > "$COMMON/host_aliases"; fi
  echo "$SGEHOST" > "$COMMON/act_qmaster"
  chown sgeadmin:sgeadmin "$COMMON/act_qmaster"
  install -d -o sgeadmin -g sgeadmin -m 0755 /run/gridengine
}

q() { # run a qconf command quietly (it reports success on stderr); show its output on failure
  local out; out=$("$@" 2>&1) || die "$* -> $out"
}

wait_for() { # wait_for <what> <cmd...>
  local what=$1; shift
  local deadline=$(( $(date +%s) + TIMEOUT ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || die "timeout waiting for $what"
    sleep 0.3
  done
}

configure() {
  local d; d=$(mktemp -d)
  # global config: allow root (min_uid/min_gid default 1000), flush accounting every second
  qconf -sconf global | grep -v '^#' > "$d/global"
  sed -i -e 's/^min_uid .*/min_uid                      0/' -e 's/^min_gid .*/min_gid                      0/' \
         -e 's/flush_time=[0-9:]*/flush_time=00:00:01/' "$d/global"
  q qconf -Mconf "$d/global"           # the file must be named "global"
  # scheduler: run every second (default 15 s) and on every submit/finish
  qconf -ssconf > "$d/sconf"
  sed -i -e 's/^schedule_interval .*/schedule_interval                 0:0:1/' \
         -e 's/^flush_submit_sec .*/flush_submit_sec                  1/' \
         -e 's/^flush_finish_sec .*/flush_finish_sec                  1/' "$d/sconf"
  q qconf -Msconf "$d/sconf"
  qconf -ss 2>/dev/null | grep -qx "$SGEHOST" || q qconf -as "$SGEHOST"
  if ! qconf -sel 2>/dev/null | grep -qx "$SGEHOST"; then
    printf 'hostname %s\nload_scaling NONE\ncomplex_values NONE\nuser_lists NONE\nxuser_lists NONE\nprojects NONE\nxprojects NONE\nusage_scaling NONE\nreport_variables NONE\n' "$SGEHOST" > "$d/exechost"
    q qconf -Ae "$d/exechost"
  fi
  local pe rule
  for pe in smp mpi; do
    qconf -spl 2>/dev/null | grep -qx "$pe" && continue
    if [ $pe = smp ]; then rule='$pe_slots'; else rule='$fill_up'; fi
    printf 'pe_name %s\nslots 9999\nuser_lists NONE\nxuser_lists NONE\nstart_proc_args NONE\nstop_proc_args NONE\nallocation_rule %s\ncontrol_slaves TRUE\njob_is_first_task TRUE\nurgency_slots min\naccounting_summary FALSE\nqsort_args NONE\n' "$pe" "$rule" > "$d/pe"
    q qconf -Ap "$d/pe"
  done
  # queue all.q: EDITOR=cat makes "qconf -aq" accept its own template unchanged (creates the
  # queue with defaults); then -Mq sets what we need.
  # shellcheck disable=SC2209
  if ! qconf -sql 2>/dev/null | grep -qx all.q; then EDITOR=cat qconf -aq all.q >/dev/null 2>&1 || true; fi
  qconf -sq all.q > "$d/q"
  sed -i -e "s/^hostlist .*/hostlist              $SGEHOST/" -e "s/^slots .*/slots                 $SLOTS/" \
         -e 's/^pe_list .*/pe_list               smp mpi/' -e 's#^shell .*#shell                 /bin/bash#' \
         -e 's/^load_thresholds .*/load_thresholds       NONE/' "$d/q"
  q qconf -Mq "$d/q"
  rm -rf "$d"
}

queue_up() { # all.q@localhost listed with no state flags (a/u/d/E...)
  qstat -f -q all.q 2>/dev/null | awk -v q="all.q@$SGEHOST" '$1==q && NF==5 {ok=1} END{exit !ok}'
}

do_start() {
  install_pkgs
  host_setup
  if ! qm_running; then
    log "starting sge_qmaster"
    /usr/sbin/sge_qmaster
  fi
  wait_for "qmaster" qconf -sh
  configure
  if ! ex_running; then
    # Jobs the qmaster still lists while no execd runs are orphans of an earlier run (stuck in "t"): with one
    # slot they would keep the smoke job, and every test job, from ever starting.
    if [ -n "$(qstat -u '*' 2>/dev/null | awk 'NR>2')" ]; then
      log "deleting jobs left over from an earlier run"
      qdel -f -u '*' >/dev/null 2>&1 || true
    fi
    log "starting sge_execd"
    /usr/sbin/sge_execd
  fi
  wait_for "all.q@$SGEHOST to come up" queue_up
  # smoke test: a real job through qmaster -> scheduler -> execd -> shepherd
  timeout "$TIMEOUT" qsub </dev/null -sync y -b y -o /dev/null -j y -N smoke true >/dev/null || die "smoke job failed"
  echo "READY sge 8.1.9 host=$SGEHOST queue=all.q slots=$SLOTS pes=smp,mpi SGE_ROOT=$SGE_ROOT SGE_CELL=$SGE_CELL"
}

do_stop() {
  if qm_running; then
    qdel -f -u '*' >/dev/null 2>&1 || true
    for _ in $(seq 1 50); do [ -z "$(qstat -u '*' 2>/dev/null)" ] && break; sleep 0.2; done
  fi
  local p
  for f in $EX_PID $QM_PID; do   # execd first, then qmaster
    p=$(pid_of "$f")
    pid_alive "$p" || continue
    kill -TERM "$p" 2>/dev/null || true
    # sge_qmaster needs 8-11 s for its "controlled shutdown"; execd ~2 s
    for _ in $(seq 1 300); do pid_alive "$p" || break; sleep 0.1; done
    pid_alive "$p" && { log "KILL $p"; kill -KILL "$p" 2>/dev/null || true; }
  done
  rm -f $EX_PID $QM_PID
  echo "STOPPED sge"
}

case "$ACTION" in
  start) do_start ;;
  stop) do_stop ;;
  restart) do_stop; do_start ;;
  status)
    echo "qmaster pid: $(pid_of $QM_PID) alive=$(qm_running && echo yes || echo no)"
    echo "execd pid: $(pid_of $EX_PID) alive=$(ex_running && echo yes || echo no)"
    qstat -f 2>&1 || true ;;
  *) die "unknown action $ACTION (start|stop|status|restart)" ;;
esac
