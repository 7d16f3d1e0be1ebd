"""Sites: the directory layout and how a site is found (:mod:`~balsam.site.layout`), the per-user registry
(:mod:`~balsam.site.registry`), settings.yml's policies mirrored into the site row (:mod:`~balsam.site.policies`),
and operations on whole sites (:mod:`~balsam.site.operations`). Every name is importable from here as well.

What the agent, the launcher and the API share, imported by module: why a job waits (:mod:`~balsam.site.diagnosis`),
the agent's status file (:mod:`~balsam.site.agent_state`), a BatchJob's batch script and submit line
(:mod:`~balsam.site.submission`) and the MPI and GPUs a launcher here would use (:mod:`~balsam.site.hardware`).
"""

from __future__ import annotations

from balsam.site.layout import STATE_DIR, SiteLayout, balsam_home, check_site_key, find_site_root, this_host
from balsam.site.operations import (
    LIVE_SESSION_S,
    agent_running,
    code_schema_version,
    globus_login,
    init_site,
    live_launchers,
    move_site,
    refuse_away_from_home,
    remove_site,
    rename_host,
    rename_site,
    site_identity,
    site_job_count,
    site_summary,
    store_report,
)
from balsam.site.policies import (
    SETTINGS_STAMP_KEY,
    check_site_settings,
    note_found_hardware,
    refresh_site_row,
    reread_settings,
    reread_settings_if_changed,
    settings_stamp,
    site_row_fields,
    transfer_location_notes,
)
from balsam.site.registry import SITE_NAME_RE, Registry, RegistryEntry, new_site_uuid, validate_site_name

__all__ = [
    "LIVE_SESSION_S", "SETTINGS_STAMP_KEY", "SITE_NAME_RE", "STATE_DIR", "Registry", "RegistryEntry", "SiteLayout",
    "agent_running", "balsam_home", "check_site_key", "check_site_settings", "code_schema_version", "find_site_root", "globus_login", "init_site",
    "live_launchers", "move_site", "new_site_uuid", "note_found_hardware", "refresh_site_row", "refuse_away_from_home",
    "remove_site",
    "rename_host", "rename_site", "reread_settings", "reread_settings_if_changed", "settings_stamp", "site_identity", "site_job_count",
    "site_row_fields", "site_summary", "store_report", "this_host", "transfer_location_notes", "validate_site_name",
]
