"""A job re-run on a host where an earlier copy still runs (its launcher died a moment ago, before its watchdog
stopped it, and before the copy was old enough to leave a pid record): the launcher finds the copy by the job
id and launcher nonce in its environment, stops it and waits, and leaves other jobs' and its own processes alone."""

from __future__ import annotations

import os
import subprocess
import time
from typing import Dict, List

from balsam.jobwatch import JOB_ENV, NONCE_ENV
from balsam.launcher.watchdog import stop_copies


def _sleeper(job_id: int, nonce: str, setsid: bool = True) -> "subprocess.Popen[bytes]":
    env: Dict[str, str] = dict(os.environ, **{JOB_ENV: str(job_id), NONCE_ENV: nonce})
    # sh -c 'sleep & wait': a copy with a child of its own, as a job's shell has
    return subprocess.Popen(["sh", "-c", "sleep 60 & wait"], env=env, start_new_session=setsid)


def test_an_earlier_copy_of_the_job_is_stopped_before_the_rerun_and_nothing_else() -> None:
    procs: List["subprocess.Popen[bytes]"] = []
    try:
        old_copy = _sleeper(4242, "dead-launcher")
        other_job = _sleeper(4243, "dead-launcher")
        own = _sleeper(4242, "this-launcher")
        procs += [old_copy, other_job, own]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(open(f"/proc/{p.pid}/environ", "rb").read() for p in procs):
            time.sleep(0.01)  # each has exec'd (its environment is readable)
        stopped = stop_copies(4242, "this-launcher", timeout_s=10)
        assert old_copy.pid in stopped  # (and its sleep, once that has started)
        assert other_job.pid not in stopped and own.pid not in stopped
        assert old_copy.wait(timeout=10) != 0  # killed, and gone before stop_copies returned
        assert other_job.poll() is None and own.poll() is None
        assert stop_copies(4242, "this-launcher") == []
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, 9)
            except OSError:
                pass
            p.wait()
