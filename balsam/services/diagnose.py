"""Why is this job where it is? Plain-language reasons for ``balsam job show``.

Each state waits on something: parents, transfers, the site agent's processing, a launcher in a running
BatchJob. :func:`explain` checks what the job waits on and says what is missing, for example a BatchJob that
was never submitted because the agent is not running, or one whose filter tags exclude the job.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List

from balsam.db.codec import loads
from balsam.db.jobs import last_event_message
from balsam.services.agent import agent_status

AGENT_DOWN = "the site agent is not running: start it with 'balsam site start'"


def _batch_job_reasons(store: Any, job: Dict[str, Any], agent_up: bool) -> List[str]:
    rows = store.execute(
        "SELECT id, state, num_nodes, wall_time_min, filter_tags, status_info, scheduler_id FROM batch_job "
        "WHERE state IN ('pending_submission','queued','running','submit_failed','pending_deletion') ORDER BY id")
    if not rows:
        return ["no BatchJob is queued or running to launch it: submit one ('balsam queue submit -n 1 -t 10 ...') "
                "or enable the elastic queue in settings.yml"]
    out: List[str] = []
    tags = job["tags"]
    usable = 0
    for bid, state, nodes, wall, ftags, info, sched_id in rows:
        ftags = loads(ftags) or {}
        info = loads(info) or {}
        if any(tags.get(k) != v for k, v in ftags.items()):
            out.append(f"BatchJob {bid} ({state}) only runs jobs tagged {ftags}")
            continue
        if job["num_nodes"] > nodes:
            out.append(f"BatchJob {bid} ({state}) has {nodes} node(s); this job needs {job['num_nodes']}")
            continue
        if job["wall_time_min"] and job["wall_time_min"] > wall:
            out.append(f"BatchJob {bid} ({state}) runs {wall} min; this job declares {job['wall_time_min']} min")
            continue
        if state == "submit_failed":
            out.append(f"BatchJob {bid} could not be submitted: {info.get('error', 'see balsam queue ls -v')}")
        elif state == "pending_submission":
            out.append(f"BatchJob {bid} waits to be submitted" + ("" if agent_up else f", but {AGENT_DOWN}"))
            usable += 1
        elif state == "queued":
            out.append(f"BatchJob {bid} (scheduler id {sched_id}) is queued in the scheduler")
            usable += 1
        elif state == "running":
            out.append(f"BatchJob {bid} (scheduler id {sched_id}) is running; its launcher will pick the job up when it has room")
            usable += 1
        elif state == "pending_deletion":
            out.append(f"BatchJob {bid} is being cancelled")
    if not usable:
        out.insert(0, "no active BatchJob can run this job")
    return out


def _launcher_reasons(store: Any, job: Dict[str, Any]) -> List[str]:
    """Why the running launchers leave the job alone: none has nodes with enough GPUs, or enough nodes. A
    launcher never fails a job its nodes cannot hold; it waits for one that can (another partition or BatchJob)."""
    from balsam.db.sessions import label_capacity

    gpus = float(job["ranks_per_node"]) * float(job["gpus_per_rank"])
    caps = [(sid, host, cap) for sid, host, label in store.execute("SELECT id, host, label FROM session ORDER BY id")
            if (cap := label_capacity(label)) is not None]
    if not caps:
        return []
    fits = [c for c in caps if c[2][0] >= job["num_nodes"] and c[2][2] + 1e-9 >= gpus]
    if fits:
        return []
    seen = ", ".join(f"session {sid} on {host}: {n} node(s), {g} GPUs each" for sid, host, (n, _c, g) in caps)
    largest = store.execute("SELECT max(num_nodes) FROM batch_job")[0][0]
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
    row = store.execute("SELECT state, tags, num_nodes, wall_time_min, parent_ids, session_id, batch_job_id, ranks_per_node, "
                        "gpus_per_rank FROM job WHERE id=?", (job_id,))
    if not row:
        return [f"job {job_id} does not exist"]
    state, tags, num_nodes, wall, parents, session_id, batch_job_id, rpn, gpr = row[0]
    job = {"tags": loads(tags), "num_nodes": num_nodes, "wall_time_min": wall, "ranks_per_node": rpn, "gpus_per_rank": gpr}
    agent_up = bool(agent_status(site_root).get("running"))
    if state == "AWAITING_PARENTS":
        ids = loads(parents)
        waiting = store.execute(
            f"SELECT id, state FROM job WHERE id IN ({','.join('?' * len(ids))}) AND state != 'JOB_FINISHED'", ids) if ids else []
        return [f"waits for parent job {pid} ({pstate})" for pid, pstate in waiting] or ["waits for its parents"]
    if state in ("READY", "POSTPROCESSED"):
        direction = "in" if state == "READY" else "out"
        items = store.execute("SELECT id, state, location_alias, task_id, transfer_info FROM transfer_item WHERE job_id=? AND direction=?",
                              (job_id, direction))
        out = []
        for i, st, alias, task, info_text in items:
            if st == "done":
                continue
            info = loads(info_text) or {}
            line = f"stage-{direction} item {i} {'from' if direction == 'in' else 'to'} '{alias}' is {st}"
            if task and st in ("active", "inactive"):
                line += f" (task {task}{': ' + str(info['status']) if info.get('status') else ''})"
            if st == "pending" and info.get("retry_at"):
                when = time.strftime("%H:%M:%S", time.localtime(float(info["retry_at"])))
                line += f"; try {int(info.get('attempts', 0)) + 1} at {when} after: {str(info.get('last_error', ''))[-200:]}"
            out.append(line)
        if not agent_up:
            out.append(AGENT_DOWN + " (it runs the transfers)")
        return out or [f"stage-{direction} is complete; the job moves on at the next step"]
    if state in ("STAGED_IN", "RUN_DONE", "RUN_ERROR", "RUN_TIMEOUT"):
        hook = {"STAGED_IN": "preprocess", "RUN_DONE": "postprocess", "RUN_ERROR": "handle_error", "RUN_TIMEOUT": "handle_timeout"}[state]
        if not agent_up:
            return [f"waits for its {hook} step, which the site agent runs; {AGENT_DOWN}"]
        return [f"waits for its {hook} step (the agent's processing service)"]
    if state in ("PREPROCESSED", "RESTART_READY"):
        if session_id is not None:
            sess = store.execute("SELECT label, host, pid, batch_job_id FROM session WHERE id=?", (session_id,))
            if sess:
                label, host, pid, bj = sess[0]
                return [f"acquired by {label or 'a launcher'} (session {session_id}, pid {pid} on {host}"
                        + (f", BatchJob {bj})" if bj else ")") + "; it will start when resources free up"]
        return ["ready to run"] + _launcher_reasons(store, job) + _batch_job_reasons(store, job, agent_up)
    if state == "RUNNING":
        sess = store.execute("SELECT host, pid, heartbeat FROM session WHERE id=?", (session_id,)) if session_id else []
        if sess:
            host, pid, beat = sess[0]
            return [f"running under launcher pid {pid} on {host} (BatchJob {batch_job_id}); last heartbeat {time.time() - beat:.0f} s ago"]
        return ["marked RUNNING but no launcher holds it; the next launcher or agent cycle will time it out"]
    if state in ("FAILED", "USER_KILLED"):
        msg = last_event_message(store.conn, job_id)
        return [f"{state}: {msg}" if msg else state, "reset it to run again: 'balsam job reset ID'"]
    if state == "JOB_FINISHED":
        return ["finished"]
    return [state]
