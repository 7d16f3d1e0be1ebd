#!/usr/bin/env bash
# .ci/users.sh -- the unprivileged user the permission tests run commands as (tests/test_permissions.py): another
# user of the same login node, who must read nothing of a site, its agent or a relay. Idempotent.
#
# Usage (as root):
#   bash .ci/users.sh [start]   create the user balsamtest if missing, print "READY users balsamtest"
#   bash .ci/users.sh stop      no-op (the user stays); prints "STOPPED users"
set -euo pipefail

ACTION=${1:-start}
NAME=balsamtest
die() { echo "FAILED users: $*" >&2; exit 1; }

case "$ACTION" in
  start)
    [ "$(id -u)" = 0 ] || die "must run as root to create $NAME"
    if ! id "$NAME" >/dev/null 2>&1; then
      # A group of that name left by an earlier user (userdel without its group, a restored /etc/passwd): join it.
      if getent group "$NAME" >/dev/null 2>&1; then
        useradd -m -g "$NAME" "$NAME" || die "useradd $NAME failed"
      else
        useradd -m "$NAME" || die "useradd $NAME failed"
      fi
      home=$(getent passwd "$NAME" | cut -d: -f6)
      [ -d "$home" ] && chown "$NAME": "$home"  # a home left by an earlier user of that name is theirs now
    fi
    command -v runuser >/dev/null 2>&1 || die "runuser (util-linux) is missing"
    echo "READY users $NAME"
    ;;
  stop)
    echo "STOPPED users"
    ;;
  *)
    die "usage: $0 [start|stop]"
    ;;
esac
