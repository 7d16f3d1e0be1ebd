"""How a site submits a BatchJob: the batch script rendered from the site's job template (into ``qsubmit/``) and
the scheduler's command line. The agent's scheduler service submits with these; ``batch_job.preview_submission()``
and ``balsam queue submit --dry-run`` show them (:func:`preview_submission`) without writing or submitting anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple

from balsam.platforms.schedulers import Scheduler, get_scheduler
from balsam.platforms.templates import format_partition, job_script_context, render_job_script
from balsam.runtime import balsam_shell_words
from balsam.settings import SchedulerSettings
from balsam.site.layout import SiteLayout

__all__ = ["preview_submission", "render_script", "scheduler_for", "script_path"]


def scheduler_for(layout: SiteLayout, settings: SchedulerSettings) -> Scheduler:
    """The scheduler adapter the site's settings name (what the agent submits through)."""
    return get_scheduler(settings.type, timeout_s=settings.command_timeout_s, options=settings.options,
                         state_dir=layout.state / "local-jobs")


def script_path(layout: SiteLayout, bj_id: int) -> Path:
    """Where BatchJob ``bj_id``'s batch script is written."""
    return layout.qsubmit / f"qlaunch{bj_id}.sh"


def render_script(site_path: Path, settings: SchedulerSettings, bj: Dict[str, Any], balsam_command: str) -> str:
    """The batch script of one BatchJob (its fields ``bj``), from the site's job template; the script runs the
    launcher with ``balsam_command``."""
    template = (site_path / settings.job_template).read_text()
    partitions = [format_partition(p["job_mode"], p["num_nodes"], p.get("filter_tags")) for p in bj["partitions"] or []]
    context = job_script_context(
        balsam=balsam_command, site_path=str(site_path), batch_job_id=bj["id"], job_mode=bj["job_mode"],
        wall_time_min=bj["wall_time_min"], num_nodes=bj["num_nodes"], project=bj["project"], queue=bj["queue"],
        filter_tags=bj["filter_tags"], partitions=partitions, optional_params=bj["optional_params"],
    )
    return render_job_script(template, context)


def preview_submission(store: Any, site_path: Path, settings: SchedulerSettings,
                       bj: Dict[str, Any]) -> Tuple[int, str, Path, List[str]]:
    """What the agent would submit for the BatchJob fields ``bj`` (without an ``id``, the one a new BatchJob would
    get from the site's ``store``): the rendered batch script, where it would be written, and the scheduler command
    line. Nothing is written or submitted."""
    if bj.get("id") is None:  # a preview of a new BatchJob: the id it would get
        from balsam.db.batch_jobs import next_batch_job_id

        bj = {**bj, "id": next_batch_job_id(store.conn)}
    layout = SiteLayout(site_path)
    script = script_path(layout, int(bj["id"]))
    text = render_script(site_path, settings, bj, balsam_shell_words())
    argv = scheduler_for(layout, settings).submit_argv(
        script, project=bj["project"], queue=bj["queue"], num_nodes=bj["num_nodes"], wall_time_min=bj["wall_time_min"],
        job_name=f"balsam-{bj['id']}", optional_params=bj["optional_params"], cwd=site_path)
    return int(bj["id"]), text, script, argv
