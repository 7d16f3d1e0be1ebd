#!/usr/bin/env bash
# .ci/mpi.sh -- Open MPI 4.1.4 and MPICH 4.0.2 from Debian 12, plus mpi4py in a venv, proven with a
# 4-rank run under each launcher, for the @pytest.mark.mpi tests. No daemons: "stop" has nothing to stop.
# Adapted from the team's proven recipe. Run it BEFORE .ci/slurm.sh (libpmix2, see there).
#
# Usage (as root, Debian 12):
#   bash .ci/mpi.sh [start]    install what is missing, check, print "READY mpi ..."
#   bash .ci/mpi.sh stop       no-op (MPI has no daemons); prints "STOPPED mpi"
#   bash .ci/mpi.sh clean      remove the venv made by this script
#
# Knobs:
#   CI_MPI_IMPLS="openmpi mpich"   which implementations to install/check
#   CI_MPI_VENV=<repo>/.venv-mpi   venv to create with mpi4py (the tests look for <repo>/.venv-mpi);
#                                  empty -> skip mpi4py
#   CI_MPI_PYTHON=python3          interpreter used to create the venv
#   CI_MPI_NP=4                    ranks for the check (more than nproc: needs --oversubscribe)
#
# How to run things afterwards (root):
#   Open MPI: mpirun.openmpi --allow-run-as-root --oversubscribe -n 4 <venv>/bin/python prog.py
#             (env equivalents: OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
#              OMPI_MCA_rmaps_base_oversubscribe=1)
#   MPICH:    MPI4PY_LIBMPI=libmpi.so.12 LD_LIBRARY_PATH=/usr/local/lib/mpich-abi \
#             mpiexec.mpich -n 4 <venv>/bin/python prog.py
# The mpi4py wheel from PyPI carries one extension per ABI and dlopen()s "libmpi.so" first,
# which Debian's alternatives point at Open MPI. Its MPICH extension needs "libmpi.so.12",
# but Debian names MPICH's library libmpich.so.12; the shim dir below adds that name.
# (The other way, `MPICC=mpicc.mpich pip install --no-binary mpi4py mpi4py`, compiles for ~3 min.)
set -euo pipefail

ACTION=${1:-start}
IMPLS=${CI_MPI_IMPLS:-openmpi mpich}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${CI_MPI_VENV-$REPO/.venv-mpi}
PY=${CI_MPI_PYTHON:-python3}
NP=${CI_MPI_NP:-4}
SHIM=/usr/local/lib/mpich-abi
MULTIARCH=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)

log() { echo "[ci/mpi] $*" >&2; }
die() { echo "FAILED mpi: $*" >&2; exit 1; }

do_start() {
  [ "$(id -u)" = 0 ] || die "must run as root (apt-get)"
  local pkgs=()
  for impl in $IMPLS; do
    case $impl in
      openmpi) command -v mpirun.openmpi >/dev/null 2>&1 && [ -e /usr/bin/mpicc.openmpi ] || pkgs+=(openmpi-bin libopenmpi-dev) ;;
      mpich)   command -v mpiexec.mpich >/dev/null 2>&1 && [ -e /usr/bin/mpicc.mpich ] || pkgs+=(mpich libmpich-dev) ;;
      *) die "unknown implementation $impl" ;;
    esac
  done
  if [ ${#pkgs[@]} -gt 0 ]; then
    log "installing from apt: ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  fi
  if [[ " $IMPLS " == *" mpich "* ]]; then
    install -d "$SHIM"
    ln -sfn "/usr/lib/$MULTIARCH/libmpich.so.12" "$SHIM/libmpi.so.12"
  fi

  local py=""
  if [ -n "$VENV" ]; then
    if [ ! -x "$VENV/bin/python" ]; then log "creating venv $VENV"; "$PY" -m venv "$VENV"; fi
    if ! "$VENV/bin/python" -c 'import mpi4py' 2>/dev/null; then
      log "pip install mpi4py"
      "$VENV/bin/python" -m pip install -q mpi4py
    fi
    py="$VENV/bin/python"
  fi

  local tmp; tmp=$(mktemp -d)
  cat > "$tmp/hello.py" <<'EOF'
from mpi4py import MPI
c = MPI.COMM_WORLD
tot = c.allreduce(c.Get_rank())
if c.Get_rank() == 0:
    print("size=%d sum=%d lib=%s" % (c.Get_size(), tot, MPI.Get_library_version().split(",")[0].strip()))
EOF
  local summary="" out want
  want=$(( NP * (NP - 1) / 2 ))
  for impl in $IMPLS; do
    if [ $impl = openmpi ]; then
      timeout 120 mpirun.openmpi --allow-run-as-root --oversubscribe -n "$NP" true || die "mpirun.openmpi -n $NP true failed"
      if [ -n "$py" ]; then
        out=$(timeout 120 mpirun.openmpi --allow-run-as-root --oversubscribe -n "$NP" "$py" "$tmp/hello.py") || die "Open MPI + mpi4py failed"
        [[ "$out" == "size=$NP sum=$want lib=Open MPI"* ]] || die "unexpected Open MPI output: $out"
      fi
      summary+=" openmpi=$(dpkg-query -W -f='${Version}' openmpi-bin)"
    else
      timeout 120 mpiexec.mpich -n "$NP" true || die "mpiexec.mpich -n $NP true failed"
      if [ -n "$py" ]; then
        out=$(MPI4PY_LIBMPI=libmpi.so.12 LD_LIBRARY_PATH="$SHIM${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
              timeout 120 mpiexec.mpich -n "$NP" "$py" "$tmp/hello.py") || die "MPICH + mpi4py failed"
        [[ "$out" == "size=$NP sum=$want lib=MPICH"* ]] || die "unexpected MPICH output: $out"
      fi
      summary+=" mpich=$(dpkg-query -W -f='${Version}' mpich)"
    fi
  done
  rm -rf "$tmp"
  [ -n "$py" ] && summary+=" mpi4py=$("$py" -c 'import mpi4py; print(mpi4py.__version__)') venv=$VENV"
  echo "READY mpi np=$NP$summary"
}

case "$ACTION" in
  start) do_start ;;
  stop) echo "STOPPED mpi (no daemons)" ;;
  clean) [ -n "$VENV" ] && rm -rf "$VENV"; echo "CLEANED mpi venv=$VENV" ;;
  *) die "unknown action $ACTION (start|stop|clean)" ;;
esac
