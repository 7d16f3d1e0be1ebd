"""settings.yml's policies in the site row: which parts are mirrored (allowed queues and projects, optional
BatchJob parameters, transfer locations), the checks a settings file must pass (``site sync``, the agent at start),
and re-reading the file when it changed. Also the note of this host's MPI and GPUs written into a new site's file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional

from balsam.exceptions import ConfigError
from balsam.site.layout import SiteLayout

if TYPE_CHECKING:
    from balsam.db import Store
    from balsam.settings import SiteSettings

def site_row_fields(settings: "SiteSettings") -> Dict[str, object]:
    """The parts of settings.yml mirrored into the site row (what the API checks new jobs and BatchJobs against)."""
    import dataclasses

    sched = settings.scheduler
    return {
        "allowed_projects": list(sched.allowed_projects),
        "allowed_queues": {q: dataclasses.asdict(p) for q, p in sched.allowed_queues.items()},
        "optional_batch_job_params": dict(sched.optional_batch_job_params),
        "transfer_locations": dict(settings.transfers.transfer_locations),
    }


def check_site_settings(root: Path, settings: "SiteSettings") -> None:
    """What settings.yml names must exist and parse: the scheduler type, and the job template (its file, its
    Jinja syntax, and only the names the scheduler service provides). ConfigError with one line otherwise."""
    import jinja2
    from jinja2 import meta

    from balsam.db.launch_flags import bad_extra
    from balsam.platforms.schedulers import scheduler_names
    from balsam.platforms.templates import CONTEXT_KEYS, make_environment

    bad = bad_extra(settings.launcher.allowed_launch_params)
    if bad is not None:
        raise ConfigError(f"settings.yml: launcher.allowed_launch_params: {bad} is not a launcher flag (e.g. --mca or -x)")
    sched = settings.scheduler
    if sched.type not in scheduler_names():
        raise ConfigError(f"settings.yml: scheduler.type {sched.type!r} is not known (known: {', '.join(scheduler_names())})")
    path = Path(root) / sched.job_template
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"settings.yml: scheduler.job_template {sched.job_template!r}: no file {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"settings.yml: scheduler.job_template: cannot read {path}: {exc}") from None
    try:
        ast = make_environment().parse(text)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"{path} line {exc.lineno}: Jinja syntax error: {exc.message}") from None
    unknown = sorted(meta.find_undeclared_variables(ast) - set(CONTEXT_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown name {unknown[0]!r} (templates may use: {', '.join(CONTEXT_KEYS)})")


def transfer_location_notes(settings: "SiteSettings") -> List[str]:
    """Check every transfer location URL in settings.yml (a bad one is one clear error naming its alias); notes on
    locations whose protocol needs an optional package that is not installed."""
    from balsam.platforms.transfer.locations import missing_extra_notes, parse_location

    locations = settings.transfers.transfer_locations
    for alias, url in locations.items():
        parse_location(alias, url)
    return missing_extra_notes(locations)


SETTINGS_STAMP_KEY = "settings_stamp"  # meta key: the settings.yml (mtime, size) the site row was copied from


def settings_stamp(layout: "SiteLayout") -> str:
    """settings.yml's modification time and size, as a string; empty if the file is missing."""
    try:
        st = layout.settings_path.stat()
    except OSError:
        return ""
    return f"{st.st_mtime_ns}:{st.st_size}"


def refresh_site_row(store: "Store", settings: "SiteSettings", stamp: Optional[str] = None) -> None:
    """Copy the policy parts of settings.yml into the site row and stamp ``last_refresh`` (and the file's
    ``stamp``, from :func:`settings_stamp`, when given)."""
    import json

    from balsam.db.launch_flags import EXTRA_META_KEY
    from balsam.db.meta import write_meta
    from balsam.db.site_row import update_site_row

    with store.write() as conn:
        update_site_row(conn, site_row_fields(settings), stamp=True)
        write_meta(conn, EXTRA_META_KEY, json.dumps(sorted(settings.launcher.allowed_launch_params)))
        if stamp is not None:
            write_meta(conn, SETTINGS_STAMP_KEY, stamp)


def reread_settings_if_changed(store: "Store", layout: "SiteLayout") -> Optional["SiteSettings"]:
    """settings.yml is the truth: when it changed (mtime or size) since the site row was copied from it, read
    it again (checked as ``site sync`` checks it), copy its policies (queues, projects, transfer locations) into
    the row and return the new settings; None when unchanged. An invalid file raises ConfigError naming the key,
    and the row keeps the last good copy."""
    stamp = settings_stamp(layout)
    if not stamp or store.get_meta(SETTINGS_STAMP_KEY) == stamp:
        return None
    return reread_settings(store, layout, stamp)


def reread_settings(store: "Store", layout: "SiteLayout", stamp: Optional[str] = None) -> "SiteSettings":
    """Read settings.yml (checked as ``site sync`` checks it), copy its policies into the site row with the file's
    ``stamp`` and return the settings, whether or not the row already had this version: the agent, which restarts
    its services when their settings change, calls this when the file differs from the one *it* last read (another
    process, such as ``balsam site sync`` or any API call, may already have copied the edit into the row)."""
    from balsam.settings import load_settings

    stamp = stamp or settings_stamp(layout)
    settings = load_settings(layout.settings_path)
    check_site_settings(layout.root, settings)
    refresh_site_row(store, settings, stamp)
    return settings


def note_found_hardware(settings_text: str, settings: "SiteSettings", env: Mapping[str, str], host: str) -> str:
    """``settings_text`` with a comment above ``mpi_launcher: auto`` saying which MPI (and, on a local node
    whose GPUs are not set, which GPUs) this host has now; the launcher looks again each time it starts."""
    from balsam.platforms.mpi.detect import detect_mpi
    from balsam.platforms.nodes.gpus import detect_gpus

    ls = settings.launcher
    if ls.mpi_launcher != "auto":
        return settings_text
    found = [f"MPI {detect_mpi(env).summary()}"]
    if ls.node == "local" and ls.gpus_per_node is None and not ls.gpu_ids:
        found.append(detect_gpus(env).summary())
    line = re.compile(r"^([ \t]*)mpi_launcher:[ \t]*auto\b", re.MULTILINE)
    m = line.search(settings_text)
    if m is None:
        return settings_text
    comment = f"{m.group(1)}# at site init, {host} had: {'; '.join(found)}\n"
    return settings_text[: m.start()] + comment + settings_text[m.start():]
