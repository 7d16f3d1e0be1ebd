"""The scheduler service: BatchJobs <-> the local batch scheduler.

Each cycle: submit BatchJobs in ``pending_submission`` (render the site's job template into ``qsubmit/``,
then the adapter's submit; a submission interrupted by the agent's death, or whose command ended without a clear answer,
is looked up at the scheduler before it is ever made again); cancel those in ``pending_deletion``; poll every known BatchJob with ONE scheduler
command and record state, start and end times. A failed poll (scheduler unreachable) changes nothing: the
cycle fails, the service thread retries with backoff and ``site status`` shows why. A BatchJob ends only when
the scheduler says so, or after it has been missing from ``MISSING_POLLS`` successful polls in a row and the
scheduler's history (``qstat -x``, ``sacct``, ``bjobs -a``, ``qacct``) does not show it still active. When a BatchJob finishes, leases still held by its launchers are released
(running jobs become RUN_TIMEOUT, the rest unlock), so nothing waits on a dead allocation. The site row gets
the scheduler's view (queued jobs, backfill windows) for the elastic queue and for humans.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from balsam._api.sites import SiteRef
from balsam.db import batch_jobs as batch_db
from balsam.db.site_row import update_site_row
from balsam.db.states import BatchJobState
from balsam.exceptions import BalsamError, SubmissionUnconfirmed, ValidationError
from balsam.platforms.schedulers import DONE_STATES, Scheduler, SchedulerJobStatus, SchedulerState
from balsam.runtime import balsam_shell_words
from balsam.services.base import Service
from balsam.settings import SchedulerSettings
from balsam.site.submission import render_script, script_path

logger = logging.getLogger(__name__)
B = BatchJobState

STATE_OF = {
    SchedulerState.QUEUED: B.queued,
    SchedulerState.HELD: B.queued,
    SchedulerState.RUNNING: B.running,
    SchedulerState.FINISHED: B.finished,
    SchedulerState.FAILED: B.finished,
    SchedulerState.CANCELLED: B.finished,
}
BACKFILL_EVERY_S = 60.0
SUBMITTING = batch_db.SUBMITTING
"""The ``status_info`` key that marks a submission under way (its start time), cleared once its id is recorded."""
SUBMIT_GRACE_S = 5.0
"""How long past the submit command's timeout an interrupted submission may still land at the scheduler."""
MISSING_POLLS = 3
"""Successful polls a BatchJob must be missing from before the scheduler's history is asked whether it ended."""
UNCONFIRMED = "unconfirmed_lookups"
"""The ``status_info`` key counting lookups that could not say whether an interrupted submission landed."""
UNCONFIRMED_LOOKUPS = 5
"""Lookups of an interrupted submission that cannot say whether it landed (the scheduler does not answer) before its
BatchJob is ``submit_failed``, saying so and where to look, instead of ``pending_submission`` for ever..."""
UNCONFIRMED_AFTER_S = 600.0
"""...and no sooner than this long after the submission began: a scheduler down for a few minutes is waited out."""
RECHECK_S = 60.0
"""How often a ``submit_failed`` BatchJob whose submission could not be confirmed is looked up again: found at the
scheduler, it is recorded (queued); found to have never landed, its message says so."""
SUBMIT_DOUBT = "submit_doubt"
"""The ``status_info`` key of a submission whose command ended without a clear answer (it hung and was killed at its
timeout, died by a signal, lost its connection after sending): what it said. Its SUBMITTING mark stays, so it is looked
up like an interrupted submission (found: recorded; clearly absent: submitted again) instead of ``submit_failed`` while
the scheduler may hold it, and the elastic queue asking for another allocation."""
SUBMIT_ENDED = "submit_ended"
"""When that command ended: a scheduler slow enough to time out a submit may still take the request for a while, so a
lookup that does not find it counts only once another command timeout (and SUBMIT_GRACE_S) has passed since."""
DOUBTS = "unanswered_submits"
"""The ``status_info`` key counting submissions in a row that ended without an answer and were then found absent."""
DOUBTFUL_SUBMITS = 3
"""Such submissions before the BatchJob is ``submit_failed``, saying so, instead of submitted again (a scheduler that
hangs on every submit but answers lookups would otherwise be asked for ever)."""


def _epoch(value: Optional[dt.datetime]) -> Optional[float]:
    return None if value is None else value.timestamp()


class SchedulerUnreachable(BalsamError):
    """The scheduler's status command failed: a transient fault, retried with backoff; no state changes."""


