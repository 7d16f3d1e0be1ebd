"""The whole pipeline under kill -9: a site with an agent serving its API from two processes (``api.workers: 2``),
an mpi-mode and a serial-mode launcher, shell jobs, Python ``run()`` jobs on warm workers, jobs with a postprocess
hook, and a client on another host creating jobs through the agent. A seeded driver kills one of them at a
random moment, eleven times: the agent, a launcher, an API worker process, a hook worker or a Python worker.
Then everything is started again (no manual cleanup) and left to finish.

What a user would check: every job finished, or failed only where a killed Python worker or hook worker took its
run with it (RUN_ERROR, as documented); no job ran twice at once and every run is in its history; each job's
events form one unbroken chain (nothing lost or duplicated); the jobs created from the other host exist once
each; ``db check`` is clean; nothing of the site is left running once it is stopped."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml

from tests.launcher_support import REPO, events, states

pytestmark = pytest.mark.slow

SEED = 613
JOBS = 240
FOREIGN_BATCHES = 8
SETTLE_S = 150.0

APPS = '''
from balsam.api import ApplicationDefinition


class Mark(ApplicationDefinition):
    site = "test-site"
    # A twin (a second copy while one runs) cannot take the lock and says so in the marker file.
    command_template = "exec 9>>marker; flock -n 9 || echo TWIN >&9; echo start >&9; sleep {{ s }}; echo end >&9"


class Hooked(ApplicationDefinition):
    site = "test-site"
    command_template = "echo start >> marker; sleep {{ s }}"

    def postprocess(self):
        with open("post", "a") as f:
            f.write("post\\n")
        self.job.data = {"post": 1}
        self.job.state = "POSTPROCESSED"


class Py(ApplicationDefinition):
    site = "test-site"

    def run(self, i, s):
        import time
        with open("marker", "a") as f:
            f.write("start\\n")
        time.sleep(s)
        return i * 2
'''

FOREIGN = '''
import sys, time
sys.path.insert(0, sys.argv[1])
import apps
from balsam.api import Job
for b in range(int(sys.argv[2])):
    Job.objects.bulk_create([apps.Mark.submit(f"foreign/{b}/{k}", s=0.05, save=False) for k in range(10)])
    time.sleep(0.5)
print("created", flush=True)
'''


def _env(**extra: str) -> Dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), **extra)


def _balsam(site: Path, *args: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, "-m", "balsam", *args, "--site", str(site)], env=_env(), capture_output=True,
                          text=True, timeout=120)


def _launcher(site: Path, n: int) -> "subprocess.Popen[bytes]":
    with open(site / f"launcher-{n}.out", "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "balsam.launcher", "--site", str(site), "-j", ("mpi", "serial")[n],
                                 "-t", "30", "--idle-ttl", "5"], env=_env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _procs() -> Dict[int, Dict[str, Any]]:
    """Every process: its parent, command line and open files (Linux /proc)."""
    out: Dict[int, Dict[str, Any]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            files = []
            for fd in (entry / "fd").iterdir():
                try:
                    files.append(os.readlink(fd))
                except OSError:
                    pass
        except (OSError, IndexError, ValueError):
            continue
        out[int(entry.name)] = {"ppid": ppid, "cmd": cmd, "files": files}
    return out


def _descendants(procs: Dict[int, Dict[str, Any]], root: int) -> List[int]:
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        for child, p in procs.items():
            if p["ppid"] == pid:
                found.append(child)
                todo.append(child)
    return found


def _agent_pid(site: Path) -> int:
    try:
        return int((site / ".balsam" / "agent.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _victims(kind: str, site: Path, launchers: List["subprocess.Popen[bytes]"]) -> List[int]:
    agent = _agent_pid(site)
    if kind == "agent":
        return [agent] if agent else []
    if kind == "launcher":
        return [p.pid for p in launchers if p.poll() is None]
    procs = _procs()
    if kind == "pyworker":
        return [c for p in launchers for c in _descendants(procs, p.pid) if "balsam.launcher.pyworker" in procs[c]["cmd"]]
    kids = [c for c in _descendants(procs, agent) if "spawn_main" in procs[c]["cmd"]] if agent else []
    api = [c for c in kids if any("api-worker" in f for f in procs[c]["files"])]
    if kind == "apiworker":
        return api
    return [c for c in kids if c not in api and "resource_tracker" not in procs[c]["cmd"]]  # hook workers


def _left_running(site: Path) -> List[str]:
    """Processes that still have a file of the site open, or run in it."""
    left = []
    for pid, p in _procs().items():
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            cwd = ""
        if pid != os.getpid() and (cwd.startswith(str(site)) or any(f.startswith(str(site)) for f in p["files"])):
            left.append(f"{pid}: {p['cmd'][:120]}")
    return left


def test_kill_9_anywhere_in_the_pipeline_loses_nothing_and_runs_nothing_twice(site: Any) -> None:
    root = site.path
    settings = yaml.safe_load((root / "settings.yml").read_text())
    settings["api"] = {"workers": 2}
    settings["session"] = {"heartbeat_period_s": 1.0, "expiry_s": 5.0}
    settings.setdefault("launcher", {}).update(idle_ttl_s=5, status_flush_period_s=0.5)
    settings["processing"] = {"num_workers": 2, "period_s": 0.3}
    (root / "settings.yml").write_text(yaml.safe_dump(settings))
    (root / "apps.py").write_text(APPS)
    synced = _balsam(root, "app", "sync", str(root / "apps.py"))
    assert synced.returncode == 0, synced.stderr
    sys.path.insert(0, str(root))
    try:
        import apps  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(root))
    from balsam.api import Job

    rng = random.Random(SEED)
    kinds = [apps.Mark, apps.Hooked, apps.Py]
    Job.objects.bulk_create([
        kinds[i % 3].submit(f"j/{i}", s=round(rng.uniform(0.01, 0.3), 2), node_packing_count=8,
                            **({"i": i} if i % 3 == 2 else {}), save=False)
        for i in range(JOBS)])
    started = _balsam(root, "site", "start")
    assert started.returncode == 0, started.stdout + started.stderr
    foreign = subprocess.Popen([sys.executable, "-c", FOREIGN, str(root), str(FOREIGN_BATCHES)],
                               env=_env(BALSAM_HOSTNAME="login-2"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    launchers = [_launcher(root, 0), _launcher(root, 1)]
    kills: Counter = Counter()
    restarts = []
    try:
        schedule = ["agent", "agent", "launcher", "launcher", "launcher", "apiworker", "apiworker", "hookworker",
                    "hookworker", "pyworker", "pyworker"]
        rng.shuffle(schedule)  # a count of kills, not a time: a loaded machine gets the same faults, only slower
        for kind in schedule:
            time.sleep(rng.uniform(0.3, 1.5))
            victims = _victims(kind, root, launchers)
            if victims:
                try:
                    os.kill(rng.choice(victims), signal.SIGKILL)
                    kills[kind] += 1
                except ProcessLookupError:
                    pass
            if kind == "agent" and victims:
                time.sleep(0.1)
                restarts.append(_balsam(root, "site", "start"))  # no cleanup of pid files, locks or journals first
            for n, proc in enumerate(launchers):
                if proc.poll() is not None:
                    launchers[n] = _launcher(root, n)
        out, _ = foreign.communicate(timeout=180)
        assert foreign.returncode == 0 and "created" in out, out[-3000:]
        store = site.store
        ids = [int(r[0]) for r in store.execute("SELECT id FROM job")]
        deadline = time.monotonic() + SETTLE_S
        while time.monotonic() < deadline:
            if set(states(store, ids).values()) <= {"JOB_FINISHED", "FAILED"}:
                break
            for n, proc in enumerate(launchers):
                if proc.poll() is not None:
                    launchers[n] = _launcher(root, n)
            time.sleep(0.5)
    finally:
        if foreign.poll() is None:
            foreign.kill()
        for proc in launchers:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        _balsam(root, "site", "stop")
    print(f"kills: {dict(kills)}")
    assert kills["agent"] == 2 and kills["launcher"] == 3 and sum(kills.values()) >= 7, kills
    assert all(r.returncode == 0 for r in restarts), [r.stdout + r.stderr for r in restarts if r.returncode]
    final = states(store, ids)
    assert len(ids) == JOBS + 10 * FOREIGN_BATCHES
    workdirs = Counter(w for (w,) in store.execute("SELECT workdir FROM job"))
    assert max(workdirs.values()) == 1  # every creation (bulk, from the other host through a dying agent) applied once
    problems = []
    for job_id in ids:
        workdir = store.execute("SELECT workdir FROM job WHERE id=?", (job_id,))[0][0]
        folder = root / "data" / workdir
        marker = (folder / "marker").read_text().splitlines() if (folder / "marker").exists() else []
        history = events(store, job_id)
        chain = [e["from"] for e in history[1:]] == [e["to"] for e in history[:-1]]
        recorded = sum(1 for e in history if e["to"] == "RUNNING")
        # A recorded run may have been stopped before its first line: by its launcher's death, or its worker's kill.
        died = sum(1 for e in history if e["to"] == "RUN_TIMEOUT" and "launcher died" in str(e["data"].get("message", ""))
                   or e["to"] == "RUN_ERROR" and e["data"].get("returncode") == -9)
        runs = marker.count("start")
        tos = [e["to"] for e in history]
        killed_worker = any(e["to"] == "RUN_ERROR" and ("Python worker" in str(e["data"]) or "-9" in str(e["data"]))
                            for e in history) or any("hook worker" in str(e["data"]) for e in history)
        why = []
        if not chain:
            why.append("events do not chain")
        if "TWIN" in marker:
            why.append("two copies ran at once")
        if not recorded - died <= runs <= recorded:
            why.append(f"{runs} runs, {recorded} recorded, {died} ended by a dead launcher")
        if final[job_id] == "JOB_FINISHED" and tos.count("JOB_FINISHED") != 1:
            why.append("finished more than once")
        if final[job_id] == "FAILED" and not killed_worker:
            why.append("failed, with no killed worker to blame")
        if final[job_id] not in ("JOB_FINISHED", "FAILED"):
            why.append(f"left {final[job_id]}")
        if workdir.startswith("j/") and int(workdir[2:]) % 3 == 1 and final[job_id] == "JOB_FINISHED":
            data = json.loads(store.execute("SELECT data FROM job WHERE id=?", (job_id,))[0][0] or "{}")
            if not (folder / "post").exists() or data != {"post": 1}:
                why.append("postprocess hook result missing")
        if why:
            problems.append(f"job {job_id} {workdir}: {'; '.join(why)}: {[(e['from'], e['to'], e['data']) for e in history]}")
    assert not problems, "\n".join(problems[:10])
    check = _balsam(root, "db", "check")
    assert check.returncode == 0 and "ok" in check.stdout, check.stdout + check.stderr
    deadline = time.monotonic() + 15
    while _left_running(root) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _left_running(root)
