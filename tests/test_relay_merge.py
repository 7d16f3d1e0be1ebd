"""Balsam 0.7's jobs guide through the relay, against a real relay, a real site agent and a real launcher: a laptop
(this process, no site) saves a job right after creating it while the site's agent moves it on, and the save is
merged; a change the launcher's run made moot (parameters of a job that ran, a state change asked of a state the
job has left) is refused with StaleVersion and writes nothing; tags still merge after the run."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from balsam import exceptions as exc
from tests.test_relay_sync import Relay, login_node, relay, run, wait_for  # noqa: F401  (relay: the fixture)


def _at_site(root: Path, job_id: int) -> Any:
    """The job's row in the site's own DB (read only): state, tags, data, wall_time_min, parameters."""
    conn = sqlite3.connect(f"file:{root / '.balsam' / 'site.db'}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT state, tags, data, wall_time_min, parameters FROM job WHERE id = ?", (job_id,)).fetchone()
    finally:
        conn.close()
    return (row[0], json.loads(row[1]), json.loads(row[2]), row[3], json.loads(row[4]))


@pytest.mark.slow
def test_the_jobs_guide_saves_through_the_relay_while_the_site_moves_the_job(relay: Relay, tmp_path: Path) -> None:  # noqa: F811
    env, root = login_node(tmp_path, relay)
    # The agent pushes its moves with a command's answer, a finished job, or every 20 s here (not every second): the
    # relay's copy usually lags the agent's preprocessing when the guide saves. A push that fails under load is
    # retried at the next period, well within the waits below.
    settings = root / "settings.yml"
    settings.write_text(settings.read_text() + "sync:\n  period_s: 20\n")
    run(env, "-m", "balsam", "site", "start", "--site", str(root))
    try:
        from balsam.api import BatchJob, Job
        from balsam.sync import login as relay_login

        relay_login(relay.url, "alice", "alice-password")  # this process is the laptop
        job = Job("guide/1", app_id="Hello", site_name="polaris", parameters={"say_hello_to": "guide"}, tags={"step": "new"})
        job.save()
        assert job.state == "STAGED_IN" and job.version == 1
        # The agent preprocesses it after this copy was made; the relay's copy may not have it yet (the guide's next
        # line runs in that window).
        wait_for("the agent to preprocess the job", lambda: _at_site(root, job.id)[0] == "PREPROCESSED")
        job.tags["step"] = "tagged"
        job.data = {"note": "from the laptop"}
        job.wall_time_min = 5
        job.save()
        assert (job.state, job.tags, job.data, job.wall_time_min) == ("PREPROCESSED", {"step": "tagged"}, {"note": "from the laptop"}, 5)
        assert _at_site(root, job.id)[:4] == ("PREPROCESSED", {"step": "tagged"}, {"note": "from the laptop"}, 5)

        # Three copies read before any launcher exists, then a launcher runs the job to the end.
        params, state, tags = (Job.objects.get(id=job.id) for _ in range(3))
        BatchJob.objects.create(num_nodes=1, wall_time_min=10, job_mode="mpi", queue="local", project="local")
        wait_for("the launcher to finish the job", lambda: Job.objects.get(id=job.id).state == "JOB_FINISHED", timeout=300)
        assert (root / "data" / "guide" / "1" / "job.out").read_text().strip() == "Hello, guide!"
        params.parameters = {"say_hello_to": "too late"}
        with pytest.raises(exc.StaleVersion, match=r"a launcher took it \(JOB_FINISHED\) with the parameters it had.*nothing was saved"):
            params.save()
        state.state = "RESTART_READY"  # asked of PREPROCESSED; the job has finished since: it would run again
        with pytest.raises(exc.StaleVersion, match="moved it from PREPROCESSED to JOB_FINISHED"):
            state.save()
        assert _at_site(root, job.id)[0] == "JOB_FINISHED" and _at_site(root, job.id)[4] == {"say_hello_to": "guide"}
        tags.tags["reviewed"] = "yes"  # the user's own field: merged with the whole run
        tags.save()
        assert tags.state == "JOB_FINISHED" and _at_site(root, job.id)[1] == {"step": "tagged", "reviewed": "yes"}
        # Reloaded, the refused state change goes through: the job runs again.
        state.refresh_from_db()
        state.state = "RESTART_READY"
        state.save()
        assert _at_site(root, job.id)[0] in ("RESTART_READY", "RUNNING", "RUN_DONE", "POSTPROCESSED", "JOB_FINISHED")
    finally:
        run(env, "-m", "balsam", "site", "stop", "--site", str(root), check=False)