class SchedulerService(Service):
    """Submits, polls and cancels BatchJobs through one scheduler adapter."""

    name = "scheduler"

    def __init__(self, site: SiteRef, settings: SchedulerSettings, adapter: Scheduler, *, balsam_command: Optional[str] = None) -> None:
        super().__init__(settings.sync_period_s)
        self.site = site
        self.settings = settings
        self.adapter = adapter
        self.balsam_command = balsam_command or balsam_shell_words()
        self._last_backfill = 0.0
        self._last_recheck = 0.0

    # ---------------------------------------------------------------- helpers
    def _batch_jobs(self, states: Tuple[str, ...]) -> List[Dict[str, Any]]:
        return batch_db.batch_jobs_in(self.site.store.conn, states)

    def _update(self, bj_id: int, *, state: Optional[str] = None, info: Optional[Dict[str, Any]] = None, **fields: Any) -> bool:
        """Write a BatchJob's fields (a state change checked against the BatchJob state table); False if its record
        is gone (its owner deleted it). One deleted while active is removed when it ends (batch_jobs.update_batch_job)."""
        with self.site.store.write() as conn:
            if not batch_db.batch_job_exists(conn, bj_id):
                return False
            try:
                batch_db.update_batch_job(conn, bj_id, state=state, info=info, **fields)
            except ValidationError as exc:  # an illegal transition (the user cancelled it meanwhile)
                logger.warning("%s", exc)
        return True

    # ---------------------------------------------------------------- the cycle
    def run_cycle(self) -> None:
        for bj in self._batch_jobs((B.pending_submission,)):
            self._submit(bj)
        for bj in self._batch_jobs((B.pending_deletion,)):
            self._delete(bj)
        if time.time() - self._last_recheck >= RECHECK_S:
            self._last_recheck = time.time()
            for bj in self._batch_jobs((B.submit_failed,)):
                if bj["status_info"].get(SUBMITTING):
                    self._recheck(bj)
        self._poll()
        self._refresh_site()

    def script_path(self, bj_id: int) -> Path:
        return script_path(self.site.layout, bj_id)

    def render_script(self, bj: Dict[str, Any]) -> str:
        """The batch script of one BatchJob, from the site's job template."""
        return render_script(self.site.path, self.settings, bj, self.balsam_command)

    def _submit(self, bj: Dict[str, Any]) -> None:
        script = self.script_path(bj["id"])
        name = f"balsam-{bj['id']}"
        since = bj["status_info"].get(SUBMITTING)
        if since and not self._submission_lost(bj, name, script, since):
            return
        # The intent is committed before the scheduler hears of the BatchJob: an agent killed between the submit and
        # recording its id leaves this mark, and the next agent looks the submission up instead of making it twice.
        if not self._update(bj["id"], info={SUBMITTING: repr(time.time()), SUBMIT_DOUBT: None, SUBMIT_ENDED: None, "message": None}):
            return
        try:
            text = self.render_script(bj)
            script.parent.mkdir(parents=True, exist_ok=True)
            script.write_text(text)
            script.chmod(0o755)
            scheduler_id = self.adapter.submit(
                script, project=bj["project"], queue=bj["queue"], num_nodes=bj["num_nodes"], wall_time_min=bj["wall_time_min"],
                job_name=name, optional_params=bj["optional_params"], cwd=self.site.path,
            )
        except SubmissionUnconfirmed as exc:
            self._doubt(bj, exc)
            return
        except (BalsamError, OSError) as exc:
            message = str(exc).strip() or type(exc).__name__
            stderr = getattr(exc, "stderr", "")
            logger.error("batch job %s: submit failed: %s", bj["id"], message)
            self._update(bj["id"], state=B.submit_failed,
                         info={"error": message[:2000], SUBMITTING: None, **({"stderr": stderr[-2000:]} if stderr else {})})
            return
        logger.info("batch job %s submitted as %s %s", bj["id"], self.adapter.name, scheduler_id)
        self._record_submission(bj, scheduler_id, script)

    def _doubt(self, bj: Dict[str, Any], exc: SubmissionUnconfirmed) -> None:
        """A submit command that ended without a clear answer: the BatchJob keeps its SUBMITTING mark and stays
        ``pending_submission``; the next cycles look it up (:meth:`_submission_lost`) before any second submission."""
        said = str(exc).strip()
        doubts = int(bj["status_info"].get(DOUBTS, 0) or 0) + 1
        logger.warning("batch job %s: %s: looking it up at %s before submitting it again", bj["id"], said, self.adapter.name)
        self._update(bj["id"], info={SUBMIT_DOUBT: said[:2000], SUBMIT_ENDED: repr(time.time()), DOUBTS: doubts,
                                     "message": f"submission unconfirmed, being looked up: {said[:500]}",
                                     **({"stderr": exc.stderr[-2000:]} if exc.stderr else {})})

    def _may_still_land(self, info: Dict[str, Any], since: float) -> bool:
        """Whether a submission under way since ``since`` may still reach the scheduler, so that not finding it there
        says nothing yet: its submit command may still run (an agent killed mid-submit leaves it running), or it ended
        without an answer too recently (a scheduler slow enough to time it out may still be taking it)."""
        now = time.time()
        if self.adapter.submit_outlives_caller and now - since < self.adapter.timeout_s + SUBMIT_GRACE_S:
            return True
        try:
            ended = float(info.get(SUBMIT_ENDED) or 0.0)
        except ValueError:
            ended = 0.0
        return now - ended < self.adapter.timeout_s + SUBMIT_GRACE_S

    def _record_submission(self, bj: Dict[str, Any], scheduler_id: int, script: Path, **info: Optional[str]) -> None:
        """Record the scheduler's id of a BatchJob's submission; cancel it if the BatchJob was deleted meanwhile."""
        cancelling = batch_db.batch_job_state(self.site.store.conn, bj["id"]) == B.pending_deletion
        if not self._update(bj["id"], state=None if cancelling else B.queued, scheduler_id=scheduler_id,
                            info={"submit_script": str(script), SUBMITTING: None, UNCONFIRMED: None, SUBMIT_DOUBT: None,
                                  SUBMIT_ENDED: None, DOUBTS: None, "message": None, **info,
                                  "submit_time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}):
            # deleted by its owner while it was being submitted: nothing may run for a BatchJob that no longer exists
            logger.info("batch job %s was deleted during its submission: cancelling %s %s", bj["id"], self.adapter.name, scheduler_id)
            try:
                self.adapter.delete(int(scheduler_id))
            except BalsamError as exc:
                logger.warning("batch job %s: cancelling %s after its deletion failed: %s", bj["id"], scheduler_id, exc)

    def _submission_lost(self, bj: Dict[str, Any], name: str, script: Path, since_text: str) -> bool:
        """A BatchJob whose submission was under way when the agent stopped: True if it never reached the scheduler
        (submit it now). A submission the scheduler took is recorded (False), as is any doubt (False: ask again next
        cycle), so a crash never makes a second submission."""
        try:
            since = float(since_text)
        except ValueError:
            since = 0.0
        try:
            found = self.adapter.find_submitted(name, script, since)
        except BalsamError as exc:
            self._unconfirmed(bj, name, since, exc)
            return False
        doubt = bj["status_info"].get(SUBMIT_DOUBT)
        if found is not None:
            logger.info("batch job %s: its submission %s, and %s took it as %s: recorded, not submitted again", bj["id"],
                        "ended without an answer" if doubt else "was interrupted", self.adapter.name, found)
            recovered = (f"its submit command ended without an answer, and {self.adapter.name} had taken it" if doubt
                         else "submitted before the site agent restarted")
            self._record_submission(bj, int(found), script, recovered=recovered)
            return False
        if self._may_still_land(bj["status_info"], since):
            # the stopped agent's submit command may still be running (a SIGKILL of the agent does not stop it), or a
            # scheduler that did not answer the submit in time may still be taking it
            logger.info("batch job %s: its submission %s; waiting for it to land or not before submitting again", bj["id"],
                        "ended without an answer" if doubt else "was interrupted")
            return False
        doubts = int(bj["status_info"].get(DOUBTS, 0) or 0)
        if doubt and doubts >= DOUBTFUL_SUBMITS:
            message = (f"not submitted again: {doubts} submissions in a row ended without an answer and {self.adapter.name} "
                       f"did not take them (last: {doubt[:500]}). Check the scheduler, then submit a new BatchJob "
                       f"(balsam queue submit)")
            logger.error("batch job %s: %s", bj["id"], message)
            self._update(bj["id"], state=B.submit_failed, info={"error": message[:2000], SUBMITTING: None, SUBMIT_DOUBT: None,
                                                                SUBMIT_ENDED: None, DOUBTS: None, "message": None})
            return False
        logger.info("batch job %s: its %s submission never reached %s: submitting it", bj["id"],
                    "unanswered" if doubt else "interrupted", self.adapter.name)
        return True

    def _unconfirmed(self, bj: Dict[str, Any], name: str, since: float, exc: BalsamError) -> None:
        """A lookup of an interrupted submission that could not say whether it landed. Asked again next cycle, up to
        UNCONFIRMED_LOOKUPS times and UNCONFIRMED_AFTER_S; then the BatchJob ends visibly (``submit_failed``, or
        ``finished`` when its deletion was asked) with what to check, and is never submitted again by doubt. Its
        SUBMITTING mark stays: a later lookup that finds it records it (:meth:`_recheck`), and a resubmission by the
        user looks it up first."""
        lookups = int(bj["status_info"].get(UNCONFIRMED, 0) or 0) + 1
        waited = time.time() - since
        if lookups < UNCONFIRMED_LOOKUPS or waited < UNCONFIRMED_AFTER_S:
            logger.warning("batch job %s: its submission was interrupted, and %s cannot say whether it landed (%s): "
                           "asking again before submitting (lookup %d)", bj["id"], self.adapter.name, exc, lookups)
            self._update(bj["id"], info={UNCONFIRMED: lookups, "lookup_error": str(exc)[:2000]})
            return
        cause = bj["status_info"].get(SUBMIT_DOUBT)
        how = (f"its submit command ended without an answer ({cause[:500]})" if cause else
               "its submission was interrupted (the site agent stopped while submitting it)")
        doubt = (f"{how} and {self.adapter.name} could not say whether it landed ({lookups} lookups over {waited / 60:.0f} min; last: {str(exc)[:500]}). "
                 f"Check the scheduler's queue for a job named {name} ({self.adapter.lookup_hint(name)})")
        if bj["state"] == B.pending_deletion:
            message = f"deleted without cancelling at the scheduler: {doubt}, and cancel it there if it is listed"
            logger.error("batch job %s: %s", bj["id"], message)
            self._update(bj["id"], state=B.finished, end_time=time.time(), info={"deleted": message, UNCONFIRMED: None})
            return
        message = (f"not submitted again, so that it cannot run twice: {doubt}. Balsam records it here if "
                   f"{self.adapter.name} shows it later; if it is not there, submit a new BatchJob (balsam queue submit)")
        logger.error("batch job %s: %s", bj["id"], message)
        self._update(bj["id"], state=B.submit_failed, info={"error": message[:2000], UNCONFIRMED: None, "message": None,
                                                            "lookup_error": str(exc)[:2000]})

    def _recheck(self, bj: Dict[str, Any]) -> None:
        """A ``submit_failed`` BatchJob whose interrupted submission could not be confirmed: asked again, so the record
        follows the scheduler once it answers (queued if it landed; its message says so if it never did)."""
        name, script = f"balsam-{bj['id']}", self.script_path(bj["id"])
        try:
            since = float(bj["status_info"][SUBMITTING])
            found = self.adapter.find_submitted(name, script, since)
        except (BalsamError, ValueError):
            return  # still no answer: it stays submit_failed, saying what to check
        if found is not None:
            logger.info("batch job %s: its unconfirmed submission is at %s as %s: recorded", bj["id"], self.adapter.name, found)
            self._record_submission(bj, int(found), script, error=None, lookup_error=None,
                                    recovered=f"found at {self.adapter.name} after it could not be confirmed")
            return
        if self._may_still_land(bj["status_info"], since):
            return  # its submit command may still land
        logger.info("batch job %s: its unconfirmed submission never reached %s", bj["id"], self.adapter.name)
        self._update(bj["id"], info={SUBMITTING: None, "lookup_error": None, SUBMIT_DOUBT: None, SUBMIT_ENDED: None,
                                     DOUBTS: None, "message": None,
                                     "error": f"its unconfirmed submission never reached {self.adapter.name} (it answers "
                                              f"again and has no job {name}): submit a new BatchJob (balsam queue submit)"})

    def _delete(self, bj: Dict[str, Any]) -> None:
        if bj["scheduler_id"] is None:
            since = bj["status_info"].get(SUBMITTING)
            if since and not self._submission_lost(bj, f"balsam-{bj['id']}", self.script_path(bj["id"]), since):
                return  # recorded (cancelled by the next cycle), or not known yet whether it landed: ask again
            self._update(bj["id"], state=B.finished, end_time=time.time(), info={"deleted": "before submission"})
            return
        if "delete_requested" in bj["status_info"]:
            return  # asked already; the poll records the end
        try:
            self.adapter.delete(int(bj["scheduler_id"]))
        except BalsamError as exc:
            logger.warning("batch job %s: delete of %s failed: %s", bj["id"], bj["scheduler_id"], exc)
            self._update(bj["id"], info={"delete_error": str(exc)[:2000]})
            return
        self._update(bj["id"], info={"delete_requested": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})

    def _poll(self) -> None:
        active = [bj for bj in self._batch_jobs((B.queued, B.running, B.pending_deletion)) if bj["scheduler_id"] is not None]
        if not active:
            self.backlog = 0
            return
        try:
            statuses = self.adapter.get_statuses(scheduler_ids=[int(bj["scheduler_id"]) for bj in active])
        except BalsamError as exc:
            raise SchedulerUnreachable(f"{self.adapter.name} status poll failed; every BatchJob keeps its state: {exc}") from exc
        self.backlog = len(active)
        for bj in active:
            status = statuses.get(int(bj["scheduler_id"]))
            if status is None:
                self._missing(bj)
            elif status.state in DONE_STATES:
                self._finish(bj, status)
            else:
                new = STATE_OF.get(status.state)
                fields: Dict[str, Any] = {}
                if status.start_time is not None:
                    fields["start_time"] = _epoch(status.start_time)
                info: Dict[str, Any] = {"scheduler_state": status.raw_state} if status.raw_state else {}
                if int(bj["status_info"].get("missing_polls", 0) or 0):
                    info["missing_polls"] = 0
                if bj["state"] == B.pending_deletion or new is None or new == bj["state"]:
                    new = None
                self._update(bj["id"], state=new, info=info or None, **fields)

    def _missing(self, bj: Dict[str, Any]) -> None:
        """A BatchJob the listing does not show: count it; after MISSING_POLLS, ask the scheduler's history."""
        missed = int(bj["status_info"].get("missing_polls", 0) or 0) + 1
        if missed < MISSING_POLLS:
            self._update(bj["id"], info={"missing_polls": missed})
            return
        try:
            history = self.adapter.job_history(int(bj["scheduler_id"]), self.script_path(bj["id"]))
        except BalsamError as exc:
            logger.warning("batch job %s: missing from %d polls; history unavailable (%s): keeping its state", bj["id"], missed, exc)
            self._update(bj["id"], info={"missing_polls": missed})
            return
        if history is not None and history.state not in DONE_STATES:
            logger.warning("batch job %s: missing from the listing but the history says %s: keeping it", bj["id"], history.raw_state)
            self._update(bj["id"], info={"missing_polls": 0})
            return
        if history is None:
            logger.info("batch job %s: missing from %d polls and the history has no record: finished", bj["id"], missed)
        self._finish(bj, history)

    def _finish(self, bj: Dict[str, Any], status: Optional[SchedulerJobStatus]) -> None:
        start = _epoch(status.start_time) if status is not None else None
        end = _epoch(status.end_time) if status is not None else None
        if start is None or end is None:
            try:
                times = self.adapter.job_times(int(bj["scheduler_id"]), self.script_path(bj["id"]))
                start = start if start is not None else _epoch(times[0])
                end = end if end is not None else _epoch(times[1])
            except BalsamError as exc:
                logger.info("batch job %s: end time unknown: %s", bj["id"], exc)
        info: Dict[str, Any] = {}
        if status is not None:
            info["scheduler_state"] = status.state.value
            if status.exit_code is not None:
                info["exit_code"] = status.exit_code
            if status.reason:
                info["reason"] = status.reason
        fields: Dict[str, Any] = {"end_time": end if end is not None else time.time()}
        if start is not None:
            fields["start_time"] = start
        logger.info("batch job %s (%s %s) finished", bj["id"], self.adapter.name, bj["scheduler_id"])
        self._update(bj["id"], state=B.finished, info=info, **fields)

    def _refresh_site(self) -> None:
        now = time.time()
        fields: Dict[str, Any] = {"last_refresh": now}
        queued = {str(bj["scheduler_id"]): {"state": bj["state"], "queue": bj["queue"], "num_nodes": bj["num_nodes"],
                                            "wall_time_min": bj["wall_time_min"]}
                  for bj in self._batch_jobs((B.queued, B.running)) if bj["scheduler_id"] is not None}
        fields["queued_jobs"] = queued
        if self.adapter.can_report_backfill and now - self._last_backfill > BACKFILL_EVERY_S:
            self._last_backfill = now
            try:
                windows = self.adapter.get_backfill_windows()
                fields["backfill_windows"] = {q: [{"num_nodes": w.num_nodes, "wall_time_min": w.wall_time_min} for w in ws]
                                              for q, ws in windows.items()}
            except BalsamError as exc:
                logger.info("backfill windows unavailable: %s", exc)
        with self.site.store.write() as conn:
            update_site_row(conn, fields)
