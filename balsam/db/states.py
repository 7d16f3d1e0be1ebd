"""Job and BatchJob states, their named sets, and the one table of legal job transitions.

Every job state change in Balsam goes through :func:`check_transition` (the store applies it in bulk and
writes one EventLog row per change). The table is DESIGN.md section 4::

    create -> AWAITING_PARENTS (a parent is unfinished) | READY (stage-in pending) | STAGED_IN
    AWAITING_PARENTS -> READY/STAGED_IN when every parent is JOB_FINISHED
    READY -> STAGED_IN (all stage-in transfers done)     STAGED_IN -> PREPROCESSED (preprocess hook)
    PREPROCESSED | RESTART_READY -> RUNNING (launcher, under a lease)
    RUNNING -> RUN_DONE (rc 0) | RUN_ERROR (rc != 0) | RUN_TIMEOUT (wall time, signal, lease expired)
    RUN_DONE -> POSTPROCESSED (postprocess hook)          RUN_ERROR -> FAILED or RESTART_READY (handle_error)
    RUN_TIMEOUT -> RESTART_READY (handle_timeout)          POSTPROCESSED -> STAGED_OUT -> JOB_FINISHED
    any non-final state -> USER_KILLED (kill)
    a user may reset FAILED/USER_KILLED/RUN_* (and JOB_FINISHED, to run it again) to RESTART_READY or READY
    FAILED/USER_KILLED -> AWAITING_PARENTS (a retried job whose parent has not finished waits for it again)

Hooks may also send a job to FAILED from any processing state, and a handle_error or handle_timeout hook may
accept a run as done (POSTPROCESSED).
"""

from __future__ import annotations

import enum
from typing import Dict, FrozenSet, Iterable, Tuple, Union

from balsam.exceptions import IllegalTransition, ValidationError


class ValueEnum(str, enum.Enum):
    """A str enum whose members print as their values (``str``, f-strings and ``%s``), on every Python we run."""

    def __str__(self) -> str:
        return str(self.value)


class JobState(ValueEnum):
    """The states of a Job. Members compare equal to their names (``JobState.RUNNING == "RUNNING"``)."""

    CREATED = "CREATED"
    """Only ever a ``from_state`` in the creation event; never stored."""
    AWAITING_PARENTS = "AWAITING_PARENTS"
    """Some parent job has not reached JOB_FINISHED yet."""
    READY = "READY"
    """Waiting for its stage-in transfers."""
    STAGED_IN = "STAGED_IN"
    """Inputs are in place; waiting for the preprocess hook."""
    PREPROCESSED = "PREPROCESSED"
    """Ready to run: a launcher may acquire it."""
    RUNNING = "RUNNING"
    """A launcher started it under its lease."""
    RUN_DONE = "RUN_DONE"
    """The run exited with code 0; waiting for the postprocess hook."""
    RUN_ERROR = "RUN_ERROR"
    """The run exited with a non-zero code; waiting for the handle_error hook."""
    RUN_TIMEOUT = "RUN_TIMEOUT"
    """The run was cut short (wall time, signal, lost lease); waiting for handle_timeout."""
    RESTART_READY = "RESTART_READY"
    """Ready to run again: a launcher may acquire it."""
    POSTPROCESSED = "POSTPROCESSED"
    """Post-processing is done; waiting for its stage-out transfers."""
    STAGED_OUT = "STAGED_OUT"
    """Stage-out finished (transient: the job moves on to JOB_FINISHED at once)."""
    JOB_FINISHED = "JOB_FINISHED"
    """Done, successfully. Releases children."""
    FAILED = "FAILED"
    """Done, unsuccessfully. Fails children that wait on it."""
    USER_KILLED = "USER_KILLED"
    """Killed by the user. Fails children that wait on it."""

    # Balsam 0.7's member names (``JobState.job_finished``): aliases of the members above, not new states.
    created = "CREATED"
    awaiting_parents = "AWAITING_PARENTS"
    ready = "READY"
    staged_in = "STAGED_IN"
    preprocessed = "PREPROCESSED"
    running = "RUNNING"
    run_done = "RUN_DONE"
    run_error = "RUN_ERROR"
    run_timeout = "RUN_TIMEOUT"
    restart_ready = "RESTART_READY"
    postprocessed = "POSTPROCESSED"
    staged_out = "STAGED_OUT"
    job_finished = "JOB_FINISHED"
    failed = "FAILED"
    user_killed = "USER_KILLED"

    @classmethod
    def is_valid(cls, state: object) -> bool:
        """Whether ``state`` names a job state (Balsam 0.7's ``JobState.is_valid``: its CLI checks ``-s`` with it)."""
        return isinstance(state, str) and state in cls._value2member_map_


