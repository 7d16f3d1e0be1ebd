"""What all scheduler adapters share: choice by short name, option checking, one state enum with a complete
translation table per scheduler, and constructors that do no work."""

from __future__ import annotations

import subprocess

import pytest

from balsam.exceptions import ConfigError, SchedulerError, SubmissionUnconfirmed
from balsam.platforms.runner import CommandResult, FakeRunner
from balsam.platforms.schedulers import (
    ACTIVE_STATES,
    DONE_STATES,
    SCHEDULERS,
    SchedulerState,
    cobalt,
    get_scheduler,
    lsf,
    pbs,
    scheduler_names,
    sge,
    slurm,
)


def test_every_adapter_is_available_by_short_name():
    assert scheduler_names() == ["cobalt", "local", "lsf", "pbs", "sge", "slurm"]
    for name in scheduler_names():
        assert get_scheduler(name, FakeRunner()).name == name


def test_unknown_names_and_options_are_refused_naming_what_is_known():
    with pytest.raises(ConfigError, match="unknown scheduler 'torque'.*known: cobalt, local"):
        get_scheduler("torque")
    with pytest.raises(ConfigError, match="unknown option 'queue_opt'.*queue_option"):
        get_scheduler("slurm", options={"queue_opt": "qos"})



def test_state_dir_is_accepted_for_every_type_and_used_by_the_local_one(tmp_path):
    for name in scheduler_names():  # the site agent passes it whatever the type
        get_scheduler(name, FakeRunner(), state_dir=tmp_path / "local-jobs")
    assert get_scheduler("local", state_dir=tmp_path / "local-jobs").state_dir == tmp_path / "local-jobs"
    assert not (tmp_path / "local-jobs").exists()


def test_constructors_run_no_command():
    fake = FakeRunner()
    for name in scheduler_names():
        get_scheduler(name, fake, options={})
    assert fake.calls == []


def test_state_sets_partition_the_enum():
    assert ACTIVE_STATES | DONE_STATES | {SchedulerState.UNKNOWN} == set(SchedulerState)
    assert not ACTIVE_STATES & DONE_STATES


@pytest.mark.parametrize("module", [slurm, pbs, cobalt, lsf, sge])
def test_translation_tables_map_into_the_enum(module):
    assert module.STATE_TABLE and all(isinstance(v, SchedulerState) for v in module.STATE_TABLE.values())


def test_slurm_table_covers_every_documented_slurm_state():
    documented = {
        "BOOT_FAIL", "CANCELLED", "COMPLETED", "CONFIGURING", "COMPLETING", "DEADLINE", "FAILED", "NODE_FAIL",
        "OUT_OF_MEMORY", "PENDING", "PREEMPTED", "RUNNING", "RESV_DEL_HOLD", "REQUEUE_FED", "REQUEUE_HOLD",
        "REQUEUED", "RESIZING", "REVOKED", "SIGNALING", "SPECIAL_EXIT", "STAGE_OUT", "STOPPED", "SUSPENDED", "TIMEOUT",
    }  # squeue(1), JOB STATE CODES  # fmt: skip
    assert documented <= set(slurm.STATE_TABLE)


def test_every_adapter_class_documents_itself():
    for cls in SCHEDULERS.values():
        assert cls.__doc__ and cls.title
        for method in ("submit", "get_statuses", "delete", "get_backfill_windows", "job_times", "discover_projects"):
            assert getattr(cls, method).__doc__, f"{cls.name}.{method}"


@pytest.mark.parametrize("name", ["slurm", "pbs", "lsf", "sge", "cobalt"])
@pytest.mark.parametrize("reply, unconfirmed", [
    (subprocess.TimeoutExpired(["submit"], 60), True),  # hung, killed at the timeout: it may have sent the job
    (CommandResult([], -9, "", ""), True),  # killed by a signal
    (CommandResult([], 137, "", "Killed\n"), True),  # killed under a wrapper shell
    (CommandResult([], 1, "", "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation\n"), True),
    (CommandResult([], 1, "", "sbatch: error: Batch job submission failed: Zero Bytes were transmitted or received\n"), True),
    (CommandResult([], 1, "", "qsub: End of File\n"), True),
    (CommandResult([], 1, "", "sbatch: error: Batch job submission failed: Invalid partition name specified\n"), False),
    (CommandResult([], 1, "", "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)\n"), False),
    (CommandResult([], 2, "", "qsub: Unknown queue\n"), False),
    (CommandResult([], 137, "", "qsub: Job exceeds queue resource limits\n"), False),  # a refusal in words, whatever the code
])  # fmt: skip
def test_a_submit_without_a_clear_answer_is_unconfirmed_and_a_refusal_is_not(name, reply, unconfirmed, tmp_path):
    """The scheduler service looks an unconfirmed submission up before submitting it again; a refusal ends it."""
    fake = FakeRunner(responder=lambda argv: reply)
    with pytest.raises(SchedulerError) as raised:
        get_scheduler(name, fake).submit(tmp_path / "qlaunch7.sh", project="p", queue="q", num_nodes=1, wall_time_min=5,
                                         job_name="balsam-7", cwd=tmp_path)
    assert isinstance(raised.value, SubmissionUnconfirmed) is unconfirmed, raised.value
    if unconfirmed:
        assert "may have taken the job" in str(raised.value)
