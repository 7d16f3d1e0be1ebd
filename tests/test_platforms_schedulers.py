"""What all scheduler adapters share: choice by short name, option checking, one state enum with a complete
translation table per scheduler, and constructors that do no work."""

from __future__ import annotations

import pytest

from balsam.exceptions import ConfigError
from balsam.platforms.runner import FakeRunner
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
