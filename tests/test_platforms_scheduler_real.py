"""Every adapter's parsers on output captured on production clusters (tests/fixtures/real, sources in its
SOURCES.md), beside the fixtures written from documentation; and a failed status command is never an empty
listing, in every adapter."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Dict

import pytest

from balsam.exceptions import SchedulerError
from balsam.platforms.runner import CommandResult, FakeRunner
from balsam.platforms.schedulers import SchedulerState, cobalt, get_scheduler, lsf, pbs, sge, slurm
from tests.platforms_support import fixture

UTC = timezone.utc
NOW = datetime(2025, 7, 24, 12, 0, tzinfo=UTC)


def real(*parts: str) -> str:
    return fixture("real", *parts)


# ------------------------------------------------------------------------------------------------ PBS
def test_pbs_aurora_history_walltime_kills_fail_and_a_clean_exit_finishes() -> None:
    st = pbs.parse_status(real("pbs", "aurora_qstat_x_f_json_2025-07-24.json"), NOW, UTC)
    assert st[6617175].state is SchedulerState.FAILED and st[6617175].exit_code == -29
    assert "exceeded resource walltime" in st[6617175].reason
    assert st[6617175].num_nodes == 40 and st[6617175].wall_time_min == 360
    assert st[6617175].start_time == datetime(2025, 7, 23, 15, 35, 36, tzinfo=UTC) and st[6617175].end_time is not None
    assert st[6631289].state is SchedulerState.FINISHED and st[6631289].exit_code == 0
    assert st[4905472].state is SchedulerState.HELD and st[4905472].end_time is None


def test_pbs_polaris_and_metacentrum_listings() -> None:
    st = pbs.parse_status(real("pbs", "polaris_qstat_f_json_2023-11-10.json"), NOW, UTC)
    assert st[359322].state is SchedulerState.QUEUED and st[359322].start_time is None
    assert st[412020].state is SchedulerState.HELD
    assert st[1147579].state is SchedulerState.RUNNING and st[1147579].num_nodes == 160
    meta = pbs.parse_status(real("pbs", "metacentrum_qstat_xf_json_running.json"), NOW, UTC)
    assert meta[12860476].state is SchedulerState.RUNNING and meta[12860476].num_nodes == 2


def test_pbs_real_pbsnodes_and_queue_listing_parse() -> None:
    assert pbs.count_free_nodes(real("pbs", "polaris_pbsnodes_a_json_2023-11-10.json")) >= 0
    queues = pbs.load_json(real("pbs", "barbora_qstat_Q_f_json_qexp.json"), "qstat -Q")
    assert "qexp" in queues["Queue"]


def _captured(name: str) -> Dict[str, Any]:
    data: Dict[str, Any] = json.loads(real("pbs", name))
    return data


def test_pbs_outage_is_an_error_not_an_empty_listing() -> None:
    """The real capture: qstat exits 255, a JSON header with no Jobs, 'cannot connect to server' on stderr."""
    cap = _captured("qut_qstat_connection_refused.json")
    outage = FakeRunner(responder=lambda a: CommandResult(a, cap["returncode"], cap["stdout"], cap["stderr"]))
    sched = get_scheduler("pbs", outage)
    with pytest.raises(SchedulerError, match="cannot connect to server"):
        sched.get_statuses([1, 2])
    with pytest.raises(SchedulerError, match="cannot connect to server"):
        sched.get_statuses()
    with pytest.raises(SchedulerError, match="cannot connect to server"):
        sched.job_history(1)


def test_pbs_job_deleted_before_it_ran_is_cancelled_with_the_comment() -> None:
    text = fixture("pbs", "qstat_x_f_json_deleted_before_run.txt")
    st = pbs.parse_status(text, NOW, UTC)[1290]
    assert st.state is SchedulerState.CANCELLED
    assert st.exit_code is None and st.start_time is None
    assert "terminated" in st.reason


# ------------------------------------------------------------------------------------------------ LSF
def test_lsf_runtimelimit_in_hms_form_is_read_as_minutes() -> None:
    st = lsf.parse_status(real("lsf", "dkfz_bjobs_json_hms_done.json"), NOW, UTC)[22005]
    assert st.wall_time_min == 10  # RUNTIMELIMIT 00:10:00 (LSB_HMS_TIME_FORMAT=Y), not 0
    assert st.state is SchedulerState.FINISHED and st.end_time is not None
    assert lsf.limit_minutes("1440.0") == 1440.0 and lsf.limit_minutes("24:00:00") == 1440.0 and lsf.limit_minutes("") == 0.0


def test_lsf_summit_record_and_real_bsub_output() -> None:
    st = lsf.parse_status(real("lsf", "summit_bjobs_json_balsam_comment.json"), NOW, UTC)[806290]
    assert st.state is SchedulerState.RUNNING and st.wall_time_min == 1440
    assert st.time_remaining_min is not None and abs(st.time_remaining_min - (1440 - 16038 / 60)) < 0.01
    assert lsf.parse_submit(real("lsf", "summit_bsub_buildtest.txt")) == 3386667
    assert lsf.parse_submit(real("lsf", "osc_bsub.txt")) == 542935


def test_lsf_outage_is_an_error() -> None:
    down = FakeRunner(responder=lambda a: CommandResult(a, 255, "", "LSF is down. Please wait ...\n"))
    with pytest.raises(SchedulerError, match="LSF is down"):
        get_scheduler("lsf", down).get_statuses([1])
    with pytest.raises(SchedulerError, match="LSF is down"):
        get_scheduler("lsf", down).job_history(1)


# ------------------------------------------------------------------------------------------------ Slurm
def test_slurm_real_scontrol_records_and_plain_sbatch() -> None:
    start, end = slurm.parse_scontrol_times(real("slurm", "cineca_m100_scontrol_show_job_running.txt"), UTC)
    assert start == datetime(2021, 10, 7, 11, 15, 26, tzinfo=UTC) and end is None  # running: EndTime is a forecast
    assert slurm.parse_scontrol_times(real("slurm", "huji_scontrol_show_job_20547.txt"), UTC) == (None, None)  # pending
    start, end = slurm.parse_scontrol_times(real("slurm", "huji_scontrol_show_job_1306093.txt"), UTC)
    assert start == datetime(2022, 2, 8, 16, 2, 28, tzinfo=UTC) and end is None
    with pytest.raises(SchedulerError, match="no job id: 'Submitted batch job 17670585'"):  # Balsam asks for --parsable
        slurm.parse_submit(real("slurm", "sbatch_plain_arc.txt"))


def test_slurm_outage_is_an_error() -> None:
    down = FakeRunner(responder=lambda a: CommandResult(
        a, 1, "", "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n"))
    with pytest.raises(SchedulerError, match="Unable to contact slurm controller"):
        get_scheduler("slurm", down).get_statuses([1])


# ------------------------------------------------------------------------------------------------ SGE
def test_sge_real_listing_and_plain_qsub() -> None:
    st = sge.parse_status(real("sge", "fgcz_qstat_u_xml.xml"), NOW, UTC)
    assert st[389524].state is SchedulerState.RUNNING and st[389524].start_time == datetime(2011, 11, 23, 17, 20, 34, tzinfo=UTC)
    assert st[389632].state is SchedulerState.QUEUED and st[389632].start_time is None
    with pytest.raises(SchedulerError, match="no job id"):  # Balsam asks for -terse; plain output is refused clearly
        sge.parse_submit(real("sge", "renci_qsub_plain.txt"))


def test_sge_history_from_qacct() -> None:
    text = fixture("sge", "qacct_j.txt")
    st = sge.parse_qacct_status(text, 2, UTC)
    assert st is not None and st.state is SchedulerState.FAILED and st.exit_code == 3
    assert sge.parse_qacct_status("", 2, UTC) is None


def test_sge_outage_is_an_error() -> None:
    down = FakeRunner(responder=lambda a: CommandResult(a, 1, "", "error: commlib error: can't connect to service (qmaster)\n"))
    with pytest.raises(SchedulerError, match="can't connect"):
        get_scheduler("sge", down).get_statuses([1])


# ------------------------------------------------------------------------------------------------ Cobalt
def test_cobalt_real_listings_qsub_and_log_line() -> None:
    st = cobalt.parse_status(real("cobalt", "theta_qstat_harvester_a.txt"), NOW)[77734]
    assert st.state is SchedulerState.QUEUED and st.num_nodes == 64 and st.wall_time_min == 360
    gpu = cobalt.parse_status(real("cobalt", "thetagpu_qstat_u_queued.txt"), NOW)[10076391]
    assert gpu.state is SchedulerState.QUEUED and gpu.num_nodes == 1 and gpu.wall_time_min == 5
    assert cobalt.parse_submit(real("cobalt", "thetagpu_qsub.txt")) == 10076391
    start, end = cobalt.parse_cobaltlog(real("cobalt", "theta_cobaltlog_buildtest_line.txt"))
    assert start is None and end == datetime(2020, 11, 5, 17, 29, 30, tzinfo=UTC)  # ended, start not in the excerpt


def test_cobalt_outage_is_an_error() -> None:
    down = FakeRunner(responder=lambda a: CommandResult(a, 1, "", "Failed to connect to system component queue-manager\n"))
    with pytest.raises(SchedulerError, match="Failed to connect"):
        get_scheduler("cobalt", down).get_statuses([1])
