"""PBS Professional: exact argv and parsing of qstat/pbsnodes JSON fixtures (PBS cannot run in CI)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from balsam.exceptions import SchedulerError
from balsam.platforms.runner import CommandResult, FakeRunner
from balsam.platforms.schedulers import UNLIMITED_MIN, SchedulerState, get_scheduler, pbs
from tests.platforms_support import fixture

UTC = timezone.utc
NOW = datetime(2023, 11, 10, 11, 31, 18, tzinfo=UTC)


def test_submit_argv_is_exact():
    argv = pbs.render_submit(
        "/site/qsubmit/qlaunch00011.sh", project="MyProject", queue="debug", num_nodes=2, wall_time_min=90,
        optional_params={"filesystems": "home:eagle", "place": "scatter"}, select_suffix=":system=polaris",
    )  # fmt: skip
    assert argv == [
        "qsub", "-N", "qlaunch00011", "-A", "MyProject", "-q", "debug", "-l", "select=2:system=polaris",
        "-l", "walltime=01:30:00", "-l", "filesystems=home:eagle", "-l", "place=scatter",
        "-o", "/site/qsubmit/qlaunch00011.output", "-j", "oe", "/site/qsubmit/qlaunch00011.sh",
    ]  # fmt: skip


def test_submit_through_the_adapter_uses_the_select_suffix_option():
    fake = FakeRunner(responses={"qsub": fixture("pbs", "qsub.txt")})
    sched = get_scheduler("pbs", fake, options={"select_suffix": ":system=crux"})
    assert sched.submit("/s/q.sh", project="P", queue="debug", num_nodes=3, wall_time_min=30) == 1234567
    assert "select=3:system=crux" in fake.argvs[0]


def test_parse_status_keeps_the_users_jobs():
    st = pbs.parse_status(fixture("pbs", "qstat_f_json.txt"), NOW, UTC, user="alice")
    assert {k: v.state for k, v in st.items()} == {
        1201: SchedulerState.QUEUED, 1147579: SchedulerState.RUNNING, 1202: SchedulerState.HELD, 1203: SchedulerState.RUNNING,
    }  # fmt: skip
    queued = st[1201]
    assert (queued.queue, queued.project, queued.num_nodes, queued.wall_time_min) == ("debug", "MyProject", 2, 60)
    assert queued.queued_time_min == pytest.approx(31 + 18 / 60) and queued.start_time is None
    running = st[1147579]
    assert running.num_nodes == 160 and running.wall_time_min == 1440 and running.project == "OtherProject"
    assert running.time_remaining_min == pytest.approx(1440 - (22 * 60 + 28 + 30 / 60))
    assert running.start_time == datetime(2023, 11, 9, 13, 5, 50, tzinfo=UTC)
    assert running.queued_time_min == pytest.approx((datetime(2023, 11, 9, 13, 5, 50) - datetime(2023, 11, 7, 18, 12, 33)).total_seconds() / 60)
    assert st[1203].time_remaining_min == pytest.approx(2 / 60)
    assert 1190 in pbs.parse_status(fixture("pbs", "qstat_f_json.txt"), NOW, UTC)  # no user filter: everyone


def test_history_distinguishes_finished_from_failed():
    st = pbs.parse_status(fixture("pbs", "qstat_x_f_json_finished.txt"), NOW, UTC)
    assert (st[1180].state, st[1180].exit_code) == (SchedulerState.FINISHED, 0)
    assert (st[1181].state, st[1181].exit_code) == (SchedulerState.FAILED, 271)
    assert st[1180].end_time == datetime(2023, 11, 10, 9, 20, 9, tzinfo=UTC)


def test_get_statuses_one_command_with_or_without_ids():
    fake = FakeRunner(responses={"qstat": fixture("pbs", "qstat_f_json.txt")})
    sched = get_scheduler("pbs", fake, tz=UTC)
    assert sorted(sched.get_statuses(user="alice")) == [1201, 1202, 1203, 1147579]
    assert sorted(sched.get_statuses([1202, 1201, 5])) == [1201, 1202]
    assert fake.argvs == [["qstat", "-f", "-F", "json"], ["qstat", "-x", "-f", "-F", "json", "5", "1201", "1202"]]


def test_unknown_ids_and_errors():
    # qstat exits non-zero when some ids are unknown but still prints the others
    partial = FakeRunner(responder=lambda a: CommandResult(a, 153, fixture("pbs", "qstat_f_json.txt"), fixture("pbs", "qstat_unknown.txt")))
    assert 1201 in get_scheduler("pbs", partial).get_statuses([1201, 999])
    gone = FakeRunner(responder=lambda a: CommandResult(a, 153, "", fixture("pbs", "qstat_unknown.txt")))
    assert get_scheduler("pbs", gone).get_statuses([999]) == {}
    assert get_scheduler("pbs", gone).job_times(999) == (None, None)
    get_scheduler("pbs", gone).delete(999)
    broken = FakeRunner(responder=lambda a: CommandResult(a, 2, "", "qstat: cannot connect to server pbs01 (errno=111)"))
    with pytest.raises(SchedulerError, match="cannot connect"):
        get_scheduler("pbs", broken).get_statuses()
    with pytest.raises(SchedulerError, match="malformed JSON"):
        pbs.parse_status('{"Jobs": {', NOW)


def test_job_times_from_history():
    fake = FakeRunner(responses={"qstat": fixture("pbs", "qstat_x_f_json_finished.txt")})
    start, end = get_scheduler("pbs", fake, tz=UTC).job_times(1180)
    assert (start, end) == (datetime(2023, 11, 10, 9, 0, 2, tzinfo=UTC), datetime(2023, 11, 10, 9, 20, 9, tzinfo=UTC))
    assert fake.argvs == [["qstat", "-x", "-f", "-F", "json", "1180"]]


def test_backfill_counts_free_unreserved_nodes_per_open_queue():
    assert pbs.count_free_nodes(fixture("pbs", "pbsnodes_a_json.txt")) == 3
    windows = pbs.parse_backfill(fixture("pbs", "pbsnodes_a_json.txt"), fixture("pbs", "qstat_Qf_json.txt"))
    assert windows == {
        "debug": [pbs.BackfillWindow(2, 60)],
        "debug-scaling": [pbs.BackfillWindow(3, 60)],
        "preemptable": [pbs.BackfillWindow(3, 4320)],
    }  # prod needs 10 nodes; small is route-only; run_next is stopped
    fake = FakeRunner(responder=lambda a: fixture("pbs", "pbsnodes_a_json.txt") if a[0] == "pbsnodes" else fixture("pbs", "qstat_Qf_json.txt"))
    assert get_scheduler("pbs", fake).get_backfill_windows() == windows
    assert UNLIMITED_MIN > 4320


def test_a_submission_that_already_ended_is_found_in_the_job_history():
    """An agent killed mid-``qsub`` and restarted after the job had ended: the plain ``qstat`` no longer lists it, and
    the BatchJob was submitted again. It is found in the server's job history (``qstat -x``), if it was queued since
    the attempt began; without history (qstat -x fails), the plain listing's answer (none) stands."""
    attempt = datetime(2023, 11, 10, 8, 39, 59, tzinfo=UTC).timestamp()  # balsam-9 was queued 08:40:00

    def reply(argv):
        return fixture("pbs", "qstat_x_f_json_finished.txt") if "-x" in argv else fixture("pbs", "qstat_f_json.txt")

    fake = FakeRunner(responder=reply)
    assert get_scheduler("pbs", fake, tz=UTC).find_submitted("balsam-9", "/site/qsubmit/qlaunch00009.sh", attempt) == 1180
    assert fake.argvs[-1] == ["qstat", "-x", "-f", "-F", "json"]
    later = datetime(2023, 11, 10, 9, 0, 0, tzinfo=UTC).timestamp()  # an older job of that name is not this submission
    assert get_scheduler("pbs", FakeRunner(responder=reply), tz=UTC).find_submitted("balsam-9", "x.sh", later) is None
    no_history = FakeRunner(responder=lambda a: CommandResult(a, 2, "", "qstat: illegal -x") if "-x" in a
                            else fixture("pbs", "qstat_f_json.txt"))
    assert get_scheduler("pbs", no_history, tz=UTC).find_submitted("balsam-9", "x.sh", attempt) is None
