"""The scheduler service with the real local adapter: submit, poll, finish, cancel, refuse."""

from __future__ import annotations

import os
import time
from typing import Any, Callable, List

import pytest

from balsam.api import BatchJob, Job, Session
from balsam.platforms.schedulers import get_scheduler
from balsam.platforms.schedulers.base import current_user, output_path_for
from balsam.services.scheduler import SchedulerService
from balsam.settings import SchedulerSettings
from tests.helpers import advance

TEMPLATE = """#!/bin/bash
echo "batch job {{ batch_job_id }}: {{ job_mode }} on {{ num_nodes }} node(s) for {{ wall_time_min }} min"
sleep "${BALSAM_TEST_SLEEP:-0.2}"
"""


@pytest.fixture
def scheduler(site: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    (site.path / "job-template.sh").write_text(TEMPLATE)
    adapter = get_scheduler("local", state_dir=site.layout.state / "local-jobs", options={"kill_grace_s": "1"})
    return SchedulerService(site, SchedulerSettings(sync_period_s=0.1), adapter, balsam_command="balsam")


def until(cond: Callable[[], bool], service: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        service.run_cycle()
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def test_submit_run_finish_with_times(scheduler: Any, site: Any) -> None:
    bj = BatchJob.objects.create(num_nodes=1, wall_time_min=5, job_mode="serial")
    scheduler.run_cycle()
    bj.refresh_from_db()
    assert bj.state in ("queued", "running") and bj.scheduler_id
    script = site.layout.qsubmit / f"qlaunch{bj.id}.sh"
    assert "serial on 1 node(s) for 5 min" in script.read_text()
    assert bj.status_info["submit_script"] == str(script)
    until(lambda: BatchJob.objects.get(id=bj.id).state == "finished", scheduler)
    bj.refresh_from_db()
    assert bj.start_time is not None and bj.end_time is not None and bj.end_time >= bj.start_time
    assert bj.status_info["scheduler_state"] == "finished"
    assert f"batch job {bj.id}: serial" in output_path_for(script).read_text()
    assert site.store.execute("SELECT queued_jobs FROM site")[0][0] == "{}"


def test_pending_deletion_cancels_and_times_out_the_launchers_jobs(scheduler: Any, site: Any, hello: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BALSAM_TEST_SLEEP", "60")
    bj = BatchJob.objects.create(num_nodes=1, wall_time_min=5)
    until(lambda: BatchJob.objects.get(id=bj.id).state == "running", scheduler)
    job = hello.submit(workdir="w", say_hello_to="x")
    advance(job, "PREPROCESSED")
    (got,) = Session.objects.create(batch_job_id=bj.id).acquire_jobs()
    advance(got, "RUNNING")
    bj.state = "pending_deletion"
    bj.save()
    until(lambda: BatchJob.objects.get(id=bj.id).state == "finished", scheduler)
    assert BatchJob.objects.get(id=bj.id).status_info["scheduler_state"] == "cancelled"
    assert str(Job.objects.get(id=job.id).state) == "RUN_TIMEOUT"
    assert "ended while the job was running" in Job.objects.get(id=job.id).history()[-1].data["message"]


def test_delete_of_a_running_batch_job_cancels_it_then_removes_it(scheduler: Any, site: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BALSAM_TEST_SLEEP", "60")
    bj = BatchJob.objects.create(num_nodes=1, wall_time_min=5)
    until(lambda: BatchJob.objects.get(id=bj.id).state == "running", scheduler)
    bj.refresh_from_db()
    pid = int(bj.scheduler_id)  # the local scheduler's id is the batch script's process id
    bj.delete()
    assert bj.state == "pending_deletion"  # the agent asks the scheduler to cancel it
    until(lambda: BatchJob.objects.filter(id=bj.id).count() == 0, scheduler)
    with pytest.raises(ProcessLookupError):  # the batch script's process is gone, not just the record
        for _ in range(200):
            os.kill(pid, 0)
            time.sleep(0.05)


def test_deleted_while_being_submitted_is_cancelled_at_the_scheduler(scheduler: Any, site: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BALSAM_TEST_SLEEP", "60")
    bj = BatchJob.objects.create(num_nodes=1, wall_time_min=5)
    submitted = []
    real_submit = scheduler.adapter.submit

    def submit_then_user_deletes(*args: Any, **kw: Any) -> int:
        submitted.append(real_submit(*args, **kw))
        BatchJob.objects.get(id=bj.id).delete()  # the user's delete() lands while the agent submits
        return submitted[-1]

    monkeypatch.setattr(scheduler.adapter, "submit", submit_then_user_deletes)
    scheduler.run_cycle()
    assert BatchJob.objects.filter(id=bj.id).count() == 0
    with pytest.raises(ProcessLookupError):
        for _ in range(200):
            os.kill(submitted[0], 0)
            time.sleep(0.05)


def test_deleting_before_submission_needs_no_scheduler(scheduler: Any) -> None:
    bj = BatchJob.objects.create(num_nodes=1, wall_time_min=5)
    bj.state = "pending_deletion"
    bj.save()
    scheduler.run_cycle()
    bj.refresh_from_db()
    assert bj.state == "finished" and bj.scheduler_id is None


def test_a_refused_submission_is_submit_failed_with_the_reason(scheduler: Any, site: Any) -> None:
    (site.path / "job-template.sh").write_text("#!/bin/bash\necho {{ no_such_variable }}\n")
    bj = BatchJob.objects.create(num_nodes=1, wall_time_min=5)
    scheduler.run_cycle()
    bj.refresh_from_db()
    assert bj.state == "submit_failed"
    assert "no_such_variable" in bj.status_info["error"]


def test_a_template_whose_expression_fails_is_submit_failed_naming_its_line(scheduler: Any, site: Any) -> None:
    """A TypeError or ZeroDivisionError of the template's own arithmetic left the scheduler service as itself: the
    BatchJob stayed 'submitting' and was tried again every cycle, and --dry-run said 'unexpected TypeError'."""
    (site.path / "job-template.sh").write_text("#!/bin/bash\n#SBATCH -N {{ num_nodes }}\n# {{ num_nodes + 'x' }}\n")
    bj = BatchJob.objects.create(num_nodes=1, wall_time_min=5)
    scheduler.run_cycle()
    bj.refresh_from_db()
    assert bj.state == "submit_failed" and bj.scheduler_id is None
    assert bj.status_info["error"].startswith("job template line 3: TypeError: unsupported operand"), bj.status_info


def test_a_submission_the_scheduler_refuses_is_submit_failed_with_its_stderr(site: Any) -> None:
    """Every refusing qsub/sbatch ends its stderr with a line feed, which the BatchJob's status_info refused as a
    control character: the BatchJob stayed pending_submission, 'submitting', asked about again every cycle."""
    from balsam.platforms.runner import CommandResult

    stderr = "qsub: Unauthorized Request \nqsub: project MyProj has no allocation \x1b[31m\n"
    service = _pbs_service(site, lambda a: CommandResult(a, 170, "", stderr) if a[0] == "qsub" else None)
    bj = BatchJob.objects.create(num_nodes=1, wall_time_min=5)
    (row,) = service._batch_jobs(("pending_submission",))
    service._submit(row)
    bj.refresh_from_db()
    assert bj.state == "submit_failed" and bj.scheduler_id is None
    assert bj.status_info["error"] == "qsub failed (exit 170): qsub: project MyProj has no allocation \\x1b[31m"
    assert bj.status_info["stderr"] == "qsub: Unauthorized Request \nqsub: project MyProj has no allocation \\x1b[31m\n"
    assert "submitting" not in bj.status_info


# ------------------------------------------------------------------------------- scheduler outages (issue 19)
def _pbs_service(site: Any, reply: Any) -> Any:
    from balsam.platforms.runner import FakeRunner

    adapter = get_scheduler("pbs", FakeRunner(responder=reply))
    return SchedulerService(site, SchedulerSettings(sync_period_s=0.1), adapter, balsam_command="balsam")


def _queued(site: Any, scheduler_id: int, state: str = "queued") -> int:
    bj = BatchJob.objects.create(num_nodes=1, wall_time_min=5)
    with site.store.write() as conn:
        conn.execute("UPDATE batch_job SET state=?, scheduler_id=? WHERE id=?", (state, scheduler_id, bj.id))
    return int(bj.id)


def test_a_scheduler_outage_keeps_every_batch_job_and_says_why(site: Any) -> None:
    """The real PBS outage capture: exit 255, a JSON header with no Jobs, 'cannot connect' on stderr."""
    import json

    from balsam.platforms.runner import CommandResult
    from balsam.services.base import ServiceThread
    from balsam.services.scheduler import SchedulerUnreachable
    from tests.platforms_support import fixture

    cap = json.loads(fixture("real", "pbs", "qut_qstat_connection_refused.json"))
    service = _pbs_service(site, lambda a: CommandResult(a, cap["returncode"], cap["stdout"], cap["stderr"]))
    queued, running = _queued(site, 101), _queued(site, 102, "running")
    with pytest.raises(SchedulerUnreachable, match="keeps its state.*cannot connect to server"):
        service.run_cycle()
    assert BatchJob.objects.get(id=queued).state == "queued" and BatchJob.objects.get(id=running).state == "running"
    import threading

    thread = ServiceThread(service, threading.Event())
    for _ in range(3):
        thread.run_one()
    health = thread.health()
    assert health["failures_in_a_row"] == 3 and "cannot connect to server" in health["last_error"]
    assert health["retry_in_s"] > service.period_s * 4  # backs off
    from balsam.cli.service import format_status

    text = format_status({"running": True, "services": {"scheduler": health}})
    assert "ERROR" in text and "cannot connect to server" in text and "3 cycles in a row" in text
    health["last_error"] = "qstat: \x1b]0;owned\x07 cannot connect"  # a scheduler's words, shown, not obeyed
    assert "last error: qstat: \\x1b]0;owned\\x07 cannot connect" in format_status({"running": True, "services": {"scheduler": health}})
    assert BatchJob.objects.get(id=queued).state == "queued"


def test_a_batch_job_missing_from_the_listing_ends_only_when_the_history_agrees(site: Any) -> None:
    from balsam.services.scheduler import MISSING_POLLS
    from tests.platforms_support import fixture

    listing = '{"timestamp":1,"pbs_version":"2022","pbs_server":"s"}'  # a successful poll that lists neither job
    history = {"1290": fixture("pbs", "qstat_x_f_json_deleted_before_run.txt"),
               "1147579": fixture("pbs", "qstat_f_json.txt")}  # the history shows 1147579 still running

    def reply(argv: Any) -> str:
        return history[argv[-1]] if len(argv) == 6 else listing

    service = _pbs_service(site, reply)
    deleted, alive = _queued(site, 1290), _queued(site, 1147579, "running")
    for _ in range(MISSING_POLLS - 1):
        service.run_cycle()
        assert BatchJob.objects.get(id=deleted).state == "queued"  # missing once or twice is not the end
    service.run_cycle()
    bj = BatchJob.objects.get(id=deleted)
    assert bj.state == "finished" and bj.status_info["scheduler_state"] == "cancelled"
    assert "terminated" in bj.status_info["reason"]
    kept = BatchJob.objects.get(id=alive)  # missing as often, but the history says it runs: kept, count reset
    assert kept.state == "running" and kept.status_info["missing_polls"] == "0"


def _interrupted_submission(site: Any, ago_s: float) -> Any:
    """A BatchJob whose submission was under way ``ago_s`` seconds ago when its agent was killed (the mark it left)."""
    from balsam.db import batch_jobs as batch_db

    bj = BatchJob.objects.create(num_nodes=1, wall_time_min=5)
    with site.store.write() as conn:
        batch_db.update_batch_job(conn, bj.id, info={batch_db.SUBMITTING: repr(time.time() - ago_s)})
    return bj


@pytest.mark.parametrize("later", ["listed", "absent"])
def test_an_interrupted_submission_that_cannot_be_confirmed_ends_submit_failed_and_follows_the_scheduler_later(
        site: Any, monkeypatch: pytest.MonkeyPatch, later: str) -> None:
    """The agent was killed mid-qsub an hour ago and PBS does not answer (the real outage capture): the BatchJob
    waited in pending_submission for ever, looking fine. After a few lookups it is submit_failed, saying it could not be
    confirmed and which command shows it; it is never submitted again. When PBS answers again, the record follows:
    queued with PBS's id if the job is there, or a message that it never landed."""
    import json

    from balsam.platforms.runner import CommandResult
    from balsam.services import scheduler as module
    from tests.platforms_support import fixture

    monkeypatch.setattr(module, "RECHECK_S", 0.0)
    outage = json.loads(fixture("real", "pbs", "qut_qstat_connection_refused.json"))
    answer: List[Any] = [None]
    calls: List[List[str]] = []

    def reply(argv: Any) -> Any:
        calls.append(list(argv))
        if answer[0] is None:
            return CommandResult(argv, outage["returncode"], outage["stdout"], outage["stderr"])
        return CommandResult(argv, 0, answer[0], "")

    service = _pbs_service(site, reply)
    bj = _interrupted_submission(site, ago_s=3600)
    for _ in range(module.UNCONFIRMED_LOOKUPS - 1):
        service.run_cycle()
        assert BatchJob.objects.get(id=bj.id).state == "pending_submission"  # a scheduler down a little is waited out
    service.run_cycle()
    failed = BatchJob.objects.get(id=bj.id)
    assert failed.state == "submit_failed" and failed.scheduler_id is None
    error = failed.status_info["error"]
    assert "could not say whether it landed" in error and "not submitted again" in error
    assert f"qselect -x -u $USER -N balsam-{bj.id}" in error and "cannot connect to server" in error
    service.run_cycle()  # still no answer: it stays as it is
    assert BatchJob.objects.get(id=bj.id).state == "submit_failed"
    job = {"Job_Name": f"balsam-{bj.id}", "Job_Owner": f"{current_user()}@login1", "job_state": "Q", "queue": "debug",
           "qtime": time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(time.time() - 3590))}
    answer[0] = json.dumps({"timestamp": 1, "pbs_version": "2022", "pbs_server": "s",
                            **({"Jobs": {"4242.pbs01": job}} if later == "listed" else {})})
    service.run_cycle()
    after = BatchJob.objects.get(id=bj.id)
    if later == "listed":
        assert after.state == "queued" and after.scheduler_id == 4242 and "error" not in after.status_info
        assert "could not be confirmed" in after.status_info["recovered"]
    else:
        assert after.state == "submit_failed" and after.scheduler_id is None and "submitting" not in after.status_info
        assert f"never reached pbs (it answers again and has no job balsam-{bj.id})" in after.status_info["error"]
    assert not any(argv[0] == "qsub" for argv in calls)  # never submitted a second time


def test_a_local_submission_that_meets_a_full_disk_once_its_job_started_is_recorded_as_running(
        site: Any, few_inodes_disk: Any, tmp_path: Any) -> None:
    """The local scheduler's disk fills between the start of the batch script and the note of its PID (the link
    <pid>.job cannot be made: ENOSPC): the BatchJob was submit_failed ('No space left on device') while its launcher
    ran. It is recorded as what it is, and followed until it ends, from its record, with or without the link."""
    from balsam.services.scheduler import MISSING_POLLS
    from tests.helpers import fill_inodes
    from tests.launcher_support import wait_for

    go = tmp_path / "go"
    (site.path / "job-template.sh").write_text(
        f'#!/bin/bash\necho "batch job {{{{ batch_job_id }}}} started"\nwhile [ ! -e {go} ]; do sleep 0.05; done\n')
    state_dir = few_inodes_disk / "local-jobs"
    state_dir.mkdir()
    fillers = fill_inodes(few_inodes_disk)
    fillers.pop().unlink()  # room for the job's record, none for the link that names it by its PID
    adapter = get_scheduler("local", state_dir=state_dir, options={"kill_grace_s": "1"})
    service = SchedulerService(site, SchedulerSettings(sync_period_s=0.1), adapter, balsam_command="balsam")
    bj = BatchJob.objects.create(num_nodes=1, wall_time_min=5)
    try:
        service.run_cycle()
        after = BatchJob.objects.get(id=bj.id)
        assert after.state in ("queued", "running") and after.scheduler_id, after.status_info
        output = output_path_for(service.script_path(bj.id))
        wait_for(lambda: "started" in output.read_text(), timeout=30, what="the batch script to start")
        until(lambda: BatchJob.objects.get(id=bj.id).state == "running", service)
        for _ in range(MISSING_POLLS + 1):  # never taken for a job that vanished while it runs
            service.run_cycle()
        assert BatchJob.objects.get(id=bj.id).state == "running"
        fillers.pop().unlink()  # an inode free again: the link is made, and the job found by it
        service.run_cycle()
        assert (state_dir / f"{after.scheduler_id}.job").is_symlink()
    finally:
        go.touch()
    until(lambda: BatchJob.objects.get(id=bj.id).state == "finished", service)
    ended = BatchJob.objects.get(id=bj.id)
    assert ended.status_info["scheduler_state"] == "finished" and ended.end_time is not None


FAKE_SBATCH = """#!/bin/bash
# A Slurm stand-in: records each submission (id|name) in $FAKE_SLURM/jobs, before or after a pause.
name=x; while [ $# -gt 1 ]; do [ "$1" = -J ] && name=$2; shift; done
d=$FAKE_SLURM; echo "$$" >> "$d/calls"; [ "$FAKE_SBATCH_ORDER" = sleep-first ] && sleep "$FAKE_SBATCH_SLEEP"
exec 9>>"$d/lock"; flock 9; id=$(( $(wc -l < "$d/jobs") + 1001 )); echo "$id|$name" >> "$d/jobs"; exec 9>&-
[ "$FAKE_SBATCH_ORDER" = sleep-first ] || sleep "$FAKE_SBATCH_SLEEP"
echo "$id"
"""
FAKE_SQUEUE = """#!/bin/bash
touch "$FAKE_SLURM/cancelled"
while IFS='|' read -r id name; do
  state=PENDING; grep -qx "$id" "$FAKE_SLURM/cancelled" && state=CANCELLED
  echo "$id|$state|debug|local|1|10:00|10:00|2026-01-01T00:00:00|N/A|N/A|Priority|normal|$name"
done < "$FAKE_SLURM/jobs"
"""
FAKE_SCANCEL = """#!/bin/bash
echo "$1" >> "$FAKE_SLURM/cancelled"
"""


def _fake_slurm(site: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, *, sleep_s: float, order: str, timeout_s: float) -> Any:
    """Fake sbatch/squeue/scancel/sinfo on PATH (real processes, state in files) and the site set to use Slurm."""
    import yaml

    fake = tmp_path / "fake-slurm"
    (fake / "bin").mkdir(parents=True)
    (fake / "jobs").write_text("")
    for name, text in (("sbatch", FAKE_SBATCH), ("squeue", FAKE_SQUEUE), ("scancel", FAKE_SCANCEL), ("sinfo", "#!/bin/sh\n")):
        (fake / "bin" / name).write_text(text)
        (fake / "bin" / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(fake))
    monkeypatch.setenv("FAKE_SBATCH_SLEEP", str(sleep_s))
    monkeypatch.setenv("FAKE_SBATCH_ORDER", order)
    settings = yaml.safe_load((site.path / "settings.yml").read_text())
    settings["scheduler"].update(type="slurm", sync_period_s=0.2, command_timeout_s=timeout_s)
    (site.path / "settings.yml").write_text(yaml.safe_dump(settings))
    return fake


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["after-sbatch", "during-sbatch", "sbatch-killed-too", "site-stop-during-sbatch"])
def test_an_agent_killed_mid_submit_never_submits_a_batch_job_twice(site: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                                                                   fault: str) -> None:
    """kill -9 of the site agent while ``sbatch`` runs: the restarted agent records the submission Slurm took (it
    lands before the kill, or after it, from the orphaned sbatch), or submits once if it never landed."""
    import signal

    from balsam.pidfile import pid_file_held
    from balsam.services.agent import start_agent, stop_agent
    from balsam.site.agent_state import pid_path
    from tests.launcher_support import wait_for

    hung = fault == "site-stop-during-sbatch"  # a hung slurmctld
    fake = _fake_slurm(site, tmp_path, monkeypatch, sleep_s=30 if hung else 3, timeout_s=35 if hung else 4,
                       order="sleep-first" if fault != "after-sbatch" else "record-first")

    def submissions() -> List[str]:
        return (fake / "jobs").read_text().splitlines()

    pid = start_agent(site.path)
    try:
        bj = BatchJob.objects.create(num_nodes=1, wall_time_min=5)
        wait_for(lambda: (fake / "calls").exists(), timeout=30, what="sbatch to start")
        if fault == "after-sbatch":
            wait_for(lambda: submissions(), timeout=30, what="sbatch to take the job")
        time.sleep(0.3)
        if fault == "site-stop-during-sbatch":  # sbatch hangs: 'balsam site stop' still takes seconds, not its timeout
            began = time.monotonic()
            stop_agent(site.path)
            assert time.monotonic() - began < 20
        elif fault == "sbatch-killed-too":  # the agent and its sbatch: the submission never lands
            os.kill(pid, signal.SIGKILL)
            os.kill(int((fake / "calls").read_text().split()[0]), signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pid_file_held(pid_path(site.layout)), timeout=10, what="the killed agent's end")
        start_agent(site.path)
        wait_for(lambda: BatchJob.objects.get(id=bj.id).scheduler_id is not None, timeout=90, what="the recorded submission")
        time.sleep(2.0)  # a few more cycles of the new agent
    finally:
        stop_agent(site.path)
    assert submissions() == [f"1001|balsam-{bj.id}"]  # Slurm saw it exactly once
    after = BatchJob.objects.get(id=bj.id)
    assert after.scheduler_id == 1001 and after.state == "queued" and "submitting" not in after.status_info


@pytest.mark.slow
def test_a_batch_job_deleted_after_its_agent_died_mid_submit_is_cancelled_where_it_landed(
        site: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent is killed while sbatch runs; the user deletes the BatchJob; the orphaned sbatch lands afterwards.
    The record was removed at once (nobody would ever cancel the Slurm job); it is now kept until the restarted agent
    found the submission and cancelled it."""
    import signal

    from balsam.pidfile import pid_file_held
    from balsam.services.agent import start_agent, stop_agent
    from balsam.site.agent_state import pid_path
    from tests.launcher_support import wait_for

    fake = _fake_slurm(site, tmp_path, monkeypatch, sleep_s=3, timeout_s=4, order="sleep-first")
    pid = start_agent(site.path)
    try:
        bj = BatchJob.objects.create(num_nodes=1, wall_time_min=5)
        wait_for(lambda: (fake / "calls").exists(), timeout=30, what="sbatch to start")
        time.sleep(0.3)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pid_file_held(pid_path(site.layout)), timeout=10, what="the killed agent's end")
        BatchJob.objects.get(id=bj.id).delete()
        start_agent(site.path)
        wait_for(lambda: BatchJob.objects.filter(id=bj.id).count() == 0, timeout=60, what="the BatchJob to go")
    finally:
        stop_agent(site.path)
    assert (fake / "jobs").read_text().splitlines() == [f"1001|balsam-{bj.id}"]
    assert (fake / "cancelled").read_text().split() == ["1001"]  # the orphaned submission was cancelled


def test_recording_a_submission_reads_one_batch_job_however_many_are_being_deleted(scheduler: Any, site: Any) -> None:
    """The agent records each submission by its BatchJob's id: a site with hundreds of BatchJobs being cancelled
    (pending_deletion) costs it no more than one with none (it read every one of them to test one id)."""
    store = site.store
    bj = BatchJob.objects.create(num_nodes=1, wall_time_min=5)
    row = {"id": bj.id}
    script = scheduler.script_path(bj.id)

    def steps_to_record(scheduler_id: int) -> int:
        store.conn.execute("UPDATE batch_job SET state='pending_submission', scheduler_id=NULL WHERE id=?", (bj.id,))
        count = [0]
        store.conn.set_progress_handler(lambda: count.__setitem__(0, count[0] + 1) or 0, 100)
        try:
            scheduler._record_submission(row, scheduler_id, script)
        finally:
            store.conn.set_progress_handler(None, 100)
        return count[0]

    alone = steps_to_record(101)
    with store.write() as conn:
        for n in range(400):
            conn.execute("INSERT INTO batch_job(project, queue, num_nodes, wall_time_min, job_mode, state, scheduler_id, status_info, "
                         "created, last_update) VALUES ('p', 'q', 1, 5, 'mpi', 'pending_deletion', ?, ?, 0, 0)", (5000 + n, '{"big": "' + "x" * 200 + '"}'))
    crowded = steps_to_record(102)
    assert BatchJob.objects.get(id=bj.id).scheduler_id == 102 and BatchJob.objects.get(id=bj.id).state == "queued"
    assert crowded <= alone + 3, (alone, crowded)


# ------------------------------------------------------------------- submit commands without a clear answer
UNANSWERED_SBATCH = """#!/bin/bash
# A Slurm stand-in whose n-th call does the n-th step of $FAKE_SBATCH_PLAN (the last step repeats): ok, hang (before
# Slurm takes the job), record-hang (after), record-reset (takes it, then loses the connection), refuse.
name=x; while [ $# -gt 1 ]; do [ "$1" = -J ] && name=$2; shift; done
d=$FAKE_SLURM; echo "$$" >> "$d/calls"; n=$(wc -l < "$d/calls")
IFS=, read -ra plan <<< "$FAKE_SBATCH_PLAN"; step=${plan[$(( n <= ${#plan[@]} ? n - 1 : ${#plan[@]} - 1 ))]}
record() { id=$(( $(wc -l < "$d/jobs") + 1001 )); echo "$id|$name" >> "$d/jobs"; }
case $step in
  ok) record; echo "$id" ;;
  hang) exec sleep 60 ;;
  record-hang) record; exec sleep 60 ;;
  record-reset) record; echo "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation" >&2; exit 1 ;;
  refuse) echo "sbatch: error: invalid partition specified: nope" >&2
          echo "sbatch: error: Batch job submission failed: Invalid partition name specified" >&2; exit 1 ;;
esac
"""


def _unanswered_slurm(site: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, plan: str) -> Any:
    """A scheduler service on fake sbatch/squeue/sacct (real processes on PATH, state in files), sbatch timed out
    after 1 s, and the fake's directory."""
    from balsam.services import scheduler as module

    fake = tmp_path / "fake-slurm"
    (fake / "bin").mkdir(parents=True)
    (fake / "jobs").write_text("")
    (fake / "calls").write_text("")
    for name, text in (("sbatch", UNANSWERED_SBATCH), ("squeue", FAKE_SQUEUE), ("sacct", "#!/bin/sh\n")):
        (fake / "bin" / name).write_text(text)
        (fake / "bin" / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(fake))
    monkeypatch.setenv("FAKE_SBATCH_PLAN", plan)
    monkeypatch.setattr(module, "SUBMIT_GRACE_S", 0.0)
    (site.path / "job-template.sh").write_text(TEMPLATE)
    service = SchedulerService(site, SchedulerSettings(sync_period_s=0.1), get_scheduler("slurm", timeout_s=1.0),
                               balsam_command="balsam")
    return service, fake


@pytest.mark.parametrize("plan", ["record-hang", "record-reset"])
def test_a_submission_without_an_answer_that_slurm_took_is_recorded_not_submitted_again(
        site: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, plan: str) -> None:
    """sbatch hangs (and is killed at its timeout), or loses its connection after sending, with the job taken: the
    BatchJob was submit_failed at once, and the elastic queue submitted another allocation while this one ran too. It
    waits in pending_submission, is looked up, and is recorded with the id Slurm gave it; sbatch runs once."""
    service, fake = _unanswered_slurm(site, tmp_path, monkeypatch, plan)
    bj = BatchJob.objects.create(num_nodes=1, wall_time_min=5)
    service.run_cycle()
    doubted = BatchJob.objects.get(id=bj.id)
    assert doubted.state == "pending_submission" and doubted.scheduler_id is None, doubted.status_info
    assert "submitting" in doubted.status_info and "may have taken the job" in doubted.status_info["submit_doubt"]
    assert doubted.status_info["message"].startswith("submission unconfirmed, being looked up")
    until(lambda: BatchJob.objects.get(id=bj.id).scheduler_id is not None, service)
    after = BatchJob.objects.get(id=bj.id)
    assert after.scheduler_id == 1001 and after.state == "queued"
    assert "ended without an answer" in after.status_info["recovered"]
    assert not {"submitting", "submit_doubt", "message", "error"} & set(after.status_info)
    assert (fake / "jobs").read_text().splitlines() == [f"1001|balsam-{bj.id}"]
    assert len((fake / "calls").read_text().split()) == 1  # never submitted a second time


def test_a_submission_without_an_answer_that_never_landed_is_submitted_again_once_slurm_says_so(
        site: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    service, fake = _unanswered_slurm(site, tmp_path, monkeypatch, "hang,ok")
    bj = BatchJob.objects.create(num_nodes=1, wall_time_min=5)
    service.run_cycle()
    assert BatchJob.objects.get(id=bj.id).state == "pending_submission"
    until(lambda: BatchJob.objects.get(id=bj.id).scheduler_id is not None, service)
    after = BatchJob.objects.get(id=bj.id)
    assert after.scheduler_id == 1001 and after.state == "queued" and "recovered" not in after.status_info
    assert (fake / "jobs").read_text().splitlines() == [f"1001|balsam-{bj.id}"]
    assert len((fake / "calls").read_text().split()) == 2


def test_a_scheduler_that_never_answers_a_submit_ends_submit_failed_after_a_few_tries(
        site: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from balsam.services.scheduler import DOUBTFUL_SUBMITS

    service, fake = _unanswered_slurm(site, tmp_path, monkeypatch, "hang")
    bj = BatchJob.objects.create(num_nodes=1, wall_time_min=5)
    until(lambda: BatchJob.objects.get(id=bj.id).state == "submit_failed", service, timeout=60)
    after = BatchJob.objects.get(id=bj.id)
    assert f"{DOUBTFUL_SUBMITS} submissions in a row ended without an answer and slurm did not take them" in after.status_info["error"]
    assert "did not finish within 1 s" in after.status_info["error"] and "submitting" not in after.status_info
    assert len((fake / "calls").read_text().split()) == DOUBTFUL_SUBMITS and (fake / "jobs").read_text() == ""


def test_a_clear_refusal_is_submit_failed_at_once_with_its_stderr(site: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    service, fake = _unanswered_slurm(site, tmp_path, monkeypatch, "refuse")
    bj = BatchJob.objects.create(num_nodes=1, wall_time_min=5)
    service.run_cycle()
    after = BatchJob.objects.get(id=bj.id)
    assert after.state == "submit_failed" and after.scheduler_id is None
    assert after.status_info["error"] == "sbatch failed (exit 1): sbatch: error: Batch job submission failed: Invalid partition name specified"
    assert "invalid partition specified: nope" in after.status_info["stderr"]
    assert not {"submitting", "submit_doubt"} & set(after.status_info)
    service.run_cycle()
    assert len((fake / "calls").read_text().split()) == 1


def _cobalt_table(rows: List[List[str]]) -> str:
    """A qstat listing as Cobalt prints it (the real captures in tests/fixtures/real/cobalt show it): each column padded
    to its widest value, left-aligned, two spaces after each; a rule of '=' as wide."""
    from balsam.platforms.schedulers.cobalt import STATUS_FIELDS

    table = [list(STATUS_FIELDS), *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(STATUS_FIELDS))]
    lines = ["".join(v.ljust(w) + "  " for v, w in zip(r, widths)) for r in table]
    return "\n".join([lines[0], "=" * (sum(widths) + 2 * len(widths)), *lines[1:]]) + "\n"


def test_an_interrupted_cobalt_submission_is_found_by_its_script_not_submitted_again(
        site: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent was killed mid-qsub; Cobalt took the job. Cobalt shows it by its script (Command), not by the name
    balsam-<id> (JobName N/A): the lookup by name found nothing and the BatchJob was submitted a second time."""
    bj = _interrupted_submission(site, ago_s=3600)
    service = SchedulerService(site, SchedulerSettings(sync_period_s=0.1), get_scheduler("cobalt"), balsam_command="balsam")
    script = str(service.script_path(bj.id))
    user = current_user()
    listing = _cobalt_table([
        ["10076390", user, "running", "single-gpu", "1", "00:05:00", "00:01:10", "00:02:00", "00:03:00", "p", "N/A",
         script.replace(f"qlaunch{bj.id}.sh", "qlaunch1.sh")],
        ["10076391", user, "queued", "single-gpu", "1", "00:05:00", "00:00:10", "N/A", "N/A", "p", "N/A", script],
    ])  # fmt: skip
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "listing.txt").write_text(listing)
    (bin_dir / "qstat").write_text(f"#!/bin/sh\ncat {tmp_path / 'listing.txt'}\n")
    (bin_dir / "qsub").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'qsub-calls'}\necho 10076392\n")
    for prog in ("qstat", "qsub"):
        (bin_dir / prog).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    service.run_cycle()
    after = BatchJob.objects.get(id=bj.id)
    assert after.state == "queued" and after.scheduler_id == 10076391, after.status_info
    assert after.status_info["recovered"] == "submitted before the site agent restarted"
    assert not (tmp_path / "qsub-calls").exists()  # never submitted a second time
