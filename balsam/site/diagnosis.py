"""Why is this job where it is? Plain-language reasons for ``balsam job show``, ``job.why()`` and the agent's
``GET /v1/jobs/{id}/why`` (one implementation, over rows read with ``balsam.db`` functions and the agent's status file).

Each state waits on something: parents, transfers, the site agent's processing, a launcher in a running
BatchJob. :func:`explain` checks what the job waits on and says what is missing, for example a BatchJob that
was never submitted because the agent is not running, or one whose filter tags exclude the job.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List

from balsam.db import batch_jobs as batch_db
from balsam.db import job_reads, sessions, transfers
from balsam.db.codec import loads
from balsam.db.jobs import last_event_message
from balsam.db.states import BATCH_ACTIVE_STATES, FAILED_STATES, PROCESSING_STATES, RUNNABLE_STATES, BatchJobState, JobState
from balsam.site.agent_state import agent_status

S = JobState
B = BatchJobState
HOOK_OF = {S.STAGED_IN: "preprocess", S.RUN_DONE: "postprocess", S.RUN_ERROR: "handle_error", S.RUN_TIMEOUT: "handle_timeout"}
"""The hook (run by the agent's processing service) each processing state waits for."""
SHOWN_BATCH_STATES = BATCH_ACTIVE_STATES | {B.submit_failed, B.pending_deletion}

def agent_down(site_root: Any) -> str:
    """The reason a job waits when the agent is down, with the command that starts it from any directory."""
    import shlex

    return f"the site agent is not running: start it with 'balsam site start --site {shlex.quote(str(site_root))}'"


def _batch_job_reasons(store: Any, job: Dict[str, Any], agent_up: bool, site_root: Any) -> List[str]:
    rows = batch_db.batch_jobs_in(store.conn, sorted(SHOWN_BATCH_STATES))
    if not rows:
        return ["no BatchJob is queued or running to launch it: submit one ('balsam queue submit -n 1 -t 10 ...') "
                "or enable the elastic queue in settings.yml"]
    out: List[str] = []
    tags = job["tags"]
    usable = 0
    for bj in rows:
        bid, state, nodes, wall, sched_id = bj["id"], B(bj["state"]), bj["num_nodes"], bj["wall_time_min"], bj["scheduler_id"]
        ftags = bj["filter_tags"] or {}
        info = bj["status_info"] or {}
        if any(tags.get(k) != v for k, v in ftags.items()):
            out.append(f"BatchJob {bid} ({state}) only runs jobs tagged {ftags}")
            continue
        if job["num_nodes"] > nodes:
            out.append(f"BatchJob {bid} ({state}) has {nodes} node(s); this job needs {job['num_nodes']}")
            continue
        if job["wall_time_min"] and job["wall_time_min"] > wall:
            out.append(f"BatchJob {bid} ({state}) runs {wall} min; this job declares {job['wall_time_min']} min")
            continue
        if state is B.submit_failed:
            out.append(f"BatchJob {bid} could not be submitted: {info.get('error', 'see balsam queue ls -v')}")
        elif state is B.pending_submission:
            out.append(f"BatchJob {bid} waits to be submitted" + ("" if agent_up else f", but {agent_down(site_root)}"))
            usable += 1
        elif state is B.queued:
            out.append(f"BatchJob {bid} (scheduler id {sched_id}) is queued in the scheduler")
            usable += 1
        elif state is B.running:
            out.append(f"BatchJob {bid} (scheduler id {sched_id}) is running; its launcher will pick the job up when it has room")
            usable += 1
        elif state is B.pending_deletion:
            out.append(f"BatchJob {bid} is being cancelled")
    if not usable:
        out.insert(0, "no active BatchJob can run this job")
    return out


def _launcher_reasons(store: Any, job: Dict[str, Any]) -> List[str]:
    """Why the running launchers leave the job alone: none has nodes with enough GPUs, or enough nodes. A
    launcher never fails a job its nodes cannot hold; it waits for one that can (another partition or BatchJob)."""
    gpus = float(job["ranks_per_node"]) * float(job["gpus_per_rank"])
    caps = [(sid, host, cap) for sid, host, label in sessions.session_labels(store.conn)
            if (cap := sessions.label_capacity(label)) is not None]
    if not caps:
        return []
    fits = [c for c in caps if c[2][0] >= job["num_nodes"] and c[2][2] + 1e-9 >= gpus]
    if fits:
        return []
    seen = ", ".join(f"session {sid} on {host}: {n} node(s), {g} GPUs each" for sid, host, (n, _c, g) in caps)
    largest = batch_db.largest_num_nodes(store.conn)
    sizes = f"; the largest BatchJob so far has {largest} node(s)" if largest else ""
    if gpus > 0 and all(c[2][2] + 1e-9 < gpus for c in caps):
        have = max(c[2][2] for c in caps)
        what = "no running launcher has GPUs" if have == 0 else f"no running launcher has {gpus:g} GPUs per node (at most {have})"
        return [f"{what}; this job needs {gpus:g} per node and waits for a launcher that has them ({seen}){sizes}; "
                "on a GPU node set launcher.gpus_per_node (or let a local site find them) and start a new BatchJob"]
    return [f"no running launcher has {job['num_nodes']} nodes ({seen}){sizes}; submit a BatchJob with at least "
            f"{job['num_nodes']} nodes"]


def explain(store: Any, site_root: Any, job_id: int) -> List[str]:
    """Reasons why job ``job_id`` is in its state and what would move it on (a full disk first: nothing moves)."""
    disk = agent_status(site_root).get("disk") or {}
    reasons = _explain_job(store, site_root, job_id)
    if disk.get("full"):
        reasons.insert(0, f"the site's disk is full ({disk.get('free_bytes', 0)} bytes free on {disk.get('path')}): no state "
                          "change can be recorded until space is freed")
    return reasons


def _explain_job(store: Any, site_root: Any, job_id: int) -> List[str]:
    row = job_reads.job_fields(store.conn, job_id, ("state", "tags", "num_nodes", "wall_time_min", "parent_ids", "session_id",
                                                    "batch_job_id", "ranks_per_node", "gpus_per_rank"))
    if row is None:
        return [f"job {job_id} does not exist"]
    state, session_id = S(row["state"]), row["session_id"]
    job = {"tags": loads(row["tags"]), "num_nodes": row["num_nodes"], "wall_time_min": row["wall_time_min"],
           "ranks_per_node": row["ranks_per_node"], "gpus_per_rank": row["gpus_per_rank"]}
    agent_up = bool(agent_status(site_root).get("running"))
    if state is S.AWAITING_PARENTS:
        from balsam.db.foreign import away_reasons

        parents = loads(row["parent_ids"]) or []
        waiting = job_reads.unfinished(store.conn, parents)
        return ([f"waits for parent job {pid} ({pstate})" for pid, pstate in waiting] + away_reasons(store.conn, parents)
                or ["waits for its parents"])
    if state in (S.READY, S.POSTPROCESSED):
        return _transfer_reasons(store, job_id, "in" if state is S.READY else "out", agent_up, site_root)
    if state in PROCESSING_STATES:
        hook = HOOK_OF[state]
        if not agent_up:
            return [f"waits for its {hook} step, which the site agent runs; {agent_down(site_root)}"]
        return [f"waits for its {hook} step (the agent's processing service)"]
    if state in RUNNABLE_STATES:
        if session_id is not None:
            sess = sessions.session_fields(store.conn, session_id, ("label", "host", "pid", "batch_job_id"))
            if sess:
                bj = sess["batch_job_id"]
                return [f"acquired by {sess['label'] or 'a launcher'} (session {session_id}, pid {sess['pid']} on {sess['host']}"
                        + (f", BatchJob {bj})" if bj else ")") + "; it will start when resources free up"]
        return ["ready to run"] + _launcher_reasons(store, job) + _batch_job_reasons(store, job, agent_up, site_root)
    if state is S.RUNNING:
        sess = sessions.session_fields(store.conn, session_id, ("host", "pid", "heartbeat")) if session_id else None
        if sess:
            return [f"running under launcher pid {sess['pid']} on {sess['host']} (BatchJob {row['batch_job_id']}); "
                    f"last heartbeat {time.time() - sess['heartbeat']:.0f} s ago"]
        return ["marked RUNNING but no launcher holds it; the next launcher or agent cycle will time it out"]
    if state in FAILED_STATES:
        msg = last_event_message(store.conn, job_id)
        ended = [pid for pid, pstate in job_reads.unfinished(store.conn, loads(row["parent_ids"]) or []) if pstate in FAILED_STATES]
        if ended:  # resetting this job alone would fail it again at once, for the same parents
            resets = " and ".join(f"'balsam job reset {pid}'" for pid in ended)
            return [f"{state}: {msg}" if msg else str(state),
                    f"to run it again, reset its failed parent{'s' if len(ended) > 1 else ''} first ({resets}), then this job "
                    f"('balsam job reset {job_id}')"]
        return [f"{state}: {msg}" if msg else str(state), f"reset it to run again: 'balsam job reset {job_id}'"]
    if state is S.JOB_FINISHED:
        return ["finished successfully"]
    return [str(state)]


def _transfer_reasons(store: Any, job_id: int, direction: str, agent_up: bool, site_root: Any) -> List[str]:
    """What the job's unfinished stage-in or stage-out items are doing."""
    out = []
    for item in transfers.items_of_job(store.conn, job_id, direction):
        i, st, alias, task, info = item["id"], item["state"], item["location_alias"], item["task_id"], item["transfer_info"]
        if st == "done":
            continue
        line = f"stage-{direction} item {i} {'from' if direction == 'in' else 'to'} '{alias}' is {st}"
        if task and st in ("active", "inactive"):
            line += f" (task {task}{': ' + str(info['status']) if info.get('status') else ''})"
        if st == "pending" and info.get("retry_at"):
            when = time.strftime("%H:%M:%S", time.localtime(float(info["retry_at"])))
            line += f"; try {int(info.get('attempts', 0)) + 1} at {when} after: {str(info.get('last_error', ''))[-200:]}"
        out.append(line)
    if not agent_up:
        out.append(agent_down(site_root) + " (it runs the transfers)")
    return out or [f"stage-{direction} is complete; the job moves on at the next step"]
