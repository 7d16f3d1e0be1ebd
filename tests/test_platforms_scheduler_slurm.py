"""Slurm: exact argv, parsing of real captured output, error translation; and a real submit, poll, delete and
times round trip on the CI Slurm (marked ``slurm``)."""

from __future__ import annotations

import logging
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from balsam.exceptions import ConfigError, SchedulerError
from balsam.platforms.presets import read_preset_file
from balsam.platforms.runner import CommandResult, FakeRunner
from balsam.platforms.schedulers import UNLIMITED_MIN, SchedulerState, get_scheduler, slurm
from balsam.platforms.templates import job_script_context, render_job_script
from tests.platforms_support import fixture, make_recorder, read_calls, slurm_status

UTC = timezone.utc
NOW = datetime(2026, 11, 24, 9, 19, 43, tzinfo=UTC)


def test_submit_argv_is_exact():
    argv = slurm.render_submit(
        "/site/qsubmit/qlaunch00012.sh", project="proj", queue="debug", num_nodes=4, wall_time_min=30,
        optional_params={"constraint": "gpu", "exclusive": "", "gpus_per_node": "4"},
    )  # fmt: skip
    assert argv == [
        "sbatch", "--parsable", "-o", "/site/qsubmit/qlaunch00012.output", "-J", "qlaunch00012", "-A", "proj",
        "-p", "debug", "-N", "4", "-t", "30", "--constraint=gpu", "--exclusive", "--gpus-per-node=4",
        "/site/qsubmit/qlaunch00012.sh",
    ]  # fmt: skip


def test_queue_can_be_a_qos_or_nothing():
    qos = slurm.render_submit("s.sh", project="", queue="regular", num_nodes=1, wall_time_min=5, queue_option="qos")
    none = slurm.render_submit("s.sh", project="", queue="regular", num_nodes=1, wall_time_min=5, queue_option="none")
    assert "-q" in qos and qos[qos.index("-q") + 1] == "regular" and "-p" not in qos
    assert "regular" not in none and "-A" not in none
    with pytest.raises(ConfigError, match="queue_option"):
        get_scheduler("slurm", FakeRunner(), options={"queue_option": "bogus"}).submit(
            "s.sh", project="", queue="q", num_nodes=1, wall_time_min=5
        )


def test_bad_optional_param_names_are_refused():
    with pytest.raises(SchedulerError, match="invalid optional parameter"):
        slurm.render_submit("s.sh", project="", queue="", num_nodes=1, wall_time_min=5, optional_params={"a b": "1"})


def test_parse_submit():
    assert slurm.parse_submit(fixture("slurm", "sbatch_parsable.txt")) == 13
    assert slurm.parse_submit("77;cluster2\n") == 77
    with pytest.raises(SchedulerError, match="no job id"):
        slurm.parse_submit(fixture("slurm", "sbatch_plain.txt"))


def test_parse_real_squeue_output():
    st = slurm.parse_status(fixture("slurm", "squeue.txt"), NOW, UTC)
    assert {k: v.state for k, v in st.items()} == {
        11: SchedulerState.CANCELLED, 6: SchedulerState.FINISHED, 7: SchedulerState.FAILED, 9: SchedulerState.QUEUED,
        10: SchedulerState.HELD, 8: SchedulerState.RUNNING, 5: SchedulerState.FAILED,
    }  # fmt: skip
    run = st[8]
    assert (run.queue, run.project, run.num_nodes, run.wall_time_min, run.job_name) == ("debug", "proj-b", 1, 30, "run1")
    assert run.time_remaining_min == pytest.approx(28 + 35 / 60)
    assert run.start_time == datetime(2026, 11, 24, 9, 18, 18, tzinfo=UTC) and run.end_time is None
    assert st[7].job_name == "bad|name" and st[7].wall_time_min == UNLIMITED_MIN and st[7].reason == "NonZeroExitCode"
    assert st[5].raw_state == "TIMEOUT" and st[5].end_time == datetime(2026, 11, 24, 9, 19, 38, tzinfo=UTC)
    pending = st[9]
    assert pending.start_time is None and pending.end_time is None  # squeue's forecast is not a start time
    assert pending.queued_time_min == pytest.approx((NOW - datetime(2026, 11, 24, 9, 18, 17, tzinfo=UTC)).total_seconds() / 60)
    assert st[6].project == "proj-a" and st[11].project == ""


