"""Cobalt: exact argv and parsing of documented qstat, nodelist and cobaltlog output (Cobalt is retired)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from balsam.exceptions import SchedulerError
from balsam.platforms.runner import FakeRunner
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