S = JobState

RUNNABLE_STATES: FrozenSet[JobState] = frozenset({S.PREPROCESSED, S.RESTART_READY})
"""States a launcher may acquire."""
DONE_STATES: FrozenSet[JobState] = frozenset({S.JOB_FINISHED, S.FAILED, S.USER_KILLED})
"""Final states: nothing moves a job out of them but a user reset."""
FAILED_STATES: FrozenSet[JobState] = frozenset({S.FAILED, S.USER_KILLED})
"""Final states that fail the children waiting on a job."""
PROCESSING_STATES: FrozenSet[JobState] = frozenset({S.STAGED_IN, S.RUN_DONE, S.RUN_ERROR, S.RUN_TIMEOUT})
"""States that wait for the site agent's processing (app hooks)."""
INITIAL_STATES: FrozenSet[JobState] = frozenset({S.AWAITING_PARENTS, S.READY, S.STAGED_IN, S.FAILED})
"""States a job may be created in (FAILED when a parent has already failed)."""
STORED_STATES: FrozenSet[JobState] = frozenset(set(JobState) - {S.CREATED})
"""States a job row may hold."""
RESETTABLE_STATES: FrozenSet[JobState] = frozenset({S.JOB_FINISHED, S.FAILED, S.USER_KILLED, S.RUN_DONE, S.RUN_ERROR, S.RUN_TIMEOUT})
"""States from which a user may send a job back to READY or RESTART_READY (to run it again)."""
RESET_DEFAULT_STATES: FrozenSet[JobState] = frozenset({S.FAILED, S.RUN_ERROR, S.RUN_TIMEOUT, S.USER_KILLED})
"""What ``balsam job reset`` resets when no state is named: jobs that did not finish."""
DISPLAY_ORDER: Tuple[JobState, ...] = (
    S.AWAITING_PARENTS, S.READY, S.STAGED_IN, S.PREPROCESSED, S.RESTART_READY, S.RUNNING, S.RUN_DONE, S.RUN_ERROR,
    S.RUN_TIMEOUT, S.POSTPROCESSED, S.STAGED_OUT, S.JOB_FINISHED, S.FAILED, S.USER_KILLED,
)
"""The stored states in the order lists and plots show them (the two runnable states together)."""

_NON_FINAL = [s for s in STORED_STATES if s not in DONE_STATES]

TRANSITIONS: Dict[JobState, FrozenSet[JobState]] = {
    S.AWAITING_PARENTS: frozenset({S.READY, S.STAGED_IN, S.FAILED}),
    S.READY: frozenset({S.STAGED_IN, S.FAILED}),
    S.STAGED_IN: frozenset({S.PREPROCESSED, S.FAILED, S.RESTART_READY}),
    # PREPROCESSED -> RESTART_READY: both wait for a launcher, and a user's "run it again" (Balsam 0.7's API guide:
    # ``job.state = "RESTART_READY"; job.save()``) must not depend on whether the agent preprocessed the job yet.
    S.PREPROCESSED: frozenset({S.RUNNING, S.FAILED, S.RESTART_READY}),
    S.RESTART_READY: frozenset({S.RUNNING, S.FAILED}),
    S.RUNNING: frozenset({S.RUN_DONE, S.RUN_ERROR, S.RUN_TIMEOUT}),
    S.RUN_DONE: frozenset({S.POSTPROCESSED, S.RESTART_READY, S.FAILED}),
    S.RUN_ERROR: frozenset({S.FAILED, S.RESTART_READY, S.POSTPROCESSED}),
    S.RUN_TIMEOUT: frozenset({S.RESTART_READY, S.FAILED, S.POSTPROCESSED}),
    S.POSTPROCESSED: frozenset({S.STAGED_OUT, S.JOB_FINISHED, S.FAILED}),
    S.STAGED_OUT: frozenset({S.JOB_FINISHED, S.FAILED}),
    S.JOB_FINISHED: frozenset(),
    S.FAILED: frozenset(),
    S.USER_KILLED: frozenset(),
}
# Kills: any non-final state. Resets: the user sends a finished-badly job back.
for _state in _NON_FINAL:
    TRANSITIONS[_state] = TRANSITIONS[_state] | {S.USER_KILLED}
for _state in RESETTABLE_STATES:
    TRANSITIONS[_state] = TRANSITIONS[_state] | {S.READY, S.RESTART_READY}