def test_unknown_state_is_unknown_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        st = slurm.parse_status("42|WEIRDSTATE|debug|a|1|5:00|5:00|N/A|N/A|N/A|None|(null)|x\n", NOW, UTC)
    assert st[42].state is SchedulerState.UNKNOWN and "WEIRDSTATE" in caplog.text


def test_get_statuses_is_one_squeue_filtered_here():
    fake = FakeRunner(responses={"squeue": fixture("slurm", "squeue.txt")})
    sched = get_scheduler("slurm", fake, tz=UTC)
    assert sorted(sched.get_statuses([8, 10, 999])) == [8, 10]
    assert sched.get_statuses([]) == {}
    sched.get_statuses(user="alice")
    assert fake.argvs == [
        ["squeue", "-h", "-t", "all", "--me", "-o", slurm.SQUEUE_FIELDS],
        ["squeue", "-h", "-t", "all", "-u", "alice", "-o", slurm.SQUEUE_FIELDS],
    ]


def test_backfill_from_sinfo():
    assert slurm.parse_backfill(fixture("slurm", "sinfo_multi.txt")) == {
        "debug": [slurm.BackfillWindow(1, UNLIMITED_MIN)],
        "regular": [slurm.BackfillWindow(12, 2880)],
        "shared": [slurm.BackfillWindow(5, 720)],
    }
    assert slurm.parse_backfill(fixture("slurm", "sinfo_mixed.txt")) == {}


def test_job_times_fall_back_to_scontrol_without_accounting():
    def reply(argv):
        if argv[0] == "sacct":
            return CommandResult(argv, 1, "", fixture("slurm", "sacct_disabled.txt"))
        return fixture("slurm", "scontrol_show_job_failed.txt")

    fake = FakeRunner(responder=reply)
    start, end = get_scheduler("slurm", fake, tz=UTC).job_times(7)
    assert (start, end) == (datetime(2026, 11, 24, 9, 18, 16, tzinfo=UTC), datetime(2026, 11, 24, 9, 18, 16, tzinfo=UTC))
    assert [a[0] for a in fake.argvs] == ["sacct", "scontrol"]


def test_job_times_from_sacct_and_for_forgotten_jobs():
    fake = FakeRunner(responses={"sacct": fixture("slurm", "sacct_P.txt")})
    assert get_scheduler("slurm", fake, tz=UTC).job_times(3)[0] == datetime(2026, 11, 24, 7, 29, 5, tzinfo=UTC)
    assert len(fake.calls) == 1
    unknown = FakeRunner(responder=lambda a: CommandResult(a, 1, "", "slurm_load_jobs error: Invalid job id specified"))
    assert get_scheduler("slurm", unknown).job_times(999999) == (None, None)
    assert slurm.parse_scontrol_times(fixture("slurm", "scontrol_show_job_running.txt"), UTC)[1] is None


def test_discover_projects():
    fake = FakeRunner(responses={"sacctmgr": "proj-a\nproj-b\nproj-a\n"})
    assert get_scheduler("slurm", fake).discover_projects("alice") == ["proj-a", "proj-b"]
    assert fake.argvs[0] == ["sacctmgr", "-n", "-P", "show", "associations", "user=alice", "format=account"]


@pytest.mark.parametrize(
    "failure, message",
    [
        (FileNotFoundError("sbatch"), "command not found"),
        (subprocess.TimeoutExpired("sbatch", 60), "did not finish within 60 s"),
        (CommandResult(["sbatch"], 1, "", "sbatch: error: Batch job submission failed: Invalid partition name specified"), "Invalid partition"),
    ],
)
def test_failures_become_scheduler_errors_with_context(failure, message):
    sched = get_scheduler("slurm", FakeRunner(responses={"sbatch": failure}))
    with pytest.raises(SchedulerError, match=message) as info:
        sched.submit("/s/q.sh", project="p", queue="nope", num_nodes=1, wall_time_min=5)
    assert info.value.argv[0] == "sbatch"
    if isinstance(failure, CommandResult):
        assert info.value.returncode == 1 and "Invalid partition" in info.value.stderr


# -- real Slurm --------------------------------------------------------------------------------------------

up, why = slurm_status()


