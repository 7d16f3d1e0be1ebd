#!/usr/bin/env bash
# .ci/sshd.sh -- a private OpenSSH server on 127.0.0.1 for Balsam's rsync-over-ssh transfer tests
# (@pytest.mark.sshd), started without systemd, with its own host key and client key in one scratch folder.
# Nothing under ~/.ssh or /etc/ssh is read or changed.
#
# Usage (Debian 12; installing needs root):
#   bash .ci/sshd.sh [start]   install openssh-server + rsync if missing, start sshd, rsync one file through it,
#                              print "READY sshd port=... dir=..."
#   bash .ci/sshd.sh rsh       print the ssh command for rsync -e (what the tests put in transfers.rsync_rsh)
#   bash .ci/sshd.sh stop      stop the sshd this script started (by its pid file) and remove the folder
#   bash .ci/sshd.sh status    pid, port, and whether it accepts our key
#
# Knobs: BALSAM_CI_SSHD_DIR (default /tmp/balsam-ci-sshd; the tests read the same variable),
#        BALSAM_CI_SSHD_PORT (default: the first free port from 2222), BALSAM_CI_SSHD_TIMEOUT (default 30 s).
#
# Why the settings below: StrictModes is off because the folder lives under /tmp (world-writable); keys only
# (UsePAM no), which lets root log in where its password field is "*"; sshd needs /run/sshd to exist.
# Connect to 127.0.0.1, not "localhost" (which may resolve to ::1 first; this sshd listens on IPv4 only).
set -euo pipefail

action=${1:-start}
dir=${BALSAM_CI_SSHD_DIR:-/tmp/balsam-ci-sshd}
wait_s=${BALSAM_CI_SSHD_TIMEOUT:-30}
pidfile=$dir/sshd.pid
portfile=$dir/port

say() { echo "[.ci/sshd] $*" >&2; }
fail() { echo "FAILED sshd: $*" >&2; exit 1; }

running() {  # the pid in the pid file is alive and not a zombie
  local pid
  pid=$(cat "$pidfile" 2>/dev/null || true)
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && ! grep -q '^[^)]*) Z' "/proc/$pid/stat" 2>/dev/null
}

ensure_packages() {
  local missing=()
  [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
  command -v ssh >/dev/null 2>&1 && command -v ssh-keygen >/dev/null 2>&1 || missing+=(openssh-client)
  command -v rsync >/dev/null 2>&1 || missing+=(rsync)
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || fail "need ${missing[*]} (install them, or run as root)"
  say "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

free_port() {  # prints the first port from $1 that 127.0.0.1 can bind
  python3 - "$1" <<'PY'
import socket, sys
for port in range(int(sys.argv[1]), int(sys.argv[1]) + 200):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    print(port)
    break
PY
}

rsh() {
  [ -s "$portfile" ] || fail "not started (no $portfile)"
  printf 'ssh -p %s -i %s -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile=%s\n' \
    "$(cat "$portfile")" "$dir/client_key" "$dir/known_hosts"
}

accepts_key() {
  [ -s "$portfile" ] || return 1
  # shellcheck disable=SC2046
  timeout 10 $(rsh) -o ConnectTimeout=5 127.0.0.1 true </dev/null >/dev/null 2>&1
}

start() {
  ensure_packages
  mkdir -p /run/sshd && chmod 0755 /run/sshd
  if running && accepts_key; then
    say "already running (pid $(cat "$pidfile"))"
  else
    if running; then kill -TERM "$(cat "$pidfile")" 2>/dev/null || true; sleep 0.3; fi
    mkdir -p "$dir" && chmod 0700 "$dir"
    [ -s "$dir/host_key" ] || ssh-keygen -q -t ed25519 -N '' -C balsam-ci-host -f "$dir/host_key"
    [ -s "$dir/client_key" ] || ssh-keygen -q -t ed25519 -N '' -C balsam-ci-client -f "$dir/client_key"
    install -m 0600 "$dir/client_key.pub" "$dir/authorized_keys"
    local port=${BALSAM_CI_SSHD_PORT:-$(free_port 2222)}
    [ -n "$port" ] || fail "no free port on 127.0.0.1 from 2222"
    echo "$port" >"$portfile"
    # the host key is known in advance, so clients can keep StrictHostKeyChecking=yes
    echo "[127.0.0.1]:$port $(awk '{print $1, $2}' "$dir/host_key.pub")" >"$dir/known_hosts"
    cat >"$dir/sshd_config" <<EOF
# written by .ci/sshd.sh: a test-only sshd for Balsam's transfer tests
ListenAddress 127.0.0.1
Port $port
HostKey $dir/host_key
PidFile $pidfile
AuthorizedKeysFile $dir/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
MaxStartups 100:30:200
MaxSessions 100
Subsystem sftp internal-sftp
EOF
    /usr/sbin/sshd -t -f "$dir/sshd_config" || fail "sshd rejected $dir/sshd_config"
    say "starting sshd on 127.0.0.1:$port"
    /usr/sbin/sshd -f "$dir/sshd_config" -E "$dir/sshd.log"
  fi
  local until=$(( $(date +%s) + wait_s ))
  while ! accepts_key; do
    if [ "$(date +%s)" -ge "$until" ]; then tail -n 20 "$dir/sshd.log" >&2 || true; fail "no answer after ${wait_s}s"; fi
    sleep 0.2
  done
  # one real copy through it, so READY means rsync over ssh works
  local scratch
  scratch=$(mktemp -d)
  head -c 65536 /dev/urandom >"$scratch/a"
  timeout 30 rsync -a -e "$(rsh)" "$scratch/a" "127.0.0.1:$scratch/b" </dev/null || { rm -rf "$scratch"; fail "rsync over ssh failed"; }
  cmp -s "$scratch/a" "$scratch/b" || { rm -rf "$scratch"; fail "rsync's copy differs"; }
  rm -rf "$scratch"
  echo "READY sshd port=$(cat "$portfile") user=$(id -un) dir=$dir rsync=$(rsync --version | awk 'NR==1{print $3}')"
}

stop() {
  if running; then
    local pid
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do running || break; sleep 0.1; done
    running && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -rf "$dir"
  echo "STOPPED sshd"
}

case "$action" in
  start) start ;;
  stop) stop ;;
  rsh) rsh ;;
  status) echo "pid=$(cat "$pidfile" 2>/dev/null || echo none) port=$(cat "$portfile" 2>/dev/null || echo none) running=$(running && echo yes || echo no) accepts_key=$(accepts_key && echo yes || echo no)" ;;
  *) fail "unknown action $action (start|stop|rsh|status)" ;;
esac