# A failed or killed job whose parent is being retried waits for it again (DAG retry_failed).
for _state in FAILED_STATES:
    TRANSITIONS[_state] = TRANSITIONS[_state] | {S.AWAITING_PARENTS}
del _state

# Plain-string view for the hot path (rows carry states as text).
LEGAL: Dict[str, FrozenSet[str]] = {src.value: frozenset(d.value for d in dst) for src, dst in TRANSITIONS.items()}


def to_state(value: Union[str, JobState]) -> JobState:
    """Parse a state name, with an error that lists the valid ones."""
    if isinstance(value, JobState):
        return value
    try:
        return JobState(str(value).upper())
    except ValueError:
        valid = ", ".join(s.value for s in JobState if s in STORED_STATES)  # lifecycle order
        raise ValidationError(f"unknown job state {value!r} (valid: {valid})") from None


def to_states(values: Union[str, JobState, Iterable[Union[str, JobState]]]) -> FrozenSet[JobState]:
    """Parse one state name or several."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        return frozenset({to_state(values)})  # one name (a number or None is refused by name)
    return frozenset(to_state(v) for v in values)


def is_legal(src: str, dst: str) -> bool:
    """True when a job may move from ``src`` to ``dst``."""
    return dst in LEGAL.get(src, ())


def check_transition(src: str, dst: str, job_id: int | None = None) -> None:
    """Raise IllegalTransition unless a job may move from ``src`` to ``dst``."""
    if dst not in LEGAL.get(src, ()):
        allowed = ", ".join(sorted(LEGAL.get(src, ()))) or "nothing"
        who = f"job {job_id}: " if job_id is not None else ""
        raise IllegalTransition(f"{who}cannot move from {src} to {dst} (allowed from {src}: {allowed})", job_id)


class BatchJobState(ValueEnum):
    """The states of a BatchJob (a pilot allocation)."""

    pending_submission = "pending_submission"
    """Created; the site agent will submit it."""
    submit_failed = "submit_failed"
    """The scheduler refused it; ``status_info`` says why."""
    queued = "queued"
    """Waiting in the scheduler's queue."""
    running = "running"
    """The allocation started."""
    finished = "finished"
    """The allocation ended (or was deleted)."""
    pending_deletion = "pending_deletion"
    """The user asked to delete it; the agent will cancel it."""


class TransferItemState(ValueEnum):
    """The states of a TransferItem (stage-out items wait for their job as ``awaiting_job``)."""

    pending = "pending"
    active = "active"
    inactive = "inactive"
    done = "done"
    error = "error"
    awaiting_job = "awaiting_job"


B = BatchJobState
BATCH_ACTIVE_STATES: FrozenSet[BatchJobState] = frozenset({B.pending_submission, B.queued, B.running})
"""BatchJobs that are, or will be, an allocation (``balsam queue term`` may cancel them)."""
BATCH_LISTED_STATES: FrozenSet[BatchJobState] = BATCH_ACTIVE_STATES | {B.pending_deletion}
"""BatchJobs ``balsam queue ls`` shows without ``--history``: active ones and those being cancelled."""
BATCH_TRANSITIONS: Dict[BatchJobState, FrozenSet[BatchJobState]] = {
    B.pending_submission: frozenset({B.queued, B.running, B.submit_failed, B.pending_deletion, B.finished}),
    B.queued: frozenset({B.running, B.finished, B.pending_deletion}),
    B.running: frozenset({B.finished, B.pending_deletion}),
    B.pending_deletion: frozenset({B.finished}),
    B.submit_failed: frozenset({B.pending_submission, B.queued}),  # queued: found at the scheduler after all
    B.finished: frozenset(),
}


def to_batch_state(value: Union[str, BatchJobState]) -> BatchJobState:
    """Parse a BatchJob state name."""
    if isinstance(value, BatchJobState):
        return value
    try:
        return BatchJobState(str(value))
    except ValueError:
        raise ValidationError(f"unknown batch job state {value!r} (valid: {', '.join(s.value for s in BatchJobState)})") from None


def check_batch_transition(src: str, dst: str, batch_job_id: int | None = None) -> None:
    """Raise IllegalTransition unless a BatchJob may move from ``src`` to ``dst``."""
    if src == dst:
        return
    allowed_set = BATCH_TRANSITIONS.get(BatchJobState(src), frozenset())
    if BatchJobState(dst) not in allowed_set:
        allowed = ", ".join(sorted(s.value for s in allowed_set)) or "nothing: it is final"
        raise IllegalTransition(f"batch job {batch_job_id}: cannot move from {src} to {dst} (allowed: {allowed})")
