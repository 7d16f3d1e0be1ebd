"""Helpers for the launcher tests: site settings, runnable jobs, launchers in this process or in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

import yaml

REPO = Path(__file__).resolve().parent.parent


def configure(site_path: Path, *, session: Optional[Dict[str, Any]] = None, **launcher: Any) -> None:
    """Change the ``launcher:`` (and ``session:``) settings of a site."""
    path = site_path / "settings.yml"
    data = yaml.safe_load(path.read_text()) or {}
    data.setdefault("launcher", {}).update(launcher)
    if session:
        data.setdefault("session", {}).update(session)
    path.write_text(yaml.safe_dump(data))


def runnable(store: Any, jobs: Iterable[Any]) -> List[int]:
    """Move saved jobs to PREPROCESSED (what the agent's processing does); returns their ids."""
    from balsam.db.jobs import StateChange, apply_state_changes

    ids = [int(j.id) for j in jobs]
    with store.write() as conn:
        apply_state_changes(conn, [StateChange(i, "PREPROCESSED") for i in ids])
    return ids


def set_state(store: Any, job_id: int, state: str, **data: Any) -> None:
    from balsam.db.jobs import StateChange, apply_state_changes

    with store.write() as conn:
        apply_state_changes(conn, [StateChange(job_id, state, data=data or None)])


def states(store: Any, ids: Iterable[int]) -> Dict[int, str]:
    ids = list(ids)
    rows = store.execute(f"SELECT id, state FROM job WHERE id IN ({','.join('?' * len(ids))})", ids)
    return {int(i): str(s) for i, s in rows}


def job_row(store: Any, job_id: int) -> Dict[str, Any]:
    cols = ("state", "return_code", "session_id", "serialized_return_value", "serialized_exception")
    row = store.execute(f"SELECT {', '.join(cols)} FROM job WHERE id=?", (job_id,))[0]
    return dict(zip(cols, row))


def events(store: Any, job_id: int) -> List[Dict[str, Any]]:
    import json

    rows = store.execute("SELECT from_state, to_state, data FROM event WHERE job_id=? ORDER BY id", (job_id,))
    return [{"from": f, "to": t, "data": json.loads(d) if d else {}} for f, t, d in rows]


def output(site_path: Path, workdir: str) -> str:
    path = site_path / "data" / workdir / "job.out"
    return path.read_text() if path.exists() else ""


def run(site: Any, mode: str, *, wall_time_min: float = 1.0, idle_ttl_s: float = 0.3, **kw: Any) -> int:
    """Run a launcher in this process until it stops."""
    from balsam.launcher import run_launcher

    return run_launcher(site.path, job_mode=mode, wall_time_min=wall_time_min, idle_ttl_s=idle_ttl_s, **kw)


def start(site_path: Path, mode: str, *args: str, wall_time_min: float = 1.0, idle_ttl_s: float = 30.0,
          env: Optional[Dict[str, str]] = None) -> "subprocess.Popen[bytes]":
    """A launcher subprocess (``python -m balsam.launcher``); its output goes to ``<site>/launcher-test.out``."""
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    full_env.update(env or {})
    argv = [sys.executable, "-m", "balsam.launcher", "--site", str(site_path), "-j", mode, "-t", str(wall_time_min),
            "--idle-ttl", str(idle_ttl_s), *args]
    out = open(site_path / "launcher-test.out", "ab")
    try:
        return subprocess.Popen(argv, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    finally:
        out.close()


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.02, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def read_pid(site_path: Path, workdir: str) -> int:
    """The pid a ``sleeper`` job wrote to ``pid`` in its workdir."""
    path = site_path / "data" / workdir / "pid"
    text = wait_for(lambda: path.exists() and path.read_text().strip(), what=f"{path}")
    return int(text)


def kill_quietly(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def launcher_log(site_path: Path, mode: str) -> str:
    return "".join(p.read_text() for p in sorted((site_path / "log").glob(f"{mode}_mode_*.log")))
