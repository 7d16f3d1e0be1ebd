#!/usr/bin/env bash
# The project's virtual environment: scripts/demo and scripts/test install Balsam into it, never into the
# system Python (Debian 12 and Ubuntu mark theirs "externally managed", PEP 668, and refuse pip there).
#
#   scripts/venv.sh [EXTRAS]      make or update the venv, install Balsam (with EXTRAS, e.g. dev), print its python
#   source scripts/venv.sh        from another script: then `balsam_venv [EXTRAS]` sets VENV_PY
#
# Knobs: PYTHON (the interpreter the venv is made from; default python3 on PATH, pyenv's included),
#        BALSAM_VENV (the venv's directory; default .venv in the repository).
# A venv made from a different Python version than PYTHON's is made again; an install is skipped when
# pyproject.toml and the extras are unchanged since the last one.

balsam_venv_fail() { echo "error: $*" >&2; return 1; }

balsam_venv() {  # balsam_venv [EXTRAS] -> sets VENV_PY
  local extras=${1:-} repo base want have venv stamp spec
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  base=${PYTHON:-python3}
  venv=${BALSAM_VENV:-$repo/.venv}
  command -v "$base" >/dev/null 2>&1 || { balsam_venv_fail "$base not found: install Python 3.9 or newer (Debian/Ubuntu: apt install python3 python3-venv)"; return 1; }
  want=$("$base" -c 'import sys; print("%d.%d" % sys.version_info[:2]) if sys.version_info >= (3, 9) else print("old")' 2>/dev/null) \
    || { balsam_venv_fail "$base does not run"; return 1; }
  [ "$want" != old ] || { balsam_venv_fail "$base is older than Python 3.9, which Balsam needs: set PYTHON=/path/to/python3.9+"; return 1; }
  if [ -x "$venv/bin/python" ]; then
    have=$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo broken)
    if [ "$have" != "$want" ] || [ ! -x "$venv/bin/pip" ]; then
      echo "Remaking $venv (Python $have there, $want from $base)" >&2
      rm -rf "$venv"
    fi
  elif [ -e "$venv" ]; then
    rm -rf "$venv"   # a half-made venv (say, from a failed earlier attempt)
  fi
  if [ ! -x "$venv/bin/python" ]; then
    if ! "$base" -m venv "$venv" >/dev/null 2>&1; then
      rm -rf "$venv"
      balsam_venv_fail "'$base -m venv' does not work here: install Python's venv module (Debian/Ubuntu: apt install python3-venv)"
      return 1
    fi
  fi
  spec=.
  [ -z "$extras" ] || spec=".[$extras]"
  stamp="$venv/.balsam-install-${extras:-base}"
  want="$spec $(cksum < "$repo/pyproject.toml")"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    (cd "$repo" && "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$spec") \
      || { balsam_venv_fail "installing Balsam into $venv failed (see pip's message above)"; return 1; }
    echo "$want" > "$stamp"
  fi
  VENV_PY="$venv/bin/python"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  balsam_venv "${1:-}"
  echo "$VENV_PY"
fi