def render_preset_script(tmp_path: Path, fake_balsam: Path, **params) -> Path:
    site = tmp_path / "my site"
    (site / "qsubmit").mkdir(parents=True)
    ctx = job_script_context(
        balsam=str(fake_balsam), site_path=str(site), batch_job_id=5, job_mode="mpi", wall_time_min=5, num_nodes=1,
        project="proj-x", queue="debug", filter_tags={"experiment": "xrd 1"}, partitions=["mpi:1"], optional_params=params,
    )  # fmt: skip
    script = site / "qsubmit" / "qlaunch00005.sh"
    script.write_text(render_job_script(read_preset_file("slurm", "job-template.sh"), ctx))
    return script


def wait_for(predicate, timeout=30.0, period=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(period)
    raise AssertionError("timed out waiting")


@pytest.mark.slurm
@pytest.mark.skipif(not up, reason=why)
def test_real_submit_runs_the_launcher_line_then_reports_finished_and_times(tmp_path):
    log = tmp_path / "calls.jsonl"
    fake_balsam = make_recorder(tmp_path / "bin", "balsam", log, watch=["BALSAM_SITE_PATH", "SLURM_JOB_ID"])
    script = render_preset_script(tmp_path, fake_balsam)
    sched = get_scheduler("slurm")
    jid = sched.submit(script, project="proj-x", queue="debug", num_nodes=1, wall_time_min=5, job_name="balsam-5")
    first = sched.get_statuses([jid])[jid]
    assert first.state in (SchedulerState.QUEUED, SchedulerState.RUNNING, SchedulerState.FINISHED)
    assert (first.project, first.queue, first.wall_time_min, first.job_name) == ("proj-x", "debug", 5, "balsam-5")
    done = wait_for(lambda: sched.get_statuses([jid]).get(jid) if sched.get_statuses([jid])[jid].state is SchedulerState.FINISHED else None)
    call = wait_for(lambda: read_calls(log))[0]
    assert call["argv"] == ["launcher", "--batch-job-id", "5", "-j", "mpi", "-t", "5", "--tag", "experiment=xrd 1", "-p", "mpi:1"]
    assert call["env"] == {"BALSAM_SITE_PATH": str(script.parent.parent), "SLURM_JOB_ID": str(jid)}
    assert call["cwd"] == str(script.parent.parent)
    start, end = sched.job_times(jid)
    assert start is not None and end is not None and start <= end and done.end_time == end
    assert script.with_suffix(".output").exists()


@pytest.mark.slurm
@pytest.mark.skipif(not up, reason=why)
def test_real_delete_cancels_a_running_job(tmp_path):
    script = tmp_path / "long.sh"
    script.write_text("#!/bin/bash\nsleep 300\n")
    sched = get_scheduler("slurm")
    jid = sched.submit(script, project="", queue="debug", num_nodes=1, wall_time_min=10)
    wait_for(lambda: sched.get_statuses([jid])[jid].state is SchedulerState.RUNNING)
    sched.delete(jid)
    status = wait_for(lambda: (s := sched.get_statuses([jid]).get(jid)) and s.state is SchedulerState.CANCELLED and s)
    assert status.end_time is not None
    windows = wait_for(lambda: sched.get_backfill_windows().get("debug"))  # the node is idle again
    assert windows[0].num_nodes == 1 and windows[0].wall_time_min == UNLIMITED_MIN


def test_a_submission_slurm_has_forgotten_is_found_in_accounting():
    """The agent was killed mid-``sbatch`` and restarted after the job had ended and slurmctld had forgotten it
    (squeue lists it no more): the job is found in accounting, so it is recorded instead of being submitted again.
    Without accounting, squeue's answer (none) stands."""
    since = NOW.timestamp()

    def reply(argv):
        if argv[0] == "sacct":
            return "5120|balsam-99\n5121|balsam-7\n5133|balsam-7\n"
        return fixture("slurm", "squeue.txt")

    fake = FakeRunner(responder=reply)
    assert get_scheduler("slurm", fake, tz=UTC).find_submitted("balsam-7", "/site/qsubmit/qlaunch00007.sh", since) == 5133
    assert fake.argvs[-1] == ["sacct", "-X", "-P", "-n", "-o", "JobID,JobName", "--name", "balsam-7", "-S", "2026-11-24T09:19:43"]
    off = FakeRunner(responder=lambda a: CommandResult(a, 1, "", fixture("slurm", "sacct_disabled.txt")) if a[0] == "sacct"
                     else fixture("slurm", "squeue.txt"))
    assert get_scheduler("slurm", off, tz=UTC).find_submitted("balsam-7", "/site/qsubmit/qlaunch00007.sh", since) is None
