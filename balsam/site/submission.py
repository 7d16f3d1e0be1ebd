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

__all__ = ["preview_new_batch_job", "preview_submission", "render_script", "scheduler_for", "script_path"]


def scheduler_for(layout: SiteLayout, settings: SchedulerSettings) -> Scheduler:
    """The scheduler adapter the site's settings name (what the agent submits through)."""
    return get_scheduler(settings.type, timeout_s=settings.command_timeout_s, options=settings.options,
                         state_dir=layout.state / "local-jobs")


def script_path(layout: SiteLayout, bj_id: int) -> Path:
    """Where BatchJob ``bj_id``'s batch script is written."""
    return layout.qsubmit / f"qlaunch{bj_id}.sh"


def render_script(site_path: Path, settings: SchedulerSettings, bj: Dict[str, Any], balsam_command: str) -> str:
    """The batch script of one BatchJob (its fields ``bj``), from the site's job template; the script runs the
    launcher with ``balsam_command``.

    The template's ``optional_params`` are the BatchJob's over settings.yml's ``optional_batch_job_params``, which are
    defaults (Balsam 0.7's "name -> default string"): a Polaris site's script carries its ``#PBS -l filesystems=...``
    and a Perlmutter site's its ``--constraint``, which those schedulers require, unless the BatchJob gives its own.
    Only the template sees the defaults (the presets' templates make each one a directive; a Balsam 0.7 template may
    use one as a switch of its own, such as ``mig_count``): the submit command line carries what the BatchJob gave."""
    template = (site_path / settings.job_template).read_text()
    defaults = {str(k): str(v) for k, v in settings.optional_batch_job_params.items() if v is not None and str(v) != ""}
    partitions = [format_partition(p["job_mode"], p["num_nodes"], p.get("filter_tags")) for p in bj["partitions"] or []]
    context = job_script_context(
        balsam=balsam_command, site_path=str(site_path), batch_job_id=bj["id"], job_mode=bj["job_mode"],
        wall_time_min=bj["wall_time_min"], num_nodes=bj["num_nodes"], project=bj["project"], queue=bj["queue"],
        filter_tags=bj["filter_tags"], partitions=partitions, optional_params={**defaults, **(bj["optional_params"] or {})},
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


NEW_FIELDS = ("num_nodes", "wall_time_min", "job_mode", "queue", "project", "optional_params", "filter_tags", "partitions")
"""The fields a new BatchJob is given (the rest are the agent's)."""


def preview_new_batch_job(store: Any, site_path: Path, fields: Dict[str, Any]) -> Tuple[int, str, Path, List[str]]:
    """:func:`preview_submission` of a BatchJob not yet created, from its ``fields`` as a client sends them (checked
    against the site's queues, projects and optional parameters first, as settings.yml says now, a missing queue or
    project filled in the way its creation would): what ``balsam queue submit --dry-run`` shows, on the home host or through the agent."""
    from balsam.db import batch_jobs as batch_db
    from balsam.exceptions import ValidationError
    from balsam.settings import load_settings
    from balsam.site.policies import reread_settings_if_changed

    bad = sorted(set(fields) - set(NEW_FIELDS))
    if bad:
        raise ValidationError(f"unknown BatchJob field {bad[0]!r}")
    d: Dict[str, Any] = {"job_mode": "mpi", **{k: v for k, v in fields.items() if v is not None}}
    for name in ("optional_params", "filter_tags"):
        value = d.get(name) or {}
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise ValidationError(f"{name} must be a dict of strings, got {value!r}")
        d[name] = dict(value)
    parts = d.get("partitions") or None
    if parts is not None and not isinstance(parts, list):
        raise ValidationError(f"partitions must be a list, got {parts!r}")
    if parts and not all(isinstance(p, (str, dict)) for p in parts):
        raise ValidationError(f"each partition must be MODE:NODES[:key=value,...] or an object, got {parts!r}")
    d["partitions"] = [batch_db.parse_partition(p) if isinstance(p, str) else dict(p) for p in parts] if parts else None
    layout = SiteLayout(site_path)
    reread_settings_if_changed(store, layout)  # the script is rendered from settings.yml as it is now: so are the checks
    checked = batch_db.check_batch_job(store.conn, d)
    settings = load_settings(layout.settings_path)
    return preview_submission(store, site_path, settings.scheduler, {**checked, "id": None})
