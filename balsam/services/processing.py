"""Processing: run the app hooks that move jobs along (preprocess, postprocess, handle_error, handle_timeout).

Two paths:
- **bulk**: for apps that do not override a hook, the default transition (STAGED_IN -> PREPROCESSED,
  RUN_DONE -> POSTPROCESSED, RUN_ERROR -> FAILED, RUN_TIMEOUT -> RESTART_READY) is applied in batches of
  :data:`BULK_BATCH` jobs, one transaction each, so processing never limits launcher throughput (a launcher
  already moves a clean run of an app without a postprocess hook past RUN_DONE itself; this path catches the rest);
- **hooks**: jobs of apps that do override a hook are locked under the service's lease and their hooks run in
  a pool of worker processes (:mod:`balsam.services.hookworker`), each with the working directory set to the
  job's workdir and its output in ``balsam.log`` there, as Balsam does. A hook that raises sends its job to FAILED with the exception; a hook that leaves the
  state unchanged, or sets one the state machine refuses, is an error with a message, not a stuck job.

A hook worker that dies mid-hook (the OOM killer, kill -9, a hook that ends its process) breaks the pool: its
workers are killed (one path for every broken pool, so none lives on) and a new pool starts. The job whose worker
died fails, saying how it died and how to run it again, as a job process killed from outside does (Balsam 0.7 does
not retry those); each worker notes the job whose hook it runs (:func:`hookworker.record_path`) to tell that job
from the others the pool stopped, which are handed back to run their hooks again.

An app whose stored code no longer loads fails the jobs that need it processed, with the load error.

When the agent stops (``balsam site stop``, Ctrl-C), running hooks get ``STOP_GRACE_S`` to finish; the workers of
those still running are then killed and their jobs handed back, unchanged, so the next agent runs those hooks
again (a hook must tolerate being re-run after an interruption, as after a crash). Hook workers ignore SIGINT: a
Ctrl-C in the agent's terminal stops the agent, which stops them, rather than failing the jobs they run.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import time
from typing import Any, Dict, List, Optional, Tuple

from balsam._api.app import ApplicationDefinition
from balsam._api.base import row_of
from balsam._api.jobs import Job
from balsam._api.sites import SiteRef
from balsam.db import apps as app_db
from balsam.db import job_reads, sessions
from balsam.db.doorbell import PROCESS, Doorbell
from balsam.db.jobs import StateChange, apply_state_changes, unlock_jobs
from balsam.db.states import PROCESSING_STATES, JobState
from balsam.exceptions import BalsamError, SchemaError, StoreError
from balsam.services import hookworker
from balsam.services.base import Service
from balsam.settings import ProcessingSettings, SessionSettings

logger = logging.getLogger(__name__)

S = JobState
HOOKS: Dict[JobState, Tuple[str, JobState]] = {
    S.STAGED_IN: ("preprocess", S.PREPROCESSED),
    S.RUN_DONE: ("postprocess", S.POSTPROCESSED),
    S.RUN_ERROR: ("handle_error", S.FAILED),
    S.RUN_TIMEOUT: ("handle_timeout", S.RESTART_READY),
}
BULK_BATCH = 2_000
"""Jobs per bulk transaction. It holds the site's writer lock (a launcher's acquire waits for it) and the jobs it
moves become runnable only when it commits: measured on 2 cores, 20,000 jobs STAGED_IN -> PREPROCESSED took
180-440 ms in one transaction, during which a flood's launchers had nothing to start; 2,000 take ~20 ms, and
the cost per transaction stays small beside them."""
CYCLE_BUDGET_S = 2.0
REAP_WAIT_S = 5.0
"""How long the exit status of a hook worker that died may take to show (it is exiting)."""
MAX_HANDED_BACK = 3
"""A job whose hook was cut short this many times by a dying worker fails (its own hook may be what kills them)."""
STOP_GRACE_S = 3.0
"""When the agent stops: how long running hooks get to finish before their workers are killed and their jobs handed
back (unlocked, in the state they were in, so the next agent runs the hook again)."""


class ProcessingService(Service):
    """Moves jobs through their app hooks (see the module docstring)."""

    name = "processing"

    def __init__(self, site: SiteRef, settings: ProcessingSettings, session_settings: SessionSettings, host: str,
                 balsam_home: Optional[str] = None) -> None:
        """``balsam_home``: the registry folder the hook workers use (hooks that create jobs find sites by name),
        where it is not this process's own."""
        super().__init__(settings.period_s)
        self.site = site
        self.settings = settings
        self.session_settings = session_settings
        self.host = host
        self.balsam_home = balsam_home
        self.session_id: Optional[int] = None
        self._last_tick = 0.0
        self._pool: Optional[concurrent.futures.ProcessPoolExecutor] = None
        self._handed_back: Dict[int, int] = {}
        """Jobs handed back because another hook worker died while their hooks ran: how many times."""
        self._reruns: Dict[int, str] = {}
        """Jobs whose hook runs again because its last run was cut short (the agent died or stopped while it ran):
        why, for their hook's log and the event the hook's result makes."""
        self._unsaved: Tuple[List[Job], List[StateChange], List[int]] = ([], [], [])
        """Results of hooks that ended whose write failed (a full disk): the jobs to save, the failures to apply and
        the jobs to hand back. Kept, still locked to the lease, and written first thing each cycle: a hook that did
        its work is never run again for want of a write."""

    def doorbell(self) -> Optional[Doorbell]:
        """Rung when jobs to process appear (created, or a launcher reported runs), so they wait no period."""
        try:
            return Doorbell(self.site.store.db_path.parent, PROCESS).open()
        except OSError as exc:
            logger.info("processing: no doorbell (%s): polling every %.1f s", exc, self.period_s)
            return None

    # ---------------------------------------------------------------- apps
    def _apps(self) -> Tuple[Dict[int, Any], Dict[int, str]]:
        """Loadable app classes by id, and load errors by id."""
        store = self.site.store
        classes: Dict[int, Any] = {}
        errors: Dict[int, str] = {}
        with store.read() as conn:
            names = app_db.app_names(conn)
        for app_id, name in names:
            try:
                classes[app_id] = ApplicationDefinition.load_by_id(app_id, site=self.site)
            except Exception as exc:
                errors[app_id] = f"app {name} could not be loaded: {exc}"
        return classes, errors

    # ---------------------------------------------------------------- cycle
    def run_cycle(self) -> None:
        if any(self._unsaved) and not self._write_results():
            return  # nothing new is taken on while earlier results wait for the disk
        classes, load_errors = self._apps()
        deadline = time.monotonic() + CYCLE_BUDGET_S
        self._fail_unloadable(load_errors)
        for state, (hook, default) in HOOKS.items():
            plain = [a for a, cls in classes.items() if not cls.has_hook(hook)]
            while plain and time.monotonic() < deadline:
                if self._bulk(state, default, plain) < BULK_BATCH:
                    break
        hooked = {a for a, cls in classes.items() if any(cls.has_hook(h) for h, _ in HOOKS.values())}
        if hooked:
            self._run_hooks(classes, hooked)
        with self.site.store.read() as conn:
            self.backlog = job_reads.count_in_states(conn, PROCESSING_STATES)

    def _bulk(self, state: JobState, default: JobState, app_ids: List[int]) -> int:
        """Apply ``default`` to a batch of unlocked ``state`` jobs of ``app_ids``; returns how many."""
        with self.site.store.write() as conn:
            ids = job_reads.unlocked_in_state(conn, [state], app_ids=app_ids, limit=BULK_BATCH)
            if ids:
                apply_state_changes(conn, [StateChange(i, default) for i in ids], strict=False)
        return len(ids)

    def _fail_unloadable(self, errors: Dict[int, str]) -> None:
        if not errors:
            return
        with self.site.store.write() as conn:
            for app_id, message in errors.items():
                ids = job_reads.unlocked_in_state(conn, PROCESSING_STATES, app_ids=[app_id])
                if ids:
                    apply_state_changes(conn, [StateChange(i, S.FAILED, data={"message": message}) for i in ids], strict=False)

    # ---------------------------------------------------------------- hooks
    def _lease(self) -> int:
        store = self.site.store
        now = time.time()
        with store.write() as conn:
            if self.session_id is not None and now - self._last_tick > self.session_settings.heartbeat_period_s / 2:
                try:
                    sessions.tick(conn, self.session_id)
                except Exception:
                    self.session_id = None
                self._last_tick = now
            if self.session_id is None:
                sessions.expire_sessions(conn, expiry_s=self.session_settings.expiry_s, host=self.host)
                self.session_id = sessions.create_session(conn, host=self.host, label="processing")
                self._last_tick = now
        return self.session_id

    def _hook_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            # Notes of an earlier pool's workers (an agent killed with kill -9 leaves them) must not name a job for a
            # new worker that reuses a pid. They name the hooks that agent cut short: the user is told they run again.
            self._note_reruns(hookworker.cut_short_notes(self.site.layout.state))
            shutil.rmtree(self.site.layout.state / hookworker.RECORDS, ignore_errors=True)
            self._pool = concurrent.futures.ProcessPoolExecutor(
                self.settings.num_workers, mp_context=multiprocessing.get_context("spawn"), initializer=hookworker.init_worker,
                initargs=(str(self.site.path), self.balsam_home, os.getpid()))
        return self._pool

    def _note_reruns(self, notes: Dict[int, int]) -> None:
        waiting = [job for job in Job.objects.filter(id=sorted(notes), site_id=self.site.id) if S(job.state) in HOOKS] if notes else []
        for job in waiting:
            self._reruns[int(job.id or 0)] = (f"run again: its last run was cut short (its hook worker, pid {notes[int(job.id or 0)]}, "
                                              "ended with the site agent before the hook did)")
        if waiting:
            logger.warning("processing: %d hooks were cut short when the last site agent stopped; they run again (jobs %s)",
                           len(waiting), ", ".join(str(job.id) for job in waiting[:10]))

    def _run_hooks(self, classes: Dict[int, Any], hooked: set) -> None:  # type: ignore[type-arg]
        session_id = self._lease()
        with self.site.store.write() as conn:
            rows = sessions.acquire(conn, session_id, states=list(HOOKS), app_ids=sorted(hooked), max_num_jobs=self.settings.prefetch,
                                    sort_by="id")
        if not rows:
            return
        jobs = list(Job.objects.filter(id=[r["id"] for r in rows], site_id=self.site.id))
        try:
            futures = self._submit_hooks(jobs)
        except BaseException:  # nothing runs them: handed back at once (else they stay locked to this lease for good)
            with self.site.store.write() as conn:
                unlock_jobs(conn, [int(r["id"]) for r in rows])
            raise
        # Each hook's result is saved as soon as it ends, not once the whole batch has: an agent killed while one slow
        # hook runs would otherwise lose the results of every quick one, and the next agent would run them all again
        # (a postprocess that moved files, or appended to them, run twice).
        pending = dict(zip(futures, jobs))
        died: Optional[Dict[int, str]] = None
        give_up: Optional[float] = None
        while pending:
            ended, _ = concurrent.futures.wait(list(pending), timeout=0.25)
            if ended:
                died = self._settle([(pending.pop(f), f) for f in futures if f in ended], died)
            self._heartbeat()
            if pending and self.stopping.is_set():
                give_up = give_up or time.monotonic() + STOP_GRACE_S
                if time.monotonic() > give_up:
                    logger.info("processing: the agent stops: %d hooks still running are stopped and their jobs handed back",
                                len(pending))
                    self._kill_pool(keep_notes=True)  # unfinished hooks are handed back with the lease (see cleanup)
                    return

    def _heartbeat(self) -> None:
        """Keep the lease of the jobs whose hooks run while a batch of hooks outlasts a heartbeat period (a lease
        that lapsed would hand jobs whose hooks still run to the next one who asks)."""
        if self.session_id is None or time.time() - self._last_tick <= self.session_settings.heartbeat_period_s / 2:
            return
        self._last_tick = time.time()
        try:
            with self.site.store.write() as conn:
                sessions.tick(conn, self.session_id)
        except BalsamError as exc:  # a full disk (its silence is not counted against the lease), or the lease lapsed
            logger.warning("processing: the lease of the running hooks could not be renewed: %s", exc)

    def _settle(self, ended: List[Tuple[Job, "concurrent.futures.Future[Any]"]],
                died: Optional[Dict[int, str]]) -> Optional[Dict[int, str]]:
        """Save the results of hooks that ended. ``died``: how the workers of a broken pool died, found at the first
        hook the break ended and passed on to the calls for the rest (the pool is gone by then); returned updated."""
        failures: List[StateChange] = []
        done: List[Job] = []
        cut_short: List[int] = []
        for job, future in ended:
            job_id = int(job.id or 0)
            rerun = self._reruns.get(job_id)
            try:
                changed, error = future.result()
            except concurrent.futures.process.BrokenProcessPool as exc:  # a worker died (killed, or a hook exited)
                if died is None:
                    died = self._dead_workers()  # before the pool is killed: which workers died on their own, of what
                    self._kill_pool()
                error = self._cut_short(job, died.get(job_id), exc)
                if error is None:
                    cut_short.append(job_id)
                    self._reruns[job_id] = "run again: its last run was cut short when another hook worker died"
                    continue
                changed = None
            except Exception as exc:  # the hook's result did not come back (it could not be pickled)
                changed, error = None, {"message": f"{HOOKS[S(job.state)][0]} hook's result was lost: {type(exc).__name__}: {exc}"}
            self._handed_back.pop(job_id, None)
            self._reruns.pop(job_id, None)
            if error is not None:
                failures.append(StateChange(job_id, S.FAILED, data=dict(error, rerun=rerun) if rerun else error))
                continue
            if rerun:  # told in the event of the hook's change (balsam job show), as it was in the hook's log
                job.__dict__["state_data"] = dict(job.__dict__.get("state_data") or {}, rerun=rerun)
            for name, value in (changed or {}).items():
                if name in ("state_data", "state_timestamp"):
                    job.__dict__[name] = value
                else:
                    setattr(job, name, value)
            done.append(job)
        if cut_short:
            logger.warning("processing: a hook worker died: %d jobs whose hooks it cut short are handed back", len(cut_short))
        self._unsaved[0].extend(done)
        self._unsaved[1].extend(failures)
        self._unsaved[2].extend(cut_short)
        self._write_results()
        return died

    def _write_results(self) -> bool:
        """Write the hook results kept in :attr:`_unsaved`; False (they are kept) if the DB cannot be written now."""
        done, failures, cut_short = self._unsaved
        try:
            if done:
                self._save(done)
                done.clear()
            if failures:
                with self.site.store.write() as conn:
                    apply_state_changes(conn, failures, strict=False)
                failures.clear()
            if cut_short:
                with self.site.store.write() as conn:
                    unlock_jobs(conn, cut_short)
                cut_short.clear()
        except SchemaError:
            raise
        except StoreError as exc:
            logger.warning("processing: %d hook results are kept until they can be written: %s",
                           len(done) + len(failures) + len(cut_short), exc)
            return False
        return True

    def _dead_workers(self) -> Dict[int, str]:
        """{job id: how its hook worker ended} for the workers of the broken pool that died on their own (killed from
        outside, or a hook that exited); not those the pool stopped itself (SIGTERM) once one of them had died."""
        pool = self._pool
        out: Dict[int, str] = {}
        for pid, proc in dict(getattr(pool, "_processes", None) or {}).items():
            code = proc.exitcode
            if code is None and multiprocessing.connection.wait([proc.sentinel], timeout=0):
                # It is exiting: its pipes close before the kernel has its exit status, and the pool's own thread may
                # be the one that reaps it (then its status shows here a moment later).
                deadline = time.monotonic() + REAP_WAIT_S
                while code is None and time.monotonic() < deadline:
                    proc.join(0.05)
                    code = proc.exitcode
            if code is None or code == -signal.SIGTERM:
                continue
            job_id = hookworker.job_of(self.site.layout.state, pid)
            if job_id is not None:
                out[job_id] = f"killed by {signal.Signals(-code).name}" if code < 0 else f"it exited with code {code}"
        return out

    def _cut_short(self, job: Job, how: Optional[str], exc: BaseException) -> Optional[Dict[str, Any]]:
        """A job whose hook ended with its worker: the FAILED event's data for the job whose worker died running it
        (``how``), as for a job process killed from outside (Balsam 0.7 does not retry those); None for a job whose
        hook was cut short because another worker died, which is handed back to run its hook again (failed too once
        that happened :data:`MAX_HANDED_BACK` times, so a job never loops)."""
        job_id, hook = int(job.id or 0), HOOKS[S(job.state)][0]
        if how is None:
            times = self._handed_back[job_id] = self._handed_back.get(job_id, 0) + 1
            if times < MAX_HANDED_BACK:
                return None
            how = f"{times} times while it ran: {type(exc).__name__}"
        self._handed_back.pop(job_id, None)
        return {"message": f"the hook worker running {hook} died ({how}; the OOM killer, kill -9, or the hook ended its "
                           f"process): `balsam job reset {job_id}` runs the job again", "hook": hook}

    def _submit_hooks(self, jobs: List[Job]) -> List["concurrent.futures.Future[Any]"]:
        """Each job's hook, handed to the pool of hook workers. A pool broken while it idled (a worker killed from
        outside, by the OOM killer or kill -9) is replaced, once: it would refuse every hook until the agent restarts."""
        for attempt in (1, 2):
            pool = self._hook_pool()
            futures = []
            try:
                for job in jobs:
                    row = row_of(job) or {}
                    futures.append(pool.submit(hookworker.run_hook, tuple(row[c] for c in Job._columns), HOOKS[S(job.state)][0],
                                               self._reruns.get(int(job.id or 0), "")))
                return futures
            except concurrent.futures.process.BrokenProcessPool:
                for future in futures:
                    future.cancel()
                logger.warning("processing: a hook worker died while idle: starting the hook workers again")
                self._kill_pool()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _kill_pool(self, keep_notes: bool = False) -> None:
        """Kill the hook workers and drop the pool: hooks that outlived the stop's grace, and a pool broken by a worker
        that died (the pool's own SIGTERM leaves a hook that ignores it running, and its shutdown waiting for it).
        ``keep_notes``: the agent stops; the workers' notes tell the next agent which hooks it cut short."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        workers = dict(getattr(pool, "_processes", None) or {})
        for proc in workers.values():
            try:
                proc.kill()
            except (OSError, ValueError):
                pass
        pool.shutdown(wait=True, cancel_futures=True)
        for pid in workers if not keep_notes else ():
            hookworker.record_path(self.site.layout.state, pid).unlink(missing_ok=True)

    def _save(self, jobs: List[Job]) -> None:
        """Save hook results in one batch; if the batch is refused (a job moved meanwhile), one by one."""
        try:
            Job.objects.bulk_update(jobs)
            return
        except StoreError:
            raise  # the DB cannot be written at all (a full disk): the caller keeps the results
        except BalsamError as exc:
            logger.warning("saving %d hook results together failed (%s); saving them one by one", len(jobs), exc)
        stuck: List[int] = []
        for job in jobs:
            try:
                Job.objects.bulk_update([job])
            except StoreError:
                raise
            except BalsamError as exc:
                logger.warning("job %s: hook result not saved: %s", job.id, exc)
                stuck.append(int(job.id or 0))
        if stuck:
            with self.site.store.write() as conn:
                unlock_jobs(conn, stuck)

    def cleanup(self) -> None:
        pool = self._pool
        if pool is not None:
            workers = list(getattr(pool, "_processes", None) or {})
            pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            for pid in workers:
                hookworker.record_path(self.site.layout.state, pid).unlink(missing_ok=True)
        if any(self._unsaved) and not self._write_results():
            logger.warning("processing: the agent stops with hook results it could not write: those hooks run again")
        # Releasing the lease hands back the jobs whose hooks did not finish: unlocked, their state unchanged.
        if self.session_id is not None:
            with self.site.store.write() as conn:
                sessions.release(conn, self.session_id, message="the site agent stopped")
            self.session_id = None
