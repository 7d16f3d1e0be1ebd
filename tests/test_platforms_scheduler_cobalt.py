"""Cobalt: exact argv and parsing of documented qstat, nodelist and cobaltlog output (Cobalt is retired)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from balsam.exceptions import SchedulerError
from balsam.platforms.runner import CommandResult, FakeRunner
from balsam.platforms.schedulers import SchedulerState, cobalt, get_scheduler
from tests.platforms_support import fixture

UTC = timezone.utc


def test_submit_argv_is_exact_with_attrs():
    argv = cobalt.render_submit(
        "/site/qsubmit/qlaunch00005.sh", project="MyProject", queue="default", num_nodes=128, wall_time_min=120,
        optional_params={"numa": "quad", "mcdram": "cache", "filesystems": "home,grand"},
    )  # fmt: skip
    assert argv == [
        "qsub", "-O", "/site/qsubmit/qlaunch00005", "-A", "MyProject", "-q", "default", "-n", "128", "-t", "120",
        "--attrs", "filesystems=home,grand:mcdram=cache:numa=quad", "/site/qsubmit/qlaunch00005.sh",
    ]  # fmt: skip


def test_parse_submit_skips_notices():
    assert cobalt.parse_submit("Job routed to queue \"default\".\nMemory mode set to cache quad for queue default\n104927\n") == 104927
    with pytest.raises(SchedulerError):
        cobalt.parse_submit("qsub: error: project not found\n")


def test_parse_status():
    st = cobalt.parse_status(fixture("cobalt", "qstat.txt"), datetime(2020, 8, 13, tzinfo=UTC))
    assert {k: v.state for k, v in st.items()} == {
        104927: SchedulerState.RUNNING, 104941: SchedulerState.QUEUED, 104950: SchedulerState.HELD,
        104951: SchedulerState.RUNNING, 104952: SchedulerState.FAILED,
    }  # fmt: skip
    run = st[104927]
    assert (run.num_nodes, run.wall_time_min, run.queue, run.project) == (128, 120, "default", "MyProject")
    assert run.time_remaining_min == pytest.approx(39.25) and run.queued_time_min == pytest.approx(42 + 10 / 60)
    assert st[104941].time_remaining_min is None and st[104952].queued_time_min == pytest.approx(26 * 60 + 12)


def test_get_statuses_passes_the_header_as_an_argument():
    fake = FakeRunner(responses={"qstat": fixture("cobalt", "qstat.txt")})
    assert sorted(get_scheduler("cobalt", fake).get_statuses([104950], user="alice")) == [104950]
    assert fake.argvs == [["qstat", "-u", "alice", "--header=" + ":".join(cobalt.STATUS_FIELDS)]]
    assert cobalt.parse_status("", datetime.now(UTC)) == {}


def test_backfill_windows_are_cumulative_per_queue():
    windows = cobalt.parse_backfill(fixture("cobalt", "nodelist.txt"))
    assert windows == {
        "default": [cobalt.BackfillWindow(2, 299), cobalt.BackfillWindow(4, 70), cobalt.BackfillWindow(5, 30)],
        "debug-cache-quad": [cobalt.BackfillWindow(1, 45)],
    }


def test_job_times_from_the_cobaltlog(tmp_path):
    script = tmp_path / "qlaunch00005.sh"
    script.write_text("#!/bin/bash\n")
    assert get_scheduler("cobalt", FakeRunner()).job_times(104927, script) == (None, None)
    (tmp_path / "qlaunch00005.cobaltlog").write_text(fixture("cobalt", "cobaltlog.txt"))
    start, end = get_scheduler("cobalt", FakeRunner()).job_times(104927, script)
    assert (start, end) == (datetime(2020, 8, 13, 15, 21, 3, tzinfo=UTC), datetime(2020, 8, 13, 17, 20, 44, tzinfo=UTC))


def test_rows_are_cut_at_the_columns_cobalt_pads_so_a_path_with_a_space_keeps_its_row():
    """Real qstat output (ThetaGPU, Theta) parses the same, and a Command with a space is one value, not a lost row."""
    for name, jid in (("thetagpu_qstat_u_queued.txt", "10076391"), ("theta_qstat_harvester_a.txt", "77734")):
        (row,) = cobalt.parse_table(fixture("real", "cobalt", name))
        assert row["JobID"] == jid and row["State"] == "queued" and row["Location"] == "None"
    rows = {r["JobID"]: r for r in cobalt.parse_table(fixture("cobalt", "qstat.txt"))}
    assert rows["104951"]["Command"] == "/home/alice/my site/qsubmit/qlaunch2.sh" and rows["104951"]["State"] == "exiting"
    assert rows["104950"]["JobName"] == "hello" and len(rows) == 5


def test_find_submitted_finds_a_balsam_job_by_its_script_as_qstat_shows_it():
    """Cobalt shows no name Balsam gave (JobName N/A): the lookup by name found nothing and the BatchJob was submitted
    twice. The script's path in the Command column finds it, spaces and all; another script does not."""
    fake = FakeRunner(responses={"qstat": fixture("cobalt", "qstat.txt")})
    sched = get_scheduler("cobalt", fake)
    assert sched.find_submitted("balsam-6", "/home/alice/site/qsubmit/qlaunch6.sh", 0.0) == 104941
    assert sched.find_submitted("balsam-2", "/home/alice/my site/qsubmit/qlaunch2.sh", 0.0) == 104951
    assert sched.find_submitted("balsam-8", "/home/alice/site/qsubmit/qlaunch8.sh", 0.0) is None
    assert fake.argvs[0][:2] == ["qstat", "-u"] and fake.argvs[0][-1].endswith(":JobName:Command")
    assert "qsubmit/qlaunch8.sh" in sched.lookup_hint("balsam-8")
    down = FakeRunner(responder=lambda a: CommandResult(a, 1, "", "Failed to connect to queue manager\n"))
    with pytest.raises(SchedulerError, match="queue manager"):
        get_scheduler("cobalt", down).find_submitted("balsam-6", "/home/alice/site/qsubmit/qlaunch6.sh", 0.0)
