"""What the site agent would say or do, asked through the API: why a job is in its state (:func:`why`), and the
batch script and scheduler command line a BatchJob is (or would be) submitted with (:func:`preview_submission`).

On the site's home host both are worked out here, from the site's DB, its agent's status file and its settings, the
way the agent does it; from another host :func:`why` asks the agent (``GET /v1/jobs/{id}/why``), and a preview of
a new BatchJob, which needs the id the site's DB would give it, is refused with the home host's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from balsam.exceptions import ForeignHostError

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
    not yet saved: then the id it would get). Nothing is written or submitted. A draft is previewed only on the
    site's home host (the next id is the site DB's): elsewhere a ForeignHostError names the home host."""
    from balsam.settings import load_settings
    from balsam.site.submission import preview_submission as render

    site = batch_job.__dict__["_site"]
    if batch_job_id is None and batch_job.id is not None:
        batch_job_id = int(batch_job.id)
    if batch_job_id is None and not site.is_home:
        raise ForeignHostError(f"a new BatchJob's batch script is rendered from the site's DB: run it on {site.host}, "
                               f"the home host of site {site.name}")
    settings = load_settings(site.layout.settings_path)
    fields: Dict[str, Any] = {"id": batch_job_id, "num_nodes": batch_job.num_nodes, "wall_time_min": batch_job.wall_time_min,
                              "job_mode": batch_job.job_mode, "queue": batch_job.queue, "project": batch_job.project,
                              "optional_params": dict(batch_job.optional_params or {}),
                              "filter_tags": dict(batch_job.filter_tags or {}), "partitions": batch_job.partitions}
    bj_id, text, path, argv = render(site.store, site.path, settings.scheduler, fields)
    return Submission(batch_job_id=bj_id, script=text, script_path=Path(path), command=list(argv))
