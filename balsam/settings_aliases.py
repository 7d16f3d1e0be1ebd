"""Balsam 0.7's ``settings.yml`` keys, accepted as aliases of this project's names.

A site's settings written for Balsam 0.7 (its documentation, or a copied ``settings.yml``) validate here: each
0.7 key is rewritten to its name in :mod:`balsam.settings` before validation, and :func:`translate` returns a
note per key saying the new name (``balsam site sync`` prints them). A 0.7 key with no counterpart that
changes nothing here (its dotted class paths, buffered logging) is accepted and noted as ignored. Keys that
are neither are still rejected by :mod:`balsam.settings`, with their name.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Tuple

# section -> {0.7 key: our key (None: accepted and ignored)}
_RENAMED: Dict[str, Dict[str, Optional[str]]] = {
    "launcher": {
        "idle_ttl_sec": "idle_ttl_s",
        "delay_sec": "poll_period_s",
        "serial_mode_prefetch_per_rank": "serial_prefetch_per_node",
        "compute_node": None,
        "mpi_app_launcher": None,
        "local_app_launcher": None,
        "serial_mode_startup_params": None,
    },
    "scheduler": {
        "job_template_path": "job_template",
        "sync_period": "sync_period_s",
        "scheduler_class": None,
    },
    "processing": {
        "prefetch_depth": "prefetch",
        "service_period": "period_s",
    },
    "transfers": {
        "transfer_batch_size": "batch_size",
        "service_period": "period_s",
    },
    "file_cleaner": {
        "cleanup_batch_size": "batch_size",
        "service_period": "period_s",
    },
    "elastic_queue": {
        "service_period": "period_s",
        "submit_project": "project",
        "submit_queue": "queue",
    },
    "queue_maintainer": {
        "submit_period": "period_s",
        "submit_project": "project",
        "submit_queue": "queue",
    },
    "logging": {
        "format": None,
        "datefmt": None,
        "buffer_num_records": None,
        "flush_period": None,
    },
}

_SCHEDULER_CLASSES = {
    "slurm": "slurm", "pbs": "pbs", "cobalt": "cobalt", "lsf": "lsf", "sge": "sge", "localprocess": "local", "local": "local",
}


def _scheduler_type(dotted: str) -> Optional[str]:
    """``balsam.platform.scheduler.SlurmScheduler`` -> ``slurm`` (None when unknown)."""
    name = str(dotted).rsplit(".", 1)[-1].lower().replace("scheduler", "")
    return _SCHEDULER_CLASSES.get(name)


def translate(data: Any) -> Tuple[Any, List[str]]:
    """Balsam 0.7 keys in ``data`` rewritten to this project's names (a copy), and a note for each."""
    if not isinstance(data, dict):
        return data, []
    out = copy.deepcopy(data)
    notes: List[str] = []
    if "elastic_queue" in out:
        eq = out["elastic_queue"]
        if eq is None:
            out["elastic_queue"] = []
        elif isinstance(eq, dict):
            out["elastic_queue"] = [eq]
            notes.append("elastic_queue: a single mapping (Balsam 0.7) is read as a list of one queue")
    for section in ("queue_maintainer", "transfers"):  # null: the service is off (no queue kept, no locations)
        if out.get(section, "absent") is None:
            del out[section]
    queues = out.get("scheduler", {}).get("allowed_queues") if isinstance(out.get("scheduler"), dict) else None
    if isinstance(queues, dict):
        for qname, policy in queues.items():
            if isinstance(policy, dict) and "max_walltime" in policy:
                value = policy.pop("max_walltime")
                policy.setdefault("max_wall_time_min", value)
                notes.append(f"scheduler.allowed_queues.{qname}.max_walltime is Balsam 0.7's name; "
                             f"read as scheduler.allowed_queues.{qname}.max_wall_time_min")
    for section, renames in _RENAMED.items():
        blocks = out.get(section)
        targets = blocks if isinstance(blocks, list) else [blocks]
        for i, block in enumerate(targets):
            if not isinstance(block, dict):
                continue
            where = f"{section}[{i}]" if isinstance(blocks, list) else section
            for old, new in renames.items():
                if old not in block:
                    continue
                value = block.pop(old)
                if section == "scheduler" and old == "scheduler_class":
                    kind = _scheduler_type(value)
                    if kind and "type" not in block:
                        block["type"] = kind
                        notes.append(f"{where}.scheduler_class is Balsam 0.7's name; read as {where}.type: {kind}")
                    else:
                        notes.append(f"{where}.scheduler_class ({value}) is Balsam 0.7's; set {where}.type instead (ignored)")
                    continue
                if new is None:
                    notes.append(f"{where}.{old} is a Balsam 0.7 setting with no effect here (ignored)")
                    continue
                if new in block:
                    notes.append(f"{where}.{old} is Balsam 0.7's name for {where}.{new}, which is also set: {where}.{new} wins")
                    continue
                block[new] = value
                notes.append(f"{where}.{old} is Balsam 0.7's name; read as {where}.{new} (rename it to silence this note)")
    return out, notes


def notes_for(data: Any) -> List[str]:
    """The notes :func:`translate` gives for ``data`` (what ``balsam site sync`` prints)."""
    return translate(data)[1]


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def check_values(settings: Any) -> None:
    """Checks of values Balsam 0.7 users write (named choices, Globus ids and locations); ConfigError if wrong."""
    import uuid

    from balsam.exceptions import ConfigError

    level = str(settings.logging.level).upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"logging.level: {settings.logging.level!r} is not one of {', '.join(LOG_LEVELS)}")
    settings.logging.level = level
    from balsam.db.sessions import SORT_NAMES

    sort_by = settings.launcher.sort_by
    if sort_by is not None and sort_by not in SORT_NAMES:
        raise ConfigError(f"launcher.sort_by: {sort_by!r} is not one of {', '.join(SORT_NAMES)} (or null for Balsam's default)")
    parser = settings.api.http_parser
    if parser not in ("auto", "h11", "httptools"):
        raise ConfigError(f"api.http_parser: {parser!r} is not one of auto, h11, httptools")
    if not 1 <= settings.api.workers <= 64:
        raise ConfigError(f"api.workers: must be between 1 and 64 processes, got {settings.api.workers}")
    transfers = settings.transfers
    endpoint = getattr(transfers, "globus_endpoint_id", None)
    if endpoint:
        try:
            uuid.UUID(str(endpoint))
        except ValueError:
            raise ConfigError(f"transfers.globus_endpoint_id: {endpoint!r} is not a Globus endpoint UUID") from None
    for alias, url in transfers.transfer_locations.items():
        text = str(url).strip()
        if text.startswith("globus://"):
            ident = text[len("globus://"):].split("/", 1)[0]
            try:
                uuid.UUID(ident)
            except ValueError:
                raise ConfigError(f"transfers.transfer_locations.{alias}: {url!r} needs globus://ENDPOINT_UUID[/path]") from None


def notes_for_file(path: Any) -> List[str]:
    """The notes for a ``settings.yml`` file (none when it cannot be read: loading it reports that)."""
    import yaml

    from balsam import yamlsafe
    from balsam.settings import MAX_SETTINGS_DEPTH, MAX_SETTINGS_VALUES

    try:
        with open(path) as f:
            return notes_for(yamlsafe.load(f.read(), max_depth=MAX_SETTINGS_DEPTH, max_values=MAX_SETTINGS_VALUES))
    except (OSError, UnicodeDecodeError, RecursionError, yaml.YAMLError, yamlsafe.Refused):
        return []
