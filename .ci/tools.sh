#!/usr/bin/env bash
# .ci/tools.sh -- command-line tools the platform tests use that a minimal Debian 12 image lacks:
# rsync (the rsync transfer adapter's real tests). Idempotent; installs from apt only if missing.
#
# Usage (as root, Debian 12):
#   bash .ci/tools.sh [start]   install what is missing, print "READY tools ..."
#   bash .ci/tools.sh stop      no-op (no daemons); prints "STOPPED tools"
set -euo pipefail

ACTION=${1:-start}
log() { echo "[ci/tools] $*" >&2; }
die() { echo "FAILED tools: $*" >&2; exit 1; }

do_start() {
  local pkgs=()
  command -v rsync >/dev/null 2>&1 || pkgs+=(rsync)
  if [ ${#pkgs[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "must run as root to install: ${pkgs[*]}"
    log "installing from apt: ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  fi
  local d; d=$(mktemp -d)
  echo hi > "$d/a"; rsync -a "$d/a" "$d/b" && cmp -s "$d/a" "$d/b" || die "rsync smoke copy failed"
  rm -rf "$d"
  echo "READY tools rsync=$(rsync --version | awk 'NR==1{print $3}')"
}

case "$ACTION" in
  start) do_start ;;
  stop) echo "STOPPED tools (no daemons)" ;;
  *) die "unknown action $ACTION (start|stop)" ;;
esac
