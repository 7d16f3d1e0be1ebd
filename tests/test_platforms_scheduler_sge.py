"""Grid Engine: exact argv, parsing of real captured output; a real submit, poll, delete and times round trip
on the CI Grid Engine (marked ``sge``)."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from balsam.exceptions import SchedulerError
from balsam.platforms.presets import read_preset_file
from balsam.platforms.runner import CommandResult, FakeRunner
from balsam.platforms.schedulers import SchedulerState, get_scheduler, sge
from balsam.platforms.templates import job_script_context, render_job_script
from tests.platforms_support import fixture, make_recorder, read_calls, sge_status

UTC = timezone.utc
NOW = datetime(2026, 11, 24, 9, 20, 0, tzinfo=UTC)


def test_submit_argv_is_exact():
    argv = sge.render_submit(
        "/site/qsubmit/qlaunch00003.sh", project="acct", queue="all.q", num_nodes=2, wall_time_min=90,
        optional_params={"mem_free": "2G"}, pe="mpi", slots_per_node=4, cwd="/site",
    )  # fmt: skip
    assert argv == [
        "qsub", "-terse", "-S", "/bin/bash", "-N", "qlaunch00003", "-o", "/site/qsubmit/qlaunch00003.output", "-j", "y",
        "-wd", "/site", "-A", "acct", "-q", "all.q", "-l", "h_rt=01:30:00", "-pe", "mpi", "8", "-l", "mem_free=2G",
        "/site/qsubmit/qlaunch00003.sh",
    ]  # fmt: skip


def test_multi_node_needs_a_parallel_environment_and_names_are_made_acceptable():
    with pytest.raises(SchedulerError, match="parallel environment"):
        sge.render_submit("s.sh", project="", queue="", num_nodes=2, wall_time_min=5)
    assert sge.job_name_for_sge("7/x:y") == "b7_x_y"


def test_parse_submit():
    assert sge.parse_submit(fixture("sge", "qsub_terse.txt")) == 8
    assert sge.parse_submit(fixture("sge", "qsub_terse_array.txt")) == 6
    with pytest.raises(SchedulerError):
        sge.parse_submit("Unable to run job: denied\n")


def test_parse_real_qstat_xml():
    st = sge.parse_status(fixture("sge", "qstat_xml_r.xml"), NOW, UTC, slots_per_node=1)
    assert {k: v.state for k, v in st.items()} == {
        8: SchedulerState.RUNNING, 10: SchedulerState.QUEUED, 12: SchedulerState.FAILED, 11: SchedulerState.HELD,
    }  # fmt: skip
    assert (st[8].queue, st[8].wall_time_min, st[8].job_name) == ("all.q", 30, "run1")
    assert st[8].time_remaining_min == pytest.approx(30 - (NOW - datetime(2026, 11, 24, 9, 18, 19, tzinfo=UTC)).total_seconds() / 60)
    assert st[10].num_nodes == 2 and st[10].wall_time_min == 120 and st[10].start_time is None
    assert st[12].raw_state == "Eqw"


def test_get_statuses_is_one_qstat():
    fake = FakeRunner(responses={"qstat": fixture("sge", "qstat_xml_r.xml")})
    assert sorted(get_scheduler("sge", fake).get_statuses([8, 12, 77])) == [8, 12]
    assert fake.argvs == [["qstat", "-xml", "-r", "-u", "$user"]]
    with pytest.raises(SchedulerError, match="malformed XML"):
        sge.parse_status("<job_info>", NOW)


def test_qacct_times_and_unknown_jobs():
    assert sge.parse_qacct_times(fixture("sge", "qacct_j.txt"), UTC) == (
        datetime(2026, 11, 24, 9, 4, 17, tzinfo=UTC),
        datetime(2026, 11, 24, 9, 4, 20, tzinfo=UTC),
    )
    unknown = FakeRunner(responder=lambda a: CommandResult(a, 1, "", fixture("sge", "qacct_unknown.txt")))
    assert get_scheduler("sge", unknown).job_times(99999) == (None, None)
    gone = FakeRunner(responder=lambda a: CommandResult(a, 1, fixture("sge", "qdel_unknown.txt"), ""))
    get_scheduler("sge", gone).delete(99999)  # deleting a job that is already gone is not an error
    assert gone.argvs == [["qdel", "99999"]]


# -- real Grid Engine ---------------------------------------------------------------------------------------

up, why = sge_status()


def wait_for(predicate, timeout=40.0, period=0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(period)
    raise AssertionError("timed out waiting")


@pytest.mark.sge
@pytest.mark.skipif(not up, reason=why)
def test_real_submit_runs_the_launcher_line_then_times_come_from_qacct(tmp_path: Path):
    log = tmp_path / "calls.jsonl"
    fake_balsam = make_recorder(tmp_path / "bin", "balsam", log, watch=["BALSAM_SITE_PATH", "JOB_ID"])
    site = tmp_path / "site"
    (site / "qsubmit").mkdir(parents=True)
    ctx = job_script_context(balsam=str(fake_balsam), site_path=str(site), batch_job_id=3, job_mode="serial", wall_time_min=5,
                             num_nodes=1, project="acct-x", queue="all.q", filter_tags={}, partitions=[], optional_params={})  # fmt: skip
    script = site / "qsubmit" / "qlaunch00003.sh"
    script.write_text(render_job_script(read_preset_file("sge", "job-template.sh"), ctx))
    sched = get_scheduler("sge", options={"pe": "smp", "slots_per_node": "1"})
    jid = sched.submit(script, project="acct-x", queue="all.q", num_nodes=1, wall_time_min=5, cwd=site)
    seen = sched.get_statuses([jid]).get(jid)
    assert seen is None or seen.state in (SchedulerState.QUEUED, SchedulerState.RUNNING)
    call = wait_for(lambda: read_calls(log))[0]
    assert call["argv"] == ["launcher", "--batch-job-id", "3", "-j", "serial", "-t", "5"]
    assert call["env"] == {"BALSAM_SITE_PATH": str(site), "JOB_ID": str(jid)}
    wait_for(lambda: jid not in sched.get_statuses([jid]))  # a finished job leaves qstat at once
    start, end = wait_for(lambda: (t := sched.job_times(jid)) != (None, None) and t)
    assert start is not None and end is not None and start <= end


@pytest.mark.sge
@pytest.mark.skipif(not up, reason=why)
def test_real_delete_removes_a_running_job(tmp_path: Path):
    script = tmp_path / "long.sh"
    started = tmp_path / "started"
    script.write_text(f"#!/bin/bash\ntouch {started}\nsleep 300\n")
    sched = get_scheduler("sge")
    jid = sched.submit(script, project="", queue="all.q", num_nodes=1, wall_time_min=10, cwd=tmp_path)
    status = wait_for(lambda: (s := sched.get_statuses([jid]).get(jid)) and s.state is SchedulerState.RUNNING and s)
    # Grid Engine starts jobs as login shells whose profile may still be running: delete only once the
    # script body runs, so no half-finished profile step (a lock file, say) is left behind
    wait_for(started.exists)
    assert status.wall_time_min == 10 and status.start_time is not None
    sched.delete(jid)
    wait_for(lambda: jid not in sched.get_statuses())


def test_a_submission_grid_engine_has_forgotten_is_found_in_accounting():
    """Grid Engine forgets an ended job at once: an agent killed mid-``qsub`` and restarted after the job ended found
    nothing in qstat and submitted it again. The job is found in ``qacct`` (submitted at or after the attempt began;
    an older job of the same name is not it), and where qacct knows no such job, qstat's answer (none) stands."""
    qacct = fixture("sge", "qacct_j.txt")  # job 2, named "probe", submitted Tue Nov 24 09:04:16 2026
    attempt = datetime(2026, 11, 24, 9, 4, 16, tzinfo=UTC).timestamp() + 0.6  # the submit began within that second

    def reply(argv):
        return qacct if argv[0] == "qacct" else fixture("sge", "qstat_xml_r.xml")

    fake = FakeRunner(responder=reply)
    assert get_scheduler("sge", fake, tz=UTC).find_submitted("probe", "/site/qsubmit/qlaunch00002.sh", attempt) == 2
    assert fake.argvs[-1] == ["qacct", "-j", "probe"]
    later = datetime(2026, 11, 24, 9, 5, 0, tzinfo=UTC).timestamp()
    assert get_scheduler("sge", FakeRunner(responder=reply), tz=UTC).find_submitted("probe", "x.sh", later) is None
    unknown = FakeRunner(responder=lambda a: CommandResult(a, 1, "", fixture("sge", "qacct_unknown.txt")) if a[0] == "qacct"
                         else fixture("sge", "qstat_xml_r.xml"))
    assert get_scheduler("sge", unknown, tz=UTC).find_submitted("probe", "x.sh", attempt) is None
