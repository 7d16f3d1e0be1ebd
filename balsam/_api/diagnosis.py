"""What the site agent would say or do, asked through the API: why a job is in its state (:func:`why`), and the
batch script and scheduler command line a BatchJob is (or would be) submitted with (:func:`preview_submission`).

On the site's home host both are worked out here, from the site's DB, its agent's status file and its settings, the
way the agent does it (:mod:`balsam.site.diagnosis`, :mod:`balsam.site.submission`); from another host :func:`why`
asks the agent (``GET /v1/jobs/{id}/why``), and so does the preview of a new BatchJob, which needs the id the
site's DB would give it (``POST /v1/batch-jobs/preview``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

__all__ = ["Submission", "preview_submission", "why"]


def why(job: Any) -> List[str]:
    """Plain-language reasons why ``job`` (a saved :class:`~balsam.api.Job`) is in its state and what would move it
    on: the parents or transfers it waits for, the agent's processing, a BatchJob or launcher that could run it."""
    site = job.__dict__["_site"]
    job_id = int(job.id or 0)
    if site.is_home:
        from balsam.site.diagnosis import explain

        return explain(site.store, site.path, job_id)
    # the agent diagnoses it: the DB, the agent's status and the launchers' leases are on the home host
    return [str(r) for r in site.backend.client.request("GET", f"/v1/jobs/{job_id}/why")["reasons"]]


@dataclass(frozen=True)
class Submission:
    """How a BatchJob is submitted: its id, the batch script's text and path, and the scheduler's command line."""

    batch_job_id: int
    script: str
    script_path: Path
    command: List[str]


def preview_submission(batch_job: Any, batch_job_id: Optional[int] = None) -> Submission:
    """The batch script and scheduler command line the site agent would use for ``batch_job`` (saved, or a draft
    not yet saved: then the id it would get). Nothing is written or submitted. A draft is checked against the site's
    queues, projects and optional parameters first (ValidationError); away from the site's home host the agent
    renders it (``POST /v1/batch-jobs/preview``: the id it would get is the site DB's)."""
    from balsam.settings import load_settings
    from balsam.site.submission import preview_new_batch_job
    from balsam.site.submission import preview_submission as render

    site = batch_job.__dict__["_site"]
    if batch_job_id is None and batch_job.id is not None:
        batch_job_id = int(batch_job.id)
    fields: Dict[str, Any] = {"id": batch_job_id, "num_nodes": batch_job.num_nodes, "wall_time_min": batch_job.wall_time_min,
                              "job_mode": batch_job.job_mode, "queue": batch_job.queue, "project": batch_job.project,
                              "optional_params": dict(batch_job.optional_params or {}),
                              "filter_tags": dict(batch_job.filter_tags or {}), "partitions": batch_job.partitions}
    if batch_job_id is None:
        # a draft, checked against the site's queues and projects as its creation would be, with the id the site's DB
        # would give it: rendered here on the home host, by the agent elsewhere (it only reads: no idempotency key)
        del fields["id"]
        if site.is_home:
            bj_id, text, path, argv = preview_new_batch_job(site.store, site.path, fields)
            return Submission(batch_job_id=bj_id, script=text, script_path=Path(path), command=list(argv))
        answer = site.backend.client.request("POST", "/v1/batch-jobs/preview", fields, idempotency_key="")
        return Submission(batch_job_id=int(answer["batch_job_id"]), script=str(answer["script"]),
                          script_path=Path(str(answer["script_path"])), command=[str(a) for a in answer["command"]])
    settings = load_settings(site.layout.settings_path)
    bj_id, text, path, argv = render(None, site.path, settings.scheduler, fields)
    return Submission(batch_job_id=bj_id, script=text, script_path=Path(path), command=list(argv))
