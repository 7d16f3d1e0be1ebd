"""A GPU job through the launcher: what a user on a GPU node sees, in one line.

Makes a throwaway site, finds this node's GPUs as the launcher does (visibility variables, ``nvidia-smi -L``,
...), and runs one shell job asking for one GPU (``gpus_per_rank=1``) through ``balsam launcher -j mpi``. The job
prints the GPU variable the launcher gave it and, where ``nvidia-smi`` exists, the GPU it sees. Without a GPU the
site declares one (``launcher.gpus_per_node: 1``) so the same path runs, and the line says "simulated".

    python bench/gpu_job.py [--json FILE]

Exit status 0 when the job finished with the GPU variable set to one of the node's GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from balsam.api import ApplicationDefinition  # noqa: E402


class GpuProbe(ApplicationDefinition):
    """Prints the GPU visibility variables and, where nvidia-smi exists, the GPUs this job sees."""

    site = None
    command_template = ('echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-} ROCR_VISIBLE_DEVICES=${ROCR_VISIBLE_DEVICES:-} '
                        'ZE_AFFINITY_MASK=${ZE_AFFINITY_MASK:-}"; if command -v nvidia-smi >/dev/null; then nvidia-smi -L; fi')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the result to FILE as JSON")
    args = parser.parse_args()
    from balsam.platforms.nodes.gpus import detect_gpus

    found = detect_gpus(os.environ)
    tmp = Path(tempfile.mkdtemp(prefix="balsam-gpu-job-"))
    result: Dict[str, Any] = {"detected": found.summary(), "gpus": list(found.gpu_ids), "simulated": not found.gpu_ids}
    try:
        os.environ["BALSAM_HOME"] = str(tmp / "home")
        from balsam._api import sites
        from balsam.api import Job
        from balsam.site import init_site

        sites.reset()
        init_site(tmp / "gpu", name="gpu")
        ref = sites.resolve("gpu")
        if not found.gpu_ids:  # declare one, so the GPU path of the launcher runs all the same
            settings = ref.path / "settings.yml"
            text = settings.read_text()
            settings.write_text(text.replace("launcher:\n", "launcher:\n  gpus_per_node: 1\n", 1) if "launcher:\n" in text
                                else text + "\nlauncher:\n  gpus_per_node: 1\n")
        GpuProbe.site = "gpu"
        GpuProbe.sync()
        job = Job("probe", app_id=GpuProbe, gpus_per_rank=1)
        job.save()
        from balsam.db.jobs import StateChange, apply_state_changes

        with ref.store.write() as conn:
            apply_state_changes(conn, [StateChange(int(job.id), "PREPROCESSED")])
        t0 = time.perf_counter()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        proc = subprocess.run([sys.executable, "-m", "balsam", "launcher", "--site", str(ref.path), "-j", "mpi", "-t", "2",
                               "--idle-ttl", "1"], env=env, capture_output=True, text=True, timeout=180)
        result["launcher_rc"] = proc.returncode
        result["seconds"] = round(time.perf_counter() - t0, 2)
        state = ref.store.execute("SELECT state FROM job WHERE id=?", (int(job.id),))[0][0]
        out_path = ref.path / "data" / "probe" / "job.out"
        out = out_path.read_text() if out_path.exists() else ""
        result["state"] = state
        result["output"] = out.strip()[:2000]
        seen = ""
        for word in out.split():
            for var in ("CUDA_VISIBLE_DEVICES=", "ROCR_VISIBLE_DEVICES=", "ZE_AFFINITY_MASK="):
                if word.startswith(var) and word[len(var):]:
                    seen = word
        result["job_saw"] = seen
        ids = set(found.gpu_ids) if found.gpu_ids else {"0"}
        ok = state == "JOB_FINISHED" and bool(seen) and seen.split("=", 1)[1] in ids
        result["ok"] = ok
        kind = "simulated GPU (none found)" if not found.gpu_ids else found.summary()
        print(f"GPU job through the launcher: {'ok' if ok else 'FAILED'}: {state}, the job saw {seen or 'no GPU variable'}; "
              f"{kind}; {result['seconds']} s")
        if not ok:
            print(proc.stdout[-2000:], proc.stderr[-2000:], out, sep="\n")
        if args.json is not None:
            args.json.write_text(json.dumps(result, indent=1) + "\n")
        return 0 if ok else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
