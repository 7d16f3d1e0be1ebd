#!/usr/bin/env bash
# The many-core check in one call, for a device machine whose time is short (e.g. 16 cores and a GPU):
#   1. the machine: CPUs, load, GPUs (nvidia-smi -L, and what Balsam's launcher detects);
#   2. a GPU job through the launcher (bench/gpu_job.py; simulated where no GPU is found);
#   3. the whole pipeline (bench/bench_pipeline.py: agent + `balsam launcher`, shell no-op jobs in both modes
#      against xargs in the same run, Python run() jobs/s, claim-to-start p50/p99) at the machine's core count;
#   4. if py-spy is installed, one more profiled round, with the agent's and launchers' top functions;
# then a compact summary. Installs nothing; needs only this checkout and its Python (PYTHON, default python3).
#
#   bash bench/device_check.sh [--cores N] [--jobs N] [--py-jobs N] [--rounds N] [--out DIR] [--no-profile]
#
# Defaults: --cores $(nproc) --jobs 20000 --py-jobs 10000 --rounds 2 --out /tmp/balsam-device-check. Each step
# has a time limit (STEP_TIMEOUT_S, default 420 s), so one stuck step cannot use up the machine.
set -uo pipefail

cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
CORES="$(nproc)"
JOBS=20000
PY_JOBS=10000
ROUNDS=2
OUT=/tmp/balsam-device-check
PROFILE=1
STEP_TIMEOUT_S="${STEP_TIMEOUT_S:-420}"
while [ $# -gt 0 ]; do
    case "$1" in
        --cores) CORES="$2"; shift 2 ;;
        --jobs) JOBS="$2"; shift 2 ;;
        --py-jobs) PY_JOBS="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --no-profile) PROFILE=0; shift ;;
        -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "device_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
for n in "$CORES" "$JOBS" "$PY_JOBS" "$ROUNDS"; do
    case "$n" in ''|*[!0-9]*) echo "device_check.sh: --cores, --jobs, --py-jobs and --rounds take whole numbers" >&2; exit 2 ;; esac
done
mkdir -p "$OUT"
STATUS=0

echo "== machine: $(nproc) CPUs ($CORES used), $(free -g 2>/dev/null | awk '/^Mem:/ {print $2 " GiB memory"}'), $(uptime | sed 's/.*load/load/')"
echo "   python: $("$PY" -c 'import sys, sqlite3; print(sys.version.split()[0], "sqlite", sqlite3.sqlite_version)')"
echo "== GPUs"
if command -v nvidia-smi >/dev/null 2>&1; then
    timeout 60 nvidia-smi -L 2>&1 | sed 's/^/   /'
else
    echo "   nvidia-smi: not found"
fi
echo "   the launcher detects: $("$PY" -c 'import os; from balsam.platforms.nodes.gpus import detect_gpus; print(detect_gpus(os.environ).summary())' 2>&1)"

echo "== a GPU job through the launcher"
timeout "$STEP_TIMEOUT_S" "$PY" bench/gpu_job.py --json "$OUT/gpu_job.json" 2>&1 | sed 's/^/   /'
[ "${PIPESTATUS[0]}" -eq 0 ] || STATUS=1

echo "== the whole pipeline: $CORES cores, $JOBS shell jobs and $PY_JOBS Python jobs per case, $ROUNDS rounds"
timeout "$STEP_TIMEOUT_S" "$PY" bench/bench_pipeline.py --cores "$CORES" --jobs "$JOBS" --py-jobs "$PY_JOBS" --rounds "$ROUNDS" \
    --json "$OUT/pipeline.json" 2>&1 | tee "$OUT/pipeline.txt" | sed 's/^/   /'
[ "${PIPESTATUS[0]}" -eq 0 ] || STATUS=1

if [ "$PROFILE" = 1 ] && command -v py-spy >/dev/null 2>&1; then
    echo "== one profiled round (py-spy; slower, so not counted above)"
    rm -rf "$OUT/py-spy"
    timeout "$STEP_TIMEOUT_S" "$PY" bench/bench_pipeline.py --cores "$CORES" --jobs "$JOBS" --py-jobs 0 --rounds 1 --latency 0 \
        --py-spy "$OUT/py-spy" > "$OUT/profile.txt" 2>&1
    [ $? -eq 0 ] || STATUS=1
    sed -n '/samples$/,$p' "$OUT/profile.txt" | grep -v '^  incl' | sed 's/^/   /'
elif [ "$PROFILE" = 1 ]; then
    echo "== py-spy: not installed (no profile)"
fi

echo "== summary"
"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
try:
    p = json.loads((out / "pipeline.json").read_text())
except (OSError, ValueError):
    print("   pipeline: no result (see pipeline.txt)")
else:
    best = p["best"]
    print(f"   {p['cores']} cores, {p['jobs']} jobs, load average {p['load_average'][0]:.1f} -> {p['load_average'][1]:.1f}")
    for mode, r in p["ratios"].items():
        print(f"   pipeline {mode:6s} {best['pipeline ' + mode]:7.0f} jobs/s = {r['same_work']:.2f} of xargs doing the same work, "
              f"{r['spawn_floor']:.2f} of the spawn floor")
    for case, rounds in (p.get("phases") or {}).items():
        if not case.startswith("python"):
            print(f"   pipeline {case:6s} first start after {min(r['start_ms'] for r in rounds):.0f} ms, steady "
                  f"{max(r['steady_per_s'] for r in rounds):.0f} jobs/s, tail {min(r['tail_ms'] for r in rounds):.0f} ms")
    cpu = p.get("cpu_us_per_job") or {}
    if cpu.get("spawn floor"):
        print(f"   CPU per job: spawn floor {min(cpu['spawn floor']):.0f} us; " + ", ".join(
            f"{c} launcher {min(v[0::2]):.0f} us + agent {min(v[1::2]):.0f} us" for c, v in cpu.items() if c != "spawn floor"))
    py = [f"{k.split()[-1]} {v:.0f}" for k, v in best.items() if k.startswith("python run()")]
    if py:
        print(f"   python run() jobs/s: {', '.join(py)}")
    lat = p.get("claim_to_start_ms")
    if lat:
        print(f"   claim-to-start p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms")
try:
    g = json.loads((out / "gpu_job.json").read_text())
except (OSError, ValueError):
    print("   GPU job: no result")
else:
    print(f"   GPU job: {'ok' if g.get('ok') else 'FAILED'} ({g.get('state')}, saw {g.get('job_saw') or 'nothing'}; "
          f"{'simulated' if g.get('simulated') else g.get('detected')})")
EOF
echo "   files: $OUT"
exit "$STATUS"
