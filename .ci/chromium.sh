#!/usr/bin/env bash
# .ci/chromium.sh -- what the dashboard's browser tests (pytest -m browser) need: Debian's Chromium with
# fonts-liberation, and Playwright for Python in the interpreter that runs the tests. The browser is never
# downloaded by Playwright (`playwright install` is not run); the tests launch /usr/bin/chromium.
#
# Usage (as root, Debian 12):
#   bash .ci/chromium.sh [start]   install what is missing, take one screenshot of a local page with Playwright,
#                                  print "READY chromium <version> playwright=<version>"
#   bash .ci/chromium.sh stop      no-op (no daemons); prints "STOPPED chromium"
# Knobs: PYTHON (default python3), CI_PW_VERSION (default ==1.65.2).
set -euo pipefail

ACTION=${1:-start}
PY=${PYTHON:-python3}
PW_SPEC=${CI_PW_VERSION-==1.65.2}
CHROMIUM=/usr/bin/chromium
log() { echo "[ci/chromium] $*" >&2; }
die() { echo "FAILED chromium: $*" >&2; exit 1; }

do_start() {
  if [ ! -x "$CHROMIUM" ] || [ ! -e /usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf ]; then
    [ "$(id -u)" = 0 ] || die "chromium is missing and we are not root (apt-get install chromium fonts-liberation)"
    log "installing from apt: chromium fonts-liberation"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null
  fi
  [ -x "$CHROMIUM" ] || die "no $CHROMIUM after apt-get install"
  if ! "$PY" -c 'import playwright.sync_api' 2>/dev/null; then
    log "pip install playwright$PW_SPEC"
    "$PY" -m pip install -q "playwright$PW_SPEC" 2>&1 | grep -v "Running pip as the 'root' user" || true
  fi
  local ver; ver=$("$CHROMIUM" --version 2>/dev/null | awk '/^Chromium/{print $2}')
  [ -n "$ver" ] || die "$CHROMIUM --version printed no version"
  timeout 120 "$PY" - "$CHROMIUM" <<'PYEOF' || die "Playwright could not drive $CHROMIUM"
import sys
from playwright.sync_api import sync_playwright
with sync_playwright() as p:
    b = p.chromium.launch(executable_path=sys.argv[1], headless=True)
    page = b.new_page()
    page.set_content("<h1>ok</h1><button onclick=\"this.textContent='clicked'\">x</button>")
    page.click("button")
    assert page.inner_text("button") == "clicked"
    assert len(page.screenshot()) > 1000
    b.close()
PYEOF
  echo "READY chromium $ver path=$CHROMIUM playwright=$("$PY" -c 'from importlib.metadata import version; print(version("playwright"))')"
}

case "$ACTION" in
  start) do_start ;;
  stop) echo "STOPPED chromium (no daemons)" ;;
  *) die "unknown action $ACTION (start|stop)" ;;
esac
