"""Machine presets: a ``settings.yml`` and a ``job-template.sh`` per machine, read as package resources.

Resources load through ``importlib.resources`` so presets work from an installed package and from the
zipapp alike. ``balsam site init --preset NAME`` copies both files into the new site; ``balsam site presets``
lists :func:`describe_presets`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Dict, List

from balsam.exceptions import ConfigError

PRESET_FILES = ("settings.yml", "job-template.sh")
OPTIONAL_SERVICES = "optional-services.yml"
"""Appended to every preset's settings.yml at ``site init``: the logging level and the services that are off
until turned on (elastic queue, queue maintainer, transfer locations), as ``null`` lines with a commented block
to uncomment, where Balsam 0.7's elastic queue and site guides tell users to find them."""


@dataclass(frozen=True)
class PresetInfo:
    """What ``balsam site presets`` shows about one preset."""

    name: str
    title: str
    scheduler: str
    mpi_launcher: str
    node: str


def list_presets() -> List[str]:
    """Names of the presets shipped with Balsam."""
    root = resources.files(__name__)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_") and (p / "settings.yml").is_file())


def read_preset_file(preset: str, filename: str) -> str:
    """The text of one file of a preset."""
    if preset not in list_presets():
        raise ConfigError(f"unknown preset {preset!r} (available: {', '.join(list_presets())})")
    if filename not in PRESET_FILES:
        raise ConfigError(f"a preset has no file {filename!r} (files: {', '.join(PRESET_FILES)})")
    return (resources.files(__name__) / preset / filename).read_text()


def site_settings_text(preset: str) -> str:
    """The settings.yml a new site of ``preset`` starts with: the preset's file, then the optional services
    (:data:`OPTIONAL_SERVICES`), their commented examples filled with the preset's first queue and project so that
    uncommenting one gives settings that validate."""
    from string import Template

    import yaml  # deferred, as in preset_data

    text = read_preset_file(preset, "settings.yml")
    scheduler = (yaml.safe_load(text) or {}).get("scheduler") or {}
    queues = scheduler.get("allowed_queues") or {}
    queue, policy = next(iter(queues.items()), ("default", {}))
    policy = policy if isinstance(policy, dict) else {}
    projects = scheduler.get("allowed_projects") or []
    max_wall = int(policy.get("max_wall_time_min", 60))
    values = {
        "queue": queue,
        "project": projects[0] if projects else "MyProject",
        "max_nodes": int(policy.get("max_nodes", 1)),
        "max_wall": max_wall,
        "min_wall": min(30, max_wall),
        "max_queued": int(policy.get("max_queued_jobs", 5)),
    }
    tail = Template((resources.files(__name__) / OPTIONAL_SERVICES).read_text()).substitute(values)
    # The values filled in vary in length: line the commented examples' remarks up again.
    tail = re.sub(r"^(#   [\w]+: \S+) +(# .*)$", lambda m: f"{m.group(1):<29} {m.group(2)}", tail, flags=re.MULTILINE)
    return text.rstrip("\n") + "\n" + tail


def preset_data(preset: str) -> Dict[str, Any]:
    """A preset's settings.yml as plain data (not yet validated into settings)."""
    import yaml  # deferred: only commands that look at presets pay for the import

    data = yaml.safe_load(read_preset_file(preset, "settings.yml"))
    if not isinstance(data, dict):
        raise ConfigError(f"preset {preset}/settings.yml: expected a mapping at the top level")
    return data


def describe_presets() -> List[PresetInfo]:
    """Every preset's name, title (the machine), scheduler, MPI launcher and node adapter, by name."""
    out = []
    for name in list_presets():
        data = preset_data(name)
        scheduler = data.get("scheduler") or {}
        launcher = data.get("launcher") or {}
        out.append(
            PresetInfo(
                name=name,
                title=str(data.get("title", name)),
                scheduler=str(scheduler.get("type", "local")),
                mpi_launcher=str(launcher.get("mpi_launcher", "mpiexec")),
                node=str(launcher.get("node", "local")),
            )
        )
    return out
