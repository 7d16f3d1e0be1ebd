"""LSF: exact argv and parsing of documented bjobs -json and bslots output (LSF cannot run in CI)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from balsam.exceptions import SchedulerError
from balsam.platforms.runner import CommandResult, FakeRunner
from balsam.platforms.schedulers import UNLIMITED_MIN, SchedulerState, get_scheduler, lsf
from tests.platforms_support import fixture

UTC = timezone.utc
NOW = datetime(2023, 12, 28, 20, 26, tzinfo=UTC)


def test_submit_argv_is_exact():
    argv = lsf.render_submit(
        "/site/qsubmit/qlaunch00003.sh", project="BIP152", queue="batch", num_nodes=2, wall_time_min=120,
        optional_params={"alloc_flags": "gpumps smt4"},
    )  # fmt: skip
    out = "/site/qsubmit/qlaunch00003.output"
    assert argv == [
        "bsub", "-J", "qlaunch00003", "-o", out, "-e", out, "-P", "BIP152", "-q", "batch", "-nnodes", "2", "-W", "120",
        "-alloc_flags", "gpumps smt4", "/bin/bash", "/site/qsubmit/qlaunch00003.sh",
    ]  # fmt: skip
    generic = lsf.render_submit("s.sh", project="", queue="", num_nodes=2, wall_time_min=5, node_flag="n", slots_per_node=16)
    assert generic[generic.index("-n") + 1] == "32"


def test_parse_submit():
    assert lsf.parse_submit(fixture("lsf", "bsub.txt")) == 806293
    with pytest.raises(SchedulerError):
        lsf.parse_submit("Project BIP999 does not exist. Job not submitted.\n")


def test_parse_status():
    st = lsf.parse_status(fixture("lsf", "bjobs_json.txt"), NOW, UTC, slots_per_node=42)
    assert {k: v.state for k, v in st.items()} == {
        806290: SchedulerState.RUNNING, 806291: SchedulerState.QUEUED, 806100: SchedulerState.FINISHED,
        806101: SchedulerState.FAILED, 806292: SchedulerState.HELD,
    }  # fmt: skip
    run = st[806290]
    assert (run.num_nodes, run.wall_time_min, run.project, run.queue) == (2, 120, "BIP152", "batch")
    assert run.time_remaining_min == pytest.approx(90) and run.end_time is None
    assert run.start_time == datetime(2023, 12, 28, 19, 56, tzinfo=UTC) and run.queued_time_min == pytest.approx(30)
    assert st[806291].num_nodes == 100 and st[806291].start_time is None
    assert st[806100].end_time == datetime(2023, 12, 28, 18, 20, tzinfo=UTC) and st[806100].exit_code == 0
    assert st[806101].exit_code == 3 and st[806292].project == ""


def test_get_statuses_and_no_jobs():
    fake = FakeRunner(responses={"bjobs": fixture("lsf", "bjobs_json.txt")})
    assert sorted(get_scheduler("lsf", fake).get_statuses([806100, 1])) == [806100]
    assert fake.argvs == [["bjobs", "-a", "-o", lsf.BJOBS_FIELDS, "-json"]]
    none = FakeRunner(responder=lambda a: CommandResult(a, 255, "", fixture("lsf", "bjobs_no_job.txt")))
    assert get_scheduler("lsf", none).get_statuses(user="alice") == {}
    assert none.argvs[0][:4] == ["bjobs", "-a", "-u", "alice"]


def test_backfill_from_bslots():
    assert lsf.parse_backfill(fixture("lsf", "bslots.txt"), "batch", 42) == {
        "batch": [lsf.BackfillWindow(2, UNLIMITED_MIN), lsf.BackfillWindow(3, 90), lsf.BackfillWindow(10, 25)]
    }  # 20 slots are less than a node
    fake = FakeRunner(responder=lambda a: CommandResult(a, 255, "", fixture("lsf", "bslots_none.txt")))
    sched = get_scheduler("lsf", fake, options={"bslots_resource": "select[CN]"})
    assert sched.get_backfill_windows() == {} and fake.argvs == [["bslots", "-R", "select[CN]"]]


def test_job_times():
    fake = FakeRunner(responses={"bjobs": fixture("lsf", "bjobs_json.txt")})
    assert get_scheduler("lsf", fake, tz=UTC).job_times(806290)[0].tzinfo is not None
    assert fake.argvs[0][-1] == "806290"


def test_find_submitted_finds_the_name_bsub_gave_as_bjobs_json_prints_it():
    """Checked as for Cobalt (whose qstat never shows Balsam's name): LSF shows the name bsub -J gave it, and bjobs -o
    with bare field names prints it whole (a width would cut long names to '*...'; Balsam's ids are 16 digits), ended
    jobs included (-a), so an interrupted submission is found by its name."""
    argv = lsf.render_submit("/s/qsubmit/qlaunch3.sh", project="", queue="", num_nodes=1, wall_time_min=5, job_name="balsam-3")
    assert argv[argv.index("-J") + 1] == "balsam-3" and ":" not in lsf.BJOBS_FIELDS
    fake = FakeRunner(responses={"bjobs": fixture("lsf", "bjobs_json.txt")})
    sched = get_scheduler("lsf", fake)
    assert sched.find_submitted("balsam-3", "/s/qsubmit/qlaunch3.sh", 0.0) == 806290
    assert sched.find_submitted("balsam-1", "/s/qsubmit/qlaunch1.sh", 0.0) == 806100  # ended, still listed
    assert sched.find_submitted("balsam-9", "/s/qsubmit/qlaunch9.sh", 0.0) is None
    assert all(a[:2] == ["bjobs", "-a"] for a in fake.argvs)
    real = FakeRunner(responses={"bjobs": fixture("real", "lsf", "dkfz_bjobs_json_hms_done.json")})
    assert get_scheduler("lsf", real).find_submitted("ls -l", "x.sh", 0.0) == 22005  # a real name, whole, space and all
